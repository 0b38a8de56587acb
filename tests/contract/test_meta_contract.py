"""The MetaStore contract (core/backends/meta/base.py), run on every implementation.

A new metadata backend proves itself by adding one line to ``META_STORES``:
an id and a function that makes a store on a fresh, empty namespace (the
function may ask pytest for fixtures, such as a server). Each test is one
promise of the protocol's docstrings: records round trip, multi-record
changes are atomic and answered with the typed errors, every conditional
write is conditional on the revision the caller read, removal hands back
the record as stored, usage counts follow every change.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import pytest
from servers import RedisServer
from storekit import minted_id

from core.backends.meta.base import Cover, Deferred, MetaStore, Settle
from core.backends.meta.redis.store import RedisMetaStore
from core.backends.meta.sqlite import SQLiteMetaStore
from core.errors import (
    AlreadyExistsError,
    ArtifactCorruptedError,
    ArtifactNotFoundError,
    DirectoryNotEmptyError,
    IsADirectoryError_,
    NotADirectoryError_,
    StaleRecordError,
)
from core.infra.signing import RecordSigner
from core.models import Scope, Usage
from core.nodes import ROOT_INO, Artifact, Node, NodeKind, NodeRole, Space, new_node

SIGNER = RecordSigner(b"meta-contract-key-0123456789abcdef")
OTHER_SIGNER = RecordSigner(b"another-key-entirely-0123456789ab")

# A store on a fresh namespace; ``signer`` signs its records. The same arguments again reach the
# same records (a second client of one store), except where the store cannot be shared (None).
MakeMeta = Callable[[pytest.FixtureRequest, Path, RecordSigner], MetaStore]


def sqlite_file(request: pytest.FixtureRequest, root: Path, signer: RecordSigner) -> MetaStore:
    return SQLiteMetaStore(root / "meta.sqlite3", signer)


def sqlite_memory(request: pytest.FixtureRequest, root: Path, signer: RecordSigner) -> MetaStore:
    return SQLiteMetaStore(":memory:", signer)


def redis(request: pytest.FixtureRequest, root: Path, signer: RecordSigner, cluster: bool = False) -> MetaStore:
    server = request.getfixturevalue("redis_cluster" if cluster else "redis_server")
    prefix = f"mc-{uuid.uuid5(uuid.NAMESPACE_URL, str(root)).hex[:16]}"
    return RedisMetaStore(server.url, signer, prefix=prefix, cluster=cluster)


# Every implementation, one line each: (id, maker, whether a second client shares the first one's records).
META_STORES = [
    pytest.param((sqlite_file, True), id="sqlite-file"),
    pytest.param((sqlite_memory, False), id="sqlite-memory"),
    pytest.param((redis, True), id="redis"),
    pytest.param((partial(redis, cluster=True), True), id="redis-cluster"),  # three masters (issue #17)
]


@dataclass
class Backend:
    make: MakeMeta
    shareable: bool
    request: pytest.FixtureRequest
    root: Path

    async def client(self, signer: RecordSigner = SIGNER) -> MetaStore:
        """Another client of the store under test (a second process, or one with another key)."""
        assert self.shareable, "a private in-memory database has no second client"
        store = self.make(self.request, self.root, signer)
        try:
            await store.open()
        except BaseException:
            await store.close()
            raise
        return store


# The implementations a second client can share (a second process, another host).
SHAREABLE = [param for param in META_STORES if param.values[0][1]]


@pytest.fixture(params=META_STORES)
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Backend:
    make, shareable = request.param
    return Backend(make, shareable, request, tmp_path)


@pytest.fixture(params=SHAREABLE)
def shared(request: pytest.FixtureRequest, tmp_path: Path) -> Backend:
    """A store that a second client can open: the tests of what clients share run on these."""
    make, shareable = request.param
    return Backend(make, shareable, request, tmp_path)


@pytest.fixture
async def meta(backend: Backend) -> AsyncIterator[MetaStore]:
    store = backend.make(backend.request, backend.root, SIGNER)
    await store.open()
    try:
        yield store
    finally:
        await store.close()


ALICE = Space(sandbox_id="box", scope=Scope.USER, user_id="alice")
BOB = Space(sandbox_id="box", scope=Scope.USER, user_id="bob")
SESSION = Space(sandbox_id="box", scope=Scope.SESSION, session_id="s1", user_id="alice")
OTHER_BOX = Space(sandbox_id="other", scope=Scope.USER, user_id="alice")


def a_file(parent: int, name: str, *, size: int = 0, space: Space = ALICE, expires: int | None = None) -> Node:
    node = new_node(parent=parent, name=name, kind=NodeKind.FILE, mode=0o644, now_ns=1, space=space)
    node.artifact = Artifact(artifact_id=minted_id(space), sha256="0" * 64, blob_key=f"blob-{name}")
    node.size, node.expires_at_ns = size, expires
    return node


def a_dir(parent: int, name: str, *, space: Space | None = ALICE, role: NodeRole = NodeRole.ENTRY) -> Node:
    return new_node(parent=parent, name=name, kind=NodeKind.DIR, mode=0o755, now_ns=1, space=space, role=role)


async def scope_root(meta: MetaStore, space: Space = ALICE, name: str = "alice") -> Node:
    """A scope root below the store's root: the directory user entries live in."""
    node, _ = await meta.insert(a_dir(ROOT_INO, name, space=space, role=NodeRole.SCOPE_ROOT))
    return node


