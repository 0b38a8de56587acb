"""ReadAhead on its own: the order in which the kernel asks must never fake corruption (or hide it)."""

from __future__ import annotations

import hashlib
import os

import pytest
import trio

from core.errors import ArtifactCorruptedError
from fusefs.readahead import WINDOW, ReadAhead


class MemoryBlob:
    """A BlobReader over bytes that counts what was asked of it."""

    def __init__(self, data: bytes) -> None:
        self.data, self.reads, self.closed = data, 0, False

    async def read(self, offset: int, length: int) -> bytes:
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


@pytest.mark.parametrize("order", [list(range(8)), ZIGZAG], ids=["in-order", "zigzag"])
async def test_whole_reads_of_damaged_bytes_fail(order: list[int]) -> None:
    data = os.urandom(8 * WINDOW)
    damaged = data[:-1] + bytes([data[-1] ^ 1])
    async with trio.open_nursery() as nursery:
        reader = ReadAhead(MemoryBlob(damaged), len(data), hashlib.sha256(data).hexdigest(), nursery.start_soon)
        with pytest.raises(ArtifactCorruptedError):
            await read_all(reader, order, len(data))
        await reader.close()


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
