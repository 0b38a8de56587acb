"""Quotas per session and per user, and the per-artifact size limit: refused, nothing left behind."""

from __future__ import annotations

from pathlib import Path

import pytest
from storekit import make_store
from storeprobe import blob_keys, footprint

from core import (
    ArtifactStore,
    ArtifactTooLargeError,
    Limits,
    QuotaExceededError,
    StreamUploadRequest,
)
from core.infra.clock import ManualClock


@pytest.fixture
def limits() -> Limits:
    return Limits(max_artifact_bytes=1000, session_quota_bytes=2500, session_quota_files=4,
                  user_quota_bytes=2500, user_quota_files=3)


async def chunks(total: int, size: int = 300):
    sent = 0
    while sent < total:
        n = min(size, total - sent)
        yield b"q" * n
        sent += n


async def test_size_limit_on_store(store: ArtifactStore) -> None:
    session = await store.create_session()
    assert await store.retrieve(await store.store(b"x" * 1000, session_id=session)) == b"x" * 1000
    before = await footprint(store)
    with pytest.raises(ArtifactTooLargeError):
        await store.store(b"x" * 1001, session_id=session, filename="big/one.bin")
    with pytest.raises(ArtifactTooLargeError):
        await store.store(b"x" * 1001, user_id="newcomer", filename="big/one.bin")  # would auto-create a session
    with pytest.raises(ArtifactTooLargeError):
        await store.write_file("x" * 1001, filename="big.txt", session_id=session)
    assert await footprint(store) == before


async def test_size_limit_on_stream(store: ArtifactStore) -> None:
    session = await store.create_session()
    before = await footprint(store)
    with pytest.raises(ArtifactTooLargeError):  # told up front
        await store.stream_upload(StreamUploadRequest(data_stream=chunks(1001), session_id=session,
                                                      content_length=1001, filename="s/big.bin"))
    with pytest.raises(ArtifactTooLargeError):  # found out while the bytes arrive
        await store.stream_upload(StreamUploadRequest(data_stream=chunks(5000), session_id=session,
                                                      filename="s/big.bin"))
    with pytest.raises(ArtifactTooLargeError):
        await store.stream_upload(StreamUploadRequest(data_stream=chunks(5000), user_id="fresh",
                                                      filename="s/big.bin"))
    assert await footprint(store) == before


async def test_size_limit_on_update(store: ArtifactStore) -> None:
    file_id = await store.store(b"small", filename="u.txt")
    before = await footprint(store)
    with pytest.raises(ArtifactTooLargeError):
        await store.update_file(file_id, data=b"y" * 1001)
    assert await footprint(store) == before
    assert await store.retrieve(file_id) == b"small"
    assert (await store.metadata(file_id)).version == 1


async def test_session_byte_quota(store: ArtifactStore) -> None:
    session = await store.create_session()
    a = await store.store(b"a" * 1000, session_id=session, filename="a")
    await store.store(b"b" * 1000, session_id=session, filename="b")
    before = await footprint(store)
    with pytest.raises(QuotaExceededError):
        await store.store(b"c" * 501, session_id=session, filename="dir/c")
    with pytest.raises(QuotaExceededError):
        await store.stream_upload(StreamUploadRequest(data_stream=chunks(600), session_id=session, filename="dir/c"))
    assert await footprint(store) == before
    await store.update_file(a, data=b"A" * 1000)  # the same size again is fine
    c = await store.store(b"c" * 500, session_id=session, filename="c")  # exactly at the quota
    before = await footprint(store)
    with pytest.raises(QuotaExceededError):
        await store.store(b"d", session_id=session, filename="d")
    with pytest.raises(QuotaExceededError):
        await store.copy_file(a, new_filename="copies/a")
    with pytest.raises(ArtifactTooLargeError):
        await store.update_file(a, data=b"A" * 1001)
    with pytest.raises(QuotaExceededError):
        await store.update_file(c, data=b"C" * 501)
    assert await footprint(store) == before
    assert await store.retrieve(a) == b"A" * 1000
    await store.update_file(a, data=b"A")  # shrinking is always allowed
    other = await store.create_session()  # quotas are per session
    await store.store(b"e" * 1000, session_id=other)


