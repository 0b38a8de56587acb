"""Long kernel caches on a followed store, and how the mount takes them back (fusefs.handed).

Without a kernel: the follower is fed changes by a fake feed, and the calls it
would make to the kernel are recorded instead. What is checked is which
entries and inodes are invalidated, and which cache time replies carry.
"""

from __future__ import annotations

import threading
from pathlib import Path

import pyfuse3
import pytest
import trio

from opskit import ROOT as ROOT_CALLER
from opskit import ctx, kernel

from core import shards
from core.backends.meta.changes import RESYNC, Change, ChangeOp
from core.nodes import NodeKind, NodeRole, new_node
from fusefs.attrs import Inodes
from fusefs import invalidation
from fusefs.handed import Handed
from fusefs.invalidation import ChangeFollower
from fusefs.listings import Listings

LONG, SHORT = 600.0, 1.0
ROOT = 1


def _file(ino: int, parent: int, name: str):  # noqa: ANN202 - a Node
    node = new_node(parent=parent, name=name, kind=NodeKind.FILE, mode=0o644, role=NodeRole.ENTRY, now_ns=0)
    node.ino = ino
    return node


class FakeFeed:
    """Changes handed over one batch at a time; a count of unannounced changes the test sets."""

    origin = "me"

    def __init__(self) -> None:
        self.quiet = 0
        self.send, self._receive = trio.open_memory_channel[list[Change]](100)

    async def open(self) -> None: ...

    async def next_batch(self) -> list[Change]:
        return await self._receive.receive()

    async def unannounced(self) -> int:
        return self.quiet

    async def close(self) -> None: ...


class Kernel:
    """What the follower's thread would have asked the kernel to drop."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.entries: set[tuple[int, bytes]] = set()
        self.inodes: set[int] = set()
        self.calls: list[tuple[int, bytes] | int] = []
        self._lock = threading.Lock()
        monkeypatch.setattr(pyfuse3, "invalidate_entry", self._entry)
        monkeypatch.setattr(pyfuse3, "invalidate_inode", self._inode)

    def _entry(self, parent: int, name: bytes) -> None:
        with self._lock:
            self.entries.add((parent, name))
            self.calls.append((parent, name))

    def _inode(self, ino: int, attr_only: bool) -> None:
        with self._lock:
            self.inodes.add(ino)
            self.calls.append(ino)


async def _until(condition, what: str) -> None:  # noqa: ANN001
    with trio.fail_after(30):  # a bound on a hang, not a measure
        while not condition():
            await trio.sleep(0.01)


def test_replies_are_recorded_up_to_the_limit_then_get_the_short_time() -> None:
    handed = Handed(ROOT, LONG, SHORT, limit=3)
    assert [handed.hand(_file(10 + i, 5, f"f{i}")) for i in range(4)] == [LONG, LONG, LONG, SHORT]
    assert handed.hand(_file(10, 5, "f0")) == LONG  # already recorded: no room needed
    handed.forget(11, 1)  # the kernel let it go
    assert handed.hand(_file(20, 5, "g")) == LONG
    entries, inodes = handed.take_all()
    assert sorted(inodes) == [10, 12, 20]
    assert sorted(entries) == [(5, b"f0"), (5, b"f2"), (5, b"g")]
    assert handed.take_all() == ([], [])  # taken back once


def test_a_second_name_of_an_inode_is_taken_back_too() -> None:
    handed = Handed(ROOT, LONG, SHORT)
    handed.hand(_file(10, 5, "a"))
    handed.hand(_file(10, 6, "b"))  # a hard link, looked up by its other name
    entries, inodes = handed.take_all()
    assert sorted(entries) == [(5, b"a"), (6, b"b")] and inodes == [10]


def test_a_forget_of_part_of_the_lookups_keeps_the_record() -> None:
    """FORGET(ino, 1) while the kernel still holds the inode (it was told of it twice): still taken back."""
    handed = Handed(ROOT, LONG, SHORT)
    handed.hand(_file(10, 5, "a"))
    handed.looked_up(10)
    handed.hand(_file(10, 6, "b"))  # the same inode by another name
    handed.looked_up(10)
    handed.forget(10, 1)
    entries, inodes = handed.take_all()
    assert sorted(entries) == [(5, b"a"), (6, b"b")] and inodes == [10]
    handed.hand(_file(10, 6, "b"))
    handed.hand(_file(10, 5, "a"))
    handed.forget(10, 1)  # the last one: the inode, and every name of it, go
    assert len(handed) == 0 and handed.take_all() == ([], [])


@pytest.mark.semantics("S-multimount-notices")
async def test_the_mount_counts_every_reply_that_tells_the_kernel_of_an_inode(tmp_path: Path) -> None:
    """create, lookup and readdirplus each add to the kernel's count; FORGET takes them back, all of them."""
    async with kernel(tmp_path) as k:
        handed = k.ops.attrs.handed = Handed(k.ops.inodes.root_ino, LONG, SHORT)
        await k.directory("users/alice")
        fh, attr = await k.create("users/alice/f")
        await k.close(fh)
        ino = int(attr.st_ino)
        await k.lookup("users/alice/f")
        dir_fh = await k.ops.opendir(await k.ino("users/alice"), ctx(ROOT_CALLER))
        await k.readdir(dir_fh)
        await k.ops.releasedir(dir_fh)
        await k.ops.forget([(ino, 2)])  # create + lookup: the readdirplus entry is still held
        assert k.ops.inodes.node(ino) in handed.take_all()[1]
        await k.ops.getattr(ino, ctx(ROOT_CALLER))
        await k.ops.forget([(ino, 1)])
        assert k.ops.inodes.node(ino) not in handed.take_all()[1]


