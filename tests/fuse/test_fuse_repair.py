"""``fsck --repair`` beside a running mount: what it rehomes shows up in the mount (issue #11)."""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

import pytest
from mounting import Mount, artifactfs, wait_for


@pytest.mark.embedded_only("the damage is done to the data dir's SQLite file")
@pytest.mark.semantics("S-fsck")
def test_repair_beside_a_mount_puts_orphans_in_lost_and_found(mount: Mount, alice: Path) -> None:
    (alice / "dir" / "sub").mkdir(parents=True)
    (alice / "dir" / "sub" / "deep.txt").write_bytes(b"deep bytes")
    (alice / "dir" / "side.txt").write_bytes(b"side bytes")
    lost, sub, side = os.stat(alice / "dir").st_ino, os.stat(alice / "dir" / "sub").st_ino, \
        os.stat(alice / "dir" / "side.txt").st_ino
    with sqlite3.connect(mount.data_dir / "meta.sqlite3") as db:  # the directory's record is lost
        db.execute("DELETE FROM node WHERE ino = ?", (lost,))
    env = mount.world.mount_env(mount.data_dir)

    done = artifactfs("fsck", "--repair", "--data-dir", mount.data_dir, env=env, timeout=120)
    assert done.returncode == 1, done.stdout + done.stderr
    assert f"app/user/alice/sub: orphan: inode {sub}:" in done.stdout, done.stdout
    assert f"[repaired: moved to lost+found/#{side}-side.txt]" in done.stdout

    found = alice / "lost+found"
    wait_for(lambda: found.is_dir() and len(os.listdir(found)) == 2, 60, "lost+found in the mount")
    assert sorted(os.listdir(found)) == [f"#{side}-side.txt", f"#{sub}-sub"]
    assert (found / f"#{sub}-sub" / "deep.txt").read_bytes() == b"deep bytes"
    assert (found / f"#{side}-side.txt").read_bytes() == b"side bytes"
    again = artifactfs("fsck", "--data-dir", mount.data_dir, env=env, timeout=120)
    assert again.returncode == 0, again.stdout
