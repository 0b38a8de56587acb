"""Blobs leave only after their grace period, and nothing leaks (issue #16)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from storekit import commit_bytes
from storeprobe import blob_keys

from core import ArtifactStore, Limits, Scope
from core.infra.clock import ManualClock
from core.nodes import Node
from core.tree.namespace import Namespace

GRACE = Limits().blob_grace


async def read_all(store: ArtifactStore, node: Node) -> bytes:
    return b"".join([chunk async for chunk in store.ns.read_chunks(node, 4, verify=True)])


@pytest.mark.semantics("S-grace-read")
async def test_a_reader_of_the_old_version_reads_it_whole_until_the_grace_period_ends(
    store: ArtifactStore, clock: ManualClock
) -> None:
    artifact_id = await store.store(b"old bytes", filename="f.txt", user_id="alice", scope=Scope.USER)
    ns = store.ns
    held = await ns.meta.find_artifact(artifact_id)  # a reader's view: the version it opened
    assert held is not None and held.artifact is not None
    old_key = held.artifact.blob_key
    await commit_bytes(ns, held.ino, b"new bytes!")  # another writer's version
    assert await read_all(store, held) == b"old bytes"  # the old blob is still there, whole
    clock.advance(GRACE - 1)
    assert await ns.collect_garbage() == 0
    assert await read_all(store, held) == b"old bytes"
    clock.advance(2)
    assert await ns.collect_garbage() == 1
    assert old_key not in await blob_keys(store, settled=False)
    # After the grace period the reader follows to the version stored now: never EIO.
    assert await read_all(store, held) == b"new bytes!"
    assert await store.retrieve(artifact_id, user_id="alice") == b"new bytes!"


@pytest.mark.semantics("S-grace-delete")
async def test_a_deleted_artifact_s_blob_waits_out_the_grace_period(store: ArtifactStore, clock: ManualClock) -> None:
    artifact_id = await store.store(b"bytes", filename="g.txt", user_id="alice", scope=Scope.USER)
    held = await store.ns.meta.find_artifact(artifact_id)
    assert held is not None and held.artifact is not None
    await store.delete(artifact_id, user_id="alice")
    assert held.artifact.blob_key in await blob_keys(store, settled=False)
    assert await read_all(store, held) == b"bytes"
    clock.advance(GRACE + 1)
    assert await store.collect_garbage() == 1
    assert await blob_keys(store, settled=False) == set()


@pytest.mark.semantics("S-grace-intent")
async def test_a_blob_whose_writer_died_before_its_commit_is_reclaimed(
    store: ArtifactStore, clock: ManualClock
) -> None:
    artifact_id = await store.store(b"v1", filename="h.txt", user_id="alice", scope=Scope.USER)
    ns = store.ns
    node = await ns.meta.find_artifact(artifact_id)
    assert node is not None
    key, _, _ = await ns.put_blob(node, b"never committed")  # then the writer dies: no commit comes
    assert key in await blob_keys(store, settled=False)
    assert key in await ns.meta.pending_deletions()  # its intent, recorded before the upload
    clock.advance(GRACE + 1)
    assert await ns.collect_garbage() == 0  # an upload may still be on its way: not yet
    clock.advance(store.ns.limits.upload_intent_ttl)
    assert await ns.collect_garbage() == 1
    assert key not in await blob_keys(store, settled=False)
    assert await store.retrieve(artifact_id, user_id="alice") == b"v1"  # the live version stays
    assert await ns.meta.pending_deletions() == []


async def test_the_bucket_holds_the_named_blobs_and_the_queued_ones_only(
    store: ArtifactStore, clock: ManualClock
) -> None:
    ids = [await store.store(b"x%d" % i, filename=f"n{i}", user_id="alice", scope=Scope.USER) for i in range(4)]
    for artifact_id in ids[:3]:
        await store.update_file(artifact_id, data=b"again", user_id="alice")
    await store.delete(ids[0], user_id="alice")
    named = {n.artifact.blob_key for n in await store.ns.meta.search("default", scope=None, session_id=None, user_id=None)
             if n.artifact is not None and n.artifact.blob_key}
    stored = await blob_keys(store, settled=False)
    assert stored <= named | set(await store.ns.meta.pending_deletions())
    clock.advance(GRACE + store.ns.limits.upload_intent_ttl + 1)
    await store.collect_garbage()
    assert await blob_keys(store, settled=False) == named
    assert await store.ns.meta.pending_deletions() == []


_DIES_BEFORE_ITS_COMMIT = """
import asyncio, sys
from core import ArtifactStore, Limits, Scope

async def main(root):
    async with ArtifactStore(storage_provider="filesystem", session_provider="sqlite", fs_root=root) as store:
        artifact_id = await store.store(b"v1", filename="k.txt", user_id="alice", scope=Scope.USER)

        async def never(*args, **kwargs):  # the upload is done; the process dies before its commit
            print(artifact_id, flush=True)
            await asyncio.sleep(3600)

        store.ns.commit = never
        await store.update_file(artifact_id, data=b"v2, never committed", user_id="alice")

