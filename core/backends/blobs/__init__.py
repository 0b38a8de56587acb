"""Blob stores: the BlobStore protocol, memory, local filesystem and S3."""
