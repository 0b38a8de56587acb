"""One round trip per tree change on Redis, and the semantics that had to survive folding them.

Each change the tree makes (a new entry with its directory's new times, a
removal, a rename, a committed version, a listing) is one call to the
metadata store, so on Redis one round trip. The counter here wraps the
store's single door to the server (``RedisMetaStore._call``: one call is
one round trip, a pipeline included). ``tests/fuse/test_fuse_round_trips.py``
counts the same at the server, per kernel request of a real mount.

The rest checks what folding must not have changed, on Redis and on SQLite
alike: directories' times follow their entries (and a forged time is
refused), a session outlives its artifacts even when its expiry moves
under an insert, and two hosts committing one file never lose a version.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
import redis
from servers import RedisServer
from storekit import commit_bytes, minted_id
from storeprobe import redis_inode, rewrite_redis_inode

from core import Limits
from core.backends.blobs.memory import MemoryBlobStore
from core.backends.meta.base import Cover
from core.backends.meta.redis.store import _LIST_INLINE, RedisMetaStore
from core.backends.meta.sqlite import SQLiteMetaStore
from core.errors import AlreadyExistsError, ArtifactCorruptedError, ArtifactNotFoundError
from core.infra.clock import ManualClock
from core.infra.signing import RecordSigner
from core.infra.tally import tally
from core.models import Scope
from core.nodes import ROOT_INO, Artifact, Node, NodeKind, NodeRole, Space, new_node
from core.tree.namespace import NS, Namespace

SIGNER = RecordSigner(b"round-trips-test-key-0123456789")
BOX = "box"
ALICE = Space(sandbox_id=BOX, scope=Scope.USER, user_id="alice")


class Counted(RedisMetaStore):
    """A Redis store that counts its round trips."""

    trips = 0

    async def _call(self, what: str, fn: Callable[..., Awaitable[Any]]) -> Any:
        self.trips += 1
        return await super()._call(what, fn)

    async def count(self, change: Awaitable[Any]) -> tuple[int, Any]:
        before = self.trips
        result = await change
        return self.trips - before, result


def redis_meta(server: RedisServer, prefix: str | None = None) -> Counted:
    return Counted(server.url, SIGNER, prefix=prefix or f"rt-{uuid.uuid4().hex[:12]}", notify=True)


@pytest.fixture(params=["sqlite", "redis"])
async def meta(request: pytest.FixtureRequest) -> AsyncIterator[SQLiteMetaStore | RedisMetaStore]:
    store: SQLiteMetaStore | RedisMetaStore
    if request.param == "sqlite":
        store = SQLiteMetaStore(":memory:", SIGNER)
    else:
        store = redis_meta(request.getfixturevalue("redis_server"))
    await store.open()
    yield store
    await store.close()


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


def namespace(meta: Any, clock: ManualClock, blobs: MemoryBlobStore | None = None) -> Namespace:
    return Namespace(meta, blobs or MemoryBlobStore(), clock, Limits())


async def user_home(ns: Namespace, user: str = "alice") -> Node:
    return await ns.scope_root(Space(sandbox_id=BOX, scope=Scope.USER, user_id=user))


async def new_file(ns: Namespace, parent: Node, name: str) -> Node:
    node = await ns.file_node(parent, name, ttl=ns.default_ttl(parent.space.scope))  # type: ignore[union-attr]
    return await ns.insert_file(node, replace=False, parent=parent)


# -- round trips


async def test_each_change_of_the_tree_is_one_round_trip(redis_server: RedisServer, clock: ManualClock) -> None:
    meta = redis_meta(redis_server)
    await meta.open()
    try:
        ns = namespace(meta, clock)
        home = await user_home(ns)
        trips: dict[str, int] = {}
        node = await ns.file_node(home, "a.txt", ttl=None)
        trips["new file with its directory's times"], node = await meta.count(ns.insert_file(node, replace=False))
        trips["new directory"], sub = await meta.count(ns.mkdir(home, "sub"))
        trips["directory and entry"], _ = await meta.count(ns.entry(home.ino, "a.txt"))
        trips["commit of a version"], _ = await meta.count(ns.commit(ns.set_content(node, None, 0, node.artifact.sha256),  # type: ignore[union-attr]
                                                                     old_blob=None))
        trips["rename with both directories' times"], _ = await meta.count(ns.rename(node, sub, "b.txt"))
        trips["listing"], _ = await meta.count(ns.list(sub))
        trips["unlink with its directory's times"], _ = await meta.count(ns.unlink(node))
        trips["rmdir with its directory's times"], _ = await meta.count(ns.rmdir(sub))
        session = await ns.scope_root(Space(sandbox_id=BOX, scope=Scope.SESSION, session_id="s1"))
        clock.advance(10)  # the new artifact outlives the session as it is: the insert moves the session out
        trips["new file in a session, the session kept alive"], made = await meta.count(new_file(ns, session, "s.txt"))
        kept_until = (await ns.get(session.ino)).expires_at_ns
    finally:
        await meta.close()
    assert trips == dict.fromkeys(trips, 1), trips
    assert kept_until == made.expires_at_ns and kept_until > session.expires_at_ns  # type: ignore[operator]


async def test_a_tally_counts_the_round_trips_made_inside_it(redis_server: RedisServer, clock: ManualClock) -> None:
    """What the mount's --debug log reports per request (core.infra.tally): the store's round trips."""
    meta = redis_meta(redis_server)
    await meta.open()
    try:
        ns = namespace(meta, clock)
        home = await user_home(ns)
        before = meta.trips
        with tally() as counted:
            made = await new_file(ns, home, "counted")
            await ns.filename_of(made)
        assert counted.round_trips == meta.trips - before == 2  # the insert, the lineage of its name
        await ns.list(home)  # outside the tally: not counted there
        assert counted.round_trips == 2
    finally:
        await meta.close()


async def test_a_listing_of_a_small_directory_is_one_round_trip_a_large_one_two(redis_server: RedisServer) -> None:
    meta = redis_meta(redis_server)
    await meta.open()
    try:
        small = (await meta.insert(dir_node(ROOT_INO, "small")))[0]
        large = (await meta.insert(dir_node(ROOT_INO, "large")))[0]
        for i in range(_LIST_INLINE):
            await meta.insert(file_node(small.ino, f"f{i:04d}"))
        for i in range(_LIST_INLINE + 1):
            await meta.insert(file_node(large.ino, f"f{i:04d}"))
        small_trips, small_listing = await meta.count(meta.children(small.ino))
        large_trips, large_listing = await meta.count(meta.children(large.ino))
    finally:
        await meta.close()
    assert (small_trips, large_trips) == (1, 2)  # the large one: its inos, then its records pipelined
    assert [n.name for n in small_listing] == [f"f{i:04d}" for i in range(_LIST_INLINE)]
    assert [n.name for n in large_listing] == [f"f{i:04d}" for i in range(_LIST_INLINE + 1)]


def dir_node(parent: int, name: str) -> Node:
    return new_node(parent=parent, name=name, kind=NodeKind.DIR, mode=0o755, now_ns=1, space=ALICE)


def file_node(parent: int, name: str) -> Node:
    node = new_node(parent=parent, name=name, kind=NodeKind.FILE, mode=0o644, now_ns=1, space=ALICE)
    node.artifact = Artifact(artifact_id=minted_id(None), sha256="0" * 64)  # below the root: the upper shard
    return node


# -- directories' times, on both backends


async def test_a_directory_takes_the_time_of_every_change_of_its_entries(meta: Any, clock: ManualClock) -> None:
    ns = namespace(meta, clock)
    home = await user_home(ns)
    other = await ns.mkdir(home, "other")

    async def times(node: Node) -> tuple[int, int]:
        fresh = await ns.get(node.ino)
        return fresh.mtime_ns, fresh.ctime_ns

    clock.advance(1)
    made = await new_file(ns, home, "f")
    assert await times(home) == (clock.now_ns(),) * 2
    clock.advance(1)
    await ns.rename(made, other, "g")
    assert await times(home) == await times(other) == (clock.now_ns(),) * 2
    assert (await ns.get(made.ino)).ctime_ns == clock.now_ns()  # the moved entry's ctime, in the same step
    clock.advance(1)
    renamed_at = clock.now_ns()
    home = await ns.get(home.ino)
    await ns.update_node(home, lambda home: setattr(home, "mode", 0o700))  # written after a touch, keeps its time
    assert (await ns.get(home.ino)).mtime_ns == renamed_at - NS
    clock.advance(1)
    await ns.unlink(made)
    assert await times(other) == (clock.now_ns(),) * 2
    assert (await ns.get(home.ino)).mode == 0o700  # the touches never undid the chmod
    clock.advance(1)
    await ns.rmdir(other)
    assert await times(home) == (clock.now_ns(),) * 2


async def test_an_exchange_sets_the_times_of_both_directories(meta: Any, clock: ManualClock) -> None:
    ns = namespace(meta, clock)
    home = await user_home(ns)
    other = await ns.mkdir(home, "other")
    a, b = await new_file(ns, home, "a"), await new_file(ns, other, "b")
    clock.advance(1)
    await ns.exchange(a, b)
    for directory in (home, other):
        fresh = await ns.get(directory.ino)
        assert (fresh.mtime_ns, fresh.ctime_ns) == (clock.now_ns(),) * 2
    assert (await ns.entry(home.ino, "a"))[1].ino == b.ino  # type: ignore[union-attr]


async def test_the_fixed_tree_keeps_its_times(meta: Any, clock: ManualClock) -> None:
    """``users/`` is not touched when a user's space is made, nor a sandbox when its fixed dirs are."""
    ns = namespace(meta, clock)
    await user_home(ns, "bob")
    users = await ns.get((await ns._fixed(BOX)).users)
    clock.advance(5)
    await user_home(ns, "carol")
    assert (await ns.get(users.ino)).mtime_ns == users.mtime_ns


