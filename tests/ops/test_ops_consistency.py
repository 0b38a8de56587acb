"""What other faces of the store see and when; what is durable and when.

Another face is the library on the same data dir, or another mount of the
same Redis + S3 store (``another_mount``: a second set of handlers on the
same metadata and blobs). Durability is counted at the blob store: which
puts were made durable, and how often everything published was synced.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest
import trio
import trio.testing
from opskit import ROOT, another_mount, ctx, kernel
from storekit import commit_bytes

from core.backends.blobs.memory import MemoryBlobStore
from fusefs.operations import SYNC_SECONDS
from fusefs.spool import MEMORY_LIMIT

MiB = 1 << 20


class CountingBlobs(MemoryBlobStore):
    """Counts what the mount asks to be durable: puts with their ``durable`` flag, and syncs."""

    def __init__(self) -> None:
        super().__init__()
        self.puts: list[bool] = []  # durable flag of each published blob, in order
        self.syncs = 0

    async def put(self, key: str, data: bytes, *, durable: bool = True) -> None:
        self.puts.append(durable)
        await super().put(key, data, durable=durable)

    async def put_file(self, key: str, path: Path, *, durable: bool = True) -> None:
        self.puts.append(durable)
        await super().put_file(key, path, durable=durable)

    async def sync(self) -> None:
        self.syncs += 1


# -- consistency


@pytest.mark.semantics("S-consistency-close-to-open")
async def test_open_reads_the_newest_version_and_drops_stale_pages(tmp_path: Path) -> None:
    """The kernel keeps a file's pages across opens only while its version is unchanged."""
    async with kernel(tmp_path) as k:
        ino = await k.write_file("users/alice/v.txt", b"version one")
        assert await k.read_file("users/alice/v.txt") == b"version one"
        info = await k.ops.open(ino, os.O_RDONLY, ctx(ROOT))
        assert info.keep_cache  # same version: the pages the kernel holds are right
        await k.ops.release(info.fh)
        await commit_bytes(k.ns, ino, b"version TWO")  # the library, or another mount: same size
        info = await k.ops.open(ino, os.O_RDONLY, ctx(ROOT))
        assert not info.keep_cache
        assert (ino, True) in k.invalidated  # and its cached attributes are dropped too
        assert await k.read_all(info.fh) == b"version TWO"
        await k.ops.release(info.fh)


@pytest.mark.semantics("S-consistency-cache")
async def test_the_mount_itself_answers_every_stat_from_the_store(tmp_path: Path) -> None:
    """Only the kernel caches attributes (for attr_timeout); each getattr that reaches the mount is fresh."""
    async with kernel(tmp_path) as k:
        ino = await k.write_file("users/alice/f", b"short")
        assert (await k.ops.getattr(ino, ctx(ROOT))).st_size == 5
        await commit_bytes(k.ns, ino, b"much longer now")
        assert (await k.ops.getattr(ino, ctx(ROOT))).st_size == 15
        assert await k.listdir("users/alice") == [".", "..", "f"]


@pytest.mark.semantics("S-multimount-last-close")
async def test_two_writers_in_two_mounts_the_last_close_wins(tmp_path: Path) -> None:
    """Each close publishes what its own mount's descriptors wrote, whole; nothing is merged."""
    async with kernel(tmp_path) as a, another_mount(a, tmp_path) as b:
        ino = await a.write_file("users/alice/f", b"0123456789")
        in_b = await b.open("users/alice/f", os.O_RDWR)
        await b.ops.write(in_b, 0, b"BB")  # B's view: its own copy of the version it opened
        in_a = await a.open("users/alice/f", os.O_WRONLY)
        await a.ops.write(in_a, 0, b"AAAAAAAAAAAA")
        await a.close(in_a)
        assert await b.read_file("users/alice/f") == b"BB23456789"  # B's own descriptors see B's writes
        await b.close(in_b)
        assert await a.read_file("users/alice/f") == b"BB23456789"
        node = await a.ns.get(ino)
        assert node.artifact is not None and node.artifact.version == 3  # written, then A's, then B's


@pytest.mark.semantics("S-multimount-last-close", "S-publish-close")
async def test_a_close_in_one_mount_is_read_at_the_next_open_in_another(tmp_path: Path) -> None:
    async with kernel(tmp_path) as a, another_mount(a, tmp_path) as b:
        await a.write_file("users/alice/f", b"from a")
        assert await b.read_file("users/alice/f") == b"from a"
        fh = await a.open("users/alice/f", os.O_WRONLY)
        await a.ops.write(fh, 0, b"still a, unpublished")
        assert await b.read_file("users/alice/f") == b"from a"
        await a.close(fh)
        assert await b.read_file("users/alice/f") == b"still a, unpublished"


# -- durability


