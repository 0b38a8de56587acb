"""TTL expiry on a clock the tests move: expired artifacts are never returned, cleanup removes their bytes."""

from __future__ import annotations

import pytest
from storeprobe import all_nodes, blob_key_of, blob_keys

from core import (
    ArtifactExpiredError,
    ArtifactNotFoundError,
    ArtifactStore,
    SessionError,
    StreamDownloadRequest,
)
from core.infra.clock import ManualClock
from core.nodes import NodeKind


async def assert_gone(
    store: ArtifactStore, artifact_id: str, session_id: str | None = None, error: type[Exception] = ArtifactExpiredError
) -> None:
    """No method returns the artifact any more (``error``: NotFound once it has been collected)."""
    for call in (store.retrieve, store.read_file, store.metadata):
        with pytest.raises(error):
            await call(artifact_id)
    for change in (
        lambda: store.update_file(artifact_id, data=b"new"),
        lambda: store.update_metadata(artifact_id, summary="new"),
        lambda: store.extend_ttl(artifact_id, 3600),
        lambda: store.copy_file(artifact_id, new_filename="copy"),
        lambda: store.move_file(artifact_id, new_filename="moved"),
    ):
        with pytest.raises(ArtifactNotFoundError):
            await change()
    with pytest.raises(ArtifactNotFoundError):
        async for _ in store.stream_download(StreamDownloadRequest(artifact_id=artifact_id)):
            pass
    assert await store.exists(artifact_id) is False
    assert artifact_id not in {m.artifact_id for m in await store.search()}
    if session_id is not None:
        for listing in (store.list_by_session(session_id), store.list_files(session_id),
                        store.get_directory_contents(session_id, "")):
            assert artifact_id not in {m.artifact_id for m in await listing}


async def test_artifact_expires_at_its_ttl(store: ArtifactStore, clock: ManualClock) -> None:
    session = await store.create_session(ttl_hours=10)
    short = await store.store(b"short", filename="short.txt", session_id=session, ttl=60)
    long = await store.store(b"long", filename="long.txt", session_id=session, ttl=3600)
    clock.advance(59.999)
    assert await store.retrieve(short) == b"short"
    clock.advance(0.001)  # expiry is inclusive: at expires_at it is gone
    await assert_gone(store, short, session)
    assert await store.retrieve(long) == b"long"
    assert [m.filename for m in await store.list_by_session(session)] == ["long.txt"]
    assert await store.delete(short) is False


async def test_default_ttl_of_session_artifacts(store: ArtifactStore, clock: ManualClock) -> None:
    file_id = await store.store(b"x", user_id="alice")
    session = (await store.metadata(file_id)).session_id
    forever = await store.store(b"y", user_id="alice", scope="user")
    clock.advance(899)
    assert await store.exists(file_id)
    clock.advance(1)
    await assert_gone(store, file_id, session)
    with pytest.raises(SessionError):  # the session went with it (default session TTL is 900 s too)
        await store.get_session_info(session)
    assert await store.list_by_session(session) == []
    clock.advance(10 * 365 * 86400)
    assert await store.retrieve(forever) == b"y"  # user artifacts live forever by default


async def test_user_artifact_with_ttl_expires(store: ArtifactStore, clock: ManualClock) -> None:
    doc = await store.store(b"doc", user_id="alice", scope="user", ttl=86400)
    clock.advance(86400)
    await assert_gone(store, doc)
    assert await store.search(user_id="alice", scope="user") == []


async def test_session_expiry_hides_its_files(store: ArtifactStore, clock: ManualClock) -> None:
    session = await store.create_session(user_id="bob", ttl_hours=1)
    file_id = await store.store(b"x", session_id=session, ttl=600)
    clock.advance(3600)
    await assert_gone(store, file_id, session)
    with pytest.raises(SessionError):
        await store.extend_session_ttl(session, 1)
    with pytest.raises(SessionError):
        await store.delete_session(session)


async def test_an_artifact_keeps_its_session_alive(store: ArtifactStore, clock: ManualClock) -> None:
    session = await store.create_session(ttl_hours=0.25)
    file_id = await store.store(b"x", session_id=session, ttl=7200)
    clock.advance(3600)
    assert await store.retrieve(file_id, session_id=session) == b"x"
    assert (await store.get_session_info(session)).session_id == session
    assert [m.artifact_id for m in await store.list_by_session(session)] == [file_id]