async def test_an_insert_into_a_directory_that_is_gone_is_not_found(meta: Any, clock: ManualClock) -> None:
    ns = namespace(meta, clock)
    home = await user_home(ns)
    gone = await ns.mkdir(home, "gone")
    await ns.rmdir(gone)
    with pytest.raises(ArtifactNotFoundError):
        await new_file(ns, gone, "orphan")
    assert [n.name for n in await ns.list(home)] == []


async def test_entry_answers_the_directory_and_the_name(meta: Any, clock: ManualClock) -> None:
    ns = namespace(meta, clock)
    home = await user_home(ns)
    made = await new_file(ns, home, "here")
    parent, found = await ns.entry(home.ino, "here")
    assert (parent.ino, found.ino if found else None) == (home.ino, made.ino)
    assert (await ns.entry(home.ino, "absent"))[1] is None
    with pytest.raises(ArtifactNotFoundError):
        await ns.entry(10**9, "here")


async def test_forged_directory_times_are_refused(redis_server: RedisServer, clock: ManualClock) -> None:
    meta = redis_meta(redis_server)
    await meta.open()
    try:
        ns = namespace(meta, clock)
        home = await user_home(ns)
        await new_file(ns, home, "f")
        with redis.Redis.from_url(meta.url) as r:
            key = meta.key("i", home.ino)
            assert redis_inode(r, key)["mt"]
            rewrite_redis_inode(r, key, mt=clock.now_ns() - 10 * NS)  # moved back by someone without the key
        with pytest.raises(ArtifactCorruptedError):
            await meta.get(home.ino)
    finally:
        await meta.close()


