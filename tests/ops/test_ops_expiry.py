"""Expiry through the handlers, on a clock the test moves (nothing waits for a TTL).

Session artifacts get the default TTL (900 s); user and shared ones live
until given one (``user.artifact.ttl``). A session lives at least as long as
the artifacts in it. Once expired, an entry is gone for every lookup,
listing and open at once; the kernel may answer a ``stat`` of a path it
cached for no longer than the time that entry had left when it cached it.
"""

from __future__ import annotations

import errno
from pathlib import Path

import pytest
from opskit import ROOT, ctx, errno_of, kernel

from core.infra.clock import ManualClock
from core.tree.namespace import NS

START = 1_700_000_000 * NS


@pytest.mark.semantics("S-expiry-ttl")
async def test_session_files_get_the_default_ttl_and_user_files_none(tmp_path: Path) -> None:
    async with kernel(tmp_path, clock=ManualClock(START)) as k:
        await k.write_file("sessions/s1/out.csv", b"a,b\n")
        await k.write_file("users/alice/kept.txt", b"kept")
        await k.write_file("shared/kept.txt", b"kept")
        assert await k.getxattr("sessions/s1/out.csv", "user.artifact.ttl") == b"900"
        for path in ("users/alice/kept.txt", "shared/kept.txt"):
            assert await k.getxattr(path, "user.artifact.ttl") == b""


@pytest.mark.semantics("S-expiry-vanish")
async def test_an_expired_session_is_gone_for_every_operation_at_once(tmp_path: Path) -> None:
    clock = ManualClock(START)
    async with kernel(tmp_path, clock=clock) as k:
        await k.write_file("sessions/s1/out/deep.txt", b"deep")
        held = await k.ino("sessions/s1/out/deep.txt")  # the kernel holds this inode
        await k.write_file("users/alice/forever.txt", b"no ttl")
        clock.advance(901)
        assert await k.listdir("sessions") == [".", ".."]
        assert await errno_of(k.lookup("sessions/s1")) == errno.ENOENT
        assert await errno_of(k.ops.getattr(held, ctx(ROOT))) == errno.ESTALE  # look the name up again: ENOENT
        assert await errno_of(k.ops.open(held, 0, ctx(ROOT))) == errno.ESTALE
        assert await k.read_file("users/alice/forever.txt") == b"no ttl"


@pytest.mark.semantics("S-expiry-vanish")
async def test_a_file_given_a_short_ttl_vanishes_from_its_directory(tmp_path: Path) -> None:
    clock = ManualClock(START)
    async with kernel(tmp_path, clock=clock) as k:
        await k.write_file("users/alice/brief.txt", b"brief")
        await k.write_file("users/alice/normal.txt", b"normal")
        await k.setxattr("users/alice/brief.txt", "user.artifact.ttl", b"10")
        clock.advance(9)
        assert (await k.lookup("users/alice/brief.txt")).entry_timeout == pytest.approx(1.0)
        clock.advance(2)
        assert await k.listdir("users/alice") == [".", "..", "normal.txt"]
        assert await errno_of(k.lookup("users/alice/brief.txt")) == errno.ENOENT


@pytest.mark.semantics("S-expiry-vanish", "S-consistency-cache")
async def test_the_kernel_caches_an_entry_no_longer_than_it_has_left(tmp_path: Path) -> None:
    clock = ManualClock(START)
    async with kernel(tmp_path, clock=clock) as k:
        await k.write_file("sessions/s1/f", b"f")
        clock.advance(898)
        attr = await k.lookup("sessions/s1/f")
        assert attr.attr_timeout == attr.entry_timeout == pytest.approx(2.0)
        clock.advance(2)
        assert await errno_of(k.lookup("sessions/s1/f")) == errno.ENOENT


@pytest.mark.semantics("S-expiry-session")
async def test_a_session_lives_as_long_as_its_longest_artifact(tmp_path: Path) -> None:
    clock = ManualClock(START)
    async with kernel(tmp_path, clock=clock) as k:
        await k.write_file("sessions/s2/short.txt", b"default ttl")
        await k.write_file("sessions/s2/long.txt", b"an hour")
        await k.setxattr("sessions/s2/long.txt", "user.artifact.ttl", b"3600")
        clock.advance(901)
        assert await k.listdir("sessions/s2") == [".", "..", "long.txt"]
        assert await k.read_file("sessions/s2/long.txt") == b"an hour"
        clock.advance(2700)
        assert await k.listdir("sessions") == [".", ".."]


@pytest.mark.semantics("S-expiry-session")
async def test_an_expired_sessions_name_makes_a_new_empty_session(tmp_path: Path) -> None:
    clock = ManualClock(START)
    async with kernel(tmp_path, clock=clock) as k:
        old = await k.write_file("sessions/s1/f", b"old")
        clock.advance(901)
        await k.mkdir("sessions/s1")
        assert await k.listdir("sessions/s1") == [".", ".."]
        await k.write_file("sessions/s1/f", b"new")
        assert await k.ino("sessions/s1/f") != old
        assert await k.read_file("sessions/s1/f") == b"new"


@pytest.mark.semantics("S-expiry-collect")
async def test_the_mount_reaps_expired_entries_itself(tmp_path: Path) -> None:
    """Regression (issue #11): expired bytes stayed stored until a library process happened to
    call cleanup_expired_sessions(); the mount's own background sweep removes them now."""
    clock = ManualClock(START)
    async with kernel(tmp_path, clock=clock) as k:
        await k.write_file("sessions/s1/out/deep.txt", b"deep")
        await k.write_file("users/alice/forever.txt", b"no ttl")
        expired = await k.ns.meta.find_artifact((await k.getxattr("sessions/s1/out/deep.txt", "user.artifact.id")).decode())
        assert expired is not None and expired.artifact is not None
        clock.advance(901)
        await k.ops.collect_once()
        assert await k.ns.meta.get(expired.ino) is None  # the record, not just hidden
        assert expired.artifact.blob_key in await k.ns.meta.pending_deletions()  # its bytes wait out the grace period
        assert await k.read_file("users/alice/forever.txt") == b"no ttl"
        clock.advance(k.ns.limits.blob_grace + 1)
        await k.ops.collect_once()
        assert await k.ns.meta.pending_deletions() == []
