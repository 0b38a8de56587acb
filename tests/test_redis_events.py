"""Change notices of a Redis store, followed through :class:`core.backends.meta.redis.events.RedisChangeFeed`.

Against a real redis-server, from trio (through the asyncio bridge) and from
asyncio directly: changes arrive in commit order, stamped with the origin of
the store that made them; a store made not to notify says nothing; a
restarted server costs the follower a RESYNC, never its subscription.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio
import pytest
from servers import RedisServer
from storekit import minted_id
from storeprobe import rewrite_redis_inode

from core.backends.meta.changes import RESYNC, Change, ChangeOp
from core import shards
from core.backends.meta.redis.events import RedisChangeFeed, parse_notice
from core.backends.meta.redis.store import RedisMetaStore
from core.config import Settings, build_backends, build_change_feed
from core.infra.retry import RetryPolicy
from core.infra.signing import RecordSigner
from core.models import Scope
from core.nodes import ROOT_INO, Artifact, Node, NodeKind, NodeRole, Space, new_node

SIGNER = RecordSigner(b"k" * 32)
WAIT = 10  # seconds: bounded waits for what must arrive


def a_file(name: str) -> Node:
    node = new_node(parent=ROOT_INO, name=name, kind=NodeKind.FILE, mode=0o644, now_ns=1)
    node.artifact = Artifact(artifact_id=minted_id(None), sha256="0" * 64)
    return node


def store(server: RedisServer, prefix: str, **kw) -> RedisMetaStore:
    return RedisMetaStore(server.url, SIGNER, prefix=prefix, **kw)


@asynccontextmanager
async def writer_and_feed(server: RedisServer) -> AsyncIterator[tuple[RedisMetaStore, RedisChangeFeed]]:
    """A store that notifies, and a feed of its notices (opened first: it misses none), on a new prefix."""
    prefix = f"ev-{uuid.uuid4().hex[:8]}"
    writer, feed = store(server, prefix, notify=True), RedisChangeFeed(store(server, prefix))
    await feed.open()
    await writer.open()
    try:
        yield writer, feed
    finally:
        await feed.close()
        await writer.close()


async def collect(feed: RedisChangeFeed, count: int) -> list[Change]:
    got: list[Change] = []
    with anyio.fail_after(WAIT):
        while len(got) < count:
            got += await feed.next_batch()
    return got


def test_a_notice_is_parsed_item_by_item() -> None:
    raw = b"\0".join([b"rename", b"e12/caf\xc3\xa9 \xe2\x82\xac.txt", b"e7/x", b"i99", b"zfuture", b"oabc123"])
    assert parse_notice(raw) == Change(ChangeOp.RENAME, ((12, "café €.txt".encode()), (7, b"x")), (99,), "abc123")
    assert parse_notice(b"compact\0i5").op is ChangeOp.OTHER  # an op a newer script may send
    assert parse_notice(b"remove\0ibad\0i6").inodes == (6,)  # a malformed item is skipped, not fatal


async def test_changes_arrive_in_order_with_their_origin(redis_server: RedisServer) -> None:
    prefix = f"ev-{uuid.uuid4().hex[:8]}"
    writer, other = store(redis_server, prefix, notify=True), store(redis_server, prefix, notify=True)
    feed = RedisChangeFeed(store(redis_server, prefix))
    await feed.open()
    await writer.open()
    await other.open()
    try:
        node, _ = await writer.insert(a_file("a"))
        await writer.rename(node, ROOT_INO, "b", replace=False)
        await other.remove(node)
        got = await collect(feed, 3)
    finally:
        await feed.close()
        await writer.close()
        await other.close()
    assert [c.op for c in got] == [ChangeOp.INSERT, ChangeOp.RENAME, ChangeOp.REMOVE]
    assert got[0].entries == ((ROOT_INO, b"a"),) and got[0].inodes == (ROOT_INO,)
    assert got[1].entries == ((ROOT_INO, b"a"), (ROOT_INO, b"b")) and got[1].inodes == (node.ino,)
    assert [c.origin for c in got] == [writer.origin, writer.origin, other.origin]
    assert writer.origin != other.origin != feed.origin


async def test_a_store_told_not_to_notify_says_nothing(redis_server: RedisServer) -> None:
    prefix = f"ev-{uuid.uuid4().hex[:8]}"
    quiet, loud = store(redis_server, prefix, notify=False), store(redis_server, prefix, notify=True)
    feed = RedisChangeFeed(loud)
    await feed.open()
    await quiet.open()
    await loud.open()
    try:
        await quiet.insert(a_file("unheard"))
        await loud.insert(a_file("heard"))  # the first notice to arrive must be this one
        (first,) = (await collect(feed, 1))[:1]
    finally:
        await feed.close()
        await quiet.close()
        await loud.close()
    assert first.entries == ((ROOT_INO, b"heard"),)


def test_settings_notify_by_default_and_build_a_feed_for_redis(redis_server: RedisServer) -> None:
    base = {"session_provider": "redis", "redis_url": redis_server.url, "signing_key": "k" * 32}
    redis_settings = Settings(**base)
    _, meta = build_backends(redis_settings)
    assert isinstance(meta, RedisMetaStore) and meta.notify
    assert isinstance(build_change_feed(redis_settings, meta), RedisChangeFeed)
    _, quiet = build_backends(Settings.from_env(**base, redis_notify="0"))
    assert isinstance(quiet, RedisMetaStore) and not quiet.notify
    embedded_settings = Settings(session_provider="memory")
    _, embedded = build_backends(embedded_settings)
    assert build_change_feed(embedded_settings, embedded) is None


async def test_a_restarted_server_costs_a_resync_not_the_subscription(own_redis: RedisServer) -> None:
    prefix = f"ev-{uuid.uuid4().hex[:8]}"
    writer = store(own_redis, prefix, notify=True, retry=RetryPolicy(attempts=40, first_delay=0.05, max_delay=0.2))
    feed = RedisChangeFeed(writer)
    await feed.open()
    await writer.open()
    try:
        await writer.insert(a_file("before"))
        assert [c.op for c in await collect(feed, 1)] == [ChangeOp.INSERT]
        await anyio.to_thread.run_sync(own_redis.restart)  # notices sent meanwhile would be lost
        assert await collect(feed, 1) == [RESYNC]  # said once it is subscribed again
        await writer.insert(a_file("after"))
        (after,) = await collect(feed, 1)
        assert after.entries == ((ROOT_INO, b"after"),)
    finally:
        await feed.close()
        await writer.close()


@pytest.mark.semantics("S-multimount-notices")
async def test_a_feed_read_before_it_was_opened_starts_with_a_resync(redis_server: RedisServer) -> None:
    """Its first subscription comes after whatever its reader answered meanwhile: that is a gap.

    An opened feed is subscribed (the server says so) before open() returns, so nothing
    committed after it is missed and its first batch is a change, not a RESYNC.
    """
    prefix = f"ev-{uuid.uuid4().hex[:8]}"
    writer = store(redis_server, prefix, notify=True)
    late, opened = RedisChangeFeed(store(redis_server, prefix)), RedisChangeFeed(store(redis_server, prefix))
    await opened.open()
    await writer.open()
    try:
        with redis_server.client() as client:
            channel = opened.channel(shards.UPPER)
            assert client.execute_command("PUBSUB", "SHARDNUMSUB", channel) == [channel.encode(), 1]  # confirmed
        assert await collect(late, 1) == [RESYNC]
        await writer.insert(a_file("a"))
        assert [c.op for c in await collect(late, 1)] == [ChangeOp.INSERT]
        assert [c.op for c in await collect(opened, 1)] == [ChangeOp.INSERT]
    finally:
        await late.close()
        await opened.close()
        await writer.close()


@pytest.mark.semantics("S-multimount-notices")
async def test_a_repaired_link_count_is_announced(redis_server: RedisServer) -> None:
    """fsck --repair recounting a directory's subdirectories changes its st_nlink: a change like any."""
    async with writer_and_feed(redis_server) as (writer, feed):
        assert await writer.recount_subdirs(ROOT_INO) == 0  # right already: nothing to announce
        with redis_server.client() as client:
            rewrite_redis_inode(client, writer.key("i", ROOT_INO), sd=3)  # a count gone wrong
        assert await writer.recount_subdirs(ROOT_INO) == 0
        await writer.insert(a_file("after"))
        got = await collect(feed, 2)
    assert got[0].inodes == (ROOT_INO,) and got[0].origin == writer.origin  # the repair, and only it
    assert got[1].op is ChangeOp.INSERT


