"""Two hosts on one metadata store: no write is blind (issue #16, part A).

Each test forces one interleaving instead of hoping for it: host A reads a
node, host B (a second metadata store instance on the same SQLite file or
the same Redis keys) changes it, then A's stale operation runs. Where A's
read and write happen inside one call (the library's update, the mount's
create), a hook holds A's metadata call until B's step is done.

What must hold: A never writes back the record it read over B's change
(a new version, a rename), the blob A deletes is the one of the record it
removed, and A gets the errno POSIX gives (ENOENT, not EIO; no EEXIST for
O_CREAT without O_EXCL).
"""

from __future__ import annotations

import errno
import os
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any, NamedTuple

import pyfuse3
import pytest
from servers import RedisServer
from storekit import commit_bytes, hold, make_store

from core import ArtifactStore, Limits
from core.backends.blobs.memory import MemoryBlobStore
from core.backends.meta.base import Cover
from core.backends.meta.redis.store import RedisMetaStore
from core.backends.meta.sqlite import SQLiteMetaStore
from core.errors import ArtifactNotFoundError
from core.infra.clock import ManualClock
from core.infra.signing import RecordSigner
from core.models import Scope
from core.nodes import Node, Space
from core.tree.namespace import Namespace

SIGNER = RecordSigner(b"meta-races-test-key-0123456789ab")
BOX = "box"
ALICE = Space(sandbox_id=BOX, scope=Scope.USER, user_id="alice")


class Hosts(NamedTuple):
    a: Namespace
    b: Namespace
    blobs: MemoryBlobStore


@pytest.fixture(params=["sqlite", "redis"])
async def hosts(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Hosts]:
    """Two namespaces (hosts A and B) on one metadata store and one blob store."""
    metas: list[SQLiteMetaStore | RedisMetaStore]
    if request.param == "sqlite":
        path = tmp_path / "meta.sqlite3"
        metas = [SQLiteMetaStore(path, SIGNER), SQLiteMetaStore(path, SIGNER)]
    else:
        server: RedisServer = request.getfixturevalue("redis_server")
        prefix = f"race-{uuid.uuid4().hex[:12]}"
        metas = [RedisMetaStore(server.url, SIGNER, prefix=prefix) for _ in range(2)]
    for meta in metas:
        await meta.open()
    clock, blobs = ManualClock(), MemoryBlobStore()
    try:
        yield Hosts(*(Namespace(meta, blobs, clock, Limits()) for meta in metas), blobs)
    finally:
        for meta in metas:
            await meta.close()


async def new_file(ns: Namespace, name: str, data: bytes = b"") -> Node:
    home = await ns.scope_root(ALICE)
    node = await ns.insert_file(await ns.file_node(home, name, ttl=None), replace=False, parent=home)
    return await commit_bytes(ns, node.ino, data) if data else node


async def read(ns: Namespace, node: Node) -> bytes:
    key = node.artifact.blob_key  # type: ignore[union-attr]
    assert key is not None
    return ns.blobs._blobs[key]  # type: ignore[attr-defined]  (a missing blob: KeyError)


async def left(ns: Namespace) -> set[str]:
    """The blobs stored once gc has run past every grace period (issue #16): the named ones, if nothing leaked."""
    await ns.collect_garbage(now_ns=2**62)
    return set(ns.blobs._blobs)  # type: ignore[attr-defined]


def blob_of(node: Node) -> str | None:
    return node.artifact.blob_key  # type: ignore[union-attr]


# -- rename


async def test_a_rename_moves_the_version_committed_meanwhile(hosts: Hosts) -> None:
    """A reads f (v1); B commits v2 and drops v1's blob; A renames f to g. g must be v2 (the Lua
    rename stored A's whole record, v1's deleted blob and all: every read of g was EIO)."""
    a, b, blobs = hosts
    made = await new_file(a, "f", b"one")
    stale = await a.get(made.ino)
    newer = await commit_bytes(b, made.ino, b"two")
    await a.rename(stale, await a.scope_root(ALICE), "g")
    moved = await b.get(made.ino)
    assert (moved.name, moved.artifact.version, blob_of(moved)) == ("g", 2, blob_of(newer))  # type: ignore[union-attr]
    assert await read(b, moved) == b"two"
    assert await left(a) == {blob_of(newer)}  # nothing leaked, nothing named but gone
    assert stale.name == "g" and stale.rev == moved.rev  # the caller's node is the record as stored


