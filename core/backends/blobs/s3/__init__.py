"""The S3 blob store: the store, its HTTP client, SigV4 signing and native presigned URLs."""