def test_the_feed_works_from_asyncio_directly(redis_server: RedisServer) -> None:
    async def main() -> tuple[list[Change], str]:
        prefix = f"ev-{uuid.uuid4().hex[:8]}"
        writer = store(redis_server, prefix, notify=True)
        feed = RedisChangeFeed(writer)
        await feed.open()
        await writer.open()
        try:
            await writer.insert(a_file("x"))
            return await asyncio.wait_for(feed.next_batch(), WAIT), writer.origin
        finally:
            await feed.close()
            await writer.close()

    got, origin = asyncio.run(main())
    assert [(c.op, c.origin) for c in got] == [(ChangeOp.INSERT, origin)]


def scope_root(space: Space) -> Node:
    return new_node(parent=ROOT_INO, name=space.owner or "shared", kind=NodeKind.DIR, mode=0o755, now_ns=1,
                    role=NodeRole.SCOPE_ROOT, space=space)


def in_scope(parent: int, name: str, space: Space) -> Node:
    node = new_node(parent=parent, name=name, kind=NodeKind.FILE, mode=0o644, now_ns=1, space=space)
    node.artifact = Artifact(artifact_id=minted_id(space), sha256="0" * 64)
    return node


async def until(condition, what: str) -> None:  # noqa: ANN001
    with anyio.fail_after(WAIT):  # a bound on a hang, not a measure
        while not condition():
            await anyio.sleep(0.01)