async def test_extending_keeps_it(store: ArtifactStore, clock: ManualClock) -> None:
    session = await store.create_session()
    file_id = await store.store(b"x", session_id=session, ttl=100)
    clock.advance(90)
    await store.extend_ttl(file_id, additional_seconds=100)
    await store.extend_session_ttl(session, additional_hours=1)
    clock.advance(100)
    assert await store.retrieve(file_id) == b"x"
    clock.advance(10)
    await assert_gone(store, file_id, session)


async def test_reusing_an_expired_session_id_starts_afresh(store: ArtifactStore, clock: ManualClock) -> None:
    old = await store.store(b"old", session_id="workflow_7", filename="a.txt")
    clock.advance(901)
    new = await store.store(b"new", session_id="workflow_7", filename="b.txt")
    assert [m.artifact_id for m in await store.list_by_session("workflow_7")] == [new]
    await assert_gone(store, old, "workflow_7", ArtifactNotFoundError)  # collected with its old session
    same_name = await store.store(b"again", session_id="workflow_7", filename="a.txt")
    assert await store.retrieve(same_name) == b"again"


async def test_replacing_an_expired_file_by_name(store: ArtifactStore, clock: ManualClock) -> None:
    session = await store.create_session(ttl_hours=5)
    old = await store.store(b"old", session_id=session, filename="r.txt", ttl=10)
    old_key = await blob_key_of(store, old)
    clock.advance(10)
    new = await store.store(b"new", session_id=session, filename="r.txt", ttl=10)
    assert await store.retrieve(new) == b"new"
    assert old_key not in await blob_keys(store)


async def test_cleanup_removes_blobs_and_metadata(store: ArtifactStore, clock: ManualClock) -> None:
    session = await store.create_session(user_id="carol", ttl_hours=1)
    doomed = [await store.store(bytes([i]) * 100, session_id=session, filename=f"d/{i}.bin", ttl=60) for i in range(3)]
    user_doomed = await store.store(b"u" * 100, user_id="carol", scope="user", ttl=60)
    kept = await store.store(b"k" * 100, session_id=session, filename="kept.bin", ttl=3000)
    forever = await store.store(b"f", user_id="carol", scope="user")
    doomed_keys = {await blob_key_of(store, i) for i in [*doomed, user_doomed]}
    kept_keys = {await blob_key_of(store, i) for i in (kept, forever)}
    assert doomed_keys | kept_keys <= await blob_keys(store)
    assert await store.cleanup_expired_sessions() == 0  # nothing has expired yet

    clock.advance(60)
    assert await store.cleanup_expired_sessions() == 4
    assert not doomed_keys & await blob_keys(store)  # really gone from the backend
    assert kept_keys <= await blob_keys(store)
    ids = {n.artifact.artifact_id for n in await all_nodes(store) if n.artifact is not None}
    assert ids == {kept, forever}  # and from the metadata
    stats = await store.get_stats()
    assert (stats["artifacts"], stats["bytes"]) == (2, 101)
    assert await store.retrieve(kept) == b"k" * 100

    clock.advance(3540)  # now the session (1 h) and its last file expire
    assert await store.cleanup_expired_sessions() == 1
    assert await blob_keys(store) == {await blob_key_of(store, forever)}
    sessions = [n for n in await all_nodes(store) if n.space is not None and n.space.session_id == session]
    assert sessions == []  # the session's directory went too
    assert await store.cleanup_expired_sessions() == 0


async def test_cleanup_of_an_empty_expired_session(store: ArtifactStore, clock: ManualClock) -> None:
    session = await store.create_session()
    nodes = len(await all_nodes(store))
    clock.advance(900)
    assert await store.cleanup_expired_sessions() == 0  # no artifacts, but ...
    assert len(await all_nodes(store)) == nodes - 1  # ... the session itself is gone
    assert all(n.name != session for n in await all_nodes(store) if n.kind is NodeKind.DIR)


async def test_cleanup_of_many(store: ArtifactStore, clock: ManualClock) -> None:
    # Mostly empty artifacts (no blob to write): what matters is their number, past one batch of the collector.
    ids = await store.store_batch([{"data": b"m" if i % 200 == 0 else b""} for i in range(1001)],
                                  session_id="bulk", ttl=5)
    assert len(await blob_keys(store)) == 6
    clock.advance(5)
    assert await store.cleanup_expired_sessions() == 1001  # more than one batch of the collector
    assert await blob_keys(store) == set()
    assert not await store.exists(ids[0])
