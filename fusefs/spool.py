"""The local staging file of a version being written (DESIGN §3).

Writes land here at their offsets and become visible to the rest of the
store only when the open file publishes the spool as a new blob. The
SHA-256 of the new version is computed while the writer works when it
writes sequentially from offset 0 (the common case: ``cp``, ``dd``, ``tar``,
``>>`` after the old bytes are copied in): a background thread hashes what
has been written so far, reading it back from the page cache, so the
writer never waits for the digest. Any other pattern (an overwrite, a hole,
a shrinking truncate) drops that digest, and publishing hashes the whole
spool in one streaming pass instead.
"""

from __future__ import annotations

import hashlib
import logging
import os
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import trio

from core.blobs.base import BlobReader

log = logging.getLogger("artifactfs.mount")

CHUNK = 1 << 20
HASH_AHEAD_BYTES = 4 << 20  # start the background hasher once this much is waiting


def _hash_file(fd: int, digest: Any, start: int, end: int) -> int:
    """Feed ``[start, end)`` of ``fd`` to ``digest``; returns where it stopped."""
    pos = start
    while pos < end:
        chunk = os.pread(fd, min(CHUNK, end - pos), pos)
        if not chunk:
            break
        digest.update(chunk)
        pos += len(chunk)
    return pos


def _write_all(fd: int, data: bytes | memoryview, offset: int) -> None:
    view = memoryview(data)
    while view:
        written = os.pwrite(fd, view, offset)
        view, offset = view[written:], offset + written


class Spool:
    def __init__(self, path: Path, fd: int) -> None:
        self.path, self.fd = path, fd
        self.size = 0
        self._sequential = True  # every write so far was appended at the end
        self._digest: Any = hashlib.sha256()  # of [0, self._hashed) while sequential
        self._hashed = 0
        self._hasher: trio.Event | None = None  # set when the running background hasher stops

    @classmethod
    def create(cls, directory: Path) -> "Spool":
        path = directory / f"{uuid.uuid4().hex}.spool"
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        return cls(path, fd)

    # -- bytes

    def write(self, offset: int, data: bytes | memoryview) -> None:
        _write_all(self.fd, data, offset)
        if offset != self.size:
            self._sequential = False
        self.size = max(self.size, offset + len(data))

    def read(self, offset: int, length: int) -> bytes:
        return os.pread(self.fd, length, offset)

    def truncate(self, size: int) -> None:
        os.ftruncate(self.fd, size)
        if size < self.size:
            self._sequential = False  # bytes already hashed may be gone
        self.size = size  # growing appends zeros: still a sequential file

    async def copy_from(self, reader: BlobReader, length: int) -> None:
        """Start from the first ``length`` bytes of a committed blob, hashing them on the way."""
        offset = 0
        while offset < length:
            chunk = await reader.read(offset, min(CHUNK, length - offset))
            if not chunk:
                break
            await trio.to_thread.run_sync(self._append_hashed, chunk, offset)
            offset += len(chunk)
        if offset < length:
            self.truncate(length)  # a short blob: the rest reads as zeros, as a hole would

    def _append_hashed(self, chunk: bytes, offset: int) -> None:
        _write_all(self.fd, chunk, offset)
        if self._sequential and offset == self._hashed:
            self._digest.update(chunk)
            self._hashed += len(chunk)
        self.size = max(self.size, offset + len(chunk))

    # -- the digest

    def hash_ahead(self, spawn: Callable[..., Any]) -> None:
        """Let a background thread catch up with a sequential writer."""
        if self._sequential and self._hasher is None and self.size - self._hashed >= HASH_AHEAD_BYTES:
            self._hasher = trio.Event()
            spawn(self._hash_in_background)

    async def _hash_in_background(self) -> None:
        assert self._hasher is not None
        try:
            while self._sequential and self.fd >= 0 and self.size - self._hashed >= HASH_AHEAD_BYTES:
                start, end = self._hashed, self.size
                # Appends land beyond ``end`` only, so [start, end) is stable while it is read.
                reached = await trio.to_thread.run_sync(_hash_file, self.fd, self._digest, start, end)
                if reached != end:
                    self._sequential = False
                self._hashed = reached
        except Exception:
            log.exception("background hashing of %s failed; publishing will hash again", self.path)
            self._sequential = False
        finally:
            self._hasher.set()
            self._hasher = None

    async def sha256(self) -> str:
        """The digest of everything in the spool now."""
        if self._hasher is not None:
            await self._hasher.wait()
        if not self._sequential:
            self._digest, self._hashed, self._sequential = hashlib.sha256(), 0, True
        digest = self._digest.copy()  # a failed publish may be retried after more writes
        end = self.size
        reached = await trio.to_thread.run_sync(_hash_file, self.fd, digest, self._hashed, end)
        if reached != end:
            raise OSError(5, f"spool {self.path} is shorter than its size")  # errno 5: EIO
        return digest.hexdigest()

    # -- the end

    async def close(self) -> None:
        """Close the file (never under a hasher thread still reading it)."""
        self._sequential = False
        if self._hasher is not None:
            await self._hasher.wait()
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    async def discard(self) -> None:
        await self.close()
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass
