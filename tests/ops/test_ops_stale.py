"""A descriptor whose version another face of the store replaced: ESTALE, never EIO or ENOENT.

Another mount, or the library on the same data dir, commits a new version
of a file that this mount has open, and the old version's blob goes. The
descriptor's next read or write cannot be served from the version it was
opened at: as over NFS, that is a stale handle (ESTALE), and the next open
reads the new version. It is not damage: EIO (and an ERROR in the log saying
the blob is corrupted) would send an operator hunting for a broken disk.

Was, on the embedded default (whose blob reader opens the blob file at once):
a first read after the replace answered EIO and logged "ArtifactCorruptedError:
the blob of inode N is missing"; on every backend, a first write into the
middle of the file answered ENOENT. On S3, whose reader sends nothing before
its first read, the same read was already ESTALE.
"""

from __future__ import annotations

import errno
import logging
import os
from pathlib import Path

import pytest
from opskit import errno_of, kernel
from storekit import commit_bytes

from core.backends.blobs.base import BlobStore
from core.backends.blobs.filesystem import FilesystemBlobStore
from core.backends.blobs.memory import MemoryBlobStore
from core.tree.namespace import Namespace


def blob_store(kind: str, root: Path) -> BlobStore:
    return FilesystemBlobStore(root / "data") if kind == "filesystem" else MemoryBlobStore()


BLOBS = ["filesystem", "memory"]


async def past_the_grace_period(ns: Namespace) -> None:
    """gc as it runs once the replaced version's grace period is over (issue #16): its blob goes."""
    assert await ns.collect_garbage(now_ns=2**62) >= 1


@pytest.mark.semantics("S-grace-read")
@pytest.mark.parametrize("blobs", BLOBS)
async def test_a_descriptor_reads_the_version_it_opened_until_the_grace_period_ends(
    tmp_path: Path, blobs: str
) -> None:
    """Another face replaces the file this descriptor opened: within the grace period the old blob
    is still there, and the descriptor reads its version whole. Was: ESTALE at once (the replacing
    commit deleted the blob), or EIO on the embedded default before that."""
    async with kernel(tmp_path, blobs=blob_store(blobs, tmp_path)) as k:
        ino = await k.write_file("users/alice/f", b"old" * 1000)
        fh = await k.open("users/alice/f")
        await commit_bytes(k.ns, ino, b"new" * 1000)
        assert await k.read(fh, 0, 4096) == b"old" * 1000
        await k.ops.release(fh)
        fh = await k.open("users/alice/f")  # a later open: the new version
        assert await k.read(fh, 0, 4096) == b"new" * 1000
        await k.ops.release(fh)


@pytest.mark.semantics("S-consistency-stale")
@pytest.mark.parametrize("blobs", BLOBS)
async def test_a_first_read_after_another_face_replaced_the_file_is_estale(
    tmp_path: Path, blobs: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="artifactfs.mount")
    async with kernel(tmp_path, blobs=blob_store(blobs, tmp_path)) as k:
        ino = await k.write_file("users/alice/f", b"old" * 1000)
        fh = await k.open("users/alice/f")  # opened, nothing read yet
        await commit_bytes(k.ns, ino, b"new" * 1000)  # the library, or another mount
        await past_the_grace_period(k.ns)
        assert await errno_of(k.read(fh, 0, 4096)) == errno.ESTALE
        await k.ops.release(fh)
        assert await k.read_file("users/alice/f") == b"new" * 1000  # the next open: the new version
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], caplog.text


@pytest.mark.semantics("S-consistency-stale")
@pytest.mark.parametrize("blobs", BLOBS)
async def test_a_first_write_after_another_face_replaced_the_file_is_estale(
    tmp_path: Path, blobs: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A write into the middle needs the bytes around it, of the version the descriptor opened: gone."""
    caplog.set_level(logging.INFO, logger="artifactfs.mount")
    async with kernel(tmp_path, blobs=blob_store(blobs, tmp_path)) as k:
        ino = await k.write_file("users/alice/f", b"old" * 1000)
        fh = await k.open("users/alice/f", os.O_RDWR)
        await commit_bytes(k.ns, ino, b"new" * 1000)
        await past_the_grace_period(k.ns)
        assert await errno_of(k.ops.write(fh, 10, b"xx")) == errno.ESTALE
        await k.close(fh)
        assert await k.read_file("users/alice/f") == b"new" * 1000  # nothing of the failed write
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], caplog.text


@pytest.mark.semantics("S-integrity-eio")
@pytest.mark.parametrize("blobs", BLOBS)
async def test_a_blob_missing_under_its_own_record_is_still_eio(tmp_path: Path, blobs: str) -> None:
    """The other side of the line: the store still names the blob, so its loss is damage."""
    store = blob_store(blobs, tmp_path)
    async with kernel(tmp_path, blobs=store) as k:
        ino = await k.write_file("users/alice/f", b"old" * 1000)
        node = await k.ns.get(ino)
        assert node.artifact is not None and node.artifact.blob_key is not None
        await store.delete(node.artifact.blob_key)  # lost behind the store's back
        fh = await k.open("users/alice/f", os.O_RDWR)
        assert await errno_of(k.read(fh, 0, 10)) == errno.EIO
        assert await errno_of(k.ops.write(fh, 10, b"xx")) == errno.EIO
        await k.ops.release(fh)


@pytest.mark.semantics("S-unlink-open")
@pytest.mark.parametrize("lost", ["replaced elsewhere", "damaged"])
async def test_rm_of_an_open_file_whose_bytes_are_gone_still_removes_it(tmp_path: Path, lost: str) -> None:
    """Removing a file open here first copies its bytes for the descriptors; with those bytes gone
    there is nothing to copy, and the name must go all the same. Was: unlink (and a rename over the
    file) failed with ENOENT, or EIO, and the file stayed."""
    async with kernel(tmp_path) as k:
        for name in ("f", "g"):
            ino = await k.write_file(f"users/alice/{name}", b"old" * 1000)
            fh = await k.open(f"users/alice/{name}")
            if lost == "damaged":
                node = await k.ns.get(ino)
                assert node.artifact is not None and node.artifact.blob_key is not None
                await k.ns.blobs.delete(node.artifact.blob_key)
            else:
                await commit_bytes(k.ns, ino, b"new" * 1000)
                await past_the_grace_period(k.ns)
            if name == "f":
                await k.unlink("users/alice/f")
            else:
                await k.write_file("users/alice/h", b"replacement")
                await k.rename("users/alice/h", "users/alice/g")
            assert await errno_of(k.read(fh, 0, 10)) == errno.ESTALE
            await k.ops.release(fh)
        assert await k.listdir("users/alice") == [".", "..", "g"]
        assert await k.read_file("users/alice/g") == b"replacement"