def names(nodes: list[Node]) -> list[str]:
    return sorted(n.name for n in nodes)


# -- records round trip


async def test_a_fresh_store_has_its_root(meta: MetaStore) -> None:
    root = await meta.get(ROOT_INO)
    assert root is not None and root.is_dir and root.role is NodeRole.ROOT
    assert await meta.children(ROOT_INO) == []
    assert (await meta.totals()) == Usage()


async def test_an_inserted_node_reads_back_every_way(meta: MetaStore) -> None:
    home = await scope_root(meta)
    node = a_file(home.ino, "report.pdf", size=42)
    node.xattrs = {"user.colour": "626c7565"}
    node.artifact.meta = {"quarter": "Q4"}  # type: ignore[union-attr]
    inserted, replaced = await meta.insert(node)
    assert replaced is None and inserted is node and node.ino not in (0, ROOT_INO, home.ino)
    stored = await meta.get(node.ino)
    assert stored == node  # every field, artifact and xattrs included
    assert await meta.lookup(home.ino, "report.pdf") == node
    assert await meta.entry(home.ino, "report.pdf") == (home, node)
    assert await meta.entry(home.ino, "missing") == (home, None)
    assert await meta.entry(999_999, "x") == (None, None)
    assert await meta.find_artifact(node.artifact.artifact_id) == node  # type: ignore[union-attr]
    assert [c.ino for c in await meta.children(home.ino)] == [node.ino]


async def test_missing_things_are_none(meta: MetaStore) -> None:
    assert await meta.get(999_999) is None
    assert await meta.lookup(ROOT_INO, "nothing") is None
    assert await meta.find_artifact("no-such-artifact") is None
    assert await meta.children(999_999) == []


async def test_names_keep_their_bytes(meta: MetaStore) -> None:
    home = await scope_root(meta)
    odd = ["space and tab\t", "naïve résumé ✓", "new\nline", "x" * 255, "emoji 📦"]
    for name in odd:
        await meta.insert(a_file(home.ino, name))
    assert names(await meta.children(home.ino)) == sorted(odd)
    for name in odd:
        found = await meta.lookup(home.ino, name)
        assert found is not None and found.name == name


async def test_inode_numbers_are_never_reused(meta: MetaStore) -> None:
    home = await scope_root(meta)
    seen = {ROOT_INO, home.ino}
    for _ in range(3):
        node, _ = await meta.insert(a_file(home.ino, "again"))
        assert node.ino not in seen
        seen.add(node.ino)
        assert await meta.remove(node) is not None


async def test_children_are_the_entries_of_one_directory(meta: MetaStore) -> None:
    home = await scope_root(meta)
    sub, _ = await meta.insert(a_dir(home.ino, "sub"))
    for name in ("b", "a", "c"):
        await meta.insert(a_file(home.ino, name))
    await meta.insert(a_file(sub.ino, "deep"))
    assert names(await meta.children(home.ino)) == ["a", "b", "c", "sub"]
    assert names(await meta.children(sub.ino)) == ["deep"]
    assert names(await meta.children(ROOT_INO)) == ["alice"]  # the root never lists itself


async def pages(meta: MetaStore, parent: int, limit: int) -> list[list[str]]:
    """Every page of a listing of ``parent``, by name, ``limit`` names at a time."""
    out: list[list[str]] = []
    after: str | None = None
    while True:
        page = await meta.children_page(parent, after, limit)
        out.append([n.name for n in page.nodes])
        if not page.more:
            return out
        after = page.last


async def test_children_page_lists_a_directory_by_name_a_page_at_a_time(meta: MetaStore) -> None:
    home = await scope_root(meta)
    sub, _ = await meta.insert(a_dir(home.ino, "sub"))
    await meta.insert(a_file(sub.ino, "deep"))
    odd = ["b", "a", "naïve ✓", "Z", "emoji 📦", "a b", "x" * 255, "c"]
    for name in odd:
        await meta.insert(a_file(home.ino, name))
    expected = sorted([*odd, "sub"], key=lambda n: n.encode())  # UTF-8 byte order
    listed = await pages(meta, home.ino, 3)
    assert all(len(page) <= 3 for page in listed)
    assert [name for page in listed for name in page] == expected
    assert [n.name for n in (await meta.children_page(home.ino, "b", 2)).nodes] == expected[expected.index("b") + 1:][:2]
    assert [n.name for n in (await meta.children_page(ROOT_INO, None, 10)).nodes] == ["alice"]
    end = await meta.children_page(home.ino, expected[-1], 5)
    assert end.nodes == [] and not end.more
    assert (await meta.children_page(999_999, None, 5)).nodes == []


async def test_children_page_keeps_its_place_while_the_directory_changes(meta: MetaStore) -> None:
    """The name is the cursor: entries present throughout come exactly once, whatever changes between pages."""
    home = await scope_root(meta)
    stable = [f"s{i:03d}" for i in range(40)]
    for name in stable:
        await meta.insert(a_file(home.ino, name))
    transient = {name: (await meta.insert(a_file(home.ino, name)))[0] for name in ("s005x", "s030x")}
    seen: list[str] = []
    after: str | None = None
    turn = 0
    while True:
        page = await meta.children_page(home.ino, after, 7)
        seen += [n.name for n in page.nodes]
        turn += 1
        if turn == 2:  # between pages: remove an entry behind and one ahead, add some on both sides
            for node in transient.values():
                await meta.remove(node)
            for name in ("s000y", "s039y", "s020y"):
                await meta.insert(a_file(home.ino, name))
        if not page.more:
            break
        after = page.last
    assert len(seen) == len(set(seen))
    assert set(stable) <= set(seen)
    assert set(seen) <= set(stable) | set(transient) | {"s000y", "s039y", "s020y"}


