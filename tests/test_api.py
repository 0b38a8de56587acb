"""Every public method of ArtifactStore, on every embedded backend, under trio."""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator
from datetime import datetime, timedelta, timezone

import pytest
from storeprobe import blob_key_of, blob_keys, footprint

from core import (
    AccessDeniedError,
    ArtifactMetadata,
    ArtifactNotFoundError,
    ArtifactStore,
    GridKey,
    InvalidArgumentError,
    InvalidNameError,
    Scope,
    SessionError,
    SessionInfo,
    StoreClosedError,
    StreamDownloadRequest,
    StreamUploadRequest,
)
from core.infra.clock import ManualClock


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def wall(clock: ManualClock) -> datetime:
    """The store's idea of now, as the datetimes in its metadata spell it."""
    return datetime.fromtimestamp(clock.now_ns() / 1_000_000_000, tz=timezone.utc)


# -- store / retrieve / metadata


async def test_store_records_every_metadata_field(store: ArtifactStore, clock: ManualClock) -> None:
    session = await store.create_session(user_id="alice")
    before = wall(clock)
    file_id = await store.store(
        b"abc", mime="text/plain", summary="three letters", filename="docs/abc.txt",
        meta={"k": [1, 2], "n": None}, session_id=session, user_id="alice", ttl=120,
    )
    m = await store.metadata(file_id)
    assert isinstance(m, ArtifactMetadata)
    assert m.artifact_id == file_id
    assert m.sandbox_id == store.sandbox_id
    assert (m.session_id, m.user_id, m.scope) == (session, "alice", Scope.SESSION)
    assert m.key == f"grid/{store.sandbox_id}/sessions/{session}/{file_id}"
    assert (m.filename, m.mime, m.summary, m.meta) == ("docs/abc.txt", "text/plain", "three letters", {"k": [1, 2], "n": None})
    assert (m.bytes, m.sha256, m.version, m.ttl) == (3, sha(b"abc"), 1, 120)
    assert m.stored_at == m.updated_at == before
    assert m.expires_at == before + timedelta(seconds=120)


@pytest.mark.semantics("S-expiry-from-publish")
async def test_an_artifact_is_stored_when_its_bytes_have_arrived(store: ArtifactStore, clock: ManualClock) -> None:
    """stored_at, updated_at and the TTL count from the moment the artifact appears, not from when its
    upload began: an upload that took a minute does not come out a minute old."""
    session = await store.create_session(user_id="alice")
    began = wall(clock)

    async def slow_bytes() -> AsyncIterator[bytes]:
        yield b"abc"
        clock.advance(60)
        yield b"def"

    file_id = await store.stream_upload(StreamUploadRequest(data_stream=slow_bytes(), session_id=session,
                                                            user_id="alice", ttl=120))
    m = await store.metadata(file_id)
    assert m.stored_at == m.updated_at == began + timedelta(seconds=60)
    assert m.expires_at == m.stored_at + timedelta(seconds=120)


async def test_metadata_answers_like_a_mapping(store: ArtifactStore) -> None:
    file_id = await store.store(b"x", mime="text/plain", summary="s", filename="a.txt", meta={"q": "Q4"})
    m = await store.metadata(file_id)
    assert m["filename"] == "a.txt" and m["bytes"] == 1 and m["meta"]["q"] == "Q4"
    assert "session_id" in m and "nope" not in m
    assert m.get("summary") == "s" and m.get("nope", 7) == 7
    assert "artifact_id" in m.keys()
    with pytest.raises(KeyError):
        m["nope"]


async def test_store_defaults(store: ArtifactStore) -> None:
    file_id = await store.store(b"data")
    m = await store.metadata(file_id)
    assert m.filename == file_id  # no filename: the artifact id names the file
    assert m.mime == "application/octet-stream" and m.summary == "" and m.meta == {}
    assert m.scope is Scope.SESSION and m.session_id is not None and m.user_id is None
    assert m.ttl == 900 and m.expires_at is not None  # session artifacts expire by default
    guessed = await store.metadata(await store.store(b"%PDF", filename="r/report.pdf"))
    assert guessed.mime == "application/pdf"


async def test_store_same_filename_replaces(store: ArtifactStore) -> None:
    session = await store.create_session()
    first = await store.store(b"one", filename="same.txt", session_id=session)
    old_key = await blob_key_of(store, first)
    second = await store.store(b"two", filename="same.txt", session_id=session)
    assert second != first
    assert not await store.exists(first)
    assert await store.retrieve(second) == b"two"
    assert old_key not in await blob_keys(store)
    assert [m.artifact_id for m in await store.list_by_session(session)] == [second]


async def test_retrieve_and_read_file(store: ArtifactStore) -> None:
    text = "héllo wörld\n"
    file_id = await store.store(text.encode(), mime="text/plain")
    assert await store.retrieve(file_id) == text.encode()
    assert await store.read_file(file_id) == text.encode()
    assert await store.read_file(file_id, as_text=False) == text.encode()
    assert await store.read_file(file_id, as_text=True) == text
    latin = await store.store(text.encode("latin-1"))
    assert await store.read_file(latin, as_text=True, encoding="latin-1") == text
    with pytest.raises(InvalidArgumentError):
        await store.read_file(latin, as_text=True)


async def test_empty_artifact(store: ArtifactStore) -> None:
    file_id = await store.store(b"", filename="empty")
    assert await store.retrieve(file_id) == b""
    m = await store.metadata(file_id)
    assert (m.bytes, m.sha256) == (0, sha(b""))


async def test_unknown_artifact(store: ArtifactStore) -> None:
    with pytest.raises(ArtifactNotFoundError):
        await store.retrieve("0123456789abcdef")
    with pytest.raises(ArtifactNotFoundError):
        await store.metadata("0123456789abcdef")
    assert await store.exists("0123456789abcdef") is False
    assert await store.delete("0123456789abcdef") is False


# -- write_file / update_file / update_metadata


async def test_write_file(store: ArtifactStore) -> None:
    doc_id = await store.write_file(
        content="# Doc\n", filename="docs/README.md", mime="text/markdown", user_id="dev", meta={"v": "1.0"}
    )
    m = await store.metadata(doc_id)
    assert (m.filename, m.mime, m.meta, m.bytes) == ("docs/README.md", "text/markdown", {"v": "1.0"}, 6)
    assert await store.read_file(doc_id, as_text=True) == "# Doc\n"
    plain = await store.metadata(await store.write_file("x", filename="n.txt"))
    assert plain.mime == "text/plain"
    same = await store.write_file("# Doc v2\n", filename="ignored.md", overwrite_artifact_id=doc_id, user_id="dev")
    assert same == doc_id
    m2 = await store.metadata(doc_id)
    assert (m2.version, m2.filename, m2.meta) == (2, "docs/README.md", {"v": "1.0"})
    assert await store.read_file(doc_id, as_text=True) == "# Doc v2\n"


async def test_update_file_writes_a_new_version(store: ArtifactStore, clock: ManualClock) -> None:
    file_id = await store.store(b"v1", mime="text/plain", summary="first", filename="f.txt", meta={"a": 1, "b": 2})
    old_key = await blob_key_of(store, file_id)
    clock.advance(5)
    assert await store.update_file(file_id, data=b"version two", summary="second", meta={"b": 3, "c": 4}) is True
    m = await store.metadata(file_id)
    assert (m.version, m.bytes, m.sha256, m.summary) == (2, 11, sha(b"version two"), "second")
    assert m.meta == {"a": 1, "b": 3, "c": 4}
    assert m.updated_at - m.stored_at == timedelta(seconds=5)
    assert await store.retrieve(file_id) == b"version two"
    assert old_key not in await blob_keys(store)  # the superseded version's bytes are gone
    assert await blob_key_of(store, file_id) in await blob_keys(store)


async def test_update_file_fields_without_data(store: ArtifactStore) -> None:
    file_id = await store.store(b"same", mime="text/plain", filename="old/name.txt")
    await store.update_file(file_id, mime="text/csv", filename="new/name.csv")
    m = await store.metadata(file_id)
    assert (m.version, m.mime, m.filename) == (1, "text/csv", "new/name.csv")
    assert await store.retrieve(file_id) == b"same"
    await store.update_file(file_id, data=b"")
    assert await store.retrieve(file_id) == b""
    assert (await store.metadata(file_id)).sha256 == sha(b"")


async def test_update_metadata_merge_and_replace(store: ArtifactStore) -> None:
    file_id = await store.store(b"img", mime="image/jpeg", summary="photo", meta={"tags": ["a"], "keep": True})
    m = await store.update_metadata(file_id, summary="better", meta={"tags": ["a", "b"]}, merge=True)
    assert isinstance(m, ArtifactMetadata)
    assert m.summary == "better" and m.meta == {"tags": ["a", "b"], "keep": True}
    m = await store.update_metadata(file_id, meta={"only": 1}, merge=False)
    assert m.meta == {"only": 1} and m.summary == "better"
    assert (await store.metadata(file_id)).meta == {"only": 1}
    m = await store.update_metadata(file_id, filename="renamed.jpg", mime="image/png")
    assert (m.filename, m.mime, m.version) == ("renamed.jpg", "image/png", 1)
    assert await store.retrieve(file_id) == b"img"


async def test_update_metadata_ttl(store: ArtifactStore, clock: ManualClock) -> None:
    file_id = await store.store(b"t", ttl=60)
    m = await store.update_metadata(file_id, ttl=3600)
    assert m.ttl == 3600
    assert m.expires_at == wall(clock) + timedelta(seconds=3600)
    clock.advance(1800)
    assert await store.exists(file_id)  # the session was stretched to cover it
    m = await store.update_metadata(file_id, ttl=None)
    assert m.ttl is None and m.expires_at is None
    clock.advance(10 * 86400)
    assert await store.retrieve(file_id) == b"t"


async def test_extend_ttl(store: ArtifactStore, clock: ManualClock) -> None:
    file_id = await store.store(b"t", ttl=100)
    before = (await store.metadata(file_id)).expires_at
    m = await store.extend_ttl(file_id, additional_seconds=86400)
    assert m.expires_at == before + timedelta(seconds=86400)
    assert m.ttl == 86500
    clock.advance(50_000)
    assert await store.exists(file_id)
    forever = await store.store(b"u", user_id="u1", scope="user", ttl=None)
    assert (await store.extend_ttl(forever, 10, user_id="u1")).expires_at is None
    with pytest.raises(InvalidArgumentError):
        await store.extend_ttl(file_id, 0)
    with pytest.raises(InvalidArgumentError):
        await store.extend_ttl(file_id, -5)


# -- exists / delete / copy / move


async def test_exists_and_delete(store: ArtifactStore) -> None:
    file_id = await store.store(b"bye", filename="d/bye.txt")
    key = await blob_key_of(store, file_id)
    assert await store.exists(file_id) is True
    assert await store.delete(file_id) is True
    assert await store.exists(file_id) is False
    assert key not in await blob_keys(store)
    assert await store.delete(file_id) is False
    with pytest.raises(ArtifactNotFoundError):
        await store.retrieve(file_id)


async def test_copy_file(store: ArtifactStore) -> None:
    session = await store.create_session(user_id="alice")
    doc = await store.store(b"doc", mime="text/markdown", summary="readme", filename="docs/README.md",
                            meta={"v": 1}, session_id=session)
    backup = await store.copy_file(doc, new_filename="docs/README_backup.md", new_meta={"backup": True, "original_id": doc})
    assert backup != doc
    m = await store.metadata(backup)
    assert (m.filename, m.session_id, m.mime, m.summary) == ("docs/README_backup.md", session, "text/markdown", "readme")
    assert m.meta == {"v": 1, "backup": True, "original_id": doc}
    assert await store.retrieve(backup) == b"doc"
    assert await blob_key_of(store, backup) != await blob_key_of(store, doc)
    await store.update_file(doc, data=b"changed")
    assert await store.retrieve(backup) == b"doc"  # a copy, not a second name
    unnamed = await store.copy_file(doc, summary="other")
    assert (await store.metadata(unnamed)).filename == "docs/README_copy.md"
    again = await store.copy_file(doc)
    assert (await store.metadata(again)).filename == "docs/README_copy2.md"
    assert (await store.metadata(unnamed)).summary == "other"


async def test_copy_and_move_across_sessions_refused(store: ArtifactStore) -> None:
    alice = await store.store(b"a", user_id="alice")
    bob = await store.store(b"b", user_id="bob")
    bob_session = (await store.metadata(bob)).session_id
    before = await footprint(store)
    with pytest.raises(AccessDeniedError):
        await store.copy_file(alice, target_session_id=bob_session)
    with pytest.raises(AccessDeniedError):
        await store.move_file(alice, new_session_id=bob_session, new_filename="stolen.txt")
    assert await footprint(store) == before
    assert (await store.metadata(alice)).filename == alice


async def test_move_file(store: ArtifactStore) -> None:
    session = await store.create_session()
    file_id = await store.store(b"m", filename="a/b/c.txt", session_id=session, meta={"x": 1})
    key = await blob_key_of(store, file_id)
    moved = await store.move_file(file_id, new_filename="renamed.txt", new_meta={"y": 2})
    assert isinstance(moved, ArtifactMetadata)
    assert (moved.artifact_id, moved.filename, moved.meta) == (file_id, "renamed.txt", {"x": 1, "y": 2})
    assert await blob_key_of(store, file_id) == key  # metadata only: the bytes stay where they are
    assert await store.retrieve(file_id) == b"m"
    assert [m.filename for m in await store.list_by_session(session)] == ["renamed.txt"]
    victim = await store.store(b"v", filename="z/target.txt", session_id=session)
    victim_key = await blob_key_of(store, victim)
    await store.move_file(file_id, new_filename="z/target.txt")
    assert not await store.exists(victim)
    assert victim_key not in await blob_keys(store)
    assert await store.retrieve(file_id) == b"m"


# -- listing and search


async def _tree(store: ArtifactStore) -> str:
    session = await store.create_session(user_id="lister")
    for name in ["docs/a.md", "docs/b.md", "docs/deep/c.md", "images/x.png", "top.txt"]:
        await store.store(name.encode(), filename=name, session_id=session)
    return session


async def test_list_by_session(store: ArtifactStore) -> None:
    session = await _tree(store)
    files = await store.list_by_session(session)
    assert [f.filename for f in files] == ["docs/a.md", "docs/b.md", "docs/deep/c.md", "images/x.png", "top.txt"]
    assert all(f.session_id == session and f.bytes == len(f.filename) for f in files)
    assert len(await store.list_by_session(session, limit=2)) == 2
    assert await store.list_by_session("no-such-session") == []
    other = await store.create_session()
    await store.store(b"elsewhere", session_id=other)
    assert len(await store.list_by_session(session)) == 5


async def test_list_files_prefix(store: ArtifactStore) -> None:
    session = await _tree(store)
    assert [f.filename for f in await store.list_files(session, prefix="docs/")] == [
        "docs/a.md", "docs/b.md", "docs/deep/c.md"]
    assert [f.filename for f in await store.list_files(session, prefix="images/")] == ["images/x.png"]
    assert len(await store.list_files(session)) == 5
    assert await store.list_files(session, prefix="nothing/") == []


async def test_get_directory_contents(store: ArtifactStore) -> None:
    session = await _tree(store)
    assert [f.filename for f in await store.get_directory_contents(session, "docs/")] == ["docs/a.md", "docs/b.md"]
    assert [f.filename for f in await store.get_directory_contents(session, "docs")] == ["docs/a.md", "docs/b.md"]
    assert [f.filename for f in await store.get_directory_contents(session, "docs/deep/")] == ["docs/deep/c.md"]
    assert [f.filename for f in await store.get_directory_contents(session, "")] == ["top.txt"]
    assert await store.get_directory_contents(session, "nothing/") == []


async def test_search(admin_store: ArtifactStore) -> None:
    store = admin_store
    pdf = await store.store(b"%PDF", mime="application/pdf", user_id="alice", scope="user", meta={"quarter": "Q4"})
    png = await store.store(b"png", mime="image/png", user_id="alice", scope="user", meta={"quarter": "Q3"})
    sess = await store.store(b"s", mime="application/pdf", user_id="alice", meta={"quarter": "Q4"})
    bob = await store.store(b"b", mime="application/pdf", user_id="bob", scope="user", meta={"quarter": "Q4"})
    shared = await store.store(b"logo", mime="image/png", scope="sandbox", ttl=None)

    def ids(found: list[ArtifactMetadata]) -> set[str]:
        return {m.artifact_id for m in found}

    assert ids(await store.search(user_id="alice", scope="user")) == {pdf, png}
    assert ids(await store.search(user_id="alice")) == {pdf, png, sess}
    assert ids(await store.search(user_id="alice", scope="user", mime_prefix="application/pdf")) == {pdf}
    assert ids(await store.search(user_id="alice", scope="user", meta_filter={"quarter": "Q4"})) == {pdf}
    assert ids(await store.search(meta_filter={"quarter": "Q4"})) == {pdf, sess, bob}
    assert ids(await store.search(scope="sandbox")) == {shared}
    assert ids(await store.search(scope=Scope.USER)) == {pdf, png, bob}
    assert ids(await store.search(mime_prefix="image/")) == {png, shared}
    assert ids(await store.search(session_id=(await store.metadata(sess)).session_id)) == {sess}
    assert await store.search(user_id="nobody") == []
    assert len(await store.search(user_id="alice", limit=1)) == 1
    with pytest.raises(InvalidArgumentError):
        await store.search(scope="planet")


# -- batch


async def test_store_batch(store: ArtifactStore) -> None:
    files = [
        {"data": f"img{i}".encode(), "mime": "image/jpeg", "filename": f"products/img-{i}.jpg",
         "summary": f"Product image {i}", "meta": {"product_id": "LPT-001", "i": i}}
        for i in range(10)
    ]
    ids = await store.store_batch(files, session_id="catalog_42", ttl=86400)
    assert len(ids) == 10 and len(set(ids)) == 10
    for i, file_id in enumerate(ids):
        m = await store.metadata(file_id)
        assert (m.filename, m.session_id, m.ttl, m.meta["i"]) == (f"products/img-{i}.jpg", "catalog_42", 86400, i)
        assert await store.retrieve(file_id) == f"img{i}".encode()
    assert len(await store.list_by_session("catalog_42")) == 10
    assert await store.store_batch([], session_id="catalog_42") == []
    auto = await store.store_batch([{"data": b"1"}, {"data": b"2"}], user_id="carol")
    sessions = {(await store.metadata(i)).session_id for i in auto}
    assert len(sessions) == 1


async def test_store_batch_refuses_bad_items_before_writing(store: ArtifactStore) -> None:
    await store.create_session()  # the sandbox exists: footprint compares like with like
    before = await footprint(store)
    good = {"data": b"ok", "filename": "ok.txt"}
    for bad in ({"filename": "x"}, {"data": "not bytes"}, {"data": b"x", "meta": {"s": {1, 2}}},
                {"data": b"x", "filename": "../up"}, {"data": b"x", "colour": "red"}):
        with pytest.raises(InvalidArgumentError):
            await store.store_batch([good, bad], session_id="batchsess")
    assert await footprint(store) == before


# -- streaming


async def test_stream_upload_and_download_with_progress(store: ArtifactStore) -> None:
    chunks = [bytes([i]) * 70_000 for i in range(10)]
    payload = b"".join(chunks)

    async def source():
        for c in chunks:
            yield c

    up: list[tuple[int, int | None]] = []
    request = StreamUploadRequest(
        data_stream=source(), mime="video/mp4", summary="demo", filename="v/demo.mp4", user_id="alice",
        content_length=len(payload), progress_callback=lambda sent, total: up.append((sent, total)),
        meta={"fps": 60},
    )
    file_id = await store.stream_upload(request)
    assert up[-1] == (len(payload), len(payload))
    assert [s for s, _ in up] == sorted(s for s, _ in up) and len(up) >= len(chunks)
    m = await store.metadata(file_id)
    assert (m.bytes, m.sha256, m.filename, m.mime, m.meta, m.user_id) == (
        len(payload), sha(payload), "v/demo.mp4", "video/mp4", {"fps": 60}, "alice")

    down: list[tuple[int, int | None]] = []
    got = bytearray()
    sizes = []
    async for chunk in store.stream_download(StreamDownloadRequest(
        artifact_id=file_id, user_id="alice", chunk_size=65536, progress_callback=lambda r, t: down.append((r, t)),
    )):
        sizes.append(len(chunk))
        got += chunk
    assert bytes(got) == payload
    assert max(sizes) <= 65536
    assert down[-1] == (len(payload), len(payload)) and len(down) == len(sizes)


async def test_stream_upload_without_length_and_from_sync_iterable(store: ArtifactStore) -> None:
    up: list[tuple[int, int | None]] = []
    file_id = await store.stream_upload(StreamUploadRequest(
        data_stream=iter([b"ab", b"", b"cd"]), progress_callback=lambda s, t: up.append((s, t)), scope="user",
        user_id="u", ttl=None,
    ))
    assert up[-1] == (4, None)
    assert await store.retrieve(file_id, user_id="u") == b"abcd"
    m = await store.metadata(file_id)
    assert (m.scope, m.ttl) == (Scope.USER, None)


async def test_stream_upload_length_mismatch_leaves_nothing(store: ArtifactStore) -> None:
    session = await store.create_session()
    before = await footprint(store)

    async def source():
        yield b"12345"

    with pytest.raises(InvalidArgumentError):
        await store.stream_upload(StreamUploadRequest(data_stream=source(), session_id=session,
                                                      filename="short/x.bin", content_length=6))
    assert await footprint(store) == before


async def test_stream_upload_failing_source_leaves_nothing(store: ArtifactStore) -> None:
    session = await store.create_session()
    before = await footprint(store)

    async def source():
        yield b"x" * 3_000_000
        raise ConnectionResetError("client went away")

    with pytest.raises(ConnectionResetError):
        await store.stream_upload(StreamUploadRequest(data_stream=source(), session_id=session, filename="y/z.bin"))
    assert await footprint(store) == before


async def test_stream_download_of_empty_and_unknown(store: ArtifactStore) -> None:
    empty = await store.store(b"")
    assert [c async for c in store.stream_download(StreamDownloadRequest(artifact_id=empty))] == []
    with pytest.raises(ArtifactNotFoundError):
        async for _ in store.stream_download(StreamDownloadRequest(artifact_id="feedfacefeedface")):
            pass


# -- grid, sandbox, stats, configuration


async def test_parse_grid_key(store: ArtifactStore) -> None:
    file_id = await store.store(b"g", session_id="example-session")
    key = (await store.metadata(file_id)).key
    parsed = store.parse_grid_key(key)
    assert isinstance(parsed, GridKey)
    assert (parsed.sandbox_id, parsed.session_id, parsed.artifact_id, parsed.scope) == (
        store.sandbox_id, "example-session", file_id, Scope.SESSION)
    assert parsed["subpath"] is None
    user = store.parse_grid_key("grid/app/users/alice/abc123/part/2")
    assert (user.scope, user.user_id, user.artifact_id, user.subpath) == (Scope.USER, "alice", "abc123", "part/2")
    shared = store.parse_grid_key("grid/app/shared/logo1")
    assert (shared.scope, shared.artifact_id, shared.session_id, shared.user_id) == (Scope.SANDBOX, "logo1", None, None)
    for bad in ("nope/app/shared/x", "grid/app/planets/x", "grid/../shared/x", "grid", "grid/app/sessions"):
        with pytest.raises(InvalidNameError):
            store.parse_grid_key(bad)
    assert store.get_canonical_prefix("s1") == f"grid/{store.sandbox_id}/sessions/s1/"
    assert store.generate_artifact_key("s1", "a1") == f"grid/{store.sandbox_id}/sessions/s1/a1"


async def test_get_sandbox_info(store: ArtifactStore, backend: str) -> None:
    info = await store.get_sandbox_info()
    assert info["sandbox_id"] == store.sandbox_id
    assert info["grid_prefix_pattern"] == f"grid/{store.sandbox_id}/"
    assert info["shared_prefix"] == f"grid/{store.sandbox_id}/shared/"
    assert info["storage_provider"] == {"memory": "memory", "fs-sqlite": "filesystem"}.get(backend, info["storage_provider"])


async def test_get_stats(store: ArtifactStore) -> None:
    stats = await store.get_stats()
    assert (stats["artifacts"], stats["bytes"]) == (0, 0)
    assert {"storage_provider", "bucket", "session_provider", "sandbox_id"} <= set(stats)
    a = await store.store(b"12345")
    await store.store(b"678", user_id="u", scope="user")
    stats = await store.get_stats()
    assert (stats["artifacts"], stats["bytes"]) == (2, 8)
    await store.update_file(a, data=b"1")
    await store.delete(a)
    stats = await store.get_stats()
    assert (stats["artifacts"], stats["bytes"]) == (1, 3)
    assert stats["session_manager"]["default_session_ttl"] == 900


async def test_validate_configuration(store: ArtifactStore) -> None:
    status = await store.validate_configuration()
    assert status["storage"]["status"] == "ok"
    assert status["session"]["status"] == "ok"


# -- sessions


async def test_user_id_auto_creates_a_session(store: ArtifactStore) -> None:
    file_id = await store.store(b"x", user_id="alice")
    session = (await store.metadata(file_id)).session_id
    assert session and session.startswith("sess-alice-")
    info = await store.get_session_info(session)
    assert isinstance(info, SessionInfo)
    assert (info.session_id, info.user_id, info["user_id"]) == (session, "alice", "alice")
    assert await store.list_by_session(session) == [await store.metadata(file_id)]


async def test_create_session_and_info(store: ArtifactStore, clock: ManualClock) -> None:
    session = await store.create_session(user_id="alice@company.com", ttl_hours=2, custom_metadata={"team": "eng"})
    info = await store.get_session_info(session)
    now = wall(clock)
    assert info.user_id == "alice@company.com" and info.custom_metadata == {"team": "eng"}
    assert info.created_at == now and info.expires_at == now + timedelta(hours=2)
    assert info.sandbox_id == store.sandbox_id
    default = await store.get_session_info(await store.create_session())
    assert default.user_id is None and default.expires_at == now + timedelta(seconds=900)
    with pytest.raises(SessionError):
        await store.get_session_info("never-made")


async def test_extend_session_ttl(store: ArtifactStore, clock: ManualClock) -> None:
    session = await store.create_session(user_id="a")
    before = (await store.get_session_info(session)).expires_at
    assert await store.extend_session_ttl(session, additional_hours=24) is True
    assert (await store.get_session_info(session)).expires_at == before + timedelta(hours=24)
    clock.advance(20 * 3600)
    assert (await store.get_session_info(session)).user_id == "a"
    with pytest.raises(InvalidArgumentError):
        await store.extend_session_ttl(session, additional_hours=-1)
    with pytest.raises(SessionError):
        await store.extend_session_ttl("never-made")


async def test_delete_session(store: ArtifactStore) -> None:
    session = await store.create_session()
    ids = [await store.store(bytes([i]), filename=f"d/{i}", session_id=session) for i in range(3)]
    keys = {await blob_key_of(store, i) for i in ids}
    kept = await store.store(b"kept", user_id="u", scope="user")
    assert await store.delete_session(session) == 3
    assert not keys & await blob_keys(store)
    for i in ids:
        assert not await store.exists(i)
    assert await store.list_by_session(session) == []
    with pytest.raises(SessionError):
        await store.get_session_info(session)
    assert await store.retrieve(kept) == b"kept"


async def test_session_of_another_user_refused(store: ArtifactStore) -> None:
    session = await store.create_session(user_id="alice")
    before = await footprint(store)
    with pytest.raises(AccessDeniedError):
        await store.store(b"x", session_id=session, user_id="bob")
    assert await footprint(store) == before


# -- lifecycle


async def test_close(backend: str, tmp_path, clock: ManualClock, limits) -> None:
    from storekit import make_store

    store = make_store(backend, tmp_path / "data", clock, limits)
    file_id = await store.store(b"lazy open")  # usable without ``async with``
    await store.close()
    await store.close()  # twice is fine
    for call in (store.retrieve(file_id), store.store(b"x"), store.list_by_session("s"), store.get_stats(),
                 store.search(), store.create_session(), store.validate_configuration()):
        with pytest.raises(StoreClosedError):
            await call
    async with make_store(backend, tmp_path / "data2", clock, limits) as s2:
        assert await s2.exists(await s2.store(b"y"))
    with pytest.raises(StoreClosedError):
        await s2.store(b"z")


async def test_cancelled_upload_leaves_nothing(store: ArtifactStore) -> None:
    import trio

    session = await store.create_session()
    before = await footprint(store)
    flowing = trio.Event()

    async def endless():
        while True:
            yield b"e" * 65536
            flowing.set()
            await trio.sleep(0)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(store.stream_upload, StreamUploadRequest(data_stream=endless(), session_id=session,
                                                                    filename="never/finished.bin"))
        with trio.fail_after(30):
            await flowing.wait()
        nursery.cancel_scope.cancel()
    assert await footprint(store) == before


async def test_concurrent_updates_last_one_wins(store: ArtifactStore) -> None:
    import trio

    file_id = await store.store(b"v1" * 1000, filename="race.bin")
    versions = [bytes([65 + i]) * 300_000 for i in range(4)]
    async with trio.open_nursery() as nursery:
        for data in versions:
            nursery.start_soon(lambda data=data: store.update_file(file_id, data=data))
    meta = await store.metadata(file_id)
    assert meta.version == 5  # every commit counted, none lost
    assert await blob_keys(store) == {await blob_key_of(store, file_id)}  # no superseded blob left behind
    data = await store.retrieve(file_id)
    assert data in versions and meta.sha256 == sha(data)
