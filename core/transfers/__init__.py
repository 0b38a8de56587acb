"""Bytes in and out through presigned URLs: signed URLs, uploads, publishing, the HTTP service."""