async def test_search_finds_artifacts_by_their_space(meta: MetaStore) -> None:
    alice, bob = await scope_root(meta, ALICE, "alice"), await scope_root(meta, BOB, "bob")
    session = await scope_root(meta, SESSION, "s1")
    elsewhere = await scope_root(meta, OTHER_BOX, "other")
    await meta.insert(a_file(alice.ino, "a1"))
    await meta.insert(a_dir(alice.ino, "a-dir"))  # directories are no artifacts
    await meta.insert(a_file(bob.ino, "b1", space=BOB))
    await meta.insert(a_file(session.ino, "s1-file", space=SESSION))
    await meta.insert(a_file(elsewhere.ino, "x1", space=OTHER_BOX))

    async def found(**kw: object) -> list[str]:
        args = {"scope": None, "session_id": None, "user_id": None, **kw}
        return names(await meta.search("box", **args))  # type: ignore[arg-type]

    assert await found() == ["a1", "b1", "s1-file"]
    assert await found(user_id="alice") == ["a1", "s1-file"]
    assert await found(user_id="alice", scope=Scope.USER) == ["a1"]
    assert await found(session_id="s1") == ["s1-file"]
    assert await found(scope=Scope.SANDBOX) == []
    assert names(await meta.search("other", scope=None, session_id=None, user_id=None)) == ["x1"]


# -- insert: names, replacing, typed refusals


async def test_insert_refuses_a_taken_name_unless_replacing(meta: MetaStore) -> None:
    home = await scope_root(meta)
    first, _ = await meta.insert(a_file(home.ino, "f", size=10))
    with pytest.raises(AlreadyExistsError):
        await meta.insert(a_file(home.ino, "f"))
    second, replaced = await meta.insert(a_file(home.ino, "f", size=7), replace=True)
    assert replaced is not None and replaced.ino == first.ino and replaced.size == 10
    assert await meta.get(first.ino) is None
    assert (await meta.lookup(home.ino, "f")) == second
    assert await meta.find_artifact(first.artifact.artifact_id) is None  # type: ignore[union-attr]


async def test_insert_refusals_change_nothing(meta: MetaStore) -> None:
    home = await scope_root(meta)
    d, _ = await meta.insert(a_dir(home.ino, "d"))
    f, _ = await meta.insert(a_file(home.ino, "f", size=3))
    before = (await meta.children(home.ino), await meta.usage(ALICE.usage_key))
    with pytest.raises(IsADirectoryError_):
        await meta.insert(a_file(home.ino, "d"), replace=True)
    with pytest.raises(NotADirectoryError_):
        await meta.insert(a_file(f.ino, "below-a-file"))
    with pytest.raises(ArtifactNotFoundError):
        await meta.insert(a_file(999_999, "below-nothing"))
    assert (await meta.children(home.ino), await meta.usage(ALICE.usage_key)) == before
    assert await meta.children(d.ino) == []


# -- conditional writes: revisions


async def test_update_is_conditional_on_the_revision_read(meta: MetaStore) -> None:
    home = await scope_root(meta)
    node, _ = await meta.insert(a_file(home.ino, "f"))
    mine, theirs = await meta.get(node.ino), await meta.get(node.ino)
    assert mine is not None and theirs is not None
    theirs.mode = 0o600
    await meta.update(theirs)
    assert theirs.rev == mine.rev + 1  # the writer's object carries the revision it stored
    assert (await meta.get(node.ino)) == theirs
    mine.mode = 0o640
    with pytest.raises(StaleRecordError) as caught:
        await meta.update(mine)
    assert caught.value.current == theirs  # the record as stored, for the caller to re-apply its change to
    stored = await meta.get(node.ino)
    assert stored is not None and stored.mode == 0o600 and stored.rev == theirs.rev


async def test_update_of_a_removed_node_is_not_found(meta: MetaStore) -> None:
    home = await scope_root(meta)
    node, _ = await meta.insert(a_file(home.ino, "f"))
    stale = await meta.get(node.ino)
    assert await meta.remove(node) is not None and stale is not None
    with pytest.raises(ArtifactNotFoundError):
        await meta.update(stale)
    with pytest.raises(ArtifactNotFoundError):
        await meta.commit(stale, base_version=1)


async def test_commit_publishes_a_version_only_over_the_one_it_was_based_on(meta: MetaStore) -> None:
    home = await scope_root(meta)
    node, _ = await meta.insert(a_file(home.ino, "f", size=1))
    a, b = await meta.get(node.ino), await meta.get(node.ino)
    assert a is not None and b is not None and a.artifact is not None and b.artifact is not None
    a.artifact.version, a.artifact.blob_key, a.size = 2, "blob-a-v2", 5
    assert await meta.commit(a, base_version=1) is None
    assert a.rev == node.rev + 1
    b.artifact.version, b.artifact.blob_key, b.size = 2, "blob-b-v2", 9
    current = await meta.commit(b, base_version=1)  # a came first: nothing of b is written
    assert current == a
    stored = await meta.get(node.ino)
    assert stored == a and stored.artifact is not None and stored.artifact.blob_key == "blob-a-v2"
    assert (await meta.usage(ALICE.usage_key)).bytes == 5


