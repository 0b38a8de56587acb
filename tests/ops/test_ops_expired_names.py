"""An expired entry is gone for every operation, not only for lookups and listings.

Expired artifacts stay in the metadata store until collected (the library's
``cleanup_expired_sessions()``, or a quota that needs their room). Until
then they held their names: was, a create, mkdir or symlink of the name of
an expired file answered EEXIST (``File exists`` for a name ``ls`` does not
show), ``rename --no-clobber`` onto it EEXIST, and rmdir of a directory whose
entries had all expired ENOTEMPTY (issue #13), as did a rename of a
directory over it. The tree now collects such an entry when it stands in
the way.
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

import pyfuse3
import pytest
from opskit import ROOT, Kernel, ctx, errno_of, kernel

from core.errors import ArtifactNotFoundError
from core.infra.clock import ManualClock
from core.settings import Limits
from core.tree.namespace import NS

START = 1_700_000_000 * NS


async def expire(k: Kernel, clock: ManualClock, *paths: str) -> None:
    """Give ``paths`` a TTL of one second and let it run out."""
    for path in paths:
        await k.setxattr(path, "user.artifact.ttl", b"1")
    clock.advance(2)
    for path in paths:
        assert await errno_of(k.lookup(path)) == errno.ENOENT


@pytest.mark.semantics("S-expiry-vanish")
async def test_the_name_of_an_expired_file_can_be_used_again(tmp_path: Path) -> None:
    clock = ManualClock(START)
    async with kernel(tmp_path, clock=clock) as k:
        for name in ("f", "d", "l", "n"):
            await k.write_file(f"users/alice/{name}", b"expiring")
        await expire(k, clock, "users/alice/f", "users/alice/d", "users/alice/l", "users/alice/n")
        fh, _ = await k.create("users/alice/f", os.O_WRONLY | os.O_EXCL)
        await k.ops.write(fh, 0, b"a new file by that name")
        await k.close(fh)
        assert await k.read_file("users/alice/f") == b"a new file by that name"
        assert stat.S_ISDIR((await k.mkdir("users/alice/d")).st_mode)
        assert stat.S_ISLNK((await k.symlink("users/alice/l", "f")).st_mode)
        parent = await k.ino("users/alice")
        assert stat.S_ISREG((await k.ops.mknod(parent, b"n", stat.S_IFREG | 0o644, 0, ctx(ROOT))).st_mode)
        assert await k.listdir("users/alice") == [".", "..", "d", "f", "l", "n"]


@pytest.mark.semantics("S-expiry-vanish")
async def test_a_directory_whose_entries_all_expired_is_empty(tmp_path: Path) -> None:
    clock = ManualClock(START)
    async with kernel(tmp_path, clock=clock) as k:
        await k.write_file("users/alice/d/a", b"a")
        await k.write_file("users/alice/d/b", b"b")
        await k.write_file("users/alice/e/c", b"c")
        await k.mkdir("users/alice/src")
        await expire(k, clock, "users/alice/d/a", "users/alice/d/b", "users/alice/e/c")
        assert await k.listdir("users/alice/d") == [".", ".."]
        await k.rmdir("users/alice/d")
        await k.rename("users/alice/src", "users/alice/e")  # over a directory that is empty now
        assert await k.listdir("users/alice") == [".", "..", "e"]


@pytest.mark.semantics("S-expiry-vanish")
async def test_a_directory_with_a_live_entry_left_is_still_not_empty(tmp_path: Path) -> None:
    clock = ManualClock(START)
    async with kernel(tmp_path, clock=clock) as k:
        await k.write_file("users/alice/d/gone", b"")
        await k.write_file("users/alice/d/live", b"")
        await expire(k, clock, "users/alice/d/gone")
        assert await errno_of(k.rmdir("users/alice/d")) == errno.ENOTEMPTY
        assert await k.listdir("users/alice/d") == [".", "..", "live"]


@pytest.mark.semantics("S-expiry-vanish", "S-rename-noreplace")
async def test_rename_noreplace_onto_an_expired_name_succeeds(tmp_path: Path) -> None:
    clock = ManualClock(START)
    async with kernel(tmp_path, clock=clock) as k:
        await k.write_file("users/alice/old", b"expiring")
        await k.write_file("users/alice/new", b"fresh")
        await expire(k, clock, "users/alice/old")
        await k.rename("users/alice/new", "users/alice/old", pyfuse3.RENAME_NOREPLACE)
        assert await k.read_file("users/alice/old") == b"fresh"


@pytest.mark.semantics("S-expiry-vanish", "S-limit-quota")
async def test_an_expired_file_collected_for_its_name_gives_back_its_room(tmp_path: Path) -> None:
    clock = ManualClock(START)
    async with kernel(tmp_path, clock=clock, limits=Limits(user_quota_files=1)) as k:
        await k.write_file("users/alice/f", b"expiring")
        node = await k.ns.get(await k.ino("users/alice/f"))
        await expire(k, clock, "users/alice/f")
        await k.write_file("users/alice/f", b"again")  # the one file the quota allows
        assert node.artifact is not None and node.artifact.blob_key is not None
        await k.ns.collect_garbage(now_ns=2**62)  # once its grace period is over (issue #16) ...
        with pytest.raises(ArtifactNotFoundError):  # ... the expired version's bytes are gone with it
            await k.ns.blobs.reader(node.artifact.blob_key)
