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
    QuotaExceededError,
    Scope,
    StorageScope,
)
from core.errors import AlreadyExistsError, FrozenError, NotSupportedError
from core.infra.clock import ManualClock
from core.models import Usage
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
    with pytest.raises(InvalidArgumentError):
        await vfs.cp("/src", "/src/inner")  # as cp -r: not into itself
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
    assert not await vfs.exists("/other") and await vfs.read_binary("/other") is None  # one file, nothing else
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
    with pytest.raises(PermissionError):  # an AccessDeniedError, and what the reference raises
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


async def blob_bytes(store: ArtifactStore) -> int:
    """What the blob store holds, in bytes, each blob read to its end (block maps and all)."""
    total = 0
    async for key in store.ns.blobs.keys():
        reader = await store.ns.blobs.reader(key)
        try:
            offset = 0
            while chunk := await reader.read(offset, 1 << 20):
                offset += len(chunk)
            total += offset
        finally:
            await reader.close()
    return total


@pytest.mark.semantics("S-checkpoints")
async def test_the_seed_004_flow_checkpoint_change_restore(backend: str, tmp_path, limits: Limits) -> None:
    clock = ManualClock(10**18)
    async with make_store(backend, tmp_path / "data", clock, limits) as store:
        project = await store.create_namespace(NamespaceType.WORKSPACE, name="demo", scope=StorageScope.USER,
                                               user_id="alice")
        ns_id = project.namespace_id
        vfs = store.get_namespace_vfs(ns_id)
        await vfs.write_file("/src/Main.tsx", b"v1 main")
        await vfs.write_file("/assets/logo.png", b"\x89PNG v1" * 1000)
        stored_before = await blob_bytes(store)
        checkpoint = await store.checkpoint_namespace(ns_id, name="v1.0", description="Ready for review")
        assert checkpoint.checkpoint_id == "v1.0" and checkpoint.workspace_id == ns_id
        assert checkpoint.stats == {"files": 2, "bytes": 7 + 7000} and checkpoint.created_at.endswith("Z")
        assert await blob_bytes(store) == stored_before  # records only: not one byte copied

        await vfs.write_file("/src/Main.tsx", b"v2 main, longer")
        await vfs.rm("/assets/logo.png")
        await vfs.write_file("/new.txt", b"after the checkpoint")
        assert [c.checkpoint_id for c in await store.list_checkpoints(ns_id)] == ["v1.0"]
        usage = await store.ns.meta.usage(f"{store.sandbox_id}/user/alice")

        assert await store.restore_namespace(ns_id, "v1.0")
        assert await store.read_namespace(ns_id, path="/src/Main.tsx") == b"v1 main"
        assert await store.read_namespace(ns_id, path="/assets/logo.png") == b"\x89PNG v1" * 1000
        assert not await vfs.exists("/new.txt")
        assert store.get_namespace_info(ns_id).namespace_id == ns_id  # the same namespace, restored in place
        # The checkpoint still shows v1 after the workspace changes again.
        await vfs.write_file("/src/Main.tsx", b"v3")
        cp_main = await checkpoint_file(store, ns_id, "v1.0", "src/Main.tsx")
        assert await store.retrieve(cp_main.artifact.artifact_id) == b"v1 main"  # type: ignore[union-attr]
        assert usage.files >= 2
        with pytest.raises(NamespaceNotFoundError):
            await store.restore_namespace(ns_id, "v9")
        assert await store.delete_checkpoint(ns_id, "v1.0")
        assert await store.list_checkpoints(ns_id) == []


async def checkpoint_file(store: ArtifactStore, ns_id: str, checkpoint_id: str, path: str):
    _, workspace = await store._located(ns_id)
    found = await store.ns.checkpoints.find(workspace, checkpoint_id)
    for part in path.split("/"):
        found = await store.ns.meta.lookup(found.ino, part)
        assert found is not None
    return found


@pytest.mark.semantics("S-checkpoints")
async def test_a_checkpoint_keeps_its_blobs_from_gc_and_counts_them_once(
    backend: str, tmp_path, limits: Limits,
) -> None:
    clock = ManualClock(10**18)
    async with make_store(backend, tmp_path / "data", clock, limits) as store:
        info = await store.create_namespace(NamespaceType.WORKSPACE, scope=Scope.USER, user_id="alice")
        account = f"{store.sandbox_id}/user/alice"
        await store.write_namespace(info.namespace_id, b"a" * 1000, path="/a.bin")
        await store.write_namespace(info.namespace_id, b"b" * 500, path="/b.bin")
        assert await store.ns.meta.usage(account) == Usage(files=2, bytes=1500)
        await store.checkpoint_namespace(info.namespace_id, name="cp")
        assert await store.ns.meta.usage(account) == Usage(files=2, bytes=1500)  # shared blobs count once

        vfs = store.get_namespace_vfs(info.namespace_id)
        await vfs.rm("/a.bin")  # its blob is the checkpoint's alone now
        await vfs.write_file("/b.bin", b"B" * 200)  # a new version: the old blob is the checkpoint's
        clock.advance(store.ns.limits.blob_grace + 1)
        report = await store.gc()
        assert report.blobs == 0  # nothing the checkpoint names was deleted
        cp_a = await checkpoint_file(store, info.namespace_id, "cp", "a.bin")
        assert await store.retrieve(cp_a.artifact.artifact_id) == b"a" * 1000
        # Each blob is charged once: the checkpoint's two old blobs and the new b.bin.
        assert await store.ns.meta.usage(account) == Usage(files=3, bytes=1000 + 500 + 200)
        assert (await store.fsck(verify_data=True)).problems == []

        await store.delete_checkpoint(info.namespace_id, "cp")
        clock.advance(store.ns.limits.blob_grace + 1)
        assert (await store.gc()).blobs == 2  # the blobs only the checkpoint held
        assert await store.ns.meta.usage(account) == Usage(files=1, bytes=200)
        assert (await store.fsck(verify_data=True)).problems == []