async def test_commit_on_a_changed_record_returns_it(meta: MetaStore) -> None:
    home = await scope_root(meta)
    node, _ = await meta.insert(a_file(home.ino, "f"))
    read = await meta.get(node.ino)
    changed = await meta.get(node.ino)
    assert read is not None and changed is not None
    changed.mode = 0o600  # an attribute change, same version
    await meta.update(changed)
    assert read.artifact is not None
    read.artifact.version = 2
    assert await meta.commit(read, base_version=1) == changed
    assert (await meta.get(node.ino)) == changed


# -- rename and exchange


async def test_rename_moves_and_returns_what_it_replaced(meta: MetaStore) -> None:
    home = await scope_root(meta)
    sub, _ = await meta.insert(a_dir(home.ino, "sub"))
    f, _ = await meta.insert(a_file(home.ino, "f", size=4))
    g, _ = await meta.insert(a_file(sub.ino, "g", size=6))
    rev = f.rev
    assert await meta.rename(f, sub.ino, "moved", replace=False) is None
    assert (f.parent, f.name, f.rev) == (sub.ino, "moved", rev + 1)
    assert await meta.lookup(home.ino, "f") is None and (await meta.lookup(sub.ino, "moved")) == f
    replaced = await meta.rename(f, sub.ino, "g", replace=True)
    assert replaced is not None and replaced.ino == g.ino and await meta.get(g.ino) is None
    assert names(await meta.children(sub.ino)) == ["g"]
    assert await meta.rename(f, sub.ino, "g", replace=True) is None  # onto itself: nothing replaced
    assert (await meta.usage(ALICE.usage_key)) == Usage(bytes=4, files=1)


async def test_rename_refusals_change_nothing(meta: MetaStore) -> None:
    home = await scope_root(meta)
    full, _ = await meta.insert(a_dir(home.ino, "full"))
    empty, _ = await meta.insert(a_dir(home.ino, "empty"))
    await meta.insert(a_file(full.ino, "inside"))
    f, _ = await meta.insert(a_file(home.ino, "f"))
    g, _ = await meta.insert(a_file(home.ino, "g"))
    before = names(await meta.children(home.ino))
    with pytest.raises(AlreadyExistsError):
        await meta.rename(f, home.ino, "g", replace=False)
    with pytest.raises(IsADirectoryError_):
        await meta.rename(f, home.ino, "empty", replace=True)
    with pytest.raises(NotADirectoryError_):
        await meta.rename(empty, home.ino, "g", replace=True)
    with pytest.raises(DirectoryNotEmptyError):
        await meta.rename(empty, home.ino, "full", replace=True)
    assert names(await meta.children(home.ino)) == before
    assert (f.parent, f.name) == (home.ino, "f") and (await meta.get(f.ino)) == f and (await meta.get(g.ino)) == g


async def test_rename_is_conditional_on_the_revision_read(meta: MetaStore) -> None:
    home = await scope_root(meta)
    node, _ = await meta.insert(a_file(home.ino, "f"))
    stale, fresh = await meta.get(node.ino), await meta.get(node.ino)
    assert stale is not None and fresh is not None
    fresh.mode = 0o600
    await meta.update(fresh)
    with pytest.raises(StaleRecordError) as caught:
        await meta.rename(stale, home.ino, "elsewhere", replace=False)
    assert caught.value.current == fresh
    assert await meta.lookup(home.ino, "elsewhere") is None
    assert await meta.remove(fresh) is not None
    with pytest.raises(ArtifactNotFoundError):
        await meta.rename(fresh, home.ino, "gone", replace=False)


async def test_exchange_swaps_two_entries_atomically(meta: MetaStore) -> None:
    home = await scope_root(meta)
    sub, _ = await meta.insert(a_dir(home.ino, "sub"))
    a, _ = await meta.insert(a_file(home.ino, "a"))
    b, _ = await meta.insert(a_file(sub.ino, "b"))
    revs = (a.rev, b.rev)
    await meta.exchange(a, b)
    assert (a.parent, a.name, b.parent, b.name) == (sub.ino, "b", home.ino, "a")
    assert (a.rev, b.rev) == (revs[0] + 1, revs[1] + 1)
    assert (await meta.lookup(sub.ino, "b")) == a and (await meta.lookup(home.ino, "a")) == b
    stale = await meta.get(a.ino)
    assert stale is not None
    await meta.update(a)  # a moves on; the copy read before is stale now
    with pytest.raises(StaleRecordError):
        await meta.exchange(stale, b)
    assert (await meta.lookup(sub.ino, "b")) == a and (await meta.lookup(home.ino, "a")) == b


# -- remove


async def test_remove_returns_the_record_as_stored(meta: MetaStore) -> None:
    home = await scope_root(meta)
    node, _ = await meta.insert(a_file(home.ino, "f", size=1))
    read = await meta.get(node.ino)
    newer = await meta.get(node.ino)
    assert read is not None and newer is not None and newer.artifact is not None
    newer.artifact.version, newer.artifact.blob_key, newer.size = 2, "blob-f-v2", 2
    assert await meta.commit(newer, base_version=1) is None
    removed = await meta.remove(read)  # read at version 1: the version removed is the stored one
    assert removed == newer and removed.artifact is not None and removed.artifact.blob_key == "blob-f-v2"
    assert await meta.get(node.ino) is None and await meta.lookup(home.ino, "f") is None
    assert await meta.remove(read) is None  # gone already: nothing changes


