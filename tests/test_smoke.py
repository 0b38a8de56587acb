"""The reference quick start, end to end, on every embedded backend."""

from core import ArtifactStore


async def test_quick_start(store: ArtifactStore) -> None:
    file_id = await store.store(
        data=b"Hello, world!", mime="text/plain", summary="greeting", filename="hello.txt", user_id="alice", ttl=900
    )
    assert await store.read_file(file_id, as_text=True) == "Hello, world!"
    await store.update_file(file_id, data=b"Hello, updated world!", summary="Updated greeting")
    meta = await store.metadata(file_id)
    assert (meta.filename, meta.bytes, meta.version, meta.summary) == ("hello.txt", 21, 2, "Updated greeting")
    assert meta["user_id"] == "alice"
    assert await store.retrieve(file_id) == b"Hello, updated world!"
