"""Reads through the handlers, as the kernel sends them: every read is answered.

Regressions of two hangs with one cause (a whole-file checksum waiting for a
chunk that no one fetched): ``tail -c 20`` (or ``git``'s first look at a
pack) of a 1-2 MiB file, and fsx's mmap read across a new end of file after
an ``msync``. Each read here runs under a deadline, so a hang fails the test
instead of stopping the suite.
"""

from __future__ import annotations

import os

import pytest
import trio
from opskit import kernel

from fusefs.readahead import WINDOW

ANSWER_WITHIN = 30.0  # seconds; an answered read takes milliseconds
KERNEL_READ = 128 * 1024
MIB = 1 << 20
SIZES = sorted({max(1, int(m * MIB) + d) for m in (0.5, 1, 1.5, 2, 2.5) for d in (-1, 0, 1)})


async def answered(coro):
    with trio.fail_after(ANSWER_WITHIN):
        return await coro


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("where", ["start", "middle", "end"])
async def test_a_first_read_anywhere_is_answered(tmp_path, size: int, where: str) -> None:
    """Was: a first read in chunk 1 that reached the end of a 1-2 MiB file waited forever for chunk 0."""
    data = os.urandom(size)
    async with kernel(tmp_path) as k:
        await k.write_file("users/root/f", data)
        fh = await k.open("users/root/f")
        first = {"start": 0, "middle": size // 2, "end": max(0, size - 20)}[where]
        assert await answered(k.read(fh, first, KERNEL_READ)) == data[first : first + KERNEL_READ]
        # then the whole file, in order, as a reader that goes on would
        got = b"".join([await answered(k.read(fh, offset, KERNEL_READ)) for offset in range(0, size, KERNEL_READ)])
        assert got == data
        await k.ops.release(fh)


async def test_fsx_mapread_across_the_end_after_msync(tmp_path) -> None:
    """fsx op 2506 (bigfile run): a mapwrite extends the file, msync publishes it (fsync), and the
    kernel's page reads for the following mapread cross the new end of file. Was: never answered."""
    size = 0x320545 + 1
    data = os.urandom(size)
    async with kernel(tmp_path) as k:
        await k.write_file("users/root/fsx/f", data[: 2 * MIB])
        fh = await k.open("users/root/fsx/f", os.O_RDWR)
        await k.ops.write(fh, 2 * MIB, data[2 * MIB :])  # the mapwrite's pages, written back
        await k.ops.fsync(fh, True)  # msync
        assert await answered(k.read(fh, 2048000, 1048576)) == data[2048000 : 2048000 + 1048576]
        assert await answered(k.read(fh, 3096576, 184320)) == data[3096576:]
        await k.ops.flush(fh)
        await k.ops.release(fh)


async def test_a_sequential_reader_that_starts_past_chunk_0_is_never_held(tmp_path) -> None:
    """``dd skip=1M`` of a large file: the reader is held back while hashing lags, and hashing
    needs chunk 0, which this reader never asks for. Was: held for good at chunk 10."""
    size = 16 * WINDOW
    data = os.urandom(size)
    async with kernel(tmp_path) as k:
        await k.write_file("users/root/big", data, piece=MIB)
        fh = await k.open("users/root/big")
        for offset in range(WINDOW, size, MIB):
            assert await answered(k.read(fh, offset, MIB)) == data[offset : offset + MIB]
        await k.ops.release(fh)