async def test_remove_of_an_entry_moved_meanwhile_changes_nothing(meta: MetaStore) -> None:
    home = await scope_root(meta)
    node, _ = await meta.insert(a_file(home.ino, "f"))
    read = await meta.get(node.ino)
    await meta.rename(node, home.ino, "moved", replace=False)
    assert read is not None and await meta.remove(read) is None
    assert (await meta.lookup(home.ino, "moved")) == node


async def test_remove_needs_an_empty_directory(meta: MetaStore) -> None:
    home = await scope_root(meta)
    d, _ = await meta.insert(a_dir(home.ino, "d"))
    inner, _ = await meta.insert(a_file(d.ino, "inner"))
    with pytest.raises(DirectoryNotEmptyError):
        await meta.remove(d)
    assert (await meta.get(d.ino)) == d
    assert await meta.remove(inner) is not None
    assert await meta.remove(d) == d
    assert await meta.children(home.ino) == []


# -- directory times follow their entries


async def test_touch_sets_the_times_of_an_entrys_directory(meta: MetaStore) -> None:
    home = await scope_root(meta)
    sub, _ = await meta.insert(a_dir(home.ino, "sub"))

    async def times(ino: int) -> tuple[int, int]:
        node = await meta.get(ino)
        assert node is not None
        return node.mtime_ns, node.ctime_ns

    f, _ = await meta.insert(a_file(home.ino, "f"), touch_ns=100)
    assert await times(home.ino) == (100, 100)
    await meta.rename(f, sub.ino, "f", replace=False, touch_ns=200)
    assert await times(home.ino) == (200, 200) and await times(sub.ino) == (200, 200)
    await meta.remove(f, touch_ns=300)
    assert await times(sub.ino) == (300, 300) and await times(home.ino) == (200, 200)
    await meta.insert(a_file(home.ino, "quiet"))  # no touch_ns: times stay
    assert await times(home.ino) == (200, 200)
    # the fixed tree above the scope roots keeps its times: nothing below it is an entry
    users, _ = await meta.insert(a_dir(ROOT_INO, "users", space=None, role=NodeRole.USERS))
    await meta.insert(a_dir(users.ino, "bob", space=BOB, role=NodeRole.SCOPE_ROOT), touch_ns=400)
    assert await times(users.ino) == (1, 1)


async def test_a_rewrite_of_a_touched_directory_keeps_its_times(meta: MetaStore) -> None:
    home = await scope_root(meta)
    await meta.insert(a_file(home.ino, "f"), touch_ns=100)
    read = await meta.get(home.ino)
    assert read is not None and (read.mtime_ns, read.ctime_ns) == (100, 100)
    read.mode = 0o700
    await meta.update(read)
    stored = await meta.get(home.ino)
    assert stored is not None and (stored.mode, stored.mtime_ns, stored.ctime_ns) == (0o700, 100, 100)


# -- expiry


async def test_expired_lists_what_expired_by_then(meta: MetaStore) -> None:
    home = await scope_root(meta)
    for name, expires in (("early", 100), ("exact", 200), ("late", 300), ("never", None)):
        await meta.insert(a_file(home.ino, name, expires=expires))
    assert names(await meta.expired(50)) == []
    assert names(await meta.expired(200)) == ["early", "exact"]
    assert names(await meta.expired(10**18)) == ["early", "exact", "late"]
    assert len(await meta.expired(10**18, limit=2)) == 2
    late = await meta.lookup(home.ino, "late")
    assert late is not None
    late.expires_at_ns = None  # a TTL taken away
    await meta.update(late)
    assert names(await meta.expired(10**18)) == ["early", "exact"]


async def test_an_insert_covers_its_session_only_where_it_would_outlive_it(meta: MetaStore) -> None:
    root = a_dir(ROOT_INO, "s1", space=SESSION, role=NodeRole.SCOPE_ROOT)
    root.expires_at_ns = 1000
    session, _ = await meta.insert(root)
    await meta.insert(a_file(session.ino, "short", space=SESSION, expires=500), cover=Cover(session))
    stored = await meta.get(session.ino)
    assert stored is not None and stored.expires_at_ns == 1000  # never shortened
    await meta.insert(a_file(session.ino, "long", space=SESSION, expires=5000), cover=Cover(stored))
    stored = await meta.get(session.ino)
    assert stored is not None and stored.expires_at_ns == 5000
    await meta.insert(a_file(session.ino, "forever", space=SESSION), cover=Cover(session))  # read before: still applied
    stored = await meta.get(session.ino)
    assert stored is not None and stored.expires_at_ns is None
    assert names(await meta.expired(10**18)) == ["long", "short"]


# -- usage follows every change in the same transaction


