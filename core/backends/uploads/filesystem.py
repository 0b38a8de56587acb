"""Open uploads as files in a data dir, made atomic across processes with ``flock``."""

from __future__ import annotations

import fcntl
import json
import os
import secrets
import shutil
from pathlib import Path
from typing import Any

import anyio.to_thread
from pydantic import BaseModel, ValidationError

from core.backends.meta.base import MetaStore
from core.backends.uploads.base import (
    PartRecord,
    UploadRecord,
    UploadState,
    check_open,
)
from core.errors import (
    ArtifactCorruptedError,
    UploadNotFoundError,
)
from core.infra.private import new_private_dir, private_dir
from core.infra.signing import RecordSigner
from core.settings import Settings

RECORD_FILE = "record.json"
_PART_PREFIX = "part-"


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
            private_dir(self.root)
            staging = self.root / f".new-{record.upload_id}"
            new_private_dir(staging)
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

    async def parts(self, upload_id: str) -> list[PartRecord]:
        return await anyio.to_thread.run_sync(
            self._locked, upload_id, lambda directory: [] if directory is None else self._read_parts(directory))

    async def begin_complete(self, upload_id: str, now_ns: int) -> tuple[UploadRecord, list[PartRecord]]:
        def work(directory: Path | None) -> tuple[UploadRecord, list[PartRecord]]:
            record = None if directory is None else self._read_record(directory)
            if directory is None or record is None:
                raise UploadNotFoundError(f"upload {upload_id} does not exist")
            check_open(record)
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
                check_open(record)
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


def from_settings(settings: Settings, meta: MetaStore, signer: RecordSigner) -> DirUploadRegistry:
    """Uploads as files in ``uploads/`` of the data dir, seen by every process on that data dir."""
    return DirUploadRegistry(settings.fs_root / "uploads", signer)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
