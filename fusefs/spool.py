"""Where a version being written waits until it is published (DESIGN §3).

Writes land in a spool at their offsets and reach the rest of the store
only when the open file publishes the spool as a new blob.

A small file (the common case: configs, notes, outputs of a tool) is spooled
in memory, up to ``MEMORY_LIMIT`` bytes and within a mount-wide budget: it
then costs no local file of its own, only the blob the store writes anyway.
Anything larger goes to a :class:`FileSpool`, a private file in the data dir,
so memory stays bounded whatever the size of the file.

A file spool computes the SHA-256 of the new version while the writer works
when it writes sequentially from offset 0 (``cp``, ``dd``, ``tar``, ``>>``
after the old bytes were copied in): a background thread hashes what has
been written so far, reading it back from the page cache, so the writer
never waits for the digest; it also has the kernel start writing those
bytes to disk, so the fsync of publishing finds little left to do. Any other
pattern (an overwrite, a hole, a shrinking truncate) drops that digest, and
publishing hashes the whole spool in one streaming pass instead.
"""

from __future__ import annotations

import ctypes
import hashlib
import logging
import os
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import trio

from core.backends.blobs.base import BlobReader
from core.nodes import Node
from core.tree.namespace import Namespace
from fusefs.writebehind import WriteBehind

log = logging.getLogger("artifactfs.mount")

CHUNK = 1 << 20
MEMORY_LIMIT = 256 * 1024  # a file this small is spooled in memory
HASH_AHEAD_BYTES = 4 << 20  # start the background hasher once this much is waiting
HASH_INLINE_BYTES = 256 * 1024  # less than this is hashed on the event loop: cheaper than a thread hop


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


_libc = ctypes.CDLL(None, use_errno=True)
_SYNC_FILE_RANGE_WRITE = 2


def _start_writeback(fd: int, start: int, end: int) -> None:
    """Have the kernel start writing ``[start, end)`` to disk now, without waiting for it.

    Publishing fsyncs the spool; a spool already written back as it grew
    leaves that fsync only its last few MiB instead of the whole file.
    """
    _libc.sync_file_range(fd, ctypes.c_int64(start), ctypes.c_int64(end - start), _SYNC_FILE_RANGE_WRITE)


def _hash_and_write_back(fd: int, digest: Any, start: int, end: int) -> int:
    reached = _hash_file(fd, digest, start, end)
    _start_writeback(fd, start, reached)
    return reached


def _write_all(fd: int, data: bytes | memoryview, offset: int) -> None:
    view = memoryview(data)
    while view:
        written = os.pwrite(fd, view, offset)
        view, offset = view[written:], offset + written


class MemorySpool:
    def __init__(self, budget: MemoryBudget) -> None:
        self._budget: MemoryBudget | None = budget
        self._data = bytearray()

    @property
    def size(self) -> int:
        return len(self._data)

    def fits(self, end: int) -> bool:
        return end <= MEMORY_LIMIT

    def write(self, offset: int, data: bytes | memoryview) -> None:
        if offset > len(self._data):
            self._data.extend(bytes(offset - len(self._data)))  # a hole reads as zeros
        self._data[offset : offset + len(data)] = data

    def read(self, offset: int, length: int) -> bytes:
        return bytes(self._data[offset : offset + length])

    def truncate(self, size: int) -> None:
        if size < len(self._data):
            del self._data[size:]
        else:
            self._data.extend(bytes(size - len(self._data)))

    def keep_up(self, spawn: Callable[..., Any]) -> None:
        pass

    async def publish(self, ns: Namespace, node: Node, *, durable: bool) -> tuple[str | None, int, str]:
        """Store the bytes as the next blob of ``node``: (key, size, sha256)."""
        return await ns.put_blob(node, bytes(self._data), durable=durable)

    def taken(self) -> bool:
        return False  # a failed put leaves the bytes here, to try again

    def spill(self, directory: Path) -> FileSpool:
        """The same bytes in a file spool, for a file that outgrew memory; this one is closed."""
        spool = FileSpool.create(directory)
        try:
            spool.write(0, self._data)
        except BaseException:
            spool.close_now()
            os.unlink(spool.path)
            raise
        self.close_now()
        return spool

    def close_now(self) -> None:
        if self._budget is not None:
            self._data = bytearray()
            self._budget.release()
            self._budget = None

    async def close(self) -> None:
        self.close_now()

    async def discard(self) -> None:
        self.close_now()