async def test_a_rename_whose_source_another_host_moved_or_removed_is_not_found(hosts: Hosts) -> None:
    """rename(f, g) after another host moved f to h: f does not exist (ENOENT), and h stays where
    it is; after another host removed f: ENOENT as well, not EIO ('vanished')."""
    a, b, _ = hosts
    home = await a.scope_root(ALICE)
    made = await new_file(a, "f", b"one")
    stale = await a.get(made.ino)
    await b.rename(await b.get(made.ino), await b.scope_root(ALICE), "h")
    with pytest.raises(ArtifactNotFoundError):
        await a.rename(stale, home, "g")
    assert [n.name for n in await b.list(await b.scope_root(ALICE))] == ["h"]
    stale = await a.get(made.ino)
    await b.unlink(await b.get(made.ino))
    with pytest.raises(ArtifactNotFoundError):
        await a.rename(stale, home, "g")


async def test_an_exchange_keeps_the_version_committed_meanwhile(hosts: Hosts) -> None:
    a, b, blobs = hosts
    f, g = await new_file(a, "f", b"f1"), await new_file(a, "g", b"g1")
    stale_f, stale_g = await a.get(f.ino), await a.get(g.ino)
    newer = await commit_bytes(b, f.ino, b"f2")
    await a.exchange(stale_f, stale_g)
    now_g = await b.get(f.ino)
    assert (now_g.name, blob_of(now_g)) == ("g", blob_of(newer))
    assert await read(b, now_g) == b"f2"
    assert await left(a) == {blob_of(newer), blob_of(await b.get(g.ino))}


# -- commit (publish at close)


async def test_a_commit_keeps_a_rename_made_meanwhile(hosts: Hosts) -> None:
    """A begins a version of f; B renames f to g; A's commit lands on g, and f does not come back."""
    a, b, blobs = hosts
    made = await new_file(a, "f", b"one")
    node = await a.get(made.ino)
    old_blob = blob_of(node)
    key, size, sha256 = await a.put_blob(node, b"two")
    a.set_content(node, key, size, sha256)
    await b.rename(await b.get(made.ino), await b.scope_root(ALICE), "g")
    chmodded = await b.get(made.ino)
    chmodded.mode = 0o600
    await b.meta.update(chmodded)
    committed = await a.commit(node, old_blob=old_blob)
    stored = await b.get(made.ino)
    assert (stored.name, stored.mode, blob_of(stored)) == ("g", 0o600, key)
    assert [n.name for n in await b.list(await b.scope_root(ALICE))] == ["g"]
    assert committed.name == "g" and committed.rev == stored.rev
    assert await left(a) == {key}


# -- attribute updates


def mount(ns: Namespace, tmp_path: Path) -> tuple[Any, Any]:
    """The mount's request handlers on ``ns`` (no kernel: the tests call them), and a caller."""
    from fusefs.callers import Callers
    from fusefs.operations import Operations

    callers = Callers(ns, enforce=False, mount_uid=os.getuid(), admin_uids=frozenset(), user_uids={})
    ops = Operations(ns, root_ino=1, sandbox_id=BOX, callers=callers, data_dir=tmp_path, spool_dir=tmp_path)
    return ops, SimpleNamespace(uid=os.getuid(), gid=os.getgid(), pid=os.getpid(), umask=0o022)


async def test_a_chmod_keeps_the_version_committed_meanwhile(hosts: Hosts, tmp_path: Path) -> None:
    """A mount's chmod reads f; B commits v2 (dropping v1's blob) before the chmod's write lands.
    The chmod is applied to v2, not written back with v1 (which would name a deleted blob)."""
    a, b, blobs = hosts
    made = await new_file(a, "f", b"one")
    ops, ctx = mount(a, tmp_path)
    newer: list[Node] = []

    async def b_commits() -> None:
        newer.append(await commit_bytes(b, made.ino, b"two"))

    attr = pyfuse3.EntryAttributes()
    attr.st_mode = 0o100600
    fields = SimpleNamespace(update_size=False, update_mode=True, update_uid=False, update_gid=False,
                             update_atime=False, update_mtime=False)
    hold(a.meta, "update", b_commits)
    await ops.setattr(made.ino, attr, fields, None, ctx)
    stored = await b.get(made.ino)
    assert (stored.mode, stored.artifact.version, blob_of(stored)) == (0o600, 2, blob_of(newer[0]))  # type: ignore[union-attr]
    assert await read(b, stored) == b"two"
    assert await left(a) == {blob_of(newer[0])}


async def test_an_insert_covers_the_session_as_it_is_now(hosts: Hosts) -> None:
    """The session root an insert moves out is not written back as the inserter read it: a change
    made to it meanwhile (here its metadata) survives."""
    a, b, _ = hosts
    session = await a.scope_root(Space(sandbox_id=BOX, scope=Scope.SESSION, session_id="s"))
    as_read = session.model_copy(deep=True)
    described = await b.get(session.ino)
    described.session_meta = {"tag": "kept"}
    await b.meta.update(described)
    a.clock.advance(10)  # type: ignore[attr-defined]
    node = await a.file_node(session, "f", ttl=900)
    node, _ = await a.meta.insert(node, touch_ns=a.now(), cover=Cover(as_read))
    stored = await b.get(session.ino)
    assert stored.session_meta == {"tag": "kept"} and stored.expires_at_ns == node.expires_at_ns