def test_while_notices_are_not_trusted_nothing_is_handed_for_long() -> None:
    handed = Handed(ROOT, LONG, SHORT)
    handed.trusted = False
    assert handed.hand(_file(10, 5, "a")) == SHORT
    assert handed.take_all() == ([], [])


async def _follow(monkeypatch: pytest.MonkeyPatch, body) -> None:  # noqa: ANN001
    kernel = Kernel(monkeypatch)
    feed = FakeFeed()
    handed = Handed(ROOT, LONG, SHORT)
    follower = ChangeFollower(feed, Inodes(ROOT), handed, listings=Listings())  # type: ignore[arg-type]
    async with trio.open_nursery() as nursery:
        nursery.start_soon(follower.run)
        await body(kernel, feed, handed, follower)
        nursery.cancel_scope.cancel()
    follower.stop()


@pytest.mark.semantics("S-multimount-notices")
async def test_a_resync_takes_back_everything_handed_out_and_settles_short(monkeypatch: pytest.MonkeyPatch) -> None:
    async def body(kernel: Kernel, feed: FakeFeed, handed: Handed, follower: ChangeFollower) -> None:
        for i in range(50):
            handed.hand(_file(100 + i, 7, f"n{i}"))
        listings = follower._listings
        assert listings is not None
        epoch = listings.epoch
        await feed.send.send([Change(ChangeOp.UPDATE, ((7, b"n0"),), (100,), origin="other")])
        await _until(lambda: (7, b"n0") in kernel.entries, "the notice's invalidation")
        assert len(kernel.entries) == 1  # a notice drops what it names, nothing else
        assert listings.epoch > epoch  # and every page read ahead for lookups
        epoch = listings.epoch
        await feed.send.send([Change(ChangeOp.UPDATE, ((7, b"n1"),), (101,), origin="me")])  # our own
        await _until(lambda: listings.epoch > epoch, "our own notice drops the pages too")
        await feed.send.send([RESYNC])
        await _until(lambda: len(kernel.entries) == 50 and len(kernel.inodes) == 50, "everything taken back")
        assert follower.resyncs == 1
        assert handed.hand(_file(200, 7, "late")) == SHORT  # a request in flight across the gap: cached briefly

    await _follow(monkeypatch, body)