@asynccontextmanager
async def reading(feed: RedisChangeFeed, shard: int) -> AsyncIterator[list[Change]]:
    """The feed read all along, as a mount's follower reads it (so it meets the confirmations of its
    subscriptions), once it follows ``shard``: the changes read so far, as they come."""
    got: list[Change] = []

    async def read() -> None:
        while True:
            got.extend(await feed.next_batch())

    async with anyio.create_task_group() as group:
        group.start_soon(read)
        await feed.watch({shard})
        await until(lambda: feed.following(shard) is not None, f"shard {shard} followed")
        yield got
        group.cancel_scope.cancel()


@pytest.mark.semantics("S-multimount-notices")
async def test_a_feed_hears_only_the_shards_it_follows(redis_server: RedisServer) -> None:
    """Notices go on their scope's channel (issue #17): a follower of alice's scope reads none of bob's."""
    alice, bob = (Space(sandbox_id="box", scope=Scope.USER, user_id=u) for u in ("alice", "bob"))
    async with writer_and_feed(redis_server) as (writer, feed):
        a_root, _ = await writer.insert(scope_root(alice))
        b_root, _ = await writer.insert(scope_root(bob))
        assert [c.op for c in await collect(feed, 2)] == [ChangeOp.INSERT, ChangeOp.INSERT]  # their entries above
        async with reading(feed, shards.of_space(alice)) as got:
            await writer.insert(in_scope(b_root.ino, "unheard", bob))  # bob's shard: not followed
            await writer.insert(in_scope(a_root.ino, "heard", alice))
            await until(lambda: got, "a notice")
        first = got[0]  # one server sends in commit order: bob's notice, had it come, would be first
    assert first.entries == ((a_root.ino, b"heard"),)


@pytest.mark.semantics("S-multimount-notices")
async def test_a_skipped_notice_number_is_a_resync(redis_server: RedisServer) -> None:
    """Notices are numbered per shard: one that never arrived (a gap a client library may hide) is
    reported like a reconnect, so the follower drops its copies."""
    async with writer_and_feed(redis_server) as (writer, feed):
        await writer.insert(a_file("first"))
        assert [c.op for c in await collect(feed, 1)] == [ChangeOp.INSERT]
        with redis_server.client() as client:
            client.incr(writer.key("seq", shard=shards.UPPER))  # a notice sent and lost on its way
        await writer.insert(a_file("second"))
        got = await collect(feed, 2)
    assert RESYNC in got and got[-1].entries == ((ROOT_INO, b"second"),)


async def test_a_shard_let_go_is_heard_no_more(redis_server: RedisServer) -> None:
    alice = Space(sandbox_id="box", scope=Scope.USER, user_id="alice")
    async with writer_and_feed(redis_server) as (writer, feed):
        root, _ = await writer.insert(scope_root(alice))
        async with reading(feed, shards.of_space(alice)) as got:
            await writer.insert(in_scope(root.ino, "heard", alice))
            await until(lambda: any(c.entries == ((root.ino, b"heard"),) for c in got), "alice's notice")
            await feed.unwatch({shards.of_space(alice)})
            assert feed.following(shards.of_space(alice)) is None
            channel = feed.channel(shards.of_space(alice))
            with redis_server.client() as client:  # the server no longer counts us among its subscribers
                await until(lambda: client.execute_command("PUBSUB", "SHARDNUMSUB", channel) == [channel.encode(), 0],
                            "the unsubscription")
            got.clear()
            await writer.insert(in_scope(root.ino, "unheard", alice))
            await writer.insert(a_file("above"))  # the upper tree: followed always
            await until(lambda: got, "a notice")
    assert got[0].entries == ((ROOT_INO, b"above"),)  # alice's notice, had it come, would be first
