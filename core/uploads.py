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

import fcntl
import json
import os
import secrets
import shutil
from enum import Enum
from pathlib import Path
from collections.abc import Mapping, Sequence
from typing import Any, Protocol, TypeVar

import anyio.to_thread
from pydantic import BaseModel, Field, ValidationError

from .errors import ArtifactCorruptedError, ArtifactNotFoundError, InvalidPartError, UploadConflictError, UploadNotFoundError
from .nodes import Space
from .signing import RecordSigner

RECORD_FILE = "record.json"
_PART_PREFIX = "part-"


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


class MemoryUploadRegistry:
    """Open uploads of one process: for stores whose artifacts live in memory too.

    Each method runs without awaiting in between, so it is atomic on the loop.
    """

    def __init__(self) -> None:
        self._records: dict[str, UploadRecord] = {}
        self._parts: dict[str, list[PartRecord]] = {}

    async def create(self, record: UploadRecord) -> None:
        self._records[record.upload_id] = record.model_copy(deep=True)
        self._parts[record.upload_id] = []

    async def get(self, upload_id: str) -> UploadRecord | None:
        record = self._records.get(upload_id)
        return None if record is None else record.model_copy(deep=True)

    async def add_part(self, upload_id: str, part: PartRecord) -> bool:
        record = self._records.get(upload_id)
        if record is None or record.state is not UploadState.OPEN:
            return False
        part.seq = len(self._parts[upload_id]) + 1
        self._parts[upload_id].append(part.model_copy())
        return True

    async def begin_complete(self, upload_id: str, now_ns: int) -> tuple[UploadRecord, list[PartRecord]]:
        record = self._records.get(upload_id)
        if record is None:
            raise UploadNotFoundError(f"upload {upload_id} does not exist")
        _check_open(record)
        record.state, record.state_since_ns = UploadState.COMPLETING, now_ns
        return record.model_copy(deep=True), list(self._parts[upload_id])

    async def reopen(self, upload_id: str, now_ns: int) -> None:
        record = self._records.get(upload_id)
        if record is not None:
            record.state, record.state_since_ns = UploadState.OPEN, now_ns

    async def remove(self, upload_id: str, *, only_open: bool) -> tuple[UploadRecord, list[PartRecord]] | None:
        record = self._records.get(upload_id)
        if record is None:
            return None
        if only_open:
            _check_open(record)
        del self._records[upload_id]
        return record, self._parts.pop(upload_id)

    async def discard(self, upload_id: str) -> None:
        self._records.pop(upload_id, None)
        self._parts.pop(upload_id, None)

    async def ids(self) -> list[str]:
        return list(self._records)

    async def sweep(self, made_before: float) -> None:
        pass


def _check_open(record: UploadRecord) -> None:
    if record.state is not UploadState.OPEN:
        raise UploadConflictError(f"upload {record.upload_id} is being completed")


