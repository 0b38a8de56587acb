"""Namespaces (issue #10): the reference's API, persistent in the store, shared by every process."""

from __future__ import annotations

import pytest
from storekit import make_store

from core import (
    AccessDeniedError,
    ArtifactStore,
    InvalidArgumentError,
    NamespaceInfo,
    NamespaceNotFoundError,
    NamespaceType,
    Scope,
    StorageScope,
)
from core.infra.clock import ManualClock
from core.settings import Limits


@pytest.mark.semantics("S-namespaces")
async def test_a_workspace_through_the_api_and_its_vfs(store: ArtifactStore) -> None:
    info = await store.create_namespace(NamespaceType.WORKSPACE, name="my_video", scope=StorageScope.USER,
                                        user_id="alice", metadata={"theme": "tech"})
    assert isinstance(info, NamespaceInfo) and info.type is NamespaceType.WORKSPACE and info.name == "my_video"
    assert info.scope is Scope.USER and info.user_id == info.owner_id == "alice" and info.metadata == {"theme": "tech"}
    assert info.path == f"users/alice/namespaces/{info.namespace_id.partition('.')[0]}"
    entry = info.namespace_id.partition(".")[0]
    assert info.grid_path == f"grid/{store.sandbox_id}/users/alice/{entry}" and info.created_at.endswith("Z")
    ns_id = info.namespace_id

    vfs = store.get_namespace_vfs(ns_id)
    assert await vfs.write_file("/src/Main.tsx", b"export default 1;\n")
    assert await vfs.write_text("/README.md", "hello")
    await store.write_namespace(ns_id, b"{}", path="/config/settings.json", mime="application/json")
    assert await store.read_namespace(ns_id, path="/src/Main.tsx") == b"export default 1;\n"
    assert await vfs.read_text("/README.md") == "hello" and await vfs.read_file("/missing") is None
    assert await vfs.ls("/") == ["README.md", "config", "src"]
    assert await vfs.is_dir("/src") and await vfs.is_file("/src/Main.tsx") and not await vfs.exists("/nope")
    assert await vfs.mkdir("/assets/img") and not await vfs.mkdir("/assets/img")
    assert await vfs.mv("/README.md", "/docs/README.md") and not await vfs.exists("/README.md")
    assert await vfs.cp("/src", "/src2") and await vfs.read_binary("/src2/Main.tsx") == b"export default 1;\n"
    assert await vfs.find("*.tsx") == ["/src/Main.tsx", "/src2/Main.tsx"]
    assert await vfs.find("*", path="/docs", recursive=False) == ["/docs/README.md"]
    assert await vfs.touch("/empty.txt") and await vfs.read_binary("/empty.txt") == b""
    assert await vfs.set_metadata("/src/Main.tsx", {"lang": "tsx"})
    assert await vfs.get_metadata("/src/Main.tsx") == {"lang": "tsx"}
    node_info = await vfs.get_node_info("/config/settings.json")
    assert node_info is not None and node_info.mime_type == "application/json" and node_info.size == 2

    async def chunks():
        for _ in range(3):
            yield b"x" * 1000

    assert await vfs.stream_write("/big.bin", chunks())
    assert b"".join([c async for c in vfs.stream_read("/big.bin", chunk_size=700)]) == b"x" * 3000
    stats = await vfs.get_storage_stats()
    assert stats["total_files"] == 6 and stats["total_size_bytes"] == 18 * 2 + 5 + 2 + 3000

    assert not await vfs.rmdir("/src2") and await vfs.rm("/src2/Main.tsx") and await vfs.rmdir("/src2")
    assert not await vfs.rm("/src2")
    # The files are ordinary artifacts of alice's, under the namespace's directory.
    names = sorted(m.filename for m in await store.search(user_id="alice", scope=Scope.USER))
    assert f"namespaces/{info.path.rpartition('/')[2]}/src/Main.tsx" in names

    await store.destroy_namespace(ns_id)
    with pytest.raises(NamespaceNotFoundError):
        store.get_namespace_info(ns_id)
    assert await store.search(user_id="alice", scope=Scope.USER) == []


@pytest.mark.semantics("S-namespaces")
async def test_a_blob_namespace_holds_one_file(store: ArtifactStore) -> None:
    info = await store.create_namespace(NamespaceType.BLOB, scope=Scope.SESSION, user_id="alice")
    assert info.type is NamespaceType.BLOB and info.session_id and info.expires_at is not None
    assert await store.read_namespace(info.namespace_id) == b""
    await store.write_namespace(info.namespace_id, b"\x00video bytes", mime="video/mp4")
    await store.write_namespace(info.namespace_id, b"second version", mime="video/mp4")
    assert await store.read_namespace(info.namespace_id) == b"second version"
    vfs = store.get_namespace_vfs(info.namespace_id)
    assert await vfs.ls("/") == ["_data"] and await vfs.read_binary("/_data") == b"second version"
    node_info = await vfs.get_node_info("/_data")
    assert node_info is not None and node_info.mime_type == "video/mp4"
    with pytest.raises(InvalidArgumentError):
        await vfs.write_file("/other.txt", b"a blob has one file")


