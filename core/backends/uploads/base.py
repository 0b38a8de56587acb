"""Open uploads: presigned PUT uploads and multipart uploads, until they are published.

An upload is one :class:`UploadRecord` (where the artifact will live and what
it will be called) plus one :class:`PartRecord` per successful PUT. Part
records are write-once: a part uploaded again gets a new record and a new
blob, and completion picks the newest record of each part number, so two PUTs
of the same part never have to update one record in place.

Every change that must see a consistent upload (add a part only while the
upload is open; start completing only once; remove) is one atomic registry
call. The filesystem registry makes them atomic across processes with
``flock`` on the upload's directory, so the HTTP service and the application
can be two processes on one data dir.
"""

from __future__ import annotations

import secrets
from collections.abc import Mapping, Sequence
from enum import Enum
from typing import Any, Protocol, TypeVar

from pydantic import BaseModel, Field

from core.errors import (
    ArtifactNotFoundError,
    InvalidPartError,
    UploadConflictError,
)
from core.nodes import Space


class UploadKind(str, Enum):
    SINGLE = "single"  # presign_upload: one PUT, then register_uploaded_artifact
    MULTIPART = "multipart"


class UploadState(str, Enum):
    OPEN = "open"  # parts may arrive
    COMPLETING = "completing"  # one caller is publishing it; parts are refused


class UploadRecord(BaseModel):
    upload_id: str
    kind: UploadKind
    artifact_id: str
    space: Space
    filename: str | None = None
    mime: str = "application/octet-stream"
    summary: str = ""
    meta: dict[str, Any] = Field(default_factory=dict)
    ttl: int | None = None  # of the artifact, once published
    publish_on_upload: bool = False  # presign_upload_and_register: the PUT itself publishes
    max_bytes: int | None = None
    blob_prefix: str  # part blobs are "{blob_prefix}-{part:05d}-{token}"
    created_at_ns: int
    expires_at_ns: int  # after this nothing more is accepted and gc removes it
    state: UploadState = UploadState.OPEN
    state_since_ns: int
    native_id: str | None = None  # the backend's own multipart id (S3), when it has one
    native_key: str | None = None  # the blob key that native upload writes: the artifact's, once published


class Publish(BaseModel):
    """Fields given when an upload is registered or completed; None keeps the upload's own."""

    mime: str | None = None
    summary: str | None = None
    filename: str | None = None
    meta: dict[str, Any] | None = None
    ttl: int | None = None
    ttl_given: bool = False


class PartRecord(BaseModel):
    part_number: int
    blob_key: str | None  # None for an empty part
    size: int
    sha256: str
    stored_at_ns: int
    token: str = Field(default_factory=lambda: secrets.token_hex(6))
    seq: int = 0  # set by the registry: the order parts of one upload were recorded in

    @property
    def etag(self) -> str:
        return f'"{self.sha256}"'


def normalise_etag(etag: str) -> str:
    """An ETag as clients quote it (``"..."``, ``W/"..."``, any case), reduced to compare."""
    etag = etag.strip()
    etag = etag.removeprefix("W/")
    return etag.strip('"').lower()


class UploadedPart(Protocol):
    """What completion needs of a part, whether this store or S3 holds it."""

    @property
    def part_number(self) -> int: ...

    @property
    def etag(self) -> str: ...

    @property
    def size(self) -> int: ...


PartT = TypeVar("PartT", bound=UploadedPart)


def choose_parts(
    record: "UploadRecord", uploaded: Mapping[int, PartT], listed: Sequence[tuple[int, str]] | None, min_part_bytes: int
) -> list[PartT]:
    """The parts a completion joins, after every check S3 makes, with errors that name the part.

    One rule for both paths (the embedded service and S3's native uploads), so
    code tested against one behaves the same against the other.
    """
    if record.kind is UploadKind.SINGLE:
        if 1 not in uploaded:
            raise ArtifactNotFoundError(f"nothing has been uploaded for artifact {record.artifact_id} yet")
        return [uploaded[1]]
    if not listed:
        raise InvalidPartError("a multipart upload is completed with the list of its parts")
    numbers = [n for n, _ in listed]
    if numbers != sorted(set(numbers)):
        raise InvalidPartError("parts must be listed once each, in ascending PartNumber order")
    chosen = []
    for number, etag in listed:
        part = uploaded.get(number)
        if part is None:
            raise InvalidPartError(f"part {number} was never uploaded")
        if normalise_etag(etag) != normalise_etag(part.etag):
            raise InvalidPartError(f"part {number}: ETag {etag!r:.80} is not the uploaded part's {part.etag}")
        chosen.append(part)
    for part in chosen[:-1]:
        if part.size < min_part_bytes:
            raise InvalidPartError(
                f"part {part.part_number} is {part.size} bytes; every part but the last needs at least {min_part_bytes}"
            )
    return chosen


def newest_parts(parts: list[PartRecord]) -> dict[int, PartRecord]:
    """The part each part number currently stands for: the last one recorded."""
    chosen: dict[int, PartRecord] = {}
    for part in sorted(parts, key=lambda p: p.seq):
        chosen[part.part_number] = part
    return chosen


class UploadRegistry(Protocol):
    async def create(self, record: UploadRecord) -> None: ...

    async def get(self, upload_id: str) -> UploadRecord | None: ...

    async def add_part(self, upload_id: str, part: PartRecord) -> bool:
        """Record a stored part; False when the upload is gone or no longer open."""
        ...

    async def parts(self, upload_id: str) -> list[PartRecord]:
        """The parts recorded so far (none when the upload is gone), changing nothing."""
        ...

    async def begin_complete(self, upload_id: str, now_ns: int) -> tuple[UploadRecord, list[PartRecord]]:
        """Move an open upload to COMPLETING and return it with all its parts."""
        ...

    async def reopen(self, upload_id: str, now_ns: int) -> None:
        """Back to OPEN after a completion that failed (nothing was published)."""
        ...

    async def remove(self, upload_id: str, *, only_open: bool) -> tuple[UploadRecord, list[PartRecord]] | None:
        """Forget an upload; returns what it held so its blobs can be deleted."""
        ...

    async def discard(self, upload_id: str) -> None:
        """Drop an upload whose record cannot be read (corrupted), blobs aside."""
        ...

    async def ids(self) -> list[str]: ...

    async def sweep(self, made_before: float) -> None:
        """Remove what a crash left half made or half removed."""
        ...


def check_open(record: UploadRecord) -> None:
    if record.state is not UploadState.OPEN:
        raise UploadConflictError(f"upload {record.upload_id} is being completed")
