"""Everything survives closing the store and opening a new one on the same data (persistent backends)."""

from __future__ import annotations

from pathlib import Path

import pytest
from storekit import BACKENDS, make_store
from storeprobe import all_nodes, blob_keys

from core import ArtifactCorruptedError, ArtifactStore, Limits, SessionError, shards
from core.infra.clock import ManualClock

PERSISTENT = [b for b in BACKENDS if b != "memory"]


@pytest.fixture(params=PERSISTENT)
def backend(request: pytest.FixtureRequest) -> str:
    # This overrides conftest's fixture, so it must start the servers as that one does
    # (without, the redis-s3 case fails unless another test happened to start them first).
    if request.param == "redis-s3":
        request.getfixturevalue("redis_server")
        request.getfixturevalue("moto_server")
    return request.param


async def fill(store: ArtifactStore) -> dict[str, str]:
    """A bit of everything a restart must keep."""
    ids: dict[str, str] = {}
    session = await store.create_session(user_id="alice", ttl_hours=2, custom_metadata={"team": "eng"})
    ids["session"] = session
    ids["doc"] = await store.store(b"doc v1", mime="text/markdown", summary="readme", filename="docs/README.md",
                                   session_id=session, meta={"v": 1})
    await store.update_file(ids["doc"], data=b"doc v2", meta={"v": 2})
    ids["deep"] = await store.store(b"deep", filename="a/b/c/d.txt", session_id=session, ttl=600)
    gone = await store.store(b"deleted", filename="gone.txt", session_id=session)
    await store.delete(gone)
    ids["gone"] = gone
    ids["user"] = await store.store(b"%PDF", mime="application/pdf", user_id="alice", scope="user",
                                    meta={"quarter": "Q4"}, ttl=None)
    ids["moved"] = await store.store(b"moving", filename="before.txt", user_id="alice", scope="user")
    await store.move_file(ids["moved"], new_filename="after/renamed.txt")
    store.admin = True
    ids["shared"] = await store.store(b"logo", mime="image/png", scope="sandbox", ttl=None)
    store.admin = False
    ids["empty"] = await store.store(b"", filename="empty", session_id=session)
    return ids


async def test_everything_survives_a_restart(backend: str, tmp_path: Path, clock: ManualClock) -> None:
    root = tmp_path / "data"
    async with make_store(backend, root, clock, Limits()) as store:
        ids = await fill(store)
        described = {k: await store.metadata(v) for k, v in ids.items() if k not in ("session", "gone")}
        listing = await store.list_by_session(ids["session"])
        info = await store.get_session_info(ids["session"])
        nodes = {n.ino: n for n in await all_nodes(store)}
        keys = await blob_keys(store)
        stats = await store.get_stats()

    async with make_store(backend, root, clock, Limits()) as store:
        for name, before in described.items():
            assert await store.metadata(ids[name]) == before, name
        assert await store.retrieve(ids["doc"]) == b"doc v2"
        assert await store.read_file(ids["deep"], as_text=True) == "deep"
        assert await store.retrieve(ids["user"], user_id="alice") == b"%PDF"
        assert await store.retrieve(ids["shared"]) == b"logo"
        assert await store.retrieve(ids["moved"], user_id="alice") == b"moving"
        assert await store.retrieve(ids["empty"]) == b""
        assert not await store.exists(ids["gone"])
        assert await store.list_by_session(ids["session"]) == listing
        assert await store.get_session_info(ids["session"]) == info
        assert info.custom_metadata == {"team": "eng"} and info.user_id == "alice"
        assert [m.artifact_id for m in await store.search(user_id="alice", scope="user", meta_filter={"quarter": "Q4"})
                ] == [ids["user"]]
        assert {n.ino: n for n in await all_nodes(store)} == nodes  # inode numbers are stable
        assert await blob_keys(store) == keys
        assert await store.get_stats() == stats

        # It goes on working: new inodes never reuse old numbers, writes and expiry behave.
        new = await store.store(b"after restart", session_id=ids["session"], filename="docs/new.txt")
        new_ino = (await store.ns.meta.find_artifact(new)).ino  # type: ignore[union-attr]
        same_shard = [ino for ino in nodes if shards.of_ino(ino) == shards.of_ino(new_ino)]
        assert new_ino not in nodes and new_ino > max(same_shard, default=0)  # numbers are counted per shard
        clock.advance(600)
        assert not await store.exists(ids["deep"])
        assert await store.cleanup_expired_sessions() == 1
        clock.advance(2 * 3600)
        with pytest.raises(SessionError):
            await store.get_session_info(ids["session"])

    async with make_store(backend, root, clock, Limits()) as store:
        with pytest.raises(SessionError):  # expiry persisted too
            await store.get_session_info(ids["session"])
        assert await store.cleanup_expired_sessions() == 3  # doc, empty, the new file
        assert await store.retrieve(ids["user"], user_id="alice") == b"%PDF"


async def test_signing_key_is_kept_and_checked(backend: str, tmp_path: Path, clock: ManualClock,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    root = tmp_path / "data"
    monkeypatch.delenv("ARTIFACT_SIGNING_KEY", raising=False)
    async with make_store(backend, root, clock, Limits()) as store:
        file_id = await store.store(b"signed", user_id="u", scope="user")
    if backend == "fs-sqlite":
        assert (root / "signing.key").stat().st_mode & 0o077 == 0  # a secret: readable by its owner only
    async with make_store(backend, root, clock, Limits()) as store:  # the kept key verifies the old records
        assert await store.retrieve(file_id, user_id="u") == b"signed"
    monkeypatch.setenv("ARTIFACT_SIGNING_KEY", "another-key-entirely-0123456789")
    with pytest.raises(ArtifactCorruptedError):  # records signed with another key are never trusted
        async with make_store(backend, root, clock, Limits()) as store:
            await store.retrieve(file_id, user_id="u")


async def test_configured_from_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The reference's environment variables pick the persistent embedded backends."""
    root = tmp_path / "env-data"
    monkeypatch.setenv("ARTIFACT_PROVIDER", "vfs-sqlite")
    monkeypatch.setenv("ARTIFACT_FS_ROOT", str(root))
    monkeypatch.setenv("ARTIFACT_SANDBOX_ID", "myapp")
    async with ArtifactStore() as store:
        file_id = await store.store(b"from env", user_id="alice", scope="user")
        assert (await store.get_sandbox_info())["sandbox_id"] == "myapp"
    assert (root / "meta.sqlite3").exists() and any((root / "blobs").rglob("*"))
    async with ArtifactStore() as store:
        assert await store.retrieve(file_id, user_id="alice") == b"from env"
        assert (await store.metadata(file_id)).key.startswith("grid/myapp/users/alice/")
