"""Publishing without waiting for stable storage, and making it durable later (the mount's close/fsync)."""

import errno
import os
import threading
from pathlib import Path

import anyio.to_thread
import pytest
import trio
import trio.testing

from core.backends.blobs.filesystem import FilesystemBlobStore
from core.errors import ProviderError


@pytest.mark.semantics("S-durable-close", "S-durable-periodic")
async def test_non_durable_put_is_visible_at_once_and_sync_settles_it(tmp_path: Path) -> None:
    blobs = FilesystemBlobStore(tmp_path)
    await blobs.open()
    await blobs.put("grid/a/shared/x.v1", b"first", durable=False)
    await blobs.put("grid/a/shared/y.v1", b"second", durable=False)
    reader = await blobs.reader("grid/a/shared/x.v1")
    assert await reader.read(0, 100) == b"first"  # atomic publish: whole at once, before any sync
    await reader.close()
    assert sorted(Path(p).name for p in blobs._unsynced) == ["x.v1", "y.v1"]

    await blobs.delete("grid/a/shared/y.v1")  # gone before the sync: nothing to make durable
    await blobs.sync()
    assert blobs._unsynced == []
    await blobs.sync()  # nothing pending: a no-op


@pytest.mark.semantics("S-durable-fsync")
async def test_durable_put_leaves_nothing_pending(tmp_path: Path) -> None:
    blobs = FilesystemBlobStore(tmp_path)
    await blobs.open()
    spool = tmp_path / "spool"
    spool.write_bytes(b"spooled")
    await blobs.put("grid/a/shared/z.v1", b"data")
    await blobs.put_file("grid/a/shared/w.v1", spool)
    assert blobs._unsynced == []
    await blobs.put_file("grid/a/shared/v.v1", _spool(tmp_path), durable=False)
    assert [Path(p).name for p in blobs._unsynced] == ["v.v1"]


def _spool(tmp_path: Path) -> Path:
    path = tmp_path / "spool2"
    path.write_bytes(b"more")
    return path


