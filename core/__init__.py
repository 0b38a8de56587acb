"""artifactfs core: an async artifact store (no FUSE imports here)."""

from .errors import (
    AccessDeniedError,
    ArtifactCorruptedError,
    ArtifactExpiredError,
    ArtifactNotFoundError,
    ArtifactStoreError,
    ArtifactTooLargeError,
    InvalidArgumentError,
    InvalidNameError,
    NameTooLongError,
    ProviderError,
    QuotaExceededError,
    SessionError,
    StoreClosedError,
)
from .models import ArtifactMetadata, GridKey, Scope, SessionInfo, StreamDownloadRequest, StreamUploadRequest
from .models import MultipartUploadCompleteRequest, MultipartUploadInitRequest, MultipartUploadPart
from .namespace import Limits
from .store import ArtifactStore

__all__ = [
    "AccessDeniedError", "ArtifactCorruptedError", "ArtifactExpiredError", "ArtifactMetadata",
    "ArtifactNotFoundError", "ArtifactStore", "ArtifactStoreError", "ArtifactTooLargeError", "GridKey",
    "InvalidArgumentError", "InvalidNameError", "Limits", "NameTooLongError", "ProviderError",
    "QuotaExceededError", "Scope", "SessionError", "SessionInfo", "StoreClosedError",
    "StreamDownloadRequest", "StreamUploadRequest",
    "MultipartUploadCompleteRequest", "MultipartUploadInitRequest", "MultipartUploadPart",
]