async def test_usage_and_totals_follow_every_change(meta: MetaStore) -> None:
    alice, bob = await scope_root(meta, ALICE, "alice"), await scope_root(meta, BOB, "bob")
    f, _ = await meta.insert(a_file(alice.ino, "f", size=10))
    await meta.insert(a_file(alice.ino, "g", size=5))
    await meta.insert(a_dir(alice.ino, "d"))  # directories cost nothing
    await meta.insert(a_file(bob.ino, "h", size=1, space=BOB))
    assert await meta.usage(ALICE.usage_key) == Usage(bytes=15, files=2)
    assert await meta.totals() == Usage(bytes=16, files=3)
    assert f.artifact is not None
    f.artifact.version, f.size = 2, 100
    assert await meta.commit(f, base_version=1) is None
    assert await meta.usage(ALICE.usage_key) == Usage(bytes=105, files=2)
    await meta.insert(a_file(alice.ino, "g", size=7), replace=True)  # the replaced file's charge goes with it
    assert await meta.usage(ALICE.usage_key) == Usage(bytes=107, files=2)
    await meta.rename(f, alice.ino, "renamed", replace=False)
    assert await meta.usage(ALICE.usage_key) == Usage(bytes=107, files=2)
    await meta.remove(f)
    assert await meta.usage(ALICE.usage_key) == Usage(bytes=7, files=1)
    assert await meta.usage(BOB.usage_key) == Usage(bytes=1, files=1)
    assert await meta.totals() == Usage(bytes=8, files=2)
    assert await meta.usage("box/user/nobody") == Usage()



# -- repair (fsck --repair): conditional on the account's generation, or one atomic step


async def test_reset_usage_is_refused_once_a_change_charged_the_account(meta: MetaStore) -> None:
    alice = await scope_root(meta, ALICE, "alice")
    await meta.insert(a_file(alice.ino, "f", size=10))
    seen = await meta.usage_generation(ALICE.usage_key)
    await meta.insert(a_file(alice.ino, "g", size=5))  # lands between a count and its reset
    assert not await meta.reset_usage(ALICE.usage_key, Usage(bytes=10, files=1), generation=seen)
    assert await meta.usage(ALICE.usage_key) == Usage(bytes=15, files=2)
    now = await meta.usage_generation(ALICE.usage_key)
    assert now != seen
    assert await meta.reset_usage(ALICE.usage_key, Usage(bytes=20, files=3), generation=now)
    assert await meta.usage(ALICE.usage_key) == Usage(bytes=20, files=3)
    assert await meta.totals() == Usage(bytes=20, files=3)  # the totals follow a reset too
    assert not await meta.reset_usage(ALICE.usage_key, Usage(), generation=now)  # a reset moves it as well


async def test_recount_subdirs_takes_the_count_from_the_entries(meta: MetaStore) -> None:
    alice = await scope_root(meta, ALICE, "alice")
    await meta.insert(a_dir(alice.ino, "a"))
    await meta.insert(a_dir(alice.ino, "b"))
    await meta.insert(a_file(alice.ino, "f"))
    assert await meta.recount_subdirs(alice.ino) == 2
    stored = await meta.get(alice.ino)
    assert stored is not None and stored.subdirs == 2


# -- a second client: the same records, trusted only under the same key


async def test_a_second_client_sees_the_same_records(shared: Backend) -> None:
    meta = await shared.client()
    home = await scope_root(meta)
    node, _ = await meta.insert(a_file(home.ino, "shared", size=3))
    other = await shared.client()
    try:
        assert (await other.lookup(home.ino, "shared")) == node
        mine = await other.get(node.ino)
        assert mine is not None
        mine.mode = 0o600
        await other.update(mine)
        node.mode = 0o640
        with pytest.raises(StaleRecordError):  # the first client's copy is stale for every client
            await meta.update(node)
        later, _ = await other.insert(a_file(home.ino, "later"))
        assert later.ino != node.ino and (await meta.get(later.ino)) == later
    finally:
        await other.close()
        await meta.close()


async def test_records_signed_with_another_key_are_never_trusted(shared: Backend) -> None:
    meta = await shared.client()
    try:
        home = await scope_root(meta)
        await meta.insert(a_file(home.ino, "signed"))
    finally:
        await meta.close()
    with pytest.raises(ArtifactCorruptedError):  # not even the root: such a store does not open
        await shared.client(OTHER_SIGNER)


# -- the deletion queue (issue #16)


async def test_the_deletion_queue_answers_keys_only_when_due(meta: MetaStore) -> None:
    t = 1_733_000_000_123_456_789  # a real epoch time in ns: Redis keeps it as a double
    await meta.defer_delete(["a", "b"], t)
    await meta.defer_delete(["c"], t + 10_000)
    assert await meta.due_deletions(t - 1_000) == []
    assert sorted(e.key for e in await meta.due_deletions(t + 1_000)) == ["a", "b"]
    assert [e.key for e in await meta.due_deletions(t + 20_000)] == ["a", "b", "c"]
    assert len(await meta.due_deletions(t + 20_000, limit=2)) == 2
    assert await meta.pending_deletions() == ["a", "b", "c"]
    # Queued again: the new time holds, later or sooner; forget drops, in the same change, the
    # entries still at the time given (c), not one queued for another time since (b).
    await meta.defer_delete(["a"], t + 50_000, forget=[Deferred("c", t + 10_000), Deferred("b", t + 5_000)])
    assert [e.key for e in await meta.due_deletions(t + 20_000)] == ["b"]
    assert await meta.pending_deletions() == ["a", "b"]


async def test_forgetting_a_deletion_is_conditional_on_the_time_read(meta: MetaStore) -> None:
    t = 1_733_000_000_000_000_000
    await meta.defer_delete(["kept", "gone"], t)
    due = await meta.due_deletions(t)
    assert {e.key for e in due} == {"kept", "gone"}
    await meta.defer_delete(["kept"], t + 3_600_000_000_000)  # superseded again after gc read it
    await meta.forget_deletions(due)
    assert await meta.pending_deletions() == ["kept"]
    assert await meta.due_deletions(t + 1) == []