async def test_a_removal_touches_only_the_directory_the_entry_is_in(redis_server: RedisServer,
                                                                   clock: ManualClock) -> None:
    """An entry moved by another host meanwhile: the remove names the entry it read, which is gone
    (ENOENT); the entry at its new name stays, and the new directory's times are not touched."""
    meta, other = redis_meta(redis_server), None
    await meta.open()
    try:
        other = redis_meta(redis_server, meta.prefix)
        await other.open()
        ns, ns_other = namespace(meta, clock), namespace(other, clock)
        home = await user_home(ns)
        there = await ns.mkdir(home, "there")
        stale = await new_file(ns, home, "f")
        await ns_other.rename(await ns_other.get(stale.ino), await ns_other.get(there.ino), "f")
        clock.advance(1)
        with pytest.raises(ArtifactNotFoundError):  # home/f is gone: it is not unlinked at its new name
            await ns.unlink(stale)  # still says its directory is home
        assert (await ns.get(there.ino)).mtime_ns < clock.now_ns()
        assert [n.name for n in await ns.list(there)] == ["f"]
    finally:
        await meta.close()
        if other is not None:
            await other.close()


# -- sessions outlive their artifacts


async def test_an_insert_moves_the_session_out_even_when_its_expiry_moved_meanwhile(meta: Any,
                                                                                    clock: ManualClock) -> None:
    ns = namespace(meta, clock)
    session = await ns.scope_root(Space(sandbox_id=BOX, scope=Scope.SESSION, session_id="s"))
    assert session.expires_at_ns is not None
    as_read = session.model_copy(deep=True)
    # Another host shortens the session (within what an insert must then repair) after we read it.
    shortened = await ns.get(session.ino)
    shortened.expires_at_ns = session.expires_at_ns - 100 * NS
    await meta.update(shortened)
    clock.advance(50)
    node = await ns.file_node(session, "f", ttl=900)
    node, _ = await meta.insert(node, touch_ns=clock.now_ns(), cover=Cover(as_read))
    assert (await ns.get(session.ino)).expires_at_ns == node.expires_at_ns
    # A root that lived long enough as read, but was shortened meanwhile, is moved out all the same.
    shortened = await ns.get(session.ino)
    shortened.expires_at_ns = session.expires_at_ns - 800 * NS
    await meta.update(shortened)
    brief = await ns.file_node(session, "brief", ttl=100)
    assert brief.expires_at_ns <= as_read.expires_at_ns  # type: ignore[operator]
    brief, _ = await meta.insert(brief, touch_ns=clock.now_ns(), cover=Cover(as_read))
    assert (await ns.get(session.ino)).expires_at_ns == brief.expires_at_ns
    # And an expiry moved out far enough meanwhile stays as it is.
    longer = await ns.get(session.ino)
    longer.expires_at_ns = node.expires_at_ns + 1000 * NS  # type: ignore[operator]
    await meta.update(longer)
    second = await ns.file_node(session, "g", ttl=900)
    second, _ = await meta.insert(second, touch_ns=clock.now_ns(), cover=Cover(as_read))
    assert (await ns.get(session.ino)).expires_at_ns == longer.expires_at_ns


