"""artifactfs core: an async artifact store (no FUSE imports here)."""

from core.api.store import ArtifactStore
from core.errors import (
    AccessDeniedError,
    ArtifactCorruptedError,
    ArtifactExpiredError,
    ArtifactNotFoundError,
    ArtifactStoreError,
    ArtifactTooLargeError,
    InvalidArgumentError,
    InvalidNameError,
    NamespaceAccessError,
    NamespaceNotFoundError,
    NameTooLongError,
    ProviderError,
    QuotaExceededError,
    SessionError,
    StoreClosedError,
    StoreFullError,
)
from core.models import (
    ArtifactMetadata,
    CheckpointInfo,
    GridKey,
    MultipartUploadCompleteRequest,
    MultipartUploadInitRequest,
    MultipartUploadPart,
    NamespaceInfo,
    NamespaceType,
    Scope,
    SessionInfo,
    StorageScope,
    StreamDownloadRequest,
    StreamUploadRequest,
)
from core.settings import Limits

__all__ = [
    "AccessDeniedError", "ArtifactCorruptedError", "ArtifactExpiredError", "ArtifactMetadata",
    "ArtifactNotFoundError", "ArtifactStore", "ArtifactStoreError", "ArtifactTooLargeError", "GridKey",
    "InvalidArgumentError", "InvalidNameError", "Limits", "NameTooLongError", "ProviderError",
    "QuotaExceededError", "Scope", "SessionError", "SessionInfo", "StoreClosedError", "StoreFullError",
    "StreamDownloadRequest", "StreamUploadRequest",
    "MultipartUploadCompleteRequest", "MultipartUploadInitRequest", "MultipartUploadPart",
    "CheckpointInfo", "NamespaceAccessError", "NamespaceInfo", "NamespaceNotFoundError", "NamespaceType", "StorageScope",
]
