"""Who may read and change what (DESIGN §7), scope by scope."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import pytest
from storeprobe import footprint

from core import (
    AccessDeniedError,
    ArtifactStore,
    StreamDownloadRequest,
    StreamUploadRequest,
)


@contextmanager
def admin(store: ArtifactStore) -> Iterator[ArtifactStore]:
    """The same store, holding the admin capability for a moment."""
    store.admin = True
    try:
        yield store
    finally:
        store.admin = False


async def read_all(store: ArtifactStore, artifact_id: str, **who: str) -> bytes:
    return b"".join([c async for c in store.stream_download(StreamDownloadRequest(artifact_id=artifact_id, **who))])


async def reads(store: ArtifactStore, artifact_id: str, **who: str) -> list[object]:
    """Every way of reading one artifact, for the given identity."""
    return [
        await store.retrieve(artifact_id, **who),
        await store.read_file(artifact_id, **who),
        await store.metadata(artifact_id, **who),
        await store.exists(artifact_id, **who),
        await read_all(store, artifact_id, **who),
    ]


async def assert_no_reads(store: ArtifactStore, artifact_id: str, **who: str) -> None:
    for call in (store.retrieve, store.read_file, store.metadata, store.exists):
        with pytest.raises(AccessDeniedError):
            await call(artifact_id, **who)
    with pytest.raises(AccessDeniedError):
        await read_all(store, artifact_id, **who)


async def assert_no_writes(store: ArtifactStore, artifact_id: str, **who: str) -> None:
    before = await footprint(store)
    snapshot = await store.metadata(artifact_id)
    attempts = [
        lambda: store.update_file(artifact_id, data=b"hijacked", **who),
        lambda: store.update_file(artifact_id, summary="hijacked", **who),
        lambda: store.update_metadata(artifact_id, meta={"owned": True}, **who),
        lambda: store.extend_ttl(artifact_id, 60, **who),
        lambda: store.move_file(artifact_id, new_filename="moved.txt", **who),
        lambda: store.copy_file(artifact_id, new_filename="copied.txt", **who),
        lambda: store.delete(artifact_id, **who),
    ]
    for attempt in attempts:
        with pytest.raises(AccessDeniedError):
            await attempt()
    assert await footprint(store) == before
    assert await store.metadata(artifact_id) == snapshot


# -- session scope


async def test_session_artifact_needs_its_session(store: ArtifactStore) -> None:
    mine = await store.create_session(user_id="alice")
    theirs = await store.create_session(user_id="bob")
    file_id = await store.store(b"private", filename="p.txt", session_id=mine, user_id="alice")
    got = await reads(store, file_id, session_id=mine)
    assert got[0] == got[1] == got[4] == b"private" and got[3] is True
    assert (await reads(store, file_id, user_id="alice"))[0] == b"private"  # the session's user, no session named
    assert (await reads(store, file_id))[0] == b"private"  # the application itself (no identity)
    await assert_no_reads(store, file_id, session_id=theirs)
    await assert_no_reads(store, file_id, user_id="bob")
    await assert_no_reads(store, file_id, session_id=theirs, user_id="alice")
    await assert_no_writes(store, file_id, session_id=theirs)
    await assert_no_writes(store, file_id, user_id="bob")
    # The owner may change it.
    await store.update_file(file_id, data=b"v2", session_id=mine)
    await store.update_metadata(file_id, meta={"ok": 1}, user_id="alice")
    assert await store.delete(file_id, session_id=mine) is True


async def test_sessions_of_one_user_are_isolated(store: ArtifactStore) -> None:
    first = await store.create_session(user_id="alice")
    second = await store.create_session(user_id="alice")
    file_id = await store.store(b"chat 1", session_id=first)
    await assert_no_reads(store, file_id, session_id=second)


async def test_store_into_another_users_session_refused(store: ArtifactStore) -> None:
    bobs = await store.create_session(user_id="bob")
    before = await footprint(store)
    with pytest.raises(AccessDeniedError):
        await store.store(b"x", session_id=bobs, user_id="alice")
    with pytest.raises(AccessDeniedError):
        await store.stream_upload(StreamUploadRequest(data_stream=iter([b"x"]), session_id=bobs, user_id="alice"))
    with pytest.raises(AccessDeniedError):
        await store.store_batch([{"data": b"x"}], session_id=bobs, user_id="alice")
    assert await footprint(store) == before


async def test_cross_session_copy_and_move_refused(store: ArtifactStore) -> None:
    alice_file = await store.store(b"Alice's private data", mime="text/plain", summary="Private file", user_id="alice")
    bob_file = await store.store(b"Bob's private data", mime="text/plain", summary="Private file", user_id="bob")
    bob_session = (await store.metadata(bob_file)).session_id
    alice_session = (await store.metadata(alice_file)).session_id
    before = await footprint(store)
    for who in ({}, {"user_id": "alice"}, {"session_id": alice_session}):
        with pytest.raises(AccessDeniedError):
            await store.copy_file(alice_file, target_session_id=bob_session, **who)
        with pytest.raises(AccessDeniedError):
            await store.move_file(alice_file, new_session_id=bob_session, **who)
    assert await footprint(store) == before
    assert await store.list_by_session(bob_session) == [await store.metadata(bob_file)]
    # Naming the artifact's own session is fine.
    same = await store.copy_file(alice_file, target_session_id=alice_session, new_filename="again.txt")
    assert (await store.metadata(same)).session_id == alice_session


# -- user scope


async def test_user_artifact_needs_its_user(store: ArtifactStore) -> None:
    doc_id = await store.store(b"Private data", mime="text/plain", summary="Alice's private doc", user_id="alice",
                               scope="user")
    assert (await reads(store, doc_id, user_id="alice"))[0] == b"Private data"
    alices_session = await store.create_session(user_id="alice")
    assert await store.retrieve(doc_id, session_id=alices_session, user_id="alice") == b"Private data"
    assert await store.retrieve(doc_id) == b"Private data"  # the application itself
    await assert_no_reads(store, doc_id, user_id="bob")
    await assert_no_reads(store, doc_id, session_id=alices_session)  # a session alone does not name the user
    await assert_no_writes(store, doc_id, user_id="bob")
    await store.update_file(doc_id, data=b"v2", user_id="alice")
    assert await store.delete(doc_id, user_id="alice") is True


async def test_user_scope_needs_a_user(store: ArtifactStore) -> None:
    from core import InvalidArgumentError

    with pytest.raises(InvalidArgumentError):
        await store.store(b"x", scope="user")


# -- shared (sandbox) scope


async def test_shared_scope_is_written_by_admin_only(store: ArtifactStore) -> None:
    before = await footprint(store)
    with pytest.raises(AccessDeniedError):
        await store.store(b"logo", mime="image/png", scope="sandbox", ttl=None)
    with pytest.raises(AccessDeniedError):
        await store.store(b"logo", scope="sandbox", user_id="alice")
    with pytest.raises(AccessDeniedError):
        await store.stream_upload(StreamUploadRequest(data_stream=iter([b"x"]), scope="sandbox"))
    with pytest.raises(AccessDeniedError):
        await store.store_batch([{"data": b"x"}], scope="sandbox")
    assert await footprint(store) == before
    with admin(store):
        logo = await store.store(b"logo", mime="image/png", summary="Company logo", scope="sandbox", ttl=None)
    for who in ({}, {"user_id": "alice"}, {"session_id": await store.create_session()}):
        got = await reads(store, logo, **who)
        assert got[0] == b"logo" and got[3] is True
        await assert_no_writes(store, logo, **who)
    assert [m.artifact_id for m in await store.search(scope="sandbox")] == [logo]
    with admin(store):
        await store.update_file(logo, data=b"new logo")
        copy = await store.copy_file(logo, new_filename="logo-copy.png")
        await store.move_file(copy, new_filename="old/logo.png")
        assert await store.delete(copy) is True
        assert await store.delete(logo) is True


async def test_admin_store_fixture_writes_shared(admin_store: ArtifactStore) -> None:
    template_id = await admin_store.store(b"tpl", mime="image/png", summary="tpl", scope="sandbox", ttl=None)
    meta = await admin_store.metadata(template_id)
    assert meta.scope.value == "sandbox" and meta.session_id is None and meta.user_id is None
    assert meta.key == f"grid/{admin_store.sandbox_id}/shared/{template_id}"
    assert meta.expires_at is None


async def test_admin_reaches_every_scope(store: ArtifactStore) -> None:
    session_file = await store.store(b"s", user_id="alice")
    user_file = await store.store(b"u", user_id="alice", scope="user")
    with admin(store):
        assert await store.retrieve(session_file, user_id="mallory") == b"s"
        assert await store.retrieve(user_file, session_id="any-session") == b"u"
