"""The Redis store on a real Redis Cluster of three masters (issue #17), and its shards anywhere.

A scope's keys share one hash slot, so the scopes spread over the masters
and every script runs on one node. What spans two shards (a scope root's
entry in the upper tree) is made in steps that each stand alone: these tests
cut those steps short and show what the next call makes of it.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import anyio
import pytest
import redis
from redis_cluster import RedisCluster
from storekit import minted_id, racing_inserts

from core import shards
from core.backends.meta.redis import store as redis_store
from core.backends.meta.redis.store import RedisMetaStore
from core.errors import ArtifactNotFoundError, CrossScopeError, DirectoryNotEmptyError
from core.infra.signing import RecordSigner
from core.models import Scope
from core.nodes import ROOT_INO, Artifact, Node, NodeKind, NodeRole, Space, new_node

SIGNER = RecordSigner(b"redis-cluster-test-key-0123456789")


def scope_root(space: Space, name: str) -> Node:
    return new_node(parent=ROOT_INO, name=name, kind=NodeKind.DIR, mode=0o755, now_ns=1, role=NodeRole.SCOPE_ROOT,
                    space=space)


def a_file(parent: int, name: str, space: Space, size: int = 1) -> Node:
    node = new_node(parent=parent, name=name, kind=NodeKind.FILE, mode=0o644, now_ns=1, space=space)
    node.artifact = Artifact(artifact_id=minted_id(space), sha256="0" * 64)
    node.size = size
    return node


def user(name: str) -> Space:
    return Space(sandbox_id="box", scope=Scope.USER, user_id=name)


@pytest.fixture
async def on_cluster(redis_cluster: RedisCluster) -> AsyncIterator[RedisMetaStore]:
    meta = RedisMetaStore(redis_cluster.url, SIGNER, prefix=f"cl-{uuid.uuid4().hex[:12]}", cluster=True)
    await meta.open()
    try:
        yield meta
    finally:
        await meta.close()


async def test_the_keys_of_thirty_scopes_spread_over_every_master(
    on_cluster: RedisMetaStore, redis_cluster: RedisCluster
) -> None:
    homes: dict[str, int] = {}
    for i in range(30):
        space = user(f"u{i}")
        root, _ = await on_cluster.insert(scope_root(space, f"u{i}"))
        await on_cluster.insert(a_file(root.ino, "f", space))
        homes[space.usage_key] = shards.of_ino(root.ino)
    with redis.RedisCluster.from_url(redis_cluster.url) as client:
        keys = list(client.scan_iter(match=f"{on_cluster.prefix}:*", count=1000))
    nodes_of: dict[int, set[int]] = {}  # shard -> the masters its keys are on
    for key in keys:
        shard = int(key[len(on_cluster.prefix) + 2 : key.index(b"}")])
        nodes_of.setdefault(shard, set()).add(redis_cluster.node_of_key(key))
    assert all(len(nodes) == 1 for nodes in nodes_of.values()), nodes_of  # a shard: one slot, one node
    masters = {port for _, port in redis_cluster.masters()}
    used = {next(iter(nodes_of[shard])) for shard in homes.values()}
    assert used == masters  # 30 scopes over three masters: each holds some
    assert {shards.of_ino(n.ino) for n in await on_cluster.children(ROOT_INO)} == set(homes.values())


async def test_racing_creators_of_one_scope_root_leave_one_and_nothing_else(redis_cluster: RedisCluster) -> None:
    prefix = f"cl-{uuid.uuid4().hex[:12]}"
    stores = [RedisMetaStore(redis_cluster.url, SIGNER, prefix=prefix, cluster=True) for _ in range(4)]
    for store in stores:
        await store.open()
    try:
        outcomes = await racing_inserts(stores, lambda: scope_root(user("alice"), "alice"), 24)
        assert outcomes == {"won": 1, "lost": 23}
        (root,) = await stores[0].children(ROOT_INO)
        assert await stores[1].lookup(ROOT_INO, "alice") == root
        assert await stores[2].orphans() == []  # every loser took its made record away again
    finally:
        for store in stores:
            await store.close()


async def test_a_root_made_but_never_entered_is_an_orphan_fsck_finds(on_cluster: RedisMetaStore) -> None:
    node = scope_root(user("bob"), "bob")
    home = shards.of_space(node.space)  # type: ignore[arg-type]
    node.ino = await on_cluster._new_ino(home)
    await on_cluster._register(home)
    await on_cluster._script(home, "make", "make", *on_cluster._args(node))  # then the process died
    assert await on_cluster.lookup(ROOT_INO, "bob") is None
    assert [n.ino for n in await on_cluster.orphans()] == [node.ino]
    made, _ = await on_cluster.insert(scope_root(user("bob"), "bob"))  # the next creator is not held up
    assert await on_cluster.lookup(ROOT_INO, "bob") == made


async def test_a_removal_cut_short_is_finished_by_the_next_insert(on_cluster: RedisMetaStore) -> None:
    space = user("carol")
    root, _ = await on_cluster.insert(scope_root(space, "carol"))
    home = shards.of_ino(root.ino)
    await on_cluster._script(home, "seal", "seal", root.ino, ROOT_INO, "carol")  # then the remover died
    with pytest.raises(ArtifactNotFoundError):
        await on_cluster.insert(a_file(root.ino, "late", space))
    assert await on_cluster.lookup(ROOT_INO, "carol") is None  # the removal was finished, not undone
    assert await on_cluster.get(root.ino) is None
    again, _ = await on_cluster.insert(scope_root(space, "carol"))
    await on_cluster.insert(a_file(again.ino, "fine", space))
    assert [n.name for n in await on_cluster.children(again.ino)] == ["fine"]


async def test_a_scope_root_goes_only_when_empty(on_cluster: RedisMetaStore) -> None:
    space = user("dave")
    root, _ = await on_cluster.insert(scope_root(space, "dave"))
    f, _ = await on_cluster.insert(a_file(root.ino, "f", space, size=5))
    with pytest.raises(DirectoryNotEmptyError):
        await on_cluster.remove(root)
    assert await on_cluster.lookup(ROOT_INO, "dave") == root  # a refused removal seals nothing
    await on_cluster.insert(a_file(root.ino, "g", space))
    await on_cluster.remove(f)
    (g,) = await on_cluster.children(root.ino)
    await on_cluster.remove(g)
    removed = await on_cluster.remove(root)
    assert removed is not None and removed.ino == root.ino
    assert await on_cluster.lookup(ROOT_INO, "dave") is None and await on_cluster.children(ROOT_INO) == []
    assert (await on_cluster.usage(space.usage_key)).files == 0


async def test_a_record_never_moves_between_scopes(on_cluster: RedisMetaStore) -> None:
    alice, bob = user("alice"), user("bob")
    root, _ = await on_cluster.insert(scope_root(alice, "alice"))
    other, _ = await on_cluster.insert(scope_root(bob, "bob"))
    f, _ = await on_cluster.insert(a_file(root.ino, "f", alice))
    with pytest.raises(CrossScopeError):
        await on_cluster.rename(f, other.ino, "f", replace=False)
    f.space = bob
    with pytest.raises(CrossScopeError):
        await on_cluster.update(f)
    assert [n.name for n in await on_cluster.children(other.ino)] == []


async def test_a_slot_moved_while_a_scope_changes_loses_and_fails_nothing(
    own_redis_cluster: RedisCluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``reshard``'s steps on the slot of the scope being written: every change succeeds (scripts
    wait out the half-moved slot instead of running on half of its keys), and the tree is whole."""
    cluster = own_redis_cluster
    waits: list[str] = []

    class Counted(redis_store._SlotMoving):
        def __init__(self, why: str) -> None:
            super().__init__(why)
            waits.append(why)

    monkeypatch.setattr(redis_store, "_SlotMoving", Counted)
    meta = RedisMetaStore(cluster.url, SIGNER, prefix=f"cl-{uuid.uuid4().hex[:12]}", cluster=True)
    await meta.open()
    try:
        space = user("erin")
        root, _ = await meta.insert(scope_root(space, "erin"))
        for i in range(200):  # keys enough for the move to take a while, a few at a time
            await meta.insert(a_file(root.ino, f"old{i}", space))
        slot = cluster.slot_of(meta.base(shards.of_ino(root.ino)))
        source = cluster.node_of_key(meta.base(shards.of_ino(root.ino)))
        target = next(port for _, port in cluster.masters() if port != source)
        names: set[str] = {f"old{i}" for i in range(200)}
        moving = anyio.Event()
        done = anyio.Event()

        async def move() -> None:
            moving.set()
            await anyio.to_thread.run_sync(lambda: cluster.migrate_slot(slot, target, batch=10, pause=0.01))
            done.set()

        changes = 0
        async with anyio.create_task_group() as group:
            group.start_soon(move)
            await moving.wait()
            while not done.is_set() or changes < 50:
                made, _ = await meta.insert(a_file(root.ino, f"new{changes}", space))
                names.add(f"new{changes}")
                if changes % 3 == 0:
                    await meta.rename(made, root.ino, f"moved{changes}", replace=False)
                    names.discard(f"new{changes}")
                    names.add(f"moved{changes}")
                old = await meta.lookup(root.ino, f"old{changes}")
                if old is not None:
                    await meta.remove(old)
                    names.discard(old.name)
                changes += 1
        assert waits and "migrating" in waits[0]  # the scripts did meet the slot half moved, and waited
        assert cluster.node_of_key(meta.base(shards.of_ino(root.ino))) == target
        assert {n.name for n in await meta.children(root.ino)} == names
        assert await meta.orphans() == []
        assert (await meta.usage(space.usage_key)).files == len(names)
    finally:
        await meta.close()
