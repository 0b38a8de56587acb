"""Ranged reads of one committed blob, with readahead for sequential readers.

A blob version never changes, so what was fetched stays right for as long as
the file is open. The blob is seen as a row of ``WINDOW``-sized chunks; a
reader that keeps to the chunk it read last (or the next one) is
sequential, and for it the following ``DEPTH`` chunks are fetched in the
background while the kernel is still asking for the current one. Anything
else is a plain ranged read. Memory per open file stays under about
``WINDOW * 3 * DEPTH`` (chunks fetched ahead plus chunks waiting to be hashed).

A small blob (``SMALL``) is read whole at the first read and checked at
once. For a larger one, a reader that goes through the chunks in order has
read the whole artifact, so its SHA-256 is checked (DESIGN §6): each fetched chunk is
hashed in a worker thread, in order, while the reader moves on, and the
read that reaches the end waits for the verdict. A mismatch fails that read
with ``ArtifactCorruptedError`` (``EIO``), so ``cat`` or ``cp`` of a damaged
artifact fails instead of passing the damage on.

Whoever waits for the hashing (the read at the end, a reader held back, a
fetched chunk waiting for its turn) first makes sure that the next chunk to
hash is being fetched: a sequential reader that started in chunk 1 (the
kernel's first read of a tail, ``git``'s first look at a pack) gets chunk 0
fetched for the check instead of waiting for a read that never comes.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable
from typing import Any

import trio

from core.backends.blobs.base import BlobReader
from core.errors import ArtifactCorruptedError
from core.infra import metrics

log = logging.getLogger("artifactfs.mount")

WINDOW = 1 << 20
DEPTH = 4
CLOSE_WAIT = 5.0  # seconds close() waits for fetches to stop
_HIT, _MISS, _RANDOM = (metrics.READAHEAD.labels(result) for result in ("hit", "miss", "random"))
SMALL = 128 * 1024  # a blob this small is read whole at the first read: one request, checked at once


class _Dropped(Exception):
    """A prefetch was called off because the reader moved elsewhere."""


class _Chunk:
    __slots__ = ("data", "error", "ready", "scope")

    def __init__(self) -> None:
        self.data: bytes = b""
        self.error: BaseException | None = None
        self.ready = trio.Event()
        self.scope = trio.CancelScope()


class ReadAhead:
    def __init__(self, reader: BlobReader, size: int, sha256: str, spawn: Callable[..., Any]) -> None:
        self._reader, self._size, self._spawn = reader, size, spawn
        self._chunks: dict[int, _Chunk] = {}
        self._inflight: set[_Chunk] = set()  # fetches running, kept or not: close calls them all off
        # The chunk the previous read ended in. It starts at 0, not -1: the kernel's first requests
        # come together and may be served in any order, so a first read of chunk 1 is sequential too.
        self._last = 0
        self._users = 0  # fetches and reads using the blob reader now
        self._idle = trio.Event()
        self._idle.set()
        # verification of a whole, in-order read
        self._expected = sha256
        self._verifying = size > 0
        self._digest = hashlib.sha256()
        self._verified = 0  # chunks hashed so far
        self._claimed = 0  # chunks hashed or being hashed: a chunk fetched twice is hashed once
        self._hashers: dict[int, int] = {}  # chunk -> fetches of it that will still offer it for hashing
        self._progress = trio.Event()
        self._chunk_count = (size + WINDOW - 1) // WINDOW
        self._whole: bytes | None = None  # all of a small blob

    async def read(self, offset: int, length: int) -> bytes | memoryview:
        if offset >= self._size or length <= 0:
            return b""
        self._enter()
        try:
            return await self._read(offset, length)
        finally:
            self._leave()

    async def _read(self, offset: int, length: int) -> bytes | memoryview:
        if self._size <= SMALL:
            whole = self._whole if self._whole is not None else await self._read_whole()
            return memoryview(whole)[offset : offset + length]
        length = min(length, self._size - offset)
        first, last = offset // WINDOW, (offset + length - 1) // WINDOW
        # the kernel's concurrent readahead requests may arrive a little out of order
        sequential = self._last - 1 <= first <= self._last + 1
        self._last = max(self._last, last)
        if not sequential:
            _RANDOM.inc()
            self._stop_verifying()
            self._drop(lambda index: True)
            return await self._reader.read(offset, length)
        ahead = self._chunks.get(first)
        (_HIT if ahead is not None and ahead.ready.is_set() else _MISS).inc()
        await self._hashed(first - 2 * DEPTH)  # hashing lags behind: hold the reader, not the chunks
        # One behind: requests may come a little out of order. Chunks further behind are forgotten but
        # not called off: one still in flight has a reader waiting for it (the kernel's requests overtake
        # each other when fetches are slow, as on S3), and the whole-read check needs it hashed.
        self._drop(lambda index: index < first - 1, cancel=False)
        for index in range(first, min(last + DEPTH, self._chunk_count - 1) + 1):
            if index not in self._chunks:
                self._fetch_soon(index)
        parts = [await self._chunk(index) for index in range(first, last + 1)]
        if offset + length == self._size:
            await self._verdict()
        start = offset - first * WINDOW
        if len(parts) == 1:
            return memoryview(parts[0])[start : start + length]
        return b"".join(parts)[start : start + length]

    async def _chunk(self, index: int) -> bytes:
        chunk = self._chunks.get(index)
        if chunk is None:  # dropped by a concurrent read meanwhile
            chunk = self._fetch_soon(index)
        await chunk.ready.wait()
        if isinstance(chunk.error, _Dropped):  # another reader jumped away; fetch it ourselves
            offset = index * WINDOW
            return bytes(await self._reader.read(offset, min(WINDOW, self._size - offset)))
        if chunk.error is not None:
            self._chunks.pop(index, None)
            raise chunk.error
        return chunk.data

    def _enter(self) -> None:
        """One more fetch or read is using the blob reader."""
        self._users += 1
        if self._users == 1:
            self._idle = trio.Event()

    def _leave(self) -> None:
        self._users -= 1
        if self._users == 0:
            self._idle.set()

    def _fetch_soon(self, index: int) -> _Chunk:
        chunk = self._chunks[index] = _Chunk()
        self._inflight.add(chunk)
        self._enter()
        self._hashers[index] = self._hashers.get(index, 0) + 1
        self._spawn(self._fetch, index, chunk)
        return chunk

    async def _fetch(self, index: int, chunk: _Chunk) -> None:
        offset = index * WINDOW
        expected = min(WINDOW, self._size - offset)
        try:
            with chunk.scope:
                chunk.data = bytes(await self._reader.read(offset, expected, ahead=True))
                if len(chunk.data) != expected:
                    raise ArtifactCorruptedError(f"a blob is shorter than its artifact ({offset + len(chunk.data)} bytes)")
            if chunk.scope.cancelled_caught:
                chunk.error = _Dropped()
        except Exception as exc:  # noqa: BLE001 - handed to the reader that waits for this chunk
            chunk.error = exc
        finally:
            self._inflight.discard(chunk)
            chunk.ready.set()
        try:
            if chunk.error is None:
                await self._hash_in_order(index, chunk.data)
            else:
                self._stop_verifying()
        finally:
            left = self._hashers.pop(index) - 1
            if left:
                self._hashers[index] = left
            self._leave()

    async def _read_whole(self) -> bytes:
        """A small blob is read, and checked, in one go at the first read."""
        data = bytes(await self._reader.read(0, self._size))
        if len(data) != self._size or hashlib.sha256(data).hexdigest() != self._expected:
            raise ArtifactCorruptedError("the artifact fails its SHA-256 check")
        self._whole = data
        return data

    # -- verification

    async def _hash_in_order(self, index: int, data: bytes) -> None:
        while self._verifying and self._verified < index:
            await self._next_hashed()
        if not self._verifying or self._verified != index or self._claimed > index:
            return  # not our turn, or a second fetch of a chunk that is being hashed
        self._claimed = index + 1
        await trio.to_thread.run_sync(self._digest.update, data)
        self._verified = index + 1
        self._wake()

    def _wake(self) -> None:
        progress, self._progress = self._progress, trio.Event()
        progress.set()

    def _stop_verifying(self) -> None:
        if self._verifying:
            self._verifying = False
            self._wake()

    async def _hashed(self, count: int) -> None:
        """Return once the first ``count`` chunks are hashed (or the check is off)."""
        while self._verifying and self._verified < count:
            await self._next_hashed()

    async def _next_hashed(self) -> None:
        """Wait for one more chunk to be hashed, making sure that someone is fetching it."""
        if not self._hashers.get(self._verified):
            self._fetch_soon(self._verified)
        await self._progress.wait()

    async def _verdict(self) -> None:
        await self._hashed(self._chunk_count)
        if self._verifying and self._digest.hexdigest() != self._expected:
            raise ArtifactCorruptedError("the artifact fails its SHA-256 check")

    # -- the end

    def _drop(self, which: Callable[[int], bool], *, cancel: bool = True) -> None:
        for index in [i for i in self._chunks if which(i)]:
            chunk = self._chunks.pop(index)
            if cancel and not chunk.ready.is_set():
                chunk.scope.cancel()

    async def close(self) -> None:
        """Stop the fetches, wait (bounded) until none is using the reader, close it.

        A fetch stuck in a backend that ignores cancellation keeps the reader: it is left open
        rather than closed under that fetch's feet, and the file's close goes on.
        """
        self._stop_verifying()
        self._drop(lambda index: True)
        for chunk in self._inflight:
            chunk.scope.cancel()
        with trio.move_on_after(CLOSE_WAIT):
            await self._idle.wait()
        if not self._idle.is_set():
            log.warning("a blob read did not stop within %.0f s of its file's close; its reader is left open", CLOSE_WAIT)
            return
        await self._reader.close()