# -- unlink


async def test_an_unlink_deletes_the_blob_of_the_version_it_removed(hosts: Hosts) -> None:
    """A reads f (v1); B commits v2; A unlinks f. v2's blob goes with it (it leaked: A deleted v1's)."""
    a, b, blobs = hosts
    made = await new_file(a, "f", b"one")
    stale = await a.get(made.ino)
    await commit_bytes(b, made.ino, b"two")
    await a.unlink(stale)
    assert await b.meta.get(made.ino) is None
    assert await left(a) == set()


async def test_an_unlink_of_an_entry_moved_meanwhile_is_not_found(hosts: Hosts) -> None:
    a, b, blobs = hosts
    made = await new_file(a, "f", b"one")
    stale = await a.get(made.ino)
    await b.rename(await b.get(made.ino), await b.scope_root(ALICE), "g")
    with pytest.raises(ArtifactNotFoundError):
        await a.unlink(stale)
    assert (await b.get(made.ino)).name == "g" and len(await left(a)) == 1


# -- the library: read and write inside one call


@pytest.fixture(params=["fs-sqlite", "redis-s3"])
async def libraries(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[tuple[ArtifactStore, ArtifactStore]]:
    """Two library processes on one store (one data dir, or one Redis + bucket)."""
    if request.param == "redis-s3":
        request.getfixturevalue("redis_server")
        request.getfixturevalue("moto_server")
    clock = ManualClock()
    stores = [make_store(request.param, tmp_path, clock, Limits()) for _ in range(2)]
    try:
        yield stores[0], stores[1]
    finally:
        for store in stores:
            await store.close()


async def test_a_metadata_update_keeps_the_bytes_written_meanwhile(libraries: tuple[ArtifactStore, ArtifactStore]) -> None:
    """Process A updates an artifact's summary; process B writes new bytes between A's read and
    A's write. Both changes hold."""
    a, b = libraries
    artifact_id = await a.store(b"one", filename="f.txt", user_id="alice", scope=Scope.USER)
    await b.metadata(artifact_id, user_id="alice")

    async def b_writes() -> None:
        await b.update_file(artifact_id, data=b"two", user_id="alice")

    hold(a.ns.meta, "update", b_writes)
    await a.update_metadata(artifact_id, summary="kept", user_id="alice")
    assert await b.retrieve(artifact_id, user_id="alice") == b"two"
    assert (await b.metadata(artifact_id, user_id="alice")).summary == "kept"


async def test_a_delete_removes_the_bytes_written_meanwhile(libraries: tuple[ArtifactStore, ArtifactStore]) -> None:
    a, b = libraries
    artifact_id = await a.store(b"one", filename="f.txt", user_id="alice", scope=Scope.USER)
    await b.metadata(artifact_id, user_id="alice")

    async def b_writes() -> None:
        await b.update_file(artifact_id, data=b"two", user_id="alice")

    hold(a.ns.meta, "remove", b_writes)
    assert await a.delete(artifact_id, user_id="alice")
    assert not await b.exists(artifact_id, user_id="alice")
    await b.ns.collect_garbage(now_ns=2**62)  # past the grace period (issue #16)
    assert [key async for key in b.ns.blobs.keys()] == []  # noqa: SIM118 (a blob store, not a dict): nothing leaked


# -- the mount: create(O_CREAT) racing another host's create


async def test_o_creat_without_o_excl_opens_a_file_made_meanwhile(hosts: Hosts, tmp_path: Path) -> None:
    """A mount's create() loses its insert to another host's create of the same name: without
    O_EXCL it opens that file (open(2) never says EEXIST then); with O_EXCL it is EEXIST."""
    a, b, _ = hosts
    home = await a.scope_root(ALICE)
    ops, ctx = mount(a, tmp_path)
    theirs: list[Node] = []

    async def b_creates(name: str) -> None:
        theirs.append(await new_file(b, name, b"theirs"))

    hold(a.meta, "insert", lambda: b_creates("f"))
    info, attr = await ops.create(home.ino, b"f", 0o644, os.O_CREAT | os.O_WRONLY, ctx)  # type: ignore[arg-type]
    assert attr.st_ino == theirs[0].ino
    await ops.release(info.fh)
    hold(a.meta, "insert", lambda: b_creates("g"))
    with pytest.raises(pyfuse3.FUSEError) as refused:
        await ops.create(home.ino, b"g", 0o644, os.O_CREAT | os.O_EXCL | os.O_WRONLY, ctx)  # type: ignore[arg-type]
    assert refused.value.errno == errno.EEXIST
