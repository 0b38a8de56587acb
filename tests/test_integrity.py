"""Damage done behind the store's back is caught: SHA-256 of blobs, HMAC of metadata records."""

from __future__ import annotations

import pytest
from storeprobe import blob_key_of, edit_record, flip_blob_byte, footprint, remove_blob, rewrite_blob

from core import (
    ArtifactCorruptedError,
    ArtifactStore,
    StreamDownloadRequest,
)

PAYLOAD = bytes(range(256)) * 1024  # 256 KiB: several chunks of a stream


async def download(store: ArtifactStore, artifact_id: str, *, verify: bool = True) -> bytes:
    request = StreamDownloadRequest(artifact_id=artifact_id, chunk_size=65536, verify=verify)
    return b"".join([chunk async for chunk in store.stream_download(request)])


async def assert_corrupted_on_read(store: ArtifactStore, artifact_id: str) -> None:
    with pytest.raises(ArtifactCorruptedError):
        await store.retrieve(artifact_id)
    with pytest.raises(ArtifactCorruptedError):
        await store.read_file(artifact_id, as_text=True)
    with pytest.raises(ArtifactCorruptedError):
        await download(store, artifact_id)
    before = await footprint(store)
    with pytest.raises(ArtifactCorruptedError):
        await store.copy_file(artifact_id, new_filename="copies/bad-copy")  # damage is not copied on
    assert await footprint(store) == before


@pytest.mark.parametrize("offset", [0, len(PAYLOAD) // 2, len(PAYLOAD) - 1])
async def test_flipped_byte_in_a_blob(store: ArtifactStore, offset: int) -> None:
    file_id = await store.store(PAYLOAD, filename="data.bin")
    flip_blob_byte(store, await blob_key_of(store, file_id), offset)
    await assert_corrupted_on_read(store, file_id)
    assert (await store.metadata(file_id)).bytes == len(PAYLOAD)  # the record itself is sound


async def test_flipped_byte_found_by_the_stream_too(store: ArtifactStore) -> None:
    file_id = await store.store(PAYLOAD)
    flip_blob_byte(store, await blob_key_of(store, file_id), 10)
    with pytest.raises(ArtifactCorruptedError):  # a consumer never sees a clean end of a damaged stream
        await download(store, file_id)
    unverified = await download(store, file_id, verify=False)
    assert unverified != PAYLOAD and len(unverified) == len(PAYLOAD)  # opting out of the check shows the damage


async def test_blob_of_another_size(store: ArtifactStore) -> None:
    short = await store.store(PAYLOAD, filename="short")
    long = await store.store(PAYLOAD, filename="long")
    for file_id, change in ((short, lambda b: b[:-1]), (long, lambda b: b + b"!")):
        rewrite_blob(store, await blob_key_of(store, file_id), change)
        with pytest.raises(ArtifactCorruptedError):
            await store.retrieve(file_id)
        with pytest.raises(ArtifactCorruptedError):
            await download(store, file_id)


async def test_missing_blob_is_corruption_not_absence(store: ArtifactStore) -> None:
    file_id = await store.store(PAYLOAD, filename="lost.bin")
    remove_blob(store, await blob_key_of(store, file_id))
    assert await store.exists(file_id)  # it is listed, so reading it must not say "no such artifact"
    with pytest.raises(ArtifactCorruptedError):
        await store.retrieve(file_id)
    with pytest.raises(ArtifactCorruptedError):
        await download(store, file_id)


async def test_edited_metadata_record(store: ArtifactStore) -> None:
    file_id = await store.store(b"payload", summary="honest summary", filename="doc.txt", user_id="alice")
    ino = (await store.ns.meta.find_artifact(file_id)).ino  # type: ignore[union-attr]
    edit_record(store, ino, b"honest summary", b"forged summary")
    for call in (store.metadata, store.retrieve, store.read_file, store.exists):
        with pytest.raises(ArtifactCorruptedError):
            await call(file_id)
    with pytest.raises(ArtifactCorruptedError):
        await download(store, file_id)
    with pytest.raises(ArtifactCorruptedError):
        await store.search(user_id="alice")


async def test_edited_size_or_owner_in_a_record(store: ArtifactStore) -> None:
    mine = await store.store(b"x" * 10, user_id="alice", scope="user", filename="mine.txt")
    ino = (await store.ns.meta.find_artifact(mine)).ino  # type: ignore[union-attr]
    edit_record(store, ino, b'"user_id":"alice"', b'"user_id":"mallo"')
    with pytest.raises(ArtifactCorruptedError):
        await store.retrieve(mine, user_id="mallo")
    other = await store.store(b"y" * 10, filename="other.txt")
    ino = (await store.ns.meta.find_artifact(other)).ino  # type: ignore[union-attr]
    edit_record(store, ino, b'"size":10', b'"size":11')
    with pytest.raises(ArtifactCorruptedError):
        await store.retrieve(other)


async def test_edited_directory_record_breaks_listing(store: ArtifactStore) -> None:
    session = await store.create_session()
    await store.store(b"x", session_id=session, filename="dir/file.txt")
    root = await store.ns.session_root(store.sandbox_id, session)
    assert root is not None
    directory = await store.ns.meta.lookup(root.ino, "dir")
    assert directory is not None
    edit_record(store, directory.ino, b'"mode":493', b'"mode":511')
    with pytest.raises(ArtifactCorruptedError):
        await store.list_by_session(session)


async def test_a_read_racing_an_update_is_not_corruption(store: ArtifactStore) -> None:
    from core import ArtifactNotFoundError

    file_id = await store.store(b"version one")
    stale = await store.ns.artifact_node(file_id)  # what a reader looked up just before ...
    await store.update_file(file_id, data=b"version two")  # ... an update replaced its blob
    assert b"".join([c async for c in store.ns.read_chunks(stale, 65536, True)]) == b"version one"  # grace
    await store.ns.collect_garbage(now_ns=2**62)  # the grace period is over: the old blob is gone
    assert b"".join([c async for c in store.ns.read_chunks(stale, 65536, True)]) == b"version two"
    await store.delete(file_id)
    await store.ns.collect_garbage(now_ns=2**62)
    with pytest.raises(ArtifactNotFoundError) as caught:
        async for _ in store.ns.read_chunks(stale, 65536, True):
            pass
    assert not isinstance(caught.value, ArtifactCorruptedError)
