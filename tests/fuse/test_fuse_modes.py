"""A mount's data dir is its owner's alone, whatever the umask it was started under (issue #16)."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest


@pytest.mark.semantics("S-trust-modes")
@pytest.mark.embedded_only("the data dir holds the database and blobs only in the embedded world")
def test_a_mounts_data_dir_is_owner_only_under_umask_022(mount_factory, tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    old = os.umask(0o022)  # the mount process inherits it
    try:
        mount = mount_factory(data_dir=data_dir)
    finally:
        os.umask(old)
    (mount.user_dir("alice") / "secret.txt").write_bytes(b"secret")
    with open(mount.user_dir("alice") / "secret.txt", "rb") as f:
        assert f.read() == b"secret"
    mount.stop()
    opened = {
        str(path.relative_to(data_dir)): oct(stat.S_IMODE(path.lstat().st_mode))
        for path in [data_dir, *data_dir.rglob("*")]
        if stat.S_IMODE(path.lstat().st_mode) & 0o077 and not path.is_symlink()
    }
    assert opened == {}, f"readable or writable by others: {opened}"
    assert stat.S_IMODE((data_dir / "meta.sqlite3").stat().st_mode) == 0o600