@pytest.mark.semantics("S-durable-close", "S-durable-fsync")
async def test_a_small_non_durable_put_into_a_known_directory_takes_no_thread_and_sync_still_fsyncs_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The mount's close of a small file writes on the event loop; what sync() fsyncs is unchanged."""
    blobs = FilesystemBlobStore(tmp_path)
    await blobs.open()
    await blobs.put("grid/a/shared/first.v1", b"makes the directory", durable=False)  # a worker makes grid/a/shared
    hops: list[object] = []
    real_run_sync = anyio.to_thread.run_sync

    async def counted(fn: object, *args: object, **kwargs: object) -> object:
        hops.append(fn)
        return await real_run_sync(fn, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(anyio.to_thread, "run_sync", counted)
    await blobs.put("grid/a/shared/small.v1", b"x" * 4096, durable=False)
    assert hops == []  # before: one hop to a worker thread per close
    assert (tmp_path / "blobs/grid/a/shared/small.v1").read_bytes() == b"x" * 4096
    assert list((tmp_path / "staging").iterdir()) == []
    await blobs.put("grid/a/shared/big.v1", b"x" * (64 * 1024 + 1), durable=False)  # larger ones: a worker
    await blobs.put("grid/a/shared/durable.v1", b"x", durable=True)  # an fsync to wait for: a worker
    await blobs.put("grid/a/other/new.v1", b"x", durable=False)  # a directory to make: a worker
    assert len(hops) == 3

    fsynced: list[str] = []
    monkeypatch.setattr("core.backends.blobs.filesystem._fsync_file", lambda path: fsynced.append(str(path)))
    await blobs.sync()
    assert sorted(Path(p).name for p in fsynced) == ["big.v1", "first.v1", "new.v1", "small.v1"]


async def test_a_small_put_into_a_directory_removed_behind_the_store_makes_it_again(tmp_path: Path) -> None:
    blobs = FilesystemBlobStore(tmp_path)
    await blobs.open()
    await blobs.put("grid/a/shared/first.v1", b"one", durable=False)
    for leftover in (tmp_path / "blobs/grid/a/shared").iterdir():
        leftover.unlink()
    (tmp_path / "blobs/grid/a/shared").rmdir()
    await blobs.put("grid/a/shared/second.v1", b"two", durable=False)
    assert (tmp_path / "blobs/grid/a/shared/second.v1").read_bytes() == b"two"
    assert list((tmp_path / "staging").iterdir()) == []


@pytest.mark.semantics("S-durable-periodic", "S-durable-fsync")
async def test_sync_fsyncs_the_blobs_published_meanwhile_together(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The fsyncs of one sync run at once, so their journal commits merge: all of them are in
    flight together before any returns (one after the other, the barrier is never reached)."""
    blobs = FilesystemBlobStore(tmp_path)
    await blobs.open()
    names = [f"f{i}.v1" for i in range(8)]
    for name in names:
        await blobs.put(f"grid/a/shared/{name}", b"x", durable=False)
    await blobs.delete("grid/a/shared/f0.v1")  # gone before the sync: skipped, and still counted as arrived
    together = threading.Barrier(len(names), timeout=60)
    fsynced: list[str] = []

    def fsync_file(path: str) -> None:
        if not os.path.exists(path):
            together.wait()
            raise FileNotFoundError(path)
        together.wait()
        fsynced.append(Path(path).name)

    monkeypatch.setattr("core.backends.blobs.filesystem._fsync_file", fsync_file)
    await blobs.sync()
    assert sorted(fsynced) == names[1:]
    assert blobs._unsynced == []
    await blobs.close()


@pytest.mark.semantics("S-durable-fsync")
async def test_a_sync_during_a_running_one_returns_only_once_the_earlier_blobs_are_fsynced(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The periodic sync has taken the list and is fsyncing; an fsync() arriving then finds the list
    empty, yet must not return before those earlier closes' blobs are on disk."""
    blobs = FilesystemBlobStore(tmp_path)
    await blobs.open()
    await blobs.put("grid/a/shared/early.v1", b"x", durable=False)
    entered, release = threading.Event(), threading.Event()
    order: list[str] = []

    def fsync_file(path: str) -> None:
        entered.set()
        assert release.wait(timeout=60)
        order.append(f"fsynced {Path(path).name}")

    monkeypatch.setattr("core.backends.blobs.filesystem._fsync_file", fsync_file)

    async def second() -> None:
        await blobs.sync()
        order.append("second sync returned")

    async with trio.open_nursery() as nursery:
        nursery.start_soon(blobs.sync)  # the periodic one
        await trio.to_thread.run_sync(entered.wait)
        nursery.start_soon(second)
        await trio.testing.wait_all_tasks_blocked()  # the second has returned, or waits
        order.append("released")
        release.set()
    assert order == ["released", "fsynced early.v1", "second sync returned"], order
    await blobs.close()


@pytest.mark.semantics("S-durable-periodic")
async def test_a_failed_sync_keeps_its_blobs_for_the_next(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An fsync that fails (EIO) leaves the blob pending: the periodic loop's retry fsyncs it."""
    blobs = FilesystemBlobStore(tmp_path)
    await blobs.open()
    await blobs.put("grid/a/shared/one.v1", b"x", durable=False)
    attempts: list[str] = []

    def fsync_file(path: str) -> None:
        attempts.append(Path(path).name)
        if len(attempts) == 1:
            raise OSError(errno.EIO, "I/O error", path)

    monkeypatch.setattr("core.backends.blobs.filesystem._fsync_file", fsync_file)
    with pytest.raises(ProviderError):
        await blobs.sync()
    await blobs.sync()
    assert attempts == ["one.v1", "one.v1"]
    assert blobs._unsynced == []
    await blobs.sync()  # nothing left: no fsync
    assert attempts == ["one.v1", "one.v1"]
    await blobs.close()