async def test_a_commit_changes_the_deletion_queue_in_its_own_step_or_not_at_all(meta: MetaStore) -> None:
    """A close's commit meets its blob's upload intent and queues the blob it replaces, with the record."""
    t = 1_733_000_000_000_000_000
    home = await scope_root(meta)
    node, _ = await meta.insert(a_file(home.ino, "f"))
    await meta.defer_delete(["v2"], t)  # the upload intent of the new version's blob
    mine, theirs = await meta.get(node.ino), await meta.get(node.ino)
    assert mine is not None and theirs is not None and mine.artifact is not None and theirs.artifact is not None
    theirs.artifact.version, theirs.artifact.blob_key = 2, "their-v2"
    assert await meta.commit(theirs, base_version=1) is None
    mine.artifact.version, mine.artifact.blob_key = 2, "v2"
    settle = Settle({"v1"}, t + 5_000, [Deferred("v2", t)])
    assert await meta.commit(mine, base_version=1, settle=settle) == theirs  # refused: the queue is untouched
    assert await meta.pending_deletions() == ["v2"]
    mine = await meta.get(node.ino)
    assert mine is not None and mine.artifact is not None
    mine.artifact.version, mine.artifact.blob_key = 3, "v2"
    assert await meta.commit(mine, base_version=2, settle=Settle({"their-v2"}, t + 5_000, [Deferred("v2", t)])) is None
    assert await meta.pending_deletions() == ["their-v2"]
    assert [e.not_before_ns for e in await meta.due_deletions(t + 5_000)] == [t + 5_000]


async def test_the_deletion_queue_is_shared_by_every_client(shared: Backend) -> None:
    meta, other = await shared.client(), await shared.client()
    try:
        await meta.defer_delete(["k"], 5_000)
        assert [e.key for e in await other.due_deletions(5_000)] == ["k"]
        await other.forget_deletions(await other.due_deletions(5_000))
        assert await meta.pending_deletions() == []
    finally:
        await other.close()
        await meta.close()


# -- hard links (issue #13)


async def linked_pair(meta: MetaStore) -> tuple[Node, Node, Node]:
    """A scope root, a directory in it, and a file of 5 bytes named ``f`` there and ``sub/g``."""
    home = await scope_root(meta)
    sub, _ = await meta.insert(a_dir(home.ino, "sub"))
    f, _ = await meta.insert(a_file(home.ino, "f", size=5))
    await meta.link(f, sub.ino, "g")
    return home, sub, f


async def test_a_link_is_a_second_name_of_one_record(meta: MetaStore) -> None:
    home, sub, f = await linked_pair(meta)
    assert f.names == [(home.ino, "f"), (sub.ino, "g")] and f.nlink == 2
    through_g = await meta.lookup(sub.ino, "g")
    assert through_g is not None and through_g.ino == f.ino and (through_g.parent, through_g.name) == (sub.ino, "g")
    assert sorted(through_g.names) == sorted(f.names) and through_g.rev == f.rev
    stored = await meta.get(f.ino)
    assert stored is not None and (stored.parent, stored.name) == (home.ino, "f")  # by inode: the primary name
    assert [(n.name, n.ino) for n in await meta.children(sub.ino)] == [("g", f.ino)]
    page = await meta.children_page(sub.ino, None, 10)
    assert [(n.name, n.ino) for n in page.nodes] == [("g", f.ino)] and not page.more
    assert [n.name for n in await meta.resolve(home.ino, ["sub", "g"])] == ["sub", "g"]
    assert (await meta.usage(ALICE.usage_key)) == Usage(bytes=5, files=1)  # one inode, charged once


async def test_a_link_needs_a_free_name_and_the_revision_read(meta: MetaStore) -> None:
    home, sub, f = await linked_pair(meta)
    with pytest.raises(AlreadyExistsError):
        await meta.link(f, home.ino, "f")
    stale = await meta.get(f.ino)
    assert stale is not None
    await meta.link(f, home.ino, "h")
    with pytest.raises(StaleRecordError):
        await meta.link(stale, home.ino, "i")
    assert await meta.lookup(home.ino, "i") is None
    assert len((await meta.get(f.ino)).names) == 3  # type: ignore[union-attr]


async def test_removing_one_name_keeps_the_inode_until_the_last(meta: MetaStore) -> None:
    home, sub, f = await linked_pair(meta)
    first = await meta.lookup(home.ino, "f")
    assert first is not None
    removed = await meta.remove(first, touch_ns=12345)
    assert removed is not None and not removed.last_name  # it had another name: it lives on
    left = await meta.get(f.ino)
    assert left is not None and left.names == [(sub.ino, "g")] and left.nlink == 1
    assert left.ctime_ns == 12345  # its link count changed (pjdfstest unlink/00)
    assert await meta.lookup(home.ino, "f") is None and names(await meta.children(home.ino)) == ["sub"]
    assert (await meta.usage(ALICE.usage_key)) == Usage(bytes=5, files=1)
    last = await meta.lookup(sub.ino, "g")
    assert last is not None
    gone = await meta.remove(last)
    assert gone is not None and gone.last_name and await meta.get(f.ino) is None
    assert await meta.children(sub.ino) == [] and (await meta.usage(ALICE.usage_key)) == Usage(bytes=0, files=0)


