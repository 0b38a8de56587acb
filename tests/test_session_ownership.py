"""A session is its owner's, by one rule (core/api/access.py; issue #16)."""

from __future__ import annotations

import pytest
from storeprobe import footprint

from core import AccessDeniedError, ArtifactStore, InvalidArgumentError
from core.models import Scope
from core.nodes import Space


@pytest.mark.semantics("S-trust-owner")
async def test_a_batch_item_cannot_name_another_user(store: ArtifactStore) -> None:
    before = await footprint(store)
    with pytest.raises(AccessDeniedError):
        await store.store_batch([{"data": b"a"}, {"data": b"b", "user_id": "bob"}], user_id="alice")
    with pytest.raises(InvalidArgumentError):
        await store.store_batch([{"data": b"b", "user_id": "bob"}])
    assert await footprint(store) == before
    ids = await store.store_batch([{"data": b"a", "user_id": "alice"}], user_id="alice")
    assert (await store.metadata(ids[0])).user_id == "alice"


@pytest.mark.semantics("S-trust-owner")
async def test_another_users_session_id_reaches_nothing(store: ArtifactStore) -> None:
    session_id = await store.create_session(user_id="alice")
    artifact_id = await store.store(b"alice's", filename="a.txt", session_id=session_id, user_id="alice")
    as_bob = {"session_id": session_id, "user_id": "bob"}
    with pytest.raises(AccessDeniedError):
        await store.retrieve(artifact_id, **as_bob)
    with pytest.raises(AccessDeniedError):
        await store.update_metadata(artifact_id, summary="bob was here", **as_bob)
    with pytest.raises(AccessDeniedError):
        await store.delete(artifact_id, **as_bob)
    with pytest.raises(AccessDeniedError):
        await store.store(b"bob's", filename="b.txt", **as_bob)
    assert await store.retrieve(artifact_id, session_id=session_id, user_id="alice") == b"alice's"
    assert await store.retrieve(artifact_id, session_id=session_id) == b"alice's"  # the id alone: a capability
    assert (await store.metadata(artifact_id)).summary == ""


@pytest.mark.semantics("S-trust-owner")
async def test_a_session_made_in_the_mount_cannot_catch_another_users_store(store: ArtifactStore) -> None:
    ns = store.ns
    sessions = await ns.get((await ns.sandbox(store.sandbox_id)).ino)
    sessions_dir = await ns.meta.lookup(sessions.ino, "sessions")
    assert sessions_dir is not None
    # What `mkdir sessions/planned-id` by uid 4242 (mapped to no user; allow_other) does in fusefs/operations.py.
    await ns.mkdir(sessions_dir, "planned-id", 0o755, 4242, 4242, session_user=None, made_by_uid=4242)
    for who in ({"user_id": "alice"}, {}):
        with pytest.raises(AccessDeniedError):
            await store.store(b"alice's", filename="a.txt", session_id="planned-id", **who)
    # A uid mapped to alice makes alice's session: alice stores there, bob does not.
    await ns.mkdir(sessions_dir, "alices-id", 0o755, 1001, 1001, session_user="alice", made_by_uid=1001)
    await store.store(b"alice's", filename="a.txt", session_id="alices-id", user_id="alice")
    with pytest.raises(AccessDeniedError):
        await store.store(b"bob's", filename="b.txt", session_id="alices-id", user_id="bob")
    root = await ns.scope_root(Space(sandbox_id=store.sandbox_id, scope=Scope.SESSION, session_id="planned-id"))
    assert await ns.meta.children(root.ino) == []
