"""A scope directory as a container volume, the way ``docker run -v`` uses one.

A container runtime bind-mounts the host directory into the container's
own, private mount namespace. These tests do exactly that with
``unshare -m --propagation private`` and ``mount --bind``, run ordinary
tools inside, and check what they left through the mount and the library.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
from pathlib import Path

from mounting import Mount, is_mounted
from uidkit import ALICE, BOB, as_uid, shared_mount
from worlds import StoreWorld


def in_namespace(script: str, **kwargs) -> subprocess.CompletedProcess:
    """Run ``script`` with sh in a new private mount namespace; the mounts it makes die with it."""
    return subprocess.run(
        ["unshare", "-m", "--propagation", "private", "sh", "-euc", script],
        capture_output=True, text=True, check=False, **kwargs,
    )


async def test_a_bind_mounted_scope_is_a_working_volume(mount: Mount, alice: Path, tmp_path: Path) -> None:
    (alice / "input.txt").write_text("from the host\n")
    (alice / "old.log").write_text("stale")
    volume = tmp_path / "container-data"
    volume.mkdir()
    done = in_namespace(f"""
        mount --bind {alice} {volume}
        findmnt -n -o FSTYPE --target {volume}
        cd {volume}
        cat input.txt
        mkdir -p out/logs
        seq 1 5000 > out/numbers.txt
        head -c 3000000 /dev/urandom > out/blob.bin
        sha256sum out/blob.bin | cut -d' ' -f1 > out/blob.sha
        cp input.txt out/copy.txt && mv out/copy.txt out/logs/moved.txt
        echo appended >> out/logs/moved.txt
        rm old.log
        ln -s out/numbers.txt latest
        wc -l < latest
        tar -cf - out | tar -tf - | sort | tr '\\n' ' '
    """)
    assert done.returncode == 0, done.stderr
    fstype, read, lines, listing = done.stdout.splitlines()
    assert fstype == "fuse.artifactfs"
    assert (read, lines) == ("from the host", "5000")
    assert listing.split() == sorted(
        ["out/", "out/logs/", "out/logs/moved.txt", "out/numbers.txt", "out/blob.bin", "out/blob.sha"]
    )

    # the bind mount lived only in the container's namespace
    assert not is_mounted(volume) and os.listdir(volume) == []
    # what the container wrote is in the mount ...
    assert sorted(os.listdir(alice)) == ["input.txt", "latest", "out"]
    assert (alice / "out/logs/moved.txt").read_text() == "from the host\nappended\n"
    blob_sha = (alice / "out/blob.sha").read_text().strip()
    assert hashlib.sha256((alice / "out/blob.bin").read_bytes()).hexdigest() == blob_sha
    # ... and artifacts in the library, with names, digests and types
    async with mount.store() as store:
        found = {a.filename: a for a in await store.search(user_id="alice")}
        assert sorted(found) == ["input.txt", "out/blob.bin", "out/blob.sha", "out/logs/moved.txt", "out/numbers.txt"]
        assert found["out/blob.bin"].sha256 == blob_sha and found["out/blob.bin"].bytes == 3_000_000
        assert await store.read_file(found["out/numbers.txt"].artifact_id) == b"".join(
            f"{i}\n".encode() for i in range(1, 5001)
        )
        assert found["out/numbers.txt"].mime == "text/plain"


def test_a_read_only_volume_refuses_writes(mount: Mount, alice: Path, tmp_path: Path) -> None:
    """``-v host:/data:ro``: a read-only bind of the scope."""
    (alice / "config.json").write_text('{"k": 1}')
    volume = tmp_path / "ro"
    volume.mkdir()
    done = in_namespace(f"""
        mount --bind {alice} {volume}
        mount -o remount,bind,ro {volume}
        cat {volume}/config.json; echo
        if echo x > {volume}/new.txt 2>/dev/null; then echo wrote; else echo refused; fi
        if rm {volume}/config.json 2>/dev/null; then echo removed; else echo refused; fi
    """)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ['{"k":', "1}", "refused", "refused"]
    assert os.listdir(alice) == ["config.json"]


def test_a_volume_used_by_a_container_running_as_a_mapped_uid(tmp_path: Path, world: StoreWorld) -> None:
    """``docker run --user 5101 -v <mount>/users/alice:/data``: the container's uid is alice."""
    with shared_mount(tmp_path / "data", world) as mount:
        (mount / "users/alice").mkdir()
        (mount / "users/bob").mkdir()
        volume, elsewhere = mount.mountpoint.parent / "alice-data", mount.mountpoint.parent / "bob-data"
        volume.mkdir()  # next to the mount: a directory every uid can reach
        elsewhere.mkdir()
        done = in_namespace(f"""
            mount --bind {mount / "users/alice"} {volume}
            mount --bind {mount / "users/bob"} {elsewhere}
            setpriv --reuid={ALICE} --regid={ALICE} --clear-groups sh -c '
                echo result > {volume}/result.txt && mkdir {volume}/d && cat {volume}/result.txt
                if ls {elsewhere} 2>/dev/null; then echo bob-readable; else echo bob-refused; fi'
        """)
        assert done.returncode == 0, done.stderr
        assert done.stdout.split() == ["result", "bob-refused"]
        assert (mount / "users/alice/result.txt").read_text() == "result\n"
        assert (mount / "users/alice/result.txt").stat().st_uid == ALICE
        assert as_uid(BOB, "cat", str(mount / "users/alice/result.txt")).returncode != 0