async def test_a_directory_holding_only_a_link_is_not_empty(meta: MetaStore) -> None:
    home, sub, f = await linked_pair(meta)
    with pytest.raises(DirectoryNotEmptyError):
        await meta.remove(sub)


async def test_rename_of_a_link_moves_that_name_alone(meta: MetaStore) -> None:
    home, sub, f = await linked_pair(meta)
    g = await meta.lookup(sub.ino, "g")
    assert g is not None
    await meta.rename(g, home.ino, "moved", replace=False)
    assert await meta.lookup(sub.ino, "g") is None
    assert sorted(n.name for n in await meta.children(home.ino)) == ["f", "moved", "sub"]
    stored = await meta.get(f.ino)
    assert stored is not None and sorted(stored.names) == sorted([(home.ino, "f"), (home.ino, "moved")])


async def test_rename_onto_another_name_of_the_same_inode_does_nothing(meta: MetaStore) -> None:
    home, sub, f = await linked_pair(meta)
    f_view = await meta.lookup(home.ino, "f")
    assert f_view is not None
    assert await meta.rename(f_view, sub.ino, "g", replace=True) is None
    stored = await meta.get(f.ino)
    assert stored is not None and sorted(stored.names) == sorted([(home.ino, "f"), (sub.ino, "g")])


async def test_replacing_a_linked_name_keeps_its_inode_under_the_others(meta: MetaStore) -> None:
    home, sub, f = await linked_pair(meta)
    other, _ = await meta.insert(a_file(home.ino, "other", size=3))
    replaced = await meta.rename(other, sub.ino, "g", replace=True, touch_ns=12345)
    assert replaced is not None and replaced.ino == f.ino and not replaced.last_name
    left = await meta.get(f.ino)
    assert left is not None and left.names == [(home.ino, "f")] and left.ctime_ns == 12345  # (pjdfstest rename/23)
    found = await meta.lookup(sub.ino, "g")
    assert found is not None and found.ino == other.ino
    # an insert over a linked name, the same way
    _, taken = await meta.insert(a_file(home.ino, "f", size=1), replace=True)
    assert taken is not None and taken.ino == f.ino and taken.last_name and await meta.get(f.ino) is None
    assert (await meta.usage(ALICE.usage_key)) == Usage(bytes=4, files=2)


async def test_exchange_of_a_link_swaps_that_name(meta: MetaStore) -> None:
    home, sub, f = await linked_pair(meta)
    other, _ = await meta.insert(a_file(home.ino, "other"))
    g = await meta.lookup(sub.ino, "g")
    assert g is not None
    await meta.exchange(g, other)
    at_g, at_other = await meta.lookup(sub.ino, "g"), await meta.lookup(home.ino, "other")
    assert at_g is not None and at_g.ino == other.ino and at_other is not None and at_other.ino == f.ino
    stored = await meta.get(f.ino)
    assert stored is not None and sorted(stored.names) == sorted([(home.ino, "f"), (home.ino, "other")])


# -- a dropped inode's blob, queued by the change that drops it (issue #16)


async def test_the_change_that_drops_an_inode_queues_its_blob(meta: MetaStore) -> None:
    home = await scope_root(meta)
    removed, _ = await meta.insert(a_file(home.ino, "removed"))
    for name in ("replaced", "renamed-over", "mover"):
        await meta.insert(a_file(home.ino, name))
    mover = await meta.lookup(home.ino, "mover")
    assert mover is not None
    await meta.remove(removed, drop_at_ns=5_000)
    await meta.insert(a_file(home.ino, "replaced"), replace=True, drop_at_ns=5_000)
    await meta.rename(mover, home.ino, "renamed-over", replace=True, drop_at_ns=5_000)
    queued = ["blob-removed", "blob-renamed-over", "blob-replaced"]
    assert await meta.pending_deletions() == queued
    assert await meta.due_deletions(4_999) == []
    assert sorted(key for key, _ in await meta.due_deletions(5_000)) == queued
    assert names(await meta.children(home.ino)) == ["renamed-over", "replaced"]


async def test_a_name_taken_from_a_linked_inode_queues_nothing(meta: MetaStore) -> None:
    home, sub, f = await linked_pair(meta)
    view = await meta.lookup(sub.ino, "g")
    assert view is not None
    await meta.remove(view, drop_at_ns=5_000)
    other, _ = await meta.insert(a_file(home.ino, "other"))
    await meta.link(other, sub.ino, "o2")
    await meta.insert(a_file(home.ino, "other", size=1), replace=True, drop_at_ns=5_000)
    assert await meta.pending_deletions() == []
    await meta.remove(f, drop_at_ns=5_000)  # its last name: now it goes
    assert await meta.pending_deletions() == ["blob-f"]


async def test_usages_lists_every_account(meta: MetaStore) -> None:
    home = await scope_root(meta)
    bob_home = await scope_root(meta, BOB, "bob")
    await meta.insert(a_file(home.ino, "a", size=3))
    await meta.insert(a_file(home.ino, "b", size=4))
    await meta.insert(a_file(bob_home.ino, "c", size=5, space=BOB))
    found = await meta.usages()
    assert found[ALICE.usage_key] == Usage(bytes=7, files=2) and found[BOB.usage_key] == Usage(bytes=5, files=1)
    assert sum(u.bytes for u in found.values()) == (await meta.totals()).bytes
