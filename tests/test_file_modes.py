"""The data dir is its owner's alone, whatever the umask (issue #16).

It holds the signing key, the metadata and every blob: a world-readable
database or blob is every artifact readable by every local user.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
from storekit import make_store

from core.infra.clock import ManualClock
from core import Limits


@pytest.fixture
def umask_022() -> Iterator[None]:
    old = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(old)


def modes(root: Path) -> dict[str, int]:
    found = {".": stat.S_IMODE(root.stat().st_mode)}
    for path in root.rglob("*"):
        found[str(path.relative_to(root))] = stat.S_IMODE(path.lstat().st_mode)
    return found


def assert_private(root: Path) -> None:
    seen = modes(root)
    opened = {name: oct(mode) for name, mode in seen.items() if mode & 0o077}
    assert opened == {}, f"readable or writable by others: {opened}"
    assert seen["."] == 0o700
    for name in ("meta.sqlite3", "meta.sqlite3-wal", "meta.sqlite3-shm", "signing.key"):
        assert seen[name] == 0o600, name


async def fill(root: Path, clock: ManualClock, limits: Limits) -> None:
    async with make_store("fs-sqlite", root, clock, limits) as store:
        session_id = await store.create_session(user_id="alice")
        await store.store(b"secret", filename="a/b/secret.txt", session_id=session_id, user_id="alice")
        await store.presign_upload(session_id, filename="later.bin", user_id="alice")
        assert_private(root)  # while open: -wal and -shm exist now


@pytest.mark.semantics("S-trust-modes")
async def test_a_new_data_dir_is_owner_only_under_umask_022(
    umask_022: None, tmp_path: Path, clock: ManualClock, limits: Limits
) -> None:
    root = tmp_path / "data"
    await fill(root, clock, limits)
    assert any(name.startswith("uploads") for name in modes(root)), "the presigned upload left no registry to check"


@pytest.mark.semantics("S-trust-modes")
async def test_an_open_data_dir_left_readable_is_closed_on_open(
    umask_022: None, tmp_path: Path, clock: ManualClock, limits: Limits
) -> None:
    root = tmp_path / "data"
    await fill(root, clock, limits)
    os.chmod(root, 0o755)
    os.chmod(root / "meta.sqlite3", 0o644)
    os.chmod(root / "blobs", 0o755)
    await fill(root, clock, limits)
