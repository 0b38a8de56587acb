"""No request waits forever: a handler that never finishes still gets the kernel an answer.

A blob store that hangs on cue stands in for a backend that never replies
(an S3 endpoint that accepts and then says nothing); tests/fuse/test_fuse_hangs.py
does the same with a real, frozen S3 endpoint.
"""

from __future__ import annotations

import errno
import logging
import os

import pyfuse3
import pytest
import trio
import trio.testing
from opskit import kernel

from core.backends.blobs.memory import MemoryBlobStore

TIMEOUT = 0.5  # the mount's --request-timeout in these tests
BOUND = 30.0  # seconds within which an answer must come: timeout + grace, with room for a slow machine


class HangingBlobs(MemoryBlobStore):
    """Reads never return once ``hang`` is set."""

    def __init__(self) -> None:
        super().__init__()
        self.hang = False
        self.started = 0

    async def reader(self, key: str, size: int | None = None):
        inner = await super().reader(key, size)
        blobs = self

        class Reader:
            async def read(self, offset: int, length: int, *, ahead: bool = False) -> bytes:
                if blobs.hang:
                    blobs.started += 1
                    await trio.sleep_forever()
                return await inner.read(offset, length, ahead=ahead)

            async def close(self) -> None:
                await inner.close()

        return Reader()


@pytest.mark.semantics("S-timeout-eio")
async def test_a_read_whose_backend_never_answers_gets_eio_in_time(tmp_path, caplog) -> None:
    blobs = HangingBlobs()
    caplog.set_level(logging.ERROR, logger="artifactfs.mount")
    async with kernel(tmp_path, blobs=blobs, request_timeout=TIMEOUT) as k:
        data = os.urandom(300_000)
        await k.write_file("users/root/f", data)
        fh = await k.open("users/root/f")
        blobs.hang = True
        started = trio.current_time()
        with trio.fail_after(BOUND), pytest.raises(pyfuse3.FUSEError) as failed:
            await k.read(fh, 4096, 8192)
        waited = trio.current_time() - started
        assert failed.value.errno == errno.EIO
        assert waited >= TIMEOUT
        assert blobs.started == 1
        assert k.ops.watchdog.late == 1
        # the mount goes on: other requests are answered, and the file can be closed
        assert (await k.lookup("users/root/f")).st_size == len(data)
        blobs.hang = False
        await k.ops.release(fh)
    [record] = [r for r in caplog.records if "no answer after" in r.getMessage()]
    assert record.getMessage().startswith(f"read({fh}, 4096, 8192): no answer after")


@pytest.mark.semantics("S-unmount-signal")
async def test_stop_answers_every_waiting_request_at_once(tmp_path) -> None:
    """Unmount: requests stuck in the backend are answered within the grace, not the request timeout."""
    blobs = HangingBlobs()
    async with kernel(tmp_path, blobs=blobs, request_timeout=3600) as k:
        await k.write_file("users/root/f", os.urandom(300_000))
        fhs = [await k.open("users/root/f") for _ in range(3)]
        blobs.hang = True
        errnos: list[int] = []

        async def read(fh: int) -> None:
            try:
                await k.read(fh, 0, 4096)
            except pyfuse3.FUSEError as exc:
                errnos.append(exc.errno)

        with trio.fail_after(BOUND):
            async with trio.open_nursery() as nursery:
                for fh in fhs:
                    nursery.start_soon(read, fh)
                while blobs.started < 1:  # the first read opens the reader; the others wait on it
                    await trio.sleep(0.01)
                await trio.testing.wait_all_tasks_blocked()
                k.ops.watchdog.stop()
        assert errnos == [errno.EIO] * 3
        blobs.hang = False
        for fh in fhs:
            await k.ops.release(fh)