class MemoryBudget:
    """How many memory spools may exist at once in this mount."""

    def __init__(self, total_bytes: int) -> None:
        self._free = total_bytes // MEMORY_LIMIT

    def take(self) -> bool:
        if self._free <= 0:
            return False
        self._free -= 1
        return True

    def release(self) -> None:
        self._free += 1


class FileSpool:
    def __init__(self, path: Path, fd: int) -> None:
        self.path, self.fd = path, fd
        self.size = 0
        self.behind: WriteBehind | None = None  # parts sent ahead of close, where the blob store takes them
        self._appending = True  # every write so far landed at the end
        self._sequential = True  # every write so far was appended at the end, as far as the digest knows
        self._digest: Any = hashlib.sha256()  # of [0, self._hashed) while sequential
        self._hashed = 0
        self._hasher: trio.Event | None = None  # set when the running background hasher stops

    @classmethod
    def create(cls, directory: Path) -> FileSpool:
        path = directory / f"{uuid.uuid4().hex}.spool"
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        return cls(path, fd)

    def fits(self, end: int) -> bool:
        return True

    # -- bytes

    def write(self, offset: int, data: bytes | memoryview) -> None:
        _write_all(self.fd, data, offset)
        if offset != self.size:
            self._sequential = self._appending = False
        if self.behind is not None:
            self.behind.touched(offset, offset + len(data))
        self.size = max(self.size, offset + len(data))

    def read(self, offset: int, length: int) -> bytes:
        return os.pread(self.fd, length, offset)

    def truncate(self, size: int) -> None:
        os.ftruncate(self.fd, size)
        if size < self.size:
            self._sequential = self._appending = False  # bytes already hashed (or sent) may be gone
            if self.behind is not None:
                self.behind.shrunk(size)
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

    def keep_up(self, spawn: Callable[..., Any]) -> None:
        """Let background work catch up with a sequential writer: the digest, and the parts that can go."""
        if self._sequential and self._hasher is None and self.size - self._hashed >= HASH_AHEAD_BYTES:
            self._hasher = trio.Event()
            spawn(self._hash_in_background)
        if self.behind is not None:
            self.behind.keep_up(self._written, spawn)

    def _written(self) -> int | None:
        """The size, while the writer appends (parts below it will not change); else None."""
        return self.size if self._appending and self.fd >= 0 else None

    async def _hash_in_background(self) -> None:
        assert self._hasher is not None
        try:
            while self._sequential and self.fd >= 0 and self.size - self._hashed >= HASH_AHEAD_BYTES:
                start, end = self._hashed, self.size
                # Appends land beyond ``end`` only, so [start, end) is stable while it is read.
                reached = await trio.to_thread.run_sync(_hash_and_write_back, self.fd, self._digest, start, end)
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
        if end - self._hashed <= HASH_INLINE_BYTES:
            reached = _hash_file(self.fd, digest, self._hashed, end)
        else:
            reached = await trio.to_thread.run_sync(_hash_file, self.fd, digest, self._hashed, end)
        if reached != end:
            raise OSError(5, f"spool {self.path} is shorter than its size")  # errno 5: EIO
        return digest.hexdigest()

    async def publish(self, ns: Namespace, node: Node, *, durable: bool) -> tuple[str | None, int, str]:
        """Hand the file to the blob store as the next blob of ``node``: (key, size, sha256).

        On success the file belongs to the blob store; the descriptor stays
        open (reads may still use it) until :meth:`close`.
        """
        sha256 = await self.sha256()
        behind, self.behind = self.behind, None
        if behind is not None:
            if behind.usable(self.size):
                await ns.intend_blob(node, behind.upload.key)  # gc reclaims it if no commit follows
                try:
                    await behind.finish(self.size)
                except Exception as exc:  # noqa: BLE001 - e.g. a part refused because it changed on its way out
                    log.info("the parts sent ahead of %s failed (%s); sending it whole", self.path, exc)
                else:
                    os.unlink(self.path)
                    return behind.upload.key, self.size, sha256
            else:
                await behind.abort()
        return await ns.put_spool(node, self.path, self.size, sha256, durable=durable), self.size, sha256

    def taken(self) -> bool:
        """Whether the blob store took the file (even if it failed afterwards)."""
        return not self.path.exists()

    # -- the end

    def close_now(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    async def close(self) -> None:
        """Close the file (never under a hasher thread still reading it), giving up parts sent ahead."""
        self._sequential = self._appending = False
        if self._hasher is not None:
            await self._hasher.wait()
        behind, self.behind = self.behind, None
        if behind is not None:
            with trio.CancelScope(shield=True):
                await behind.abort()
        self.close_now()

    async def discard(self) -> None:
        await self.close()
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass


Spool = MemorySpool | FileSpool