@pytest.mark.semantics("S-namespaces")
async def test_listing_follows_the_reference_rules_and_is_never_stale(store: ArtifactStore) -> None:
    session = await store.create_session(user_id="alice")
    mine = await store.create_namespace(NamespaceType.WORKSPACE, name="w", session_id=session, user_id="alice")
    blob = await store.create_namespace(NamespaceType.BLOB, name="b", scope=Scope.USER, user_id="alice")
    await store.create_namespace(NamespaceType.WORKSPACE, scope=Scope.USER, user_id="bob")
    assert [n.namespace_id for n in store.list_namespaces(session_id=session)] == [mine.namespace_id]
    assert [n.namespace_id for n in store.list_namespaces(user_id="alice", type=NamespaceType.BLOB)] == [blob.namespace_id]
    both = store.list_namespaces(session_id=session, user_id="alice")
    assert {n.namespace_id for n in both} == {mine.namespace_id, blob.namespace_id}
    await store.destroy_namespace(blob.namespace_id)
    assert store.list_namespaces(user_id="alice") == []  # at once: nothing is cached
    assert (await store.namespaces(session_id=session))[0].namespace_id == mine.namespace_id


@pytest.mark.semantics("S-namespaces")
async def test_access_and_bad_input_get_precise_errors(store: ArtifactStore) -> None:
    info = await store.create_namespace(NamespaceType.WORKSPACE, user_id="alice")
    other = await store.create_session(user_id="alice")
    with pytest.raises(AccessDeniedError):
        store.get_namespace_info(info.namespace_id, session_id=other)
    assert store.get_namespace_info(info.namespace_id, session_id=info.session_id).namespace_id == info.namespace_id
    with pytest.raises(AccessDeniedError):
        await store.destroy_namespace(info.namespace_id, session_id=other)
    with pytest.raises(AccessDeniedError):  # the shared scope is written by admins
        await store.create_namespace(NamespaceType.WORKSPACE, scope=Scope.SANDBOX)
    with pytest.raises(ValueError):  # InvalidArgumentError, as the reference's ValueError
        await store.create_namespace(NamespaceType.WORKSPACE, scope=Scope.USER)
    with pytest.raises(InvalidArgumentError):
        await store.create_namespace("folder")  # type: ignore[arg-type]
    with pytest.raises(InvalidArgumentError):
        await store.create_namespace(NamespaceType.WORKSPACE, user_id="alice", ttl_hours=10**9)
    for made_up in ("ns-000000000000", "ns-000000000000.u.alice", "nonsense", "ns-../../x", None, 7):
        with pytest.raises(NamespaceNotFoundError):
            store.get_namespace_info(made_up)  # type: ignore[arg-type]
    with pytest.raises(InvalidArgumentError):
        await store.write_namespace(info.namespace_id, b"x")  # a workspace needs a path
    with pytest.raises(InvalidArgumentError):
        await store.write_namespace(info.namespace_id, b"x", path="/../escape")
    with pytest.raises(NamespaceNotFoundError):
        await store.read_namespace(info.namespace_id, path="/missing")


@pytest.mark.semantics("S-namespaces")
async def test_an_admin_shares_a_workspace_everyone_reads(admin_store: ArtifactStore, store: ArtifactStore) -> None:
    shared = await admin_store.create_namespace(NamespaceType.WORKSPACE, name="templates", scope=Scope.SANDBOX)
    await admin_store.write_namespace(shared.namespace_id, b"template", path="/t.txt")
    assert [n.namespace_id for n in admin_store.list_namespaces()] == [shared.namespace_id]
    assert shared.path == f"shared/namespaces/{shared.namespace_id}"


@pytest.mark.semantics("S-namespaces")
async def test_a_session_namespace_expires_with_its_session(backend: str, tmp_path, limits: Limits) -> None:
    clock = ManualClock(10**18)
    async with make_store(backend, tmp_path / "data", clock, limits) as store:
        session = await store.create_session(user_id="alice", ttl_hours=1)
        info = await store.create_namespace(NamespaceType.WORKSPACE, session_id=session, user_id="alice")
        await store.write_namespace(info.namespace_id, b"draft", path="/a.txt")
        assert store.get_namespace_info(info.namespace_id).expires_at is not None
        clock.advance(3601)
        with pytest.raises(NamespaceNotFoundError):
            store.get_namespace_info(info.namespace_id)
        assert store.list_namespaces(session_id=session) == []
        user_ns = await store.create_namespace(NamespaceType.WORKSPACE, scope=Scope.USER, user_id="alice")
        clock.advance(10 * 24 * 3600)  # a user's namespace lives until destroyed
        assert store.get_namespace_info(user_ns.namespace_id).expires_at is None


@pytest.mark.semantics("S-namespaces")
@pytest.mark.parametrize("backend", ["fs-sqlite", "redis-s3"], indirect=True)  # memory: one process by design
async def test_another_process_sees_a_namespace_at_once(backend: str, tmp_path, clock, limits: Limits) -> None:
    async with make_store(backend, tmp_path / "data", clock, limits) as first, \
            make_store(backend, tmp_path / "data", clock, limits) as second:
        info = await first.create_namespace(NamespaceType.WORKSPACE, scope=Scope.USER, user_id="alice")
        assert [n.namespace_id for n in second.list_namespaces(user_id="alice")] == [info.namespace_id]
        await second.write_namespace(info.namespace_id, b"from the second", path="/x.txt")
        assert await first.read_namespace(info.namespace_id, path="/x.txt") == b"from the second"
        await first.destroy_namespace(info.namespace_id)
        assert second.list_namespaces(user_id="alice") == []