class DirUploadRegistry:
    """Open uploads as signed JSON files under ``<data dir>/uploads/<upload id>/``.

    ``record.json`` holds the upload, ``part-<seq>-<number>.json`` each stored
    part; ``seq`` counts up under the upload's lock, so the newest PUT of a
    part number is known without trusting clocks. Files appear by ``rename`` after ``fsync``, so a reader sees a
    whole record or none; a crash leaves at most a ``.tmp`` file, which the
    next removal of that upload sweeps away.
    """

    def __init__(self, root: Path, signer: RecordSigner) -> None:
        self.root = Path(root)
        self._signer = signer

    # -- files

    def _dir(self, upload_id: str) -> Path:
        if not upload_id or "/" in upload_id or upload_id.startswith("."):
            raise UploadNotFoundError(f"upload {upload_id!r} does not exist")
        return self.root / upload_id

    def _encode(self, model: BaseModel) -> bytes:
        body = model.model_dump_json().encode()
        return json.dumps({"sig": self._signer.sign(body), "body": body.decode()}).encode()

    def _decode(self, data: bytes, cls: type[BaseModel], where: Path) -> Any:
        try:
            outer = json.loads(data)
            body = outer["body"].encode()
            if not self._signer.verify(body, outer["sig"]):
                raise ArtifactCorruptedError(f"{where} fails its signature")
            return cls.model_validate_json(body)
        except (ValueError, KeyError, TypeError, ValidationError) as exc:
            raise ArtifactCorruptedError(f"{where} is not a valid upload record: {exc}") from None

    def _write(self, directory: Path, name: str, model: BaseModel) -> None:
        tmp = directory / f".{name}.{secrets.token_hex(4)}.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            data = memoryview(self._encode(model))
            while data:
                data = data[os.write(fd, data) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.rename(tmp, directory / name)
        _fsync_dir(directory)

    def _read_record(self, directory: Path) -> UploadRecord | None:
        path = directory / RECORD_FILE
        try:
            data = path.read_bytes()
        except (FileNotFoundError, NotADirectoryError):
            return None
        return self._decode(data, UploadRecord, path)

    def _read_parts(self, directory: Path) -> list[PartRecord]:
        parts = []
        for entry in os.scandir(directory):
            if entry.name.startswith(_PART_PREFIX) and entry.name.endswith(".json"):
                parts.append(self._decode(Path(entry.path).read_bytes(), PartRecord, Path(entry.path)))
        return parts

    def _locked(self, upload_id: str, fn: Any) -> Any:
        """Run ``fn(directory)`` holding the upload's lock; ``fn(None)`` when there is no upload."""
        directory = self._dir(upload_id)
        try:
            fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
        except FileNotFoundError:
            return fn(None)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            # The directory may have been removed while we waited for the lock.
            return fn(directory if (directory / RECORD_FILE).exists() else None)
        finally:
            os.close(fd)

    # -- the protocol

    async def create(self, record: UploadRecord) -> None:
        def work() -> None:
            self.root.mkdir(parents=True, exist_ok=True)
            staging = self.root / f".new-{record.upload_id}"
            staging.mkdir()
            self._write(staging, RECORD_FILE, record)
            os.rename(staging, self._dir(record.upload_id))  # the upload appears whole
            _fsync_dir(self.root)

        await anyio.to_thread.run_sync(work)

    async def get(self, upload_id: str) -> UploadRecord | None:
        return await anyio.to_thread.run_sync(self._read_record, self._dir(upload_id))

    async def add_part(self, upload_id: str, part: PartRecord) -> bool:
        def work(directory: Path | None) -> bool:
            record = None if directory is None else self._read_record(directory)
            if directory is None or record is None or record.state is not UploadState.OPEN:
                return False
            names = [e.name for e in os.scandir(directory) if e.name.startswith(_PART_PREFIX)]
            part.seq = 1 + max((int(n[len(_PART_PREFIX):].split("-")[0]) for n in names), default=0)
            self._write(directory, f"{_PART_PREFIX}{part.seq:010d}-{part.part_number:05d}.json", part)
            return True

        return await anyio.to_thread.run_sync(self._locked, upload_id, work)

    async def begin_complete(self, upload_id: str, now_ns: int) -> tuple[UploadRecord, list[PartRecord]]:
        def work(directory: Path | None) -> tuple[UploadRecord, list[PartRecord]]:
            record = None if directory is None else self._read_record(directory)
            if directory is None or record is None:
                raise UploadNotFoundError(f"upload {upload_id} does not exist")
            _check_open(record)
            record.state, record.state_since_ns = UploadState.COMPLETING, now_ns
            self._write(directory, RECORD_FILE, record)
            return record, self._read_parts(directory)

        return await anyio.to_thread.run_sync(self._locked, upload_id, work)

    async def reopen(self, upload_id: str, now_ns: int) -> None:
        def work(directory: Path | None) -> None:
            record = None if directory is None else self._read_record(directory)
            if directory is not None and record is not None:
                record.state, record.state_since_ns = UploadState.OPEN, now_ns
                self._write(directory, RECORD_FILE, record)

        await anyio.to_thread.run_sync(self._locked, upload_id, work)

    async def remove(self, upload_id: str, *, only_open: bool) -> tuple[UploadRecord, list[PartRecord]] | None:
        def work(directory: Path | None) -> tuple[UploadRecord, list[PartRecord]] | None:
            record = None if directory is None else self._read_record(directory)
            if directory is None or record is None:
                return None
            if only_open:
                _check_open(record)
            parts = self._read_parts(directory)
            # Renamed away first, so no reader ever sees a half-removed upload.
            doomed = self.root / f".gone-{upload_id}-{secrets.token_hex(4)}"
            os.rename(directory, doomed)
            shutil.rmtree(doomed)
            _fsync_dir(self.root)
            return record, parts

        return await anyio.to_thread.run_sync(self._locked, upload_id, work)

    async def ids(self) -> list[str]:
        def work() -> list[str]:
            try:
                return [e.name for e in os.scandir(self.root) if e.is_dir() and not e.name.startswith(".")]
            except FileNotFoundError:
                return []

        return await anyio.to_thread.run_sync(work)

    async def discard(self, upload_id: str) -> None:
        def work(directory: Path) -> None:
            doomed = self.root / f".gone-{upload_id}-{secrets.token_hex(4)}"
            try:
                os.rename(directory, doomed)
            except FileNotFoundError:
                return
            shutil.rmtree(doomed)

        await anyio.to_thread.run_sync(work, self._dir(upload_id))

    async def sweep(self, made_before: float) -> None:
        def work() -> None:
            try:
                entries = list(os.scandir(self.root))
            except FileNotFoundError:
                return
            for entry in entries:
                half_removed = entry.name.startswith(".gone-")
                half_made = entry.name.startswith(".new-") and entry.stat().st_mtime < made_before
                if entry.is_dir() and (half_removed or half_made):
                    shutil.rmtree(entry.path, ignore_errors=True)

        await anyio.to_thread.run_sync(work)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