async def test_a_refused_insert_does_not_stretch_the_session(meta: Any, clock: ManualClock) -> None:
    ns = namespace(meta, clock)
    session = await ns.scope_root(Space(sandbox_id=BOX, scope=Scope.SESSION, session_id="s"))
    await new_file(ns, session, "taken")
    before = (await ns.get(session.ino)).expires_at_ns
    clock.advance(100)
    node = await ns.file_node(session, "taken", ttl=900)
    with pytest.raises(AlreadyExistsError):
        await ns.insert_file(node, replace=False, parent=await ns.get(session.ino))
    assert (await ns.get(session.ino)).expires_at_ns == before


# -- commits


async def test_two_hosts_committing_one_file_never_share_a_version(redis_server: RedisServer,
                                                                  clock: ManualClock) -> None:
    """Host A began its version from v1; host B committed v2 meanwhile. A's commit meets B's in the
    store: it becomes v3, and B's blob, superseded, goes."""
    blobs = MemoryBlobStore()
    a_meta = redis_meta(redis_server)
    await a_meta.open()
    b_meta = redis_meta(redis_server, a_meta.prefix)
    await b_meta.open()
    try:
        a, b = namespace(a_meta, clock, blobs), namespace(b_meta, clock, blobs)
        made = await new_file(a, await user_home(a), "shared")
        first = await commit_bytes(a, made.ino, b"one")
        a_node = await a.get(made.ino)  # A begins its version here
        second = await commit_bytes(b, made.ino, b"two")
        old_blob = a_node.artifact.blob_key  # type: ignore[union-attr]
        key, size, sha256 = await a.put_blob(a_node, b"three")
        a.set_content(a_node, key, size, sha256)
        trips, third = await a_meta.count(a.commit(a_node, old_blob=old_blob))
        final = await b.get(made.ino)
        await a.collect_garbage(now_ns=2**62)  # past the grace period (issue #16)
    finally:
        await a_meta.close()
        await b_meta.close()
    versions = [n.artifact.version for n in (first, second, third)]  # type: ignore[union-attr]
    assert versions == [1, 2, 3] and final.artifact.version == 3 and final.artifact.blob_key == key  # type: ignore[union-attr]
    assert set(blobs._blobs) == {key}  # v1's and v2's blobs are gone, v3's is there
    # The commit that met another version, B's blob queued (an intent: A's commit will supersede it),
    # then the commit that went through, queueing the superseded blobs for the grace period in the
    # same step (it was a step of its own: 4 round trips).
    assert trips == 3


