"""Public pydantic models and enums of the artifact API."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from datetime import datetime
from enum import Enum
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictInt, ValidationError

from core.errors import InvalidArgumentError


class Scope(str, Enum):
    """Where an artifact lives and who may touch it (DESIGN §7)."""

    SESSION = "session"
    USER = "user"
    SANDBOX = "sandbox"


StorageScope = Scope  # the reference's name for it (namespaces)


class NamespaceType(str, Enum):
    """A namespace is one file (BLOB) or a directory tree (WORKSPACE) (issue #10)."""

    BLOB = "blob"
    WORKSPACE = "workspace"


class _Mapping(BaseModel):
    """A model that also answers ``obj["field"]`` and ``obj.get()``.

    The reference API returned dicts; code written for it indexes results.
    """

    def __getitem__(self, key: str) -> Any:
        if key in type(self).model_fields:
            return getattr(self, key)
        raise KeyError(key)

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and key in type(self).model_fields

    def get(self, key: str, default: Any = None) -> Any:
        return getattr(self, key, default) if key in self else default

    def keys(self) -> list[str]:
        return list(type(self).model_fields)


class GridKey(_Mapping):
    """A parsed ``grid/{sandbox}/{sessions/<id>|users/<id>|shared}/{artifact_id}``."""

    model_config = ConfigDict(frozen=True)

    sandbox_id: str
    scope: Scope
    session_id: str | None = None
    user_id: str | None = None
    artifact_id: str | None = None
    subpath: str | None = None


class ArtifactMetadata(_Mapping):
    """Everything the store knows about one artifact."""

    artifact_id: str
    sandbox_id: str
    session_id: str | None
    user_id: str | None
    scope: Scope
    key: str
    filename: str
    mime: str
    summary: str
    meta: dict[str, Any] = Field(default_factory=dict)
    bytes: int
    sha256: str
    version: int
    stored_at: datetime
    updated_at: datetime
    ttl: int | None
    expires_at: datetime | None


class ArtifactPage(BaseModel):
    """One page of a listing or a search, and where the next one starts.

    ``next_cursor`` is None once the listing is exhausted; a full page may
    still be followed by an empty one (the store does not read ahead to know).
    """

    items: list[ArtifactMetadata] = Field(default_factory=list)
    next_cursor: str | None = None


class SessionInfo(_Mapping):
    session_id: str
    sandbox_id: str
    user_id: str | None = None
    created_at: datetime
    expires_at: datetime | None
    custom_metadata: dict[str, Any] = Field(default_factory=dict)


ProgressCallback = Callable[[int, int | None], Any]


class NamespaceInfo(_Mapping):
    """A namespace as the reference describes it, plus ``path``: where it is in the mount.

    Times are ISO 8601 strings ending in ``Z``, as in the reference.
    """

    model_config = ConfigDict(extra="allow")

    namespace_id: str
    type: NamespaceType
    name: str | None = None
    provider_type: str
    scope: Scope
    session_id: str
    sandbox_id: str
    user_id: str | None = None
    owner_id: str | None = None  # the user of a user-scope namespace
    created_at: str
    expires_at: str | None = None
    ttl_seconds: int
    grid_path: str
    current_path: str = "/"
    metadata: dict[str, Any] = Field(default_factory=dict)
    path: str  # below the sandbox's directory in the mount: users/alice/namespaces/ns-...


class CheckpointInfo(_Mapping):
    """A checkpoint of a workspace, as the reference describes one (``workspace_id``: its namespace)."""

    model_config = ConfigDict(extra="allow")

    checkpoint_id: str
    workspace_id: str
    name: str | None = None
    description: str = ""
    created_at: str
    stats: dict[str, Any] = Field(default_factory=dict)  # files, bytes (shared with the workspace, not copied)


class _Request(BaseModel):
    """A request model whose bad fields raise InvalidArgumentError, like a bad keyword argument would.

    Callers catch the store's error family; pydantic's own error would slip past them.
    """

    def __init__(self, **data: Any) -> None:
        try:
            super().__init__(**data)
        except ValidationError as exc:
            raise InvalidArgumentError(f"invalid {type(self).__name__}: {exc}") from None


class StreamUploadRequest(_Request):
    model_config = ConfigDict(arbitrary_types_allowed=True)

    data_stream: AsyncIterator[bytes] | Any
    mime: str = "application/octet-stream"
    summary: str = ""
    filename: str | None = None
    meta: dict[str, Any] | None = None
    session_id: str | None = None
    user_id: str | None = None
    scope: Scope | str = Scope.SESSION
    ttl: StrictInt | None | Literal["default"] = "default"  # None: never expires; True is not 1 second
    content_length: StrictInt | None = None
    progress_callback: ProgressCallback | None = None


class StreamDownloadRequest(_Request):
    model_config = ConfigDict(arbitrary_types_allowed=True)

    artifact_id: str
    session_id: str | None = None
    user_id: str | None = None
    chunk_size: int = Field(default=65536, gt=0, le=64 * 1024 * 1024)
    progress_callback: ProgressCallback | None = None
    verify: bool = True


class Usage(BaseModel):
    """Artifacts and their bytes: what one user or session is charged, or what a collection reclaimed."""

    bytes: int = 0
    files: int = 0

    def add(self, files: int, size: int) -> None:
        self.files += files
        self.bytes += size


class GcReport(BaseModel):
    """What ``gc`` reclaimed, or with ``dry_run`` would reclaim, by kind."""

    dry_run: bool
    expired: Usage = Field(default_factory=Usage)  # artifacts past their TTL, their sessions with them
    blobs: int = 0  # blobs past their grace period (deleted, replaced versions, dead writers' uploads)
    orphans: int = 0  # blobs no record names and nothing had queued: queued now, gone after the grace period
    uploads: int = 0  # upload records past their window, with their bytes
    spool: Usage = Field(default_factory=Usage)  # staged writes a dead mount left in its data dir


class ProblemKind(str, Enum):
    """What ``fsck`` found wrong."""

    UNREADABLE = "unreadable"  # a record fails its signature or cannot be parsed: the walk stops there
    MISSING_BLOB = "missing-blob"  # a record names a blob the blob store does not have
    DAMAGED_BLOB = "damaged-blob"  # its bytes do not match the record's size or SHA-256 (--verify-data)
    USAGE = "usage"  # a usage counter differs from the records it counts
    SUBDIRS = "subdirs"  # a directory's subdirectory count (st_nlink) differs from its entries
    ORPHAN = "orphan"  # a record no directory entry reaches (its directory is gone)


class Problem(BaseModel):
    """One thing ``fsck`` found: where (a path, or the account or inode), what, and the detail."""

    where: str
    kind: ProblemKind
    detail: str
    ino: int | None = None  # the node's inode number, where the problem is one node's
    repair: str | None = None  # what ``--repair`` did about it, or why it left it; None: not asked
    repaired: bool = False


class FsckReport(BaseModel):
    """What ``fsck`` checked and found; clean when ``problems`` is empty."""

    nodes: int = 0
    files: int = 0
    verified: int = 0  # files whose bytes were read and checked (--verify-data)
    problems: list[Problem] = Field(default_factory=list)

    @property
    def repaired(self) -> int:
        return sum(problem.repaired for problem in self.problems)


class BackendHealth(BaseModel):
    """Whether one backend answered a probe in time, how long it took, and why not."""

    ok: bool
    seconds: float
    error: str | None = None


class MultipartUploadInitRequest(BaseModel):
    """Where a multipart upload's artifact will live, and what it will be."""

    filename: str
    mime_type: str = "application/octet-stream"
    summary: str = ""
    meta: dict[str, Any] | None = None
    session_id: str | None = None
    user_id: str | None = None
    scope: Scope | str = Scope.SESSION
    ttl: int | None | Literal["default"] = "default"  # of the artifact; None: never expires
    max_bytes: int | None = Field(default=None, gt=0)  # signed into every part URL


class MultipartUploadPart(BaseModel):
    """One uploaded part, as the client saw it: its number and the ETag its PUT returned."""

    PartNumber: int = Field(ge=1, le=10_000)
    ETag: str


class MultipartUploadCompleteRequest(BaseModel):
    upload_id: str
    parts: list[MultipartUploadPart]
    summary: str | None = None  # None keeps the one given at initiation
    meta: dict[str, Any] | None = None
    session_id: str | None = None  # when given, must be allowed to write the upload's scope
    user_id: str | None = None
