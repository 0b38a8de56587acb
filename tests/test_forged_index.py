"""What is not signed is not trusted (issue #16): forged index entries delete and expose nothing.

Only a node's record is signed; the columns and Redis keys that find it
(expiry, artifact id, parent/name, search sets) are edited here behind the
store's back, as whoever can write the database file or the Redis server
could. The store must act on the signed record, never on the index alone.
"""

from __future__ import annotations

import sqlite3

import pytest
from storekit import make_store
from storeprobe import redis_client, set_columns, set_redis_entry

from core import ArtifactCorruptedError, ArtifactNotFoundError, ArtifactStore, Scope, shards
from core.errors import DirectoryNotEmptyError
from core.nodes import Node, Space


async def node_of(store: ArtifactStore, artifact_id: str) -> Node:
    node = await store.ns.meta.find_artifact(artifact_id)
    assert node is not None
    return node


async def persistent(store: ArtifactStore, user: str, data: bytes, name: str = "keep.txt") -> tuple[str, Node]:
    artifact_id = await store.store(data, filename=name, user_id=user, scope="user", ttl=None)
    return artifact_id, await node_of(store, artifact_id)


async def session_with_file(store: ArtifactStore) -> tuple[str, Node]:
    session_id = await store.create_session(user_id="alice")
    await store.store(b"temp", filename="temp.txt", session_id=session_id, user_id="alice")
    root = await store.ns.session_root(store.sandbox_id, session_id)
    assert root is not None
    return session_id, root


@pytest.mark.semantics("S-trust-index")
async def test_a_forged_expiry_never_deletes_a_persistent_artifact(store: ArtifactStore, backend: str) -> None:
    keep, node = await persistent(store, "alice", b"keep")
    if backend == "redis-s3":
        client, meta = redis_client(store)
        with client:
            client.zadd(meta.key("exp", shard=shards.of_ino(node.ino)), {str(node.ino): 1})
    else:
        set_columns(store, node.ino, expires_at=1)
    await store.cleanup_expired_sessions()
    assert await store.retrieve(keep) == b"keep"


@pytest.mark.semantics("S-trust-index")
async def test_a_forged_artifact_id_answers_no_other_artifact(store: ArtifactStore, backend: str) -> None:
    alices, _ = await persistent(store, "alice", b"alice's")
    bobs, bob_node = await persistent(store, "bob", b"bob's")
    if backend == "redis-s3":
        # No map to forge: an id names its inode (shards.artifact_id_of). One made up to name bob's
        # inode, with other random digits, must not answer bob's artifact.
        alices = bobs[:13] + alices[13:]
        assert shards.ino_of_artifact(alices) == bob_node.ino and alices != bobs
    else:
        set_columns(store, (await node_of(store, alices)).ino, artifact_id=None)
        set_columns(store, bob_node.ino, artifact_id=alices)
    with pytest.raises(ArtifactNotFoundError):
        await store.retrieve(alices)  # never bob's bytes under alice's id
    assert await store.delete(alices) is False
    assert await store.ns.meta.get(bob_node.ino) is not None


@pytest.mark.semantics("S-trust-index")
async def test_a_forged_parent_never_pulls_a_file_into_a_session_delete(store: ArtifactStore, backend: str) -> None:
    keep, node = await persistent(store, "alice", b"keep")
    session_id, root = await session_with_file(store)
    if backend == "redis-s3":
        client, meta = redis_client(store)
        with client:
            set_redis_entry(client, meta, root.ino, "keep.txt", node.ino)
    else:
        set_columns(store, node.ino, parent=root.ino)
    assert [m.filename for m in await store.list_by_session(session_id)] == ["temp.txt"]
    if backend == "redis-s3":
        # The script sees a directory entry it cannot verify (no key in Lua): it refuses, and removes nothing.
        with pytest.raises(DirectoryNotEmptyError):
            await store.delete_session(session_id)
    else:
        assert await store.delete_session(session_id) == 1
    assert await store.retrieve(keep) == b"keep"


@pytest.mark.semantics("S-trust-index")
async def test_a_forged_entry_is_never_replaced(store: ArtifactStore, backend: str) -> None:
    keep, node = await persistent(store, "alice", b"keep")
    session_id, root = await session_with_file(store)
    if backend == "redis-s3":
        client, meta = redis_client(store)
        with client:
            set_redis_entry(client, meta, root.ino, "x.txt", node.ino)
    else:
        set_columns(store, node.ino, parent=root.ino, name="x.txt")
    assert await store.ns.meta.lookup(root.ino, "x.txt") is None  # the name's index says keep; its record does not
    with pytest.raises(ArtifactCorruptedError):
        await store.store(b"over", filename="x.txt", session_id=session_id, user_id="alice")
    assert await store.retrieve(keep) == b"keep"


@pytest.mark.semantics("S-trust-index")
async def test_a_forged_search_index_lists_no_other_artifact(store: ArtifactStore, backend: str) -> None:
    _, bob_node = await persistent(store, "bob", b"bob's")
    session_id, _ = await session_with_file(store)
    if backend == "redis-s3":
        client, meta = redis_client(store)
        with client:
            session = Space(sandbox_id=store.sandbox_id, scope=Scope.SESSION, session_id=session_id)
            client.sadd(meta.key("x", f"se:{store.sandbox_id}/{session_id}", shard=shards.of_space(session)), bob_node.ino)
    else:
        set_columns(store, bob_node.ino, session_id=session_id)
    assert [m.filename for m in await store.list_by_session(session_id)] == ["temp.txt"]
    assert [m.filename for m in await store.search(session_id=session_id)] == ["temp.txt"]


@pytest.mark.parametrize("sql_backend", ["memory", "fs-sqlite"])
async def test_forged_usage_columns_move_no_bytes_between_accounts(sql_backend: str, tmp_path, clock, limits) -> None:
    async with make_store(sql_backend, tmp_path / "data", clock, limits) as store:
        await _usage_follows_the_record(store)


async def _usage_follows_the_record(store: ArtifactStore) -> None:
    alices, node = await persistent(store, "alice", b"12345")
    set_columns(store, node.ino, usage_key=f"{store.sandbox_id}/user/bob", size=10**9)
    await store.delete(alices)
    usage = await store.ns.meta.usage(f"{store.sandbox_id}/user/alice")
    assert (usage.bytes, usage.files) == (0, 0)
    bob = await store.ns.meta.usage(f"{store.sandbox_id}/user/bob")
    assert (bob.bytes, bob.files) == (0, 0)


@pytest.mark.semantics("S-trust-rollback")
async def test_an_older_signed_record_written_back_is_refused(tmp_path, clock, limits) -> None:
    async with make_store("fs-sqlite", tmp_path / "data", clock, limits) as store:
        artifact_id = await store.store(b"x", summary="first", user_id="alice", scope="user", ttl=None)
        node = await node_of(store, artifact_id)
        path = store.ns.meta._path
        with sqlite3.connect(path, isolation_level=None) as db:
            old = db.execute("SELECT record, sig FROM node WHERE ino=?", (node.ino,)).fetchone()
        await store.update_metadata(artifact_id, summary="second")
        assert (await store.metadata(artifact_id)).summary == "second"
        db = sqlite3.connect(path, isolation_level=None)
        db.execute("UPDATE node SET record=?, sig=? WHERE ino=?", (*old, node.ino))
        db.close()
        with pytest.raises(ArtifactCorruptedError):
            await store.metadata(artifact_id)