async def test_a_commit_based_on_a_superseded_version_changes_nothing(meta: Any, clock: ManualClock) -> None:
    """Both hosts began from v1; the second to commit is told what the store holds instead of writing."""
    ns = namespace(meta, clock)
    made = await new_file(ns, await user_home(ns), "f")
    mine, theirs = await ns.get(made.ino), await ns.get(made.ino)
    ns.set_content(theirs, None, 0, theirs.artifact.sha256)  # type: ignore[union-attr]
    assert await meta.commit(theirs, base_version=0) is None
    ns.set_content(mine, None, 0, mine.artifact.sha256)  # type: ignore[union-attr]
    mine.mode = 0o600
    current = await meta.commit(mine, base_version=0)
    assert current is not None and current.artifact.version == 1 and current.mode == theirs.mode  # type: ignore[union-attr]
    assert (await ns.get(made.ino)).mode == theirs.mode


async def test_a_commit_retried_after_a_lost_reply_is_done_once(redis_server: RedisServer,
                                                               clock: ManualClock) -> None:
    meta = redis_meta(redis_server)
    await meta.open()
    try:
        ns = namespace(meta, clock)
        made = await new_file(ns, await user_home(ns), "f")
        node = await ns.get(made.ino)
        ns.set_content(node, None, 0, node.artifact.sha256)  # type: ignore[union-attr]
        again = node.model_copy(deep=True)  # what a retry sends: the same record, at the same revision
        assert await meta.commit(node, base_version=0) is None
        assert await meta.commit(again, base_version=0) is None  # the same write again: no conflict with itself
        assert (await ns.get(made.ino)).artifact.version == 1  # type: ignore[union-attr]
    finally:
        await meta.close()


async def test_a_commit_of_a_removed_file_is_not_found_and_leaves_no_blob(meta: Any, clock: ManualClock) -> None:
    blobs = MemoryBlobStore()
    ns = namespace(meta, clock, blobs)
    made = await new_file(ns, await user_home(ns), "f")
    node = await ns.get(made.ino)
    key, size, sha256 = await ns.put_blob(node, b"bytes")
    ns.set_content(node, key, size, sha256)
    await ns.unlink(await ns.get(made.ino))
    with pytest.raises(ArtifactNotFoundError):
        await ns.commit(node, old_blob=None)
    assert blobs._blobs == {}


async def test_session_roots_are_scope_roots(meta: Any, clock: ManualClock) -> None:
    """What the insert's cover relies on: a session's directory is its scope root, with its space."""
    ns = namespace(meta, clock)
    space = Space(sandbox_id=BOX, scope=Scope.SESSION, session_id="s")
    root = await ns.scope_root(space)
    assert root.role is NodeRole.SCOPE_ROOT and root.space == space
