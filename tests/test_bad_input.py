"""Bad input: each refusal is a precise ArtifactStoreError subclass, and nothing is half-written."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from storekit import make_store
from storeprobe import footprint

from core import (
    ArtifactStore,
    ArtifactStoreError,
    InvalidArgumentError,
    InvalidNameError,
    Limits,
    NameTooLongError,
    StoreClosedError,
    StreamUploadRequest,
)
from core.infra.clock import ManualClock

LONG = "n" * 10_000


def nested(depth: int) -> dict[str, Any]:
    """A JSON object ``depth`` levels deep, built without recursion."""
    value: dict[str, Any] = {}
    for _ in range(depth - 1):
        value = {"a": value}
    return value


DEEP_33 = nested(32)  # inside {"deep": ...}: 33 levels
DEEP_1000 = nested(1000)

BAD_FILENAMES: list[tuple[Any, type[ArtifactStoreError]]] = [
    ("..", InvalidNameError),
    ("../escape.txt", InvalidNameError),
    ("docs/../../etc/passwd", InvalidNameError),
    ("docs/./x", InvalidNameError),
    ("/absolute", InvalidNameError),
    ("double//slash", InvalidNameError),
    ("trailing/", InvalidNameError),
    ("nul\0byte", InvalidNameError),
    ("dir\0/x", InvalidNameError),
    ("", InvalidNameError),
    (LONG, NameTooLongError),
    ("d/" + "c" * 256, NameTooLongError),  # one component past 255 bytes
    ("/".join(["seg"] * 1100), NameTooLongError),  # a path past 4096 bytes
    (42, InvalidNameError),
]

BAD_IDS: list[tuple[Any, type[ArtifactStoreError]]] = [
    ("..", InvalidNameError),
    (".", InvalidNameError),
    ("a/b", InvalidNameError),
    ("../up", InvalidNameError),
    ("nul\0", InvalidNameError),
    ("", InvalidNameError),
    ("-leading-dash", InvalidNameError),
    ("space in id", InvalidNameError),
    (LONG, NameTooLongError),
    (7, InvalidNameError),
]

BAD_META: list[Any] = [
    {"set": {1, 2}},
    {"bytes": b"raw"},
    {"nan": float("nan")},
    {"inf": float("inf")},
    {"obj": object()},
    {1: "non-string key is fine in JSON but", (1, 2): "a tuple key is not"},
    ["not", "a", "dict"],
    "a string",
    {"huge": "x" * 70_000},
    {"deep": DEEP_33},  # one level past Limits.max_meta_depth: the record would be hard to read back
    {"deeper": DEEP_1000},  # deep enough to crash a recursive encoder
    {"digits": 10**5000},  # past Python's int-to-text digit limit
    {"key": {"nested": [[[[{"ok": 1}]]]], "pad": [DEEP_33]}},  # deep inside a list, beside a shallow part
]

# Past Limits.max_ttl (100 years); 10**20 s overflows a 64-bit expiry, 10**5000 cannot even be printed.
BAD_TTL: list[Any] = [-1, -900, 0, "soon", 1.5, True, [], 100 * 365 * 24 * 3600 + 1, 10**20, 10**5000]


@pytest.fixture
async def seeded(store: ArtifactStore) -> tuple[ArtifactStore, str, str]:
    """A store with a session and one artifact in it, so refusals can be compared against a live tree."""
    session = await store.create_session(user_id="alice")
    file_id = await store.store(b"original", filename="docs/original.txt", session_id=session, user_id="alice",
                                summary="orig", meta={"v": 1})
    return store, session, file_id


async def refused(store: ArtifactStore, error: type[ArtifactStoreError], *calls: Callable[[], Awaitable[Any]]) -> None:
    """Each of ``calls`` raises exactly ``error`` (or a subclass) and leaves every node and blob as it was.

    One footprint taken before the first serves as the "before" of every call: a call that changed
    anything fails right there, so the store each later call meets is that same one.
    """
    before = await footprint(store)
    for number, call in enumerate(calls):
        with pytest.raises(error):
            await call()
        assert await footprint(store) == before, f"call {number} changed the store"


async def unchanged(store: ArtifactStore, file_id: str, snapshot: Any) -> None:
    assert await store.metadata(file_id) == snapshot
    assert await store.retrieve(file_id) == b"original"


@pytest.mark.parametrize(("filename", "error"), BAD_FILENAMES)
async def test_bad_filenames(seeded, filename: Any, error: type[ArtifactStoreError]) -> None:
    store, session, file_id = seeded
    snapshot = await store.metadata(file_id)
    await refused(
        store, error,
        lambda: store.store(b"x", filename=filename, session_id=session),
        lambda: store.store(b"x", filename=filename, user_id="newbie"),
        lambda: store.write_file("x", filename=filename, session_id=session),
        lambda: store.store_batch([{"data": b"x", "filename": filename}], session_id=session),
        lambda: store.copy_file(file_id, new_filename=filename),
        lambda: store.move_file(file_id, new_filename=filename, new_meta={"moved": True}),
        lambda: store.update_file(file_id, data=b"changed", filename=filename, summary="new"),
        lambda: store.update_metadata(file_id, filename=filename, summary="new"),
    )
    # A request model refuses a name of the wrong type itself (InvalidArgumentError, the parent class).
    await refused(store, error if isinstance(filename, str) else InvalidArgumentError, lambda: store.stream_upload(
        StreamUploadRequest(data_stream=iter([b"x"]), filename=filename, session_id=session)))
    await unchanged(store, file_id, snapshot)


@pytest.mark.parametrize(("bad_id", "error"), BAD_IDS)
async def test_bad_ids(seeded, bad_id: Any, error: type[ArtifactStoreError]) -> None:
    store, session, file_id = seeded
    calls: list[Callable[[], Awaitable[Any]]] = [
        lambda: store.store(b"x", session_id=bad_id),
        lambda: store.store(b"x", user_id=bad_id),
        lambda: store.store(b"x", user_id=bad_id, scope="user"),
        lambda: store.store_batch([{"data": b"x"}], session_id=bad_id),
        lambda: store.create_session(user_id=bad_id),
        lambda: store.retrieve(bad_id),
        lambda: store.metadata(bad_id),
        lambda: store.exists(bad_id),
        lambda: store.delete(bad_id),
        lambda: store.update_file(bad_id, data=b"x"),
        lambda: store.retrieve(file_id, session_id=bad_id),
        lambda: store.retrieve(file_id, user_id=bad_id),
        lambda: store.copy_file(file_id, target_session_id=bad_id),
        lambda: store.list_by_session(bad_id),
        lambda: store.list_files(bad_id, prefix="docs/"),
        lambda: store.get_directory_contents(bad_id, "docs/"),
        lambda: store.search(user_id=bad_id),
        lambda: store.search(session_id=bad_id),
        lambda: store.get_session_info(bad_id),
        lambda: store.extend_session_ttl(bad_id, 1),
        lambda: store.delete_session(bad_id),
    ]
    await refused(store, error, *calls)
    with pytest.raises(error):
        store.get_canonical_prefix(bad_id)
    with pytest.raises(error if isinstance(bad_id, str) else InvalidArgumentError):
        await store.stream_upload(StreamUploadRequest(data_stream=iter([b"x"]), session_id=bad_id))


@pytest.mark.parametrize("meta", BAD_META, ids=[f"{type(m).__name__}{i}" for i, m in enumerate(BAD_META)])
async def test_bad_meta(seeded, meta: Any) -> None:
    store, session, file_id = seeded
    snapshot = await store.metadata(file_id)
    calls = (
        lambda: store.store(b"x", meta=meta, session_id=session, filename="new/x"),
        lambda: store.stream_upload(StreamUploadRequest(data_stream=iter([b"x"]), meta=meta, user_id="bob")),
        lambda: store.store_batch([{"data": b"x", "meta": meta}], user_id="bob"),
        lambda: store.update_file(file_id, data=b"changed", meta=meta),
        lambda: store.update_metadata(file_id, meta=meta, summary="new", merge=True),
        lambda: store.update_metadata(file_id, meta=meta, merge=False),
        lambda: store.copy_file(file_id, new_meta=meta),
        lambda: store.move_file(file_id, new_meta=meta, new_filename="moved.txt"),
        lambda: store.create_session(custom_metadata=meta),
        lambda: store.search(meta_filter=meta),
    )
    await refused(store, InvalidArgumentError, *calls)
    await unchanged(store, file_id, snapshot)


async def test_meta_that_grows_too_big_by_merging(seeded) -> None:
    store, session, file_id = seeded
    snapshot = await store.metadata(file_id)
    await store.update_metadata(file_id, meta={"a": "x" * 40_000})
    snapshot = await store.metadata(file_id)
    await refused(store, InvalidArgumentError, lambda: store.update_metadata(file_id, meta={"b": "y" * 40_000}))
    await refused(store, InvalidArgumentError, lambda: store.copy_file(file_id, new_meta={"b": "y" * 40_000}))
    await unchanged(store, file_id, snapshot)


@pytest.mark.parametrize("ttl", BAD_TTL, ids=lambda t: repr(t) if not isinstance(t, int) or t < 10**30 else "huge")
async def test_bad_ttl(seeded, ttl: Any) -> None:
    store, session, file_id = seeded
    snapshot = await store.metadata(file_id)
    calls = (
        lambda: store.store(b"x", ttl=ttl, session_id=session),
        lambda: store.store(b"x", ttl=ttl, user_id="bob", scope="user"),
        lambda: store.write_file("x", filename="t.txt", ttl=ttl, user_id="bob"),
        lambda: store.stream_upload(StreamUploadRequest(data_stream=iter([b"x"]), ttl=ttl, user_id="bob")),
        lambda: store.store_batch([{"data": b"x"}], ttl=ttl, user_id="bob"),
        lambda: store.store_batch([{"data": b"x", "ttl": ttl}], user_id="bob"),
        lambda: store.update_metadata(file_id, ttl=ttl, summary="new"),
        lambda: store.extend_ttl(file_id, ttl),
    )
    await refused(store, InvalidArgumentError, *calls)
    await unchanged(store, file_id, snapshot)


@pytest.mark.parametrize("hours", [-1, 0, -0.5, "soon", True, None, [], 1e20, float("inf"), float("nan"), 10**400],
                         ids=lambda h: repr(h) if not isinstance(h, int) or h < 10**30 else "huge")
async def test_bad_session_hours(seeded, hours: Any) -> None:
    store, session, file_id = seeded
    expires = (await store.get_session_info(session)).expires_at
    if hours is not None:  # None means "the default" to create_session
        await refused(store, InvalidArgumentError, lambda: store.create_session(ttl_hours=hours))
    await refused(store, InvalidArgumentError, lambda: store.extend_session_ttl(session, additional_hours=hours))
    assert (await store.get_session_info(session)).expires_at == expires


@pytest.mark.parametrize("scope", ["planet", "SESSION ", "shared", "", None, 3])
async def test_unknown_scope(seeded, scope: Any) -> None:
    store, session, file_id = seeded
    calls = (
        lambda: store.store(b"x", scope=scope, user_id="alice"),
        lambda: store.stream_upload(StreamUploadRequest(data_stream=iter([b"x"]), scope=scope, user_id="alice")),
        lambda: store.store_batch([{"data": b"x"}], scope=scope, user_id="alice"),
        lambda: store.store_batch([{"data": b"x", "scope": scope}], user_id="alice"),
        lambda: store.search(scope=scope) if scope is not None else store.store(b"x", scope=scope),
    )
    await refused(store, InvalidArgumentError, *calls)


async def test_other_bad_arguments(seeded) -> None:
    store, session, file_id = seeded
    snapshot = await store.metadata(file_id)

    async def yields_text():
        yield b"fine"
        yield "not bytes"

    calls = (
        lambda: store.store("text, not bytes", session_id=session),
        lambda: store.store(None, session_id=session),
        lambda: store.store(b"x", mime="not a mime type", session_id=session),
        lambda: store.store(b"x", mime="text/plain\n", session_id=session),
        lambda: store.store(b"x", mime="text/plain; charset=\r", session_id=session),  # CR in a parameter
        lambda: store.store(b"x", mime="text/plain;\0", session_id=session),
        lambda: store.store(b"x", mime="text/plain; a=\x1b[2J", session_id=session),
        lambda: store.store_batch([{"data": b"x", "mime": "text/plain;\r\nX-Evil: 1"}], session_id=session),
        lambda: store.update_metadata(file_id, mime="text/plain;\0"),
        lambda: store.extend_ttl(file_id, 10**5000),
        lambda: store.presign_upload(session_id=session, mime_type="text/plain;\r", expires=60),
        lambda: store.presign_upload(session_id=session, expires=10**5000),
        lambda: store.presign_upload(session_id=session, max_bytes=-10**5000),
        # Found by tests/test_fuzz.py: each raised UnicodeError, ValueError or PydanticSerializationError.
        lambda: store.write_file("caf\u00e9", filename="w.txt", encoding="ascii", session_id=session),
        lambda: store.write_file("x", filename="w.txt", encoding="\0", session_id=session),
        lambda: store.read_file(file_id, as_text=True, encoding="\0"),
        lambda: store.read_file(file_id, as_text=True, encoding="rot13"),
        lambda: store.store(b"x", summary="lone \ud800 surrogate", session_id=session),
        lambda: store.store(b"x", meta={"k": "lone \ud800 surrogate"}, session_id=session),
        lambda: store.store(b"x", filename="d/lone\ud800", session_id=session),
        lambda: store.update_metadata(file_id, summary="\udfff"),
        lambda: store.store(b"x", summary="s" * 5000, session_id=session),
        lambda: store.store(b"x", summary="nul\0", session_id=session),
        lambda: store.update_file(file_id, data="text", summary="new"),
        lambda: store.update_file(file_id, mime="bogus", summary="new"),
        lambda: store.update_metadata(file_id, mime="bogus", summary="new"),
        lambda: store.stream_upload(StreamUploadRequest(data_stream=yields_text(), session_id=session, filename="s/t")),
        lambda: store.stream_upload(StreamUploadRequest(data_stream=b"bytes are not a stream", session_id=session)),
        lambda: store.stream_upload(StreamUploadRequest(data_stream=iter([b"x"]), content_length=-1, user_id="bob")),
        lambda: store.store_batch("not a list"),
        lambda: store.store_batch([b"not a dict"]),
        lambda: store.list_by_session(session, limit=-1),
        lambda: store.search(limit="ten"),
        lambda: store.read_file(file_id, as_text=True, encoding="no-such-codec"),
    )
    await refused(store, InvalidArgumentError, *calls)
    await unchanged(store, file_id, snapshot)


async def test_bad_sandbox_id() -> None:
    for bad, error in (("../up", InvalidNameError), ("a/b", InvalidNameError), (LONG, NameTooLongError)):
        with pytest.raises(error):
            ArtifactStore(sandbox_id=bad)


async def test_bad_provider_name() -> None:
    with pytest.raises(InvalidArgumentError):
        ArtifactStore(storage_provider="floppy-disk")
    with pytest.raises(InvalidArgumentError):
        ArtifactStore(session_provider="carrier-pigeon")


async def test_closed_store(backend: str, tmp_path: Path, clock: ManualClock) -> None:
    store = make_store(backend, tmp_path / "data", clock, Limits())
    async with store:
        file_id = await store.store(b"x", user_id="alice")
        session = (await store.metadata(file_id)).session_id
    calls: list[Callable[[], Awaitable[Any]]] = [
        lambda: store.store(b"x"),
        lambda: store.retrieve(file_id),
        lambda: store.read_file(file_id),
        lambda: store.write_file("x", filename="x.txt"),
        lambda: store.update_file(file_id, data=b"y"),
        lambda: store.update_metadata(file_id, summary="s"),
        lambda: store.metadata(file_id),
        lambda: store.exists(file_id),
        lambda: store.delete(file_id),
        lambda: store.copy_file(file_id),
        lambda: store.move_file(file_id, new_filename="m"),
        lambda: store.list_by_session(session),
        lambda: store.list_files(session),
        lambda: store.get_directory_contents(session, ""),
        lambda: store.search(user_id="alice"),
        lambda: store.store_batch([{"data": b"x"}]),
        lambda: store.extend_ttl(file_id, 10),
        lambda: store.stream_upload(StreamUploadRequest(data_stream=iter([b"x"]))),
        lambda: store.get_sandbox_info(),
        lambda: store.get_stats(),
        lambda: store.validate_configuration(),
        lambda: store.cleanup_expired_sessions(),
        lambda: store.create_session(),
        lambda: store.get_session_info(session),
        lambda: store.extend_session_ttl(session),
        lambda: store.delete_session(session),
    ]
    for call in calls:
        with pytest.raises(StoreClosedError):
            await call()
    with pytest.raises(StoreClosedError):
        async with store:
            pass
    from core import StreamDownloadRequest

    with pytest.raises(StoreClosedError):
        async for _ in store.stream_download(StreamDownloadRequest(artifact_id=file_id)):
            pass
