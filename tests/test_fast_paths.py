"""The fast paths of the embedded backends behave exactly like the slow ones.

Group commit of small puts, write-behind of streamed blobs, read-ahead of
sequential readers and the one-transaction store on SQLite were added for
speed (scripts/bench); these tests pin down that they changed nothing a
caller can see, and the one bug the work found (a failed store still
stretched its session).
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import anyio
import pytest
from storeprobe import blob_keys, staging_files

from core import ArtifactStore, ProviderError
from core.backends.blobs.filesystem import FilesystemBlobStore
from core.errors import ArtifactStoreError
from core.infra.clock import ManualClock

MiB = 1 << 20


async def test_a_failed_store_does_not_stretch_its_session(store: ArtifactStore, clock: ManualClock) -> None:
    session = await store.create_session(ttl_hours=0.25)
    await store.store(b"x", filename="d/inside.txt", session_id=session)
    expires = (await store.get_session_info(session)).expires_at
    with pytest.raises(ArtifactStoreError):  # "d" is a directory: the insert is refused
        await store.store(b"y", filename="d", session_id=session, ttl=86400)
    assert (await store.get_session_info(session)).expires_at == expires
    clock.advance(0.25 * 3600)
    assert await store.list_by_session(session) == []  # the session went when it was due


async def test_a_store_touches_its_directory_and_stretches_its_session(store: ArtifactStore, clock: ManualClock) -> None:
    session = await store.create_session(ttl_hours=0.25)
    first = await store.store(b"x", filename="d/one.txt", session_id=session)
    ns = store.ns
    root = await ns.session_root(store.sandbox_id, session)
    assert root is not None
    d = await ns.child(root, "d")
    clock.advance(5)
    await store.store(b"y", filename="d/two.txt", session_id=session, ttl=7200)
    d_after = await ns.get(d.ino)
    assert d_after.mtime_ns == d_after.ctime_ns == clock.now_ns()  # the parent's mtime, in the same commit
    info = await store.get_session_info(session)
    assert info.expires_at.timestamp() == pytest.approx(clock.now_ns() / 1e9 + 7200)
    clock.advance(5)
    await store.delete(first)
    assert (await ns.get(d.ino)).mtime_ns == clock.now_ns()  # and an unlink touches it too


async def test_concurrent_small_stores_each_land_whole(store: ArtifactStore) -> None:
    session = await store.create_session()
    payloads = {i: os.urandom(1024 + i) for i in range(96)}
    ids: dict[int, str] = {}

    async def one(i: int) -> None:
        ids[i] = await store.store(payloads[i], filename=f"f{i}.bin", session_id=session)

    async with anyio.create_task_group() as tg:
        for i in payloads:
            tg.start_soon(one, i)
    for i, data in payloads.items():
        assert await store.retrieve(ids[i]) == data
    assert len(await blob_keys(store)) == len(payloads)
    assert staging_files(store) == []


async def test_a_bad_key_in_a_batch_of_puts_fails_alone(tmp_path: Path) -> None:
    blobs = FilesystemBlobStore(tmp_path)
    await blobs.open()
    results: dict[str, BaseException | None] = {}

    async def put(key: str) -> None:
        try:
            await blobs.put(key, b"data")
            results[key] = None
        except ArtifactStoreError as exc:
            results[key] = exc

    async with anyio.create_task_group() as tg:
        for key in ("a/ok1", "a/../escape", "a/ok2", "b/ok3"):
            tg.start_soon(put, key)
    assert isinstance(results.pop("a/../escape"), ProviderError)
    assert results == {"a/ok1": None, "a/ok2": None, "b/ok3": None}
    assert sorted([k async for k in blobs.keys()]) == ["a/ok1", "a/ok2", "b/ok3"]
    await blobs.close()


async def test_reads_ahead_and_at_random_return_the_right_bytes(tmp_path: Path) -> None:
    blobs = FilesystemBlobStore(tmp_path)
    await blobs.open()
    data = os.urandom(5 * MiB + 12345)
    await blobs.put("k", data)
    reader = await blobs.reader("k")
    got = bytearray()
    while len(got) < len(data):
        got += await reader.read(len(got), MiB)
    assert bytes(got) == data and await reader.read(len(data), MiB) == b""
    for offset, length in ((3 * MiB, MiB), (0, 300_000), (5 * MiB, MiB), (2 * MiB + 7, 2 * MiB), (MiB + 7, 2 * MiB),
                           (3 * MiB + 7, 2 * MiB)):  # the last two are sequential: a read-ahead is in flight after them
        assert await reader.read(offset, length) == data[offset : offset + length]
    await reader.close()  # the file descriptor is closed once that read-ahead is done, not under it
    with pytest.raises(ProviderError):
        await reader.read(0, MiB)
    await blobs.close()


async def test_a_streamed_blob_is_whole_and_an_aborted_one_leaves_nothing(tmp_path: Path) -> None:
    blobs = FilesystemBlobStore(tmp_path)
    await blobs.open()
    digest, size = hashlib.sha256(), 0
    writer = await blobs.writer("grid/s/whole")
    for _ in range(20):  # 20 x 700 KiB: several write-behind buffers and a writeback start
        chunk = os.urandom(700 * 1024)
        digest.update(chunk)
        size += len(chunk)
        await writer.write(chunk)
    await writer.commit()
    assert hashlib.sha256(blobs.path_of("grid/s/whole").read_bytes()).hexdigest() == digest.hexdigest()

    writer = await blobs.writer("grid/s/aborted")
    for _ in range(5):
        await writer.write(os.urandom(700 * 1024))
    await writer.abort()  # right after a buffer went to the pool
    assert list(blobs.staging_dir.iterdir()) == []
    assert [k async for k in blobs.keys()] == ["grid/s/whole"]
    await blobs.close()


async def test_a_filename_reads_a_scope_root_once_and_stays_right(store: ArtifactStore) -> None:
    """A directory seen not to be an entry (the scope root) is not read again for a filename."""
    session = await store.create_session()
    flat = await store.store(b"x", filename="flat.txt", session_id=session)
    deep = await store.store(b"y", filename="a/b/deep.txt", session_id=session)
    ns = store.ns
    asked: list[set[int]] = []
    lineage = ns.meta.lineage

    async def counted(inos):  # type: ignore[no-untyped-def]
        asked.append(set(inos))
        return await lineage(inos)

    async def filename(artifact_id: str) -> str:
        return await ns.filename_of(await ns.artifact_node(artifact_id))

    ns.meta.lineage = counted  # type: ignore[method-assign]
    try:
        assert await filename(flat) == "flat.txt"
        assert await filename(flat) == "flat.txt"
        assert len(asked) == 1  # the first call learnt that the file's directory is the scope root
        for _ in range(2):  # a directory that is an entry is read every time: a rename must show at once
            assert await filename(deep) == "a/b/deep.txt"
        assert len(asked) == 3
        await store.move_file(deep, new_filename="c/deeper.txt")
        assert await filename(deep) == "c/deeper.txt"
        await store.move_file(deep, new_filename="top.txt")
        assert await filename(deep) == "top.txt"
        assert (await store.metadata(deep)).filename == "top.txt"
        listed = {m.filename for m in await store.list_by_session(session)}
        assert listed == {"flat.txt", "top.txt"}
    finally:
        del ns.meta.lineage
