"""Expiry seen through a running mount, with the mount's clock moved by the test (no waiting for TTLs).

The mount runs through ``clocked_mount.py``, which hands the real command an
``OffsetFileClock``: the test writes an offset in seconds into a file, and
the mount's time moves. Listings and opens always ask the store, so they change the
moment the clock moves. A ``stat`` of a path the kernel looked up before may
be answered from its entry cache, which lives in real time: for at most the
mount's cache lifetime (``fusefs.attrs.CACHE_SECONDS``).
"""

from __future__ import annotations

import errno
import os
import time
from pathlib import Path

import pytest
from mounting import Mount, start_mount, wait_for
from worlds import StoreWorld

from core import ArtifactStore
from core.infra.clock import ManualClock
from fusefs.attrs import CACHE_SECONDS

CLOCKED_MOUNT = Path(__file__).with_name("clocked_mount.py")


class MovableClock:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.offset = 0.0
        path.write_text("0")

    def advance(self, seconds: float) -> None:
        self.offset += seconds
        self.path.write_text(repr(self.offset))
        os.utime(self.path, ns=(time.time_ns(), time.time_ns() + int(self.offset * 1e9)))  # a new mtime, surely

    def library(self, mount: Mount) -> ArtifactStore:
        """The library on the same data dir, at the mount's time."""
        return mount.store(clock=ManualClock(time.time_ns() + int(self.offset * 1e9)))


@pytest.fixture
def mount_clock(tmp_path: Path) -> MovableClock:
    return MovableClock(tmp_path / "clock")


@pytest.fixture
def timed_mount(tmp_path: Path, mount_clock: MovableClock, world: StoreWorld):
    mount = start_mount(
        tmp_path / "mnt", tmp_path / "data", world=world, program=(str(CLOCKED_MOUNT), str(mount_clock.path)),
    )
    try:
        yield mount
    finally:
        mount.stop()


def errno_of(action, *args) -> int | None:
    try:
        action(*args)
    except OSError as exc:
        return exc.errno
    return None


@pytest.mark.semantics("S-expiry-vanish", "S-expiry-session")
async def test_a_session_written_through_the_mount_expires_everywhere(
    timed_mount: Mount, mount_clock: MovableClock
) -> None:
    m = timed_mount
    s1, s2 = m / "sessions/s1", m / "sessions/s2"
    (s1 / "out").mkdir(parents=True)
    for name in ("looked-up.txt", "never-looked-up.txt", "out/deep.txt"):
        (s1 / name).write_text(name)
    s2.mkdir()
    (s2 / "long.txt").write_text("an hour")
    os.setxattr(s2 / "long.txt", "user.artifact.ttl", b"3600")
    (m / "users/alice").mkdir()
    (m / "users/alice/forever.txt").write_text("no ttl")
    assert os.stat(s1 / "looked-up.txt").st_size == len("looked-up.txt")  # now in the kernel's entry cache
    assert int(os.getxattr(s1 / "looked-up.txt", "user.artifact.ttl")) <= 900  # the default session TTL

    mount_clock.advance(901)
    # listings and opens ask the mount: at once
    assert sorted(os.listdir(m / "sessions")) == ["s2"]
    assert errno_of(os.listdir, s1) == errno.ENOENT
    assert errno_of(open, s1 / "looked-up.txt") == errno.ENOENT
    assert errno_of(os.stat, s1 / "never-looked-up.txt") == errno.ENOENT
    assert errno_of(os.stat, s1 / "out/deep.txt") == errno.ENOENT
    # a path the kernel holds: within its cache lifetime
    wait_for(lambda: errno_of(os.stat, s1 / "looked-up.txt") == errno.ENOENT, CACHE_SECONDS + 5,
             "the cached entry to expire")
    # what lives longer is untouched
    assert os.listdir(s2) == ["long.txt"] and (s2 / "long.txt").read_text() == "an hour"
    assert (m / "users/alice/forever.txt").read_text() == "no ttl"
    async with mount_clock.library(m) as store:
        assert await store.list_by_session("s1") == []
        [long] = await store.list_by_session("s2")
        assert long.filename == "long.txt"

    # the expired session's name can be used again: a new, empty session
    s1.mkdir()
    assert os.listdir(s1) == []
    (s1 / "again.txt").write_text("new")

    mount_clock.advance(3600)
    assert sorted(os.listdir(m / "sessions")) == []
    assert errno_of(open, s2 / "long.txt") == errno.ENOENT
    assert (m / "users/alice/forever.txt").read_text() == "no ttl"


@pytest.mark.semantics("S-expiry-ttl", "S-expiry-vanish")
async def test_a_ttl_shortened_through_the_mount_takes_effect(timed_mount: Mount, mount_clock: MovableClock) -> None:
    m = timed_mount
    (m / "sessions/s").mkdir()
    (m / "sessions/s/brief.txt").write_text("brief")
    (m / "sessions/s/normal.txt").write_text("normal")
    os.setxattr(m / "sessions/s/brief.txt", "user.artifact.ttl", b"10")
    mount_clock.advance(11)
    assert os.listdir(m / "sessions/s") == ["normal.txt"]
    assert errno_of(open, m / "sessions/s/brief.txt") == errno.ENOENT
    async with mount_clock.library(m) as store:
        assert [a.filename for a in await store.list_by_session("s")] == ["normal.txt"]