@pytest.mark.semantics("S-checkpoints")
async def test_a_checkpoint_is_read_only_and_goes_with_its_namespace(store: ArtifactStore) -> None:
    info = await store.create_namespace(NamespaceType.WORKSPACE, scope=Scope.USER, user_id="alice")
    await store.write_namespace(info.namespace_id, b"x", path="/d/f.txt")
    await store.checkpoint_namespace(info.namespace_id, name="one")
    auto = await store.checkpoint_namespace(info.namespace_id)
    assert auto.checkpoint_id.startswith("cp-") and auto.name is None
    with pytest.raises(AlreadyExistsError):
        await store.checkpoint_namespace(info.namespace_id, name="one")
    with pytest.raises(InvalidArgumentError):
        await store.checkpoint_namespace(info.namespace_id, name="../up")
    frozen = await checkpoint_file(store, info.namespace_id, "one", "d/f.txt")
    with pytest.raises(FrozenError):
        await store.update_file(frozen.artifact.artifact_id, data=b"changed")  # type: ignore[union-attr]
    with pytest.raises(FrozenError):
        await store.delete(frozen.artifact.artifact_id)  # type: ignore[union-attr]
    assert [m.filename for m in await store.search(user_id="alice", scope=Scope.USER)] == [
        f"namespaces/{info.path.rpartition('/')[2]}/d/f.txt"]  # the copies are not artifacts of their own
    blob = await store.create_namespace(NamespaceType.BLOB, scope=Scope.USER, user_id="alice")
    with pytest.raises(NotSupportedError):
        await store.checkpoint_namespace(blob.namespace_id)
    await store.destroy_namespace(info.namespace_id)
    assert await store.ns.meta.search(store.sandbox_id, scope=Scope.USER, session_id=None, user_id="alice") == [
        n for n in await store.ns.meta.search(store.sandbox_id, scope=Scope.USER, session_id=None, user_id="alice")
        if n.namespace is not None]  # only the blob namespace is left


@pytest.mark.semantics("S-checkpoints")
async def test_quotas_count_a_checkpointed_blob_once(backend: str, tmp_path) -> None:
    clock = ManualClock(10**18)
    limits = Limits(user_quota_bytes=3000)
    async with make_store(backend, tmp_path / "data", clock, limits) as store:
        info = await store.create_namespace(NamespaceType.WORKSPACE, scope=Scope.USER, user_id="alice")
        await store.write_namespace(info.namespace_id, b"a" * 2000, path="/a.bin")
        await store.checkpoint_namespace(info.namespace_id, name="cp")  # shares the blob: nothing more to charge
        with pytest.raises(QuotaExceededError):
            await store.write_namespace(info.namespace_id, b"b" * 1500, path="/b.bin")
        assert await store.get_namespace_vfs(info.namespace_id).rm("/a.bin")
        clock.advance(store.ns.limits.blob_grace + 1)
        await store.gc()  # the checkpoint is the blob's holder now, and is charged for it
        assert await store.ns.meta.usage(f"{store.sandbox_id}/user/alice") == Usage(files=1, bytes=2000)
        with pytest.raises(QuotaExceededError):
            await store.write_namespace(info.namespace_id, b"b" * 1500, path="/b.bin")
        await store.delete_checkpoint(info.namespace_id, "cp")
        clock.advance(store.ns.limits.blob_grace + 1)
        await store.gc()
        await store.write_namespace(info.namespace_id, b"b" * 1500, path="/b.bin")


@pytest.mark.semantics("S-checkpoints")
async def test_a_restored_file_written_again_is_charged_and_later_checkpoints_keep_it(
    backend: str, tmp_path,
) -> None:
    """Regression: a commit that rebased onto the stored record kept its old blob_of and charged=False,
    so the new blob was charged to nobody, and a later checkpoint's copy of it was not found by gc."""
    clock = ManualClock(10**18)
    limits = Limits(user_quota_bytes=10**6)  # with a quota every commit rebases onto the stored record
    async with make_store(backend, tmp_path / "data", clock, limits) as store:
        account = f"{store.sandbox_id}/user/alice"
        info = await store.create_namespace(NamespaceType.WORKSPACE, scope=Scope.USER, user_id="alice")
        vfs = store.get_namespace_vfs(info.namespace_id)
        await vfs.write_file("/r.bin", b"1" * 100)
        await store.checkpoint_namespace(info.namespace_id, name="one")
        await store.restore_namespace(info.namespace_id, "one")
        await store.update_file(await store_id(store, info, "r.bin"), data=b"2" * 300)  # a restored file, written
        await store.checkpoint_namespace(info.namespace_id, name="two")
        await vfs.write_file("/r.bin", b"3" * 50)
        await vfs.rm("/r.bin")
        clock.advance(store.ns.limits.blob_grace + 1)
        await store.gc()
        copy = await checkpoint_file(store, info.namespace_id, "two", "r.bin")
        assert await store.retrieve(copy.artifact.artifact_id) == b"2" * 300  # type: ignore[union-attr]
        assert (await store.fsck(verify_data=True)).problems == []
        assert await store.ns.meta.usage(account) == Usage(files=2, bytes=100 + 300)  # one and two, once each


async def store_id(store: ArtifactStore, info: NamespaceInfo, path: str) -> str:
    _, node = await store.namespace_node(info.namespace_id, path)
    assert node is not None and node.artifact is not None
    return node.artifact.artifact_id
