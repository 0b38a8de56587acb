"""Paths, subtrees and lineages: the metadata reads that cost round trips per page, not per node.

``resolve`` (the nodes along a path), ``subtree`` (everything below a
directory) and ``lineage`` (the directories above nodes, what their
filenames are made of) answer many records in one call. These tests hold
them to what the one-node reads they replace would have answered, on SQLite
and on Redis alike: paths follow a directory rename at once (nothing is
stored that could go stale), expiry hides what it hid, every record is
verified, and Redis's pages (a walk, a search larger than one script
answers) lose nothing.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Any

import anyio
import pytest
import redis
from servers import RedisServer
from storeprobe import redis_inode, rewrite_redis_inode

from core import Limits
from core.backends.blobs.memory import MemoryBlobStore
from core.backends.meta.redis import store as redis_meta
from core.backends.meta.redis.store import RedisMetaStore
from core.backends.meta.sqlite import SQLiteMetaStore
from core.errors import ArtifactCorruptedError
from core.infra.clock import ManualClock
from core.infra.signing import RecordSigner
from core.models import Scope
from core.nodes import Node, Space
from core.tree.namespace import NS, Namespace

SIGNER = RecordSigner(b"meta-paths-test-key-0123456789ab")
BOX = "box"
SESSION = Space(sandbox_id=BOX, scope=Scope.SESSION, session_id="s1")
WIDE = 600  # entries of a directory too large for Redis to keep as a listpack (its HSCAN then pages)


@pytest.fixture(params=["sqlite", "redis"])
async def meta(request: pytest.FixtureRequest) -> AsyncIterator[SQLiteMetaStore | RedisMetaStore]:
    store: SQLiteMetaStore | RedisMetaStore
    if request.param == "sqlite":
        store = SQLiteMetaStore(":memory:", SIGNER)
    else:
        server: RedisServer = request.getfixturevalue("redis_server")
        store = RedisMetaStore(server.url, SIGNER, prefix=f"mp-{uuid.uuid4().hex[:12]}")
    await store.open()
    yield store
    await store.close()


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


def namespace(meta: Any, clock: ManualClock) -> Namespace:
    return Namespace(meta, MemoryBlobStore(), clock, Limits())


async def new_file(ns: Namespace, parent: Node, name: str) -> Node:
    return await ns.insert_file(await ns.file_node(parent, name, ttl=None), replace=False, parent=parent)


async def a_tree(ns: Namespace) -> tuple[Node, dict[str, Node]]:
    """A session holding ``top.txt``, ``a/b/c/deep.txt``, ``a/side.txt``, an empty ``e/`` and a link."""
    root = await ns.scope_root(SESSION)
    made: dict[str, Node] = {"top.txt": await new_file(ns, root, "top.txt")}
    a = made["a"] = await ns.mkdir(root, "a")
    b = made["a/b"] = await ns.mkdir(a, "b")
    c = made["a/b/c"] = await ns.mkdir(b, "c")
    made["a/b/c/deep.txt"] = await new_file(ns, c, "deep.txt")
    made["a/side.txt"] = await new_file(ns, a, "side.txt")
    made["e"] = await ns.mkdir(root, "e")
    made["link"] = await ns.symlink(root, "link", "a/side.txt")
    return root, made


async def test_resolve_answers_the_nodes_along_a_path_and_stops_at_the_first_missing(meta: Any,
                                                                                    clock: ManualClock) -> None:
    ns = namespace(meta, clock)
    root, made = await a_tree(ns)
    path = await meta.resolve(root.ino, ["a", "b", "c", "deep.txt"])
    assert [n.ino for n in path] == [made[p].ino for p in ("a", "a/b", "a/b/c", "a/b/c/deep.txt")]
    assert [n.ino for n in await meta.resolve(root.ino, ["a", "missing", "c"])] == [made["a"].ino]
    assert [n.ino for n in await meta.resolve(root.ino, ["top.txt", "below-a-file"])] == [made["top.txt"].ino]
    assert await meta.resolve(root.ino, []) == []
    assert await meta.resolve(10**9, ["a"]) == []
    walked = await ns.walk(SESSION, ["a", "b"])
    assert [n.ino for n in walked] == [root.ino, made["a"].ino, made["a/b"].ino]


async def test_subtree_answers_everything_below_a_directory_and_nothing_else(meta: Any, clock: ManualClock) -> None:
    ns = namespace(meta, clock)
    root, made = await a_tree(ns)
    other = await ns.scope_root(Space(sandbox_id=BOX, scope=Scope.SESSION, session_id="s2"))
    await new_file(ns, other, "elsewhere.txt")
    assert sorted(n.ino for n in await meta.subtree(root.ino)) == sorted(n.ino for n in made.values())
    below_a = {made[p].ino for p in ("a/b", "a/b/c", "a/b/c/deep.txt", "a/side.txt")}
    assert {n.ino for n in await meta.subtree(made["a"].ino)} == below_a
    assert await meta.subtree(made["e"].ino) == []
    assert sorted(path for path, _ in await ns.files_below(root)) == ["a/b/c/deep.txt", "a/side.txt", "top.txt"]


async def test_filenames_follow_a_directory_rename_at_once(meta: Any, clock: ManualClock) -> None:
    """Nothing stores a path: a rename of ``a`` (one record) is every path below it, renamed."""
    ns = namespace(meta, clock)
    root, made = await a_tree(ns)
    deep, side, top = made["a/b/c/deep.txt"], made["a/side.txt"], made["top.txt"]
    assert await ns.filenames([deep, side, top]) == ["a/b/c/deep.txt", "a/side.txt", "top.txt"]
    await ns.rename(made["a"], root, "renamed")
    await ns.rename(made["a/b"], made["e"], "moved")
    assert await ns.filenames([deep, side, top]) == ["e/moved/c/deep.txt", "renamed/side.txt", "top.txt"]
    assert await ns.filename_of(deep) == "e/moved/c/deep.txt"
    assert sorted(path for path, _ in await ns.files_below(root)) == [
        "e/moved/c/deep.txt", "renamed/side.txt", "top.txt"
    ]


async def test_lineage_ends_at_the_scope_root(meta: Any, clock: ManualClock) -> None:
    """The records a filename is made of, and no more: the fixed tree above the scope is not read."""
    ns = namespace(meta, clock)
    root, made = await a_tree(ns)
    known = await meta.lineage({made["a/b/c"].ino, made["a"].ino})
    assert set(known) == {made["a/b/c"].ino, made["a/b"].ino, made["a"].ino, root.ino}
    assert await meta.lineage(set()) == {}


async def test_a_scope_whose_metadata_mentions_an_entry_role_still_ends_the_path(meta: Any,
                                                                               clock: ManualClock) -> None:
    """User metadata saying ``"role":"entry"`` never makes a wrong filename (Redis once spotted an entry
    by its record's text; it keeps the role beside the record now, checked against it)."""
    ns = namespace(meta, clock)
    root, made = await a_tree(ns)
    await ns.update_node(root, lambda r: setattr(r, "session_meta", {"custom_metadata": {"role": "entry"}}))
    assert await ns.filenames([made["a/b/c/deep.txt"], made["top.txt"]]) == ["a/b/c/deep.txt", "top.txt"]


async def test_expiry_hides_what_a_walk_a_directory_at_a_time_hid(meta: Any, clock: ManualClock) -> None:
    ns = namespace(meta, clock)
    root, made = await a_tree(ns)
    brief = await ns.insert_file(await ns.file_node(root, "brief.txt", ttl=10), replace=False, parent=root)
    assert "brief.txt" in [path for path, _ in await ns.files_below(root)]
    await ns.update_node(made["a/b"], lambda d: setattr(d, "expires_at_ns", clock.now_ns() + 5 * NS))
    clock.advance(20)
    assert brief.expired(clock.now_ns())
    assert sorted(path for path, _ in await ns.files_below(root)) == ["a/side.txt", "top.txt"]


async def test_every_record_of_a_walk_or_a_lineage_is_verified(redis_server: RedisServer,
                                                              clock: ManualClock) -> None:
    meta = RedisMetaStore(redis_server.url, SIGNER, prefix=f"mp-{uuid.uuid4().hex[:12]}")
    await meta.open()
    try:
        ns = namespace(meta, clock)
        root, made = await a_tree(ns)
        with redis.Redis.from_url(meta.url) as r:
            key = meta.key("i", made["a/b"].ino)
            forged = redis_inode(r, key)["rec"].replace(b'"name":"b"', b'"name":"x"')  # renamed by a forger
            rewrite_redis_inode(r, key, rec=forged)
        with pytest.raises(ArtifactCorruptedError):
            await ns.filename_of(made["a/b/c/deep.txt"])
        with pytest.raises(ArtifactCorruptedError):
            await ns.files_below(root)
        with pytest.raises(ArtifactCorruptedError):
            await ns.walk(SESSION, ["a", "b"])
        assert await ns.filename_of(made["a/side.txt"]) == "a/side.txt"  # what it is not made of still reads
    finally:
        await meta.close()


async def test_redis_pages_lose_nothing(redis_server: RedisServer, clock: ManualClock,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """Pages of 7 records: a walk over many pages, a directory of many buckets read a page at a time, a
    search answered by its inos, and lineages in several scripts answer what SQLite does at once."""
    trees: dict[str, tuple[list[tuple[str, str]], list[str], list[str]]] = {}  # files, search, subtree
    for kind in ("sqlite", "redis"):
        store: Any = (SQLiteMetaStore(":memory:", SIGNER) if kind == "sqlite"
                      else RedisMetaStore(redis_server.url, SIGNER, prefix=f"mp-{uuid.uuid4().hex[:12]}"))
        await store.open()
        try:
            ns = namespace(store, clock)
            root, made = await a_tree(ns)
            wide = await ns.mkdir(made["a/b"], "wide")
            limiter = anyio.Semaphore(32)

            async def make(i: int, ns: Namespace = ns, wide: Node = wide, limiter: anyio.Semaphore = limiter) -> None:
                async with limiter:
                    await new_file(ns, wide, f"w{i:03d}")

            async with anyio.create_task_group() as tg:
                for i in range(WIDE):
                    tg.start_soon(make, i)
            if kind == "redis":  # past one bucket of its name order, so that a walk pages across buckets
                with redis.Redis.from_url(store.url) as r:
                    assert r.zcard(store.key("o", wide.ino)) > 1
            monkeypatch.setattr(redis_meta, "_LIST_INLINE", 7)
            files = sorted((path, node.name) for path, node in await ns.files_below(root))
            found = await store.search(BOX, scope=None, session_id="s1", user_id=None)
            names = sorted(await ns.filenames(found))
            trees[kind] = (files, names, sorted(n.name for n in await store.subtree(root.ino)))
            monkeypatch.undo()
        finally:
            await store.close()
    assert trees["redis"] == trees["sqlite"]
    files, names, _ = trees["redis"]
    assert len(files) == WIDE + 3 and [p for p, _ in files if p.startswith("a/b/wide/")] == [
        f"a/b/wide/w{i:03d}" for i in range(WIDE)
    ]
    assert names == sorted(p for p, _ in files)

