"""ReadAhead on its own: the order in which the kernel asks must never fake corruption (or hide it)."""

from __future__ import annotations

import hashlib
import os

import pytest
import trio
import trio.testing

from core.errors import ArtifactCorruptedError
from fusefs.readahead import WINDOW, ReadAhead


class MemoryBlob:
    """A BlobReader over bytes that counts what was asked of it."""

    def __init__(self, data: bytes) -> None:
        self.data, self.reads, self.closed = data, 0, False

    async def read(self, offset: int, length: int, *, ahead: bool = False) -> bytes:
        self.reads += 1
        await trio.lowlevel.checkpoint()
        return self.data[offset : offset + length]

    async def close(self) -> None:
        self.closed = True


async def read_all(reader: ReadAhead, order: list[int], size: int) -> bytes:
    out = bytearray(size)
    for index in order:
        offset = index * WINDOW
        out[offset : offset + WINDOW] = bytes(await reader.read(offset, WINDOW))
    return bytes(out)


# Each chunk read again right after the next one: what concurrent kernel readahead
# requests look like when they are answered out of order. (A regression: a chunk
# fetched a second time while its first copy was being hashed was hashed twice.)
ZIGZAG = [0, 1, 0, 2, 1, 3, 2, 4, 3, 5, 4, 6, 5, 7]


@pytest.mark.parametrize("order", [list(range(8)), ZIGZAG], ids=["in-order", "zigzag"])
async def test_whole_reads_verify_and_pass(order: list[int]) -> None:
    data = os.urandom(8 * WINDOW)
    blob = MemoryBlob(data)
    async with trio.open_nursery() as nursery:
        reader = ReadAhead(blob, len(data), hashlib.sha256(data).hexdigest(), nursery.start_soon)
        assert await read_all(reader, order, len(data)) == data
        await reader.close()
    assert blob.closed


@pytest.mark.semantics("S-integrity-eio")
@pytest.mark.parametrize("order", [list(range(8)), ZIGZAG], ids=["in-order", "zigzag"])
async def test_whole_reads_of_damaged_bytes_fail(order: list[int]) -> None:
    data = os.urandom(8 * WINDOW)
    damaged = data[:-1] + bytes([data[-1] ^ 1])
    async with trio.open_nursery() as nursery:
        reader = ReadAhead(MemoryBlob(damaged), len(data), hashlib.sha256(data).hexdigest(), nursery.start_soon)
        with pytest.raises(ArtifactCorruptedError):
            await read_all(reader, order, len(data))
        await reader.close()


@pytest.mark.semantics("S-integrity-eio")
async def test_random_reads_are_plain_ranged_reads() -> None:
    data = os.urandom(8 * WINDOW)
    blob = MemoryBlob(data)
    async with trio.open_nursery() as nursery:
        reader = ReadAhead(blob, len(data), "not checked: never read whole", nursery.start_soon)
        assert bytes(await reader.read(5 * WINDOW + 7, 100)) == data[5 * WINDOW + 7 : 5 * WINDOW + 107]
        assert bytes(await reader.read(2 * WINDOW, WINDOW)) == data[2 * WINDOW : 3 * WINDOW]
        assert bytes(await reader.read(len(data) - 10, 100)) == data[-10:]  # the end, but not a whole read
        assert blob.reads == 3  # nothing fetched ahead for a reader that jumps around
        await reader.close()


class GatedBlob(MemoryBlob):
    """The first fetch of chunk 1 waits for ``gate``: reads further on overtake it, as S3's latency lets them."""

    def __init__(self, data: bytes) -> None:
        super().__init__(data)
        self.gate = trio.Event()

    async def read(self, offset: int, length: int, *, ahead: bool = False) -> bytes:
        if offset == WINDOW and not self.gate.is_set():
            await self.gate.wait()
        return await super().read(offset, length)


@pytest.mark.semantics("S-integrity-eio")
@pytest.mark.parametrize("damaged", [False, True], ids=["intact", "damaged"])
async def test_a_slow_chunk_overtaken_by_later_reads_is_still_verified(damaged: bool) -> None:
    """Was: the read of chunk 3 dropped chunk 1, still in flight, and with it the whole-read check
    (on S3 a damaged 3 MiB artifact read whole through the mount without EIO)."""
    data = os.urandom(4 * WINDOW)
    blob = GatedBlob(data[:-1] + bytes([data[-1] ^ 1]) if damaged else data)
    results: dict[int, bytes | Exception] = {}
    async with trio.open_nursery() as nursery:
        reader = ReadAhead(blob, len(data), hashlib.sha256(data).hexdigest(), nursery.start_soon)

        async def read(index: int) -> None:
            try:
                results[index] = bytes(await reader.read(index * WINDOW, WINDOW))
            except ArtifactCorruptedError as exc:
                results[index] = exc

        async with trio.open_nursery() as reads:  # the kernel's concurrent readahead requests, in order
            for index in range(4):
                reads.start_soon(read, index)
                await trio.testing.wait_all_tasks_blocked()
            blob.gate.set()
        await reader.close()
    if damaged:
        assert isinstance(results[3], ArtifactCorruptedError)
    else:
        assert b"".join(results[i] for i in range(4)) == data  # type: ignore[misc]


class SlowBlobs:
    """A blob store whose readers take a moment to open (a request, as on S3), counting them."""

    def __init__(self, data: bytes) -> None:
        self.data, self.opened = data, 0

    async def reader(self, key: str, size: int | None = None) -> MemoryBlob:
        self.opened += 1
        for _ in range(3):
            await trio.lowlevel.checkpoint()
        return MemoryBlob(self.data)


@pytest.mark.parametrize("damaged", [False, True], ids=["intact", "damaged"])
async def test_concurrent_first_reads_share_one_blob_reader(tmp_path, damaged: bool) -> None:
    """Was: each of the kernel's first concurrent reads opened a reader of its own (one leaked), and
    neither saw the whole file, so a damaged artifact read whole on S3 without EIO."""
    from types import SimpleNamespace

    from core.nodes import Artifact, NodeKind, new_node
    from fusefs.openfiles import OpenFiles

    data = os.urandom(2 * WINDOW)
    node = new_node(parent=1, name="f", kind=NodeKind.FILE, mode=0o644, now_ns=1)
    node.artifact = Artifact(artifact_id="a", sha256=hashlib.sha256(data).hexdigest(), blob_key="k")
    node.size = len(data)
    blobs = SlowBlobs(data[:-1] + bytes([data[-1] ^ 1]) if damaged else data)
    results: dict[int, bytes | Exception] = {}
    async with trio.open_nursery() as nursery:
        files = OpenFiles(SimpleNamespace(blob_reader=blobs.reader), tmp_path, nursery.start_soon, lambda ino: None)  # type: ignore[arg-type]
        _, file, _ = files.open(node, writable=False)

        async def read(index: int) -> None:
            try:
                results[index] = bytes(await file.read(index * WINDOW, WINDOW))
            except ArtifactCorruptedError as exc:
                results[index] = exc

        async with trio.open_nursery() as reads:
            for index in range(2):
                reads.start_soon(read, index)
        await file.close()
    assert blobs.opened == 1
    if damaged:
        assert isinstance(results[1], ArtifactCorruptedError)
    else:
        assert results[0] + results[1] == data  # type: ignore[operator]
