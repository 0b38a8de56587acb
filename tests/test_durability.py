"""Publishing without waiting for stable storage, and making it durable later (the mount's close/fsync)."""

from pathlib import Path

import pytest

from core.backends.blobs.filesystem import FilesystemBlobStore


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