asyncio.run(main(sys.argv[1]))
"""


@pytest.mark.semantics("S-grace-intent")
async def test_a_process_killed_between_upload_and_commit_leaves_an_intent_gc_reclaims(tmp_path: Path) -> None:
    root = tmp_path / "data"
    child = subprocess.Popen([sys.executable, "-c", _DIES_BEFORE_ITS_COMMIT, str(root)], stdout=subprocess.PIPE,
                             cwd=Path(__file__).parent.parent, text=True)
    try:
        artifact_id = child.stdout.readline().strip()  # type: ignore[union-attr]
        assert artifact_id, "the child died before its upload"
    finally:
        os.kill(child.pid, signal.SIGKILL)
        child.wait()
    clock = ManualClock()
    limits = Limits()
    async with ArtifactStore(storage_provider="filesystem", session_provider="sqlite", fs_root=root, clock=clock,
                             limits=limits) as store:
        live = await store.ns.meta.find_artifact(artifact_id)
        assert live is not None and live.artifact is not None
        orphans = await blob_keys(store, settled=False) - {live.artifact.blob_key}
        assert len(orphans) == 1 and orphans <= set(await store.ns.meta.pending_deletions())
        assert await store.collect_garbage() == 0  # its writer might still commit: not yet
        clock.advance(limits.upload_intent_ttl + 1)
        assert await store.collect_garbage() == 1
        assert await blob_keys(store, settled=False) == {live.artifact.blob_key}
        assert await store.retrieve(artifact_id, user_id="alice") == b"v1"


async def test_a_commit_meeting_its_intent_keeps_a_deletion_another_writer_queued_meanwhile(
    store: ArtifactStore, clock: ManualClock
) -> None:
    """A commits its version, B commits over it at once and queues A's blob for deletion: B's entry
    must stay. Was: A cleared its upload intent in a step after its commit, B's commit could land
    in between, and the clearing (an unconditional removal from the queue) dropped B's entry: A's
    blob stayed in the bucket, named by nothing and queued for nothing, leaked for good. The
    clearing is now conditional and part of the commit's own step, so B comes after both."""
    a = store.ns
    b = Namespace(a.meta, a.blobs, clock, a.limits)  # another process on the same store
    artifact_id = await store.store(b"v1", filename="r.txt", user_id="alice", scope=Scope.USER)
    node = await a.meta.find_artifact(artifact_id)
    assert node is not None and node.artifact is not None

    async def b_commits() -> None:
        await commit_bytes(b, node.ino, b"v3 from B")

    old = node.artifact.blob_key
    key, size, sha256 = await a.put_blob(node, b"v2 from A")
    a.set_content(node, key, size, sha256)
    await a.commit(node, old_blob=old)
    await b_commits()
    assert key in await a.meta.pending_deletions()
    clock.advance(GRACE + 1)
    await store.collect_garbage()
    live = await a.meta.find_artifact(artifact_id)
    assert live is not None and live.artifact is not None
    assert await blob_keys(store, settled=False) == {live.artifact.blob_key}  # nothing leaked
    assert await store.retrieve(artifact_id, user_id="alice") == b"v3 from B"


async def test_a_part_leaving_its_upload_goes_at_once_unless_a_record_names_it(
    store: ArtifactStore, clock: ManualClock
) -> None:
    """Regression: parts of aborted uploads waited out the grace period, so a client could park bytes.

    A part a completion published (its reply lost, the upload reopened and
    then aborted) is the record's blob and stays.
    """
    artifact_id = await store.store(b"published", filename="p.txt", user_id="alice", scope=Scope.USER)
    ns = store.ns
    node = await ns.meta.find_artifact(artifact_id)
    assert node is not None and node.artifact is not None and node.artifact.blob_key is not None
    named = node.artifact.blob_key
    part = f"{ns.grid_key(node)}/up-00001-abcdef"
    writer = await ns.blob_writer(part)
    await writer.write(b"parked bytes")
    await writer.commit()
    assert part in await blob_keys(store, settled=False)
    await ns.drop_part_blob(part)
    await ns.drop_part_blob(named)
    assert await blob_keys(store, settled=False) == {named}
    assert await store.retrieve(artifact_id, user_id="alice") == b"published"


@pytest.mark.semantics("S-grace-delete")
async def test_a_removed_or_replaced_blob_is_queued_by_the_change_itself(
    store: ArtifactStore, clock: ManualClock
) -> None:
    """Regression (issue #16): the blob of a removed or replaced file was queued by a call of its
    own after the change, so a process that died between the two leaked it (named by nothing,
    queued nowhere). Here every later queueing call fails, as if the process had died."""
    ns = store.ns
    gone = await store.store(b"deleted", filename="gone.txt", user_id="alice", scope=Scope.USER)
    over = await store.store(b"overwritten", filename="over.txt", user_id="alice", scope=Scope.USER)
    moved_over = await store.store(b"renamed over", filename="target.txt", user_id="alice", scope=Scope.USER)
    source = await store.store(b"source", filename="source.txt", user_id="alice", scope=Scope.USER)
    keys = {}
    for artifact_id in (gone, over, moved_over):
        node = await ns.meta.find_artifact(artifact_id)
        assert node is not None and node.artifact is not None
        keys[artifact_id] = node.artifact.blob_key

    async def died(*args: object, **kwargs: object) -> None:
        raise AssertionError("the change should have queued the blob itself")

    ns.meta.defer_delete = died  # type: ignore[method-assign]
    assert await store.delete(gone, user_id="alice")
    target = await ns.meta.find_artifact(moved_over)
    src = await ns.meta.find_artifact(source)
    assert target is not None and src is not None
    await ns.rename(src, await ns.get(target.parent), target.name)
    pending = set(await ns.meta.pending_deletions())
    assert {keys[gone], keys[moved_over]} <= pending
    # a store() over a name queues what it replaces (its new blob's own intent is another call)
    replaced = await ns.meta.find_artifact(over)
    assert replaced is not None
    node = await ns.file_node(await ns.get(replaced.parent), replaced.name, ttl=None)
    await ns.meta.insert(node, replace=True, drop_at_ns=ns.grace_deadline())
    assert keys[over] in set(await ns.meta.pending_deletions())
    del ns.meta.defer_delete
    clock.advance(GRACE + 1)
    assert await ns.collect_garbage() == 3
    assert not {keys[gone], keys[over], keys[moved_over]} & await blob_keys(store, settled=False)
