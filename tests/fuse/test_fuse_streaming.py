"""Streaming through the mount: bounded memory for huge files, and damage caught on a whole read."""

from __future__ import annotations

import hashlib
import os
import subprocess
from pathlib import Path

import pytest
from mounting import Mount

GiB = 1 << 30
MiB = 1 << 20


def peak_rss(pid: int) -> int:
    """The process's high-water mark of resident memory (VmHWM), in bytes."""
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM in /proc status")


def zeros_sha256(size: int) -> str:
    digest, block = hashlib.sha256(), bytes(MiB)
    for _ in range(size // MiB):
        digest.update(block)
    return digest.hexdigest()


@pytest.mark.slow
def test_a_4_gib_file_streams_through_in_bounded_memory(mount: Mount, alice: Path) -> None:
    size = 4 * GiB
    mount.sh(f"dd if=/dev/zero of=users/alice/huge.bin bs=1M count={size // MiB} status=none")
    assert (alice / "huge.bin").stat().st_size == size
    after_write = peak_rss(mount.process.pid)
    expected = zeros_sha256(size)
    assert os.getxattr(alice / "huge.bin", "user.artifact.sha256").decode() == expected
    subprocess.run("sync; echo 1 > /proc/sys/vm/drop_caches", shell=True, check=True)  # read from the store
    read = mount.sh("sha256sum users/alice/huge.bin").stdout.split()[0]
    assert read == expected
    assert max(after_write, peak_rss(mount.process.pid)) < 200 * MiB, "the mount held a large part of the file"


async def damage_blob(mount: Mount, path: Path, offset: int) -> None:
    """Flip one byte of a file's blob (on disk, or in the bucket), behind the store's back."""
    async with mount.store() as store:
        node = await store.ns.artifact_node(os.getxattr(path, "user.artifact.id").decode())
        assert node.artifact is not None and node.artifact.blob_key is not None
        mount.world.damage_blob(store, node.artifact.blob_key, offset)


@pytest.mark.semantics("S-integrity-eio")
@pytest.mark.parametrize("size", [5000, 3 * MiB + 123])
async def test_a_damaged_artifact_fails_a_whole_read_with_eio(mount_factory, tmp_path: Path, size: int) -> None:
    first = mount_factory("m1", data_dir=tmp_path / "data")
    alice = first.user_dir("alice")
    (alice / "f.bin").write_bytes(os.urandom(size))
    await damage_blob(first, alice / "f.bin", size - 10)
    first.stop()  # a fresh mount: nothing of the file in the kernel's page cache
    second = mount_factory("m2", data_dir=tmp_path / "data", check_log=False)
    done = second.sh("cat users/alice/f.bin > /dev/null", check=False)
    assert done.returncode != 0 and "Input/output error" in done.stderr