@pytest.mark.semantics("S-multimount-notices")
async def test_a_writer_without_notices_makes_the_mount_take_back_and_cache_short(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async def body(kernel: Kernel, feed: FakeFeed, handed: Handed, follower: ChangeFollower) -> None:
        for i in range(5):
            handed.hand(_file(100 + i, 7, f"n{i}"))
        feed.quiet = 1  # a change made without a notice
        await _until(lambda: len(kernel.entries) == 5, "everything taken back")
        assert not handed.trusted and handed.hand(_file(300, 7, "x")) == SHORT
        feed.quiet = 0  # none for the marker's lifetime: notices tell everything again
        await _until(lambda: handed.trusted, "trust again")
        assert handed.hand(_file(301, 7, "y")) == LONG

    await _follow(monkeypatch, body)


@pytest.mark.semantics("S-multimount-notices")
async def test_each_notice_is_acted_on_twice_for_replies_in_flight(monkeypatch: pytest.MonkeyPatch) -> None:
    async def body(kernel: Kernel, feed: FakeFeed, handed: Handed, follower: ChangeFollower) -> None:
        await feed.send.send([Change(ChangeOp.UPDATE, ((7, b"n0"),), (100,), origin="other")])
        await _until(lambda: kernel.calls.count((7, b"n0")) == 2 and kernel.calls.count(100) == 2, "both passes")
        await feed.send.send([Change(ChangeOp.UPDATE, ((7, b"n1"),), (101,), origin="me")])  # our own: none
        await feed.send.send([Change(ChangeOp.UPDATE, ((7, b"n2"),), (102,), origin="other")])
        await _until(lambda: kernel.calls.count((7, b"n2")) == 2, "the next notice's second pass")
        assert follower.own == 1 and (7, b"n1") not in kernel.calls and 101 not in kernel.calls

    await _follow(monkeypatch, body)


@pytest.mark.semantics("S-multimount-notices")
async def test_the_mounts_own_changes_not_made_by_a_request_are_followed(monkeypatch: pytest.MonkeyPatch) -> None:
    """``--serve`` commits a presigned upload on the mount's own store: no reply told the kernel.

    Only what FUSE requests changed (stamped with the follower's replying
    origin) is skipped; a change with the store's origin is dropped as if made elsewhere.
    """
    kernel = Kernel(monkeypatch)
    feed = FakeFeed()
    follower = ChangeFollower(feed, Inodes(ROOT), Handed(ROOT, LONG, SHORT), replying="request")  # type: ignore[arg-type]
    async with trio.open_nursery() as nursery:
        nursery.start_soon(follower.run)
        await feed.send.send([Change(ChangeOp.UPDATE, ((7, b"asked"),), (101,), origin="request")])
        await feed.send.send([Change(ChangeOp.UPDATE, ((7, b"uploaded"),), (102,), origin="me")])  # --serve
        await _until(lambda: (7, b"uploaded") in kernel.entries and 102 in kernel.inodes, "the upload dropped")
        assert follower.own == 1 and (7, b"asked") not in kernel.calls and 101 not in kernel.calls
        nursery.cancel_scope.cancel()
    follower.stop()


class ShardedFeed(FakeFeed):
    """A feed that follows the shards it is asked for at once (as if confirmed long ago)."""

    def __init__(self) -> None:
        super().__init__()
        self.followed: set[int] = {shards.UPPER}
        self.watched: list[set[int]] = []
        self.unwatched: list[set[int]] = []

    async def watch(self, wanted: set[int]) -> None:
        self.watched.append(set(wanted))
        self.followed |= wanted

    async def unwatch(self, dropped: set[int]) -> None:
        self.unwatched.append(set(dropped))
        self.followed -= dropped

    def following(self, shard: int) -> float | None:
        return 0.0 if shard in self.followed else None  # since long ago: past the settling


@pytest.mark.semantics("S-multimount-notices")
async def test_a_mount_follows_the_scopes_it_holds_and_only_those(monkeypatch: pytest.MonkeyPatch) -> None:
    """A reply about a node of a shard not followed yet gets the short time and asks for its notices;
    once followed, the long one; and a shard the kernel holds nothing of for long is let go."""
    monkeypatch.setattr(invalidation, "UNFOLLOW_EVERY", 3600.0)  # let go of below, when the test says
    feed = ShardedFeed()
    handed = Handed(ROOT, LONG, SHORT)
    follower = ChangeFollower(feed, Inodes(ROOT), handed)  # type: ignore[arg-type]
    handed.followed = follower.followed
    alice, bob = shards.ino(7, 1), shards.ino(9, 1)  # scope roots of two shards, entered in the upper tree
    async with trio.open_nursery() as nursery:
        nursery.start_soon(follower.run)
        assert handed.hand(_file(alice + 1, alice, "a")) == SHORT  # shard 7 not followed yet: asked for
        await _until(lambda: feed.watched == [{7}], "the feed asked to follow shard 7")
        assert handed.hand(_file(alice + 1, alice, "a")) == LONG
        assert handed.hand(_file(bob, ROOT, "bob")) == SHORT  # the entry's shard (0) is followed; bob's not
        await _until(lambda: {9} in feed.watched, "the feed asked to follow shard 9")
        assert handed.hand(_file(bob, ROOT, "bob")) == LONG
        assert await follower.let_go() == set() and feed.unwatched == []  # both still held
        handed.forget(alice + 1, 1)  # the kernel lets go of the only node of shard 7 it held
        assert await follower.let_go() == {7} and feed.unwatched == [{7}]
        assert 9 in feed.followed and shards.UPPER in feed.followed  # still held, and always
        assert handed.hand(_file(alice + 1, alice, "a")) == SHORT  # met again: asked for again
        await _until(lambda: feed.watched[-1] == {7}, "shard 7 followed again")
        nursery.cancel_scope.cancel()
    follower.stop()