async def test_session_file_quota(store: ArtifactStore) -> None:
    session = await store.create_session()
    for i in range(4):
        await store.store(b"f", session_id=session, filename=f"f{i}")
    before = await footprint(store)
    with pytest.raises(QuotaExceededError):
        await store.store(b"f", session_id=session, filename="sub/f4")
    with pytest.raises(QuotaExceededError):
        await store.store_batch([{"data": b"1"}], session_id=session)
    assert await footprint(store) == before
    # Replacing a file by name does not add a file.
    replaced = await store.store(b"new", session_id=session, filename="f0")
    assert await store.retrieve(replaced) == b"new"
    assert len(await store.list_by_session(session)) == 4


async def test_user_quotas(store: ArtifactStore) -> None:
    u0 = await store.store(b"u" * 1000, user_id="alice", scope="user", filename="u0")
    await store.store(b"u" * 1000, user_id="alice", scope="user", filename="u1")
    before = await footprint(store)
    with pytest.raises(QuotaExceededError):  # 2501 bytes
        await store.store(b"u" * 501, user_id="alice", scope="user", filename="new/u2")
    assert await footprint(store) == before
    u2 = await store.store(b"u" * 500, user_id="alice", scope="user", filename="u2")  # 2500 bytes, 3 files
    await store.store(b"s" * 1000, user_id="alice")  # a session artifact: charged to the session
    before = await footprint(store)
    with pytest.raises(QuotaExceededError):  # a fourth file, even an empty one
        await store.store(b"", user_id="alice", scope="user", filename="new/u3")
    with pytest.raises(QuotaExceededError):
        await store.copy_file(u2, user_id="alice")
    with pytest.raises(QuotaExceededError):
        await store.update_file(u2, data=b"v" * 501, user_id="alice")
    assert await footprint(store) == before
    await store.delete(u0, user_id="alice")
    await store.store(b"w" * 1000, user_id="alice", scope="user", filename="w")  # back at 2500 bytes, 3 files
    await store.store(b"b" * 1000, user_id="bob", scope="user")  # quotas are per user


async def test_batch_over_quota_stores_nothing(store: ArtifactStore) -> None:
    session = await store.create_session()
    await store.store(b"s" * 1000, session_id=session, filename="s0")
    before = await footprint(store)
    items = [{"data": b"b" * 600, "filename": f"batch/{i}"} for i in range(3)]  # 1000 + 1800 > 2500
    with pytest.raises(QuotaExceededError):
        await store.store_batch(items, session_id=session)
    assert await footprint(store) == before
    with pytest.raises(ArtifactTooLargeError):
        await store.store_batch([{"data": b"ok"}, {"data": b"x" * 1001}], session_id=session)
    assert await footprint(store) == before
    with pytest.raises(QuotaExceededError):
        await store.store_batch([{"data": b"b" * 900, "filename": f"batch/{i}"} for i in range(3)], user_id="zed")
    assert await footprint(store) == before


async def test_expired_artifacts_stop_counting(store: ArtifactStore, clock: ManualClock) -> None:
    for i, size in enumerate((1000, 1000, 500)):
        await store.store(b"e" * size, user_id="carol", scope="user", ttl=60, filename=f"e{i}")
    with pytest.raises(QuotaExceededError):
        await store.store(b"e", user_id="carol", scope="user")
    clock.advance(61)
    # No cleanup was run: the expired files are invisible and must not hold the quota either.
    again = await store.store(b"f" * 1000, user_id="carol", scope="user", filename="new")
    assert await store.retrieve(again, user_id="carol") == b"f" * 1000
    assert [m.artifact_id for m in await store.search(user_id="carol")] == [again]


async def test_unlimited_by_default(tmp_path: Path, backend: str, clock: ManualClock) -> None:
    async with make_store(backend, tmp_path / "d", clock, Limits()) as store:
        ids = await store.store_batch([{"data": b"z" * 10_000} for _ in range(50)], session_id="many")
        assert len(ids) == 50
        assert len(await blob_keys(store)) == 50