@pytest.mark.semantics("S-durable-close")
@pytest.mark.parametrize("size", [10, MEMORY_LIMIT + 1], ids=["in-memory spool", "file spool"])
async def test_close_publishes_without_waiting_for_stable_storage(tmp_path: Path, size: int) -> None:
    blobs = CountingBlobs()
    async with kernel(tmp_path, blobs=blobs) as k:
        await k.write_file("users/alice/f", os.urandom(size))
        assert (blobs.puts, blobs.syncs) == ([False], 0)
        assert len(await k.read_file("users/alice/f")) == size  # visible at once all the same


@pytest.mark.semantics("S-durable-fsync")
async def test_fsync_makes_the_file_and_every_earlier_close_durable(tmp_path: Path) -> None:
    blobs = CountingBlobs()
    async with kernel(tmp_path, blobs=blobs) as k:
        await k.write_file("users/alice/closed-before", b"published by a close")
        fh, _ = await k.create("users/alice/f", os.O_RDWR)
        await k.ops.write(fh, 0, b"data")
        await k.ops.fsync(fh, False)
        assert (blobs.puts, blobs.syncs) == ([False, True], 1)
        await k.ops.fsync(fh, True)  # fdatasync, nothing new: still syncs what earlier closes published
        assert (blobs.puts, blobs.syncs) == ([False, True], 2)
        reader = await k.open("users/alice/closed-before")
        await k.ops.fsync(reader, False)  # fsync of a read-only descriptor: the same promise
        assert blobs.syncs == 3
        await k.close(reader)
        await k.close(fh)
        assert (blobs.puts, blobs.syncs) == ([False, True], 3)  # fsynced and unchanged: nothing to publish
        node = await k.ns.get(await k.ino("users/alice/f"))
        assert node.size == 4  # fsync committed the version, not just the bytes


@pytest.mark.semantics("S-durable-directories")
async def test_fsyncdir_has_nothing_left_to_do(tmp_path: Path) -> None:
    """Every create, rename and unlink was committed to the metadata store before its request was
    answered; fsync of a directory succeeds at once."""
    blobs = CountingBlobs()
    async with kernel(tmp_path, blobs=blobs) as k:
        await k.write_file("users/alice/f", b"")
        await k.rename("users/alice/f", "users/alice/g")
        assert await k.ns.find(await k.ns.get(await k.ino("users/alice")), "g") is not None
        fh = await k.ops.opendir(await k.ino("users/alice"), ctx(ROOT))
        await k.ops.fsyncdir(fh, False)
        await k.ops.releasedir(fh)


@pytest.mark.semantics("S-durable-periodic")
async def test_what_close_published_is_synced_every_five_seconds(tmp_path: Path, mock_clock: trio.testing.MockClock) -> None:
    """As ext4's commit interval bounds a close's exposure: counted on a clock the test moves."""
    blobs = CountingBlobs()
    async with kernel(tmp_path, blobs=blobs, request_timeout=None) as k:
        await k.write_file("users/alice/f", b"closed, not synced")
        assert blobs.syncs == 0
        await trio.testing.wait_all_tasks_blocked()  # the periodic sync is asleep before the clock moves
        for rounds in (1, 2, 3):
            mock_clock.jump(SYNC_SECONDS)
            await trio.testing.wait_all_tasks_blocked()
            assert blobs.syncs == rounds
        assert SYNC_SECONDS == 5.0


@pytest.mark.semantics("S-unmount-staged")
async def test_unmount_syncs_what_was_published_and_discards_what_was_not(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="artifactfs.mount")
    blobs = CountingBlobs()
    async with kernel(tmp_path, blobs=blobs) as k:
        await k.write_file("users/alice/f", b"published")
        fh = await k.open("users/alice/f", os.O_WRONLY)
        await k.ops.write(fh, 0, b"never closed")
        await k.ops.shutdown()
        assert blobs.syncs == 1
        assert "1 file(s) still open with unpublished writes; those writes were discarded" in caplog.text
        node = await k.ns.get(await k.ino("users/alice/f"))
        data = b"".join([c async for c in k.ns.read_chunks(node, MiB, verify=True)])
        assert data == b"published"


@pytest.mark.semantics("S-timeout-eio")
async def test_a_close_gets_a_second_more_per_mib_it_has_to_send(tmp_path: Path) -> None:
    async with kernel(tmp_path) as k:
        await k.directory("users/alice")
        fh, _ = await k.create("users/alice/big")
        await k.ops.write(fh, 0, os.urandom(3 * MiB))
        allowance = k.ops.watchdog._allowance
        assert allowance is not None
        assert [allowance(name, (k.ops, fh)) for name in ("flush", "fsync", "release")] == [3.0] * 3
        assert allowance("read", (k.ops, fh, 0, 4096)) == 0.0
        await k.close(fh)
