"""``gc`` (issue #11): what nothing needs any more goes, and nothing else, also beside writers."""

from __future__ import annotations

import os
import subprocess
import sys

import anyio
import pytest

from core import ArtifactStore, Scope
from core.infra.clock import ManualClock

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.semantics("S-gc")
async def test_gc_counts_then_reclaims_expired_artifacts_and_due_blobs(store: ArtifactStore, clock: ManualClock) -> None:
    session = await store.create_session(user_id="alice")
    for i in range(3):
        await store.store(b"s" * (100 + i), filename=f"s{i}", session_id=session, user_id="alice", ttl=60)
    kept = await store.store(b"kept", filename="kept", user_id="alice", scope=Scope.USER)
    replaced = await store.store(b"v1", filename="v", user_id="alice", scope=Scope.USER)
    await store.update_file(replaced, data=b"v2", user_id="alice")  # v1's blob waits out the grace period
    clock.advance(61)
    dry = await store.gc(dry_run=True)
    assert (dry.expired.files, dry.expired.bytes, dry.blobs) == (3, 303, 0)
    assert (await store.gc(dry_run=True)) == dry  # a dry run changes nothing
    done = await store.gc()
    assert (done.dry_run, done.expired.files, done.expired.bytes) == (False, 3, 303)
    assert (await store.gc(dry_run=True)).expired.files == 0
    clock.advance(store.ns.limits.blob_grace + 1)
    assert (await store.gc(dry_run=True)).blobs == 4  # the three expired files' blobs and v1's
    assert (await store.gc()).blobs == 4
    assert (await store.gc(dry_run=True)).blobs == 0
    assert await store.retrieve(kept, user_id="alice") == b"kept"
    assert await store.retrieve(replaced, user_id="alice") == b"v2"


@pytest.mark.semantics("S-gc")
async def test_gc_beside_writers_loses_nothing(store: ArtifactStore, clock: ManualClock) -> None:
    """Writers store and overwrite while gc runs over and over (the clock past every grace period
    between rounds): every artifact still reads its last version."""
    last: dict[str, bytes] = {}

    async def writer(n: int) -> None:
        artifact_id = await store.store(b"0", filename=f"w{n}", user_id="alice", scope=Scope.USER)
        for version in range(1, 15):
            data = f"{n}:{version}".encode() * (version + 1)
            await store.update_file(artifact_id, data=data, user_id="alice")
            last[artifact_id] = data
            await anyio.sleep(0)

    async def collector() -> None:
        for _ in range(30):
            await store.gc()
            clock.advance(store.ns.limits.blob_grace + 1)
            await anyio.sleep(0)

    async with anyio.create_task_group() as tg:
        for n in range(4):
            tg.start_soon(writer, n)
        tg.start_soon(collector)
    await store.gc()
    for artifact_id, data in last.items():
        assert await store.retrieve(artifact_id, user_id="alice") == data


@pytest.mark.semantics("S-gc")
def test_artifactfs_gc_reports_and_clears_a_dead_mount_s_spool(tmp_path) -> None:
    data = tmp_path / "data"
    spool = data / "spool"
    spool.mkdir(parents=True)
    (spool / "17.part").write_bytes(b"x" * 2048)  # what a mount that died mid-write left behind

    def gc(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "fusefs", "gc", "--data-dir", str(data), *args],
                              capture_output=True, text=True, cwd=REPO, check=False, timeout=120)

    dry = gc("--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert "would reclaim" in dry.stdout and "spool of a dead mount: 1 files (2.0 KiB)" in dry.stdout
    assert (spool / "17.part").exists()
    from fusefs.datadir import DataDirLock

    live = DataDirLock(data)  # a running mount holds this lock: its spool is its own
    live.acquire(tmp_path / "mnt")
    try:
        held = gc()
    finally:
        live.release()
    assert held.returncode == 0 and "skipped, a mount is running" in held.stdout, held.stdout
    assert (spool / "17.part").exists()
    done = gc()
    assert done.returncode == 0 and "reclaimed:" in done.stdout and "1 files" in done.stdout, done.stdout
    assert list(spool.iterdir()) == []


@pytest.mark.semantics("S-gc")
async def test_gc_queues_orphan_blobs_and_deletes_them_after_the_grace_period(
    store: ArtifactStore, clock: ManualClock
) -> None:
    """A blob no record names and nothing queued (a store written before intents, a backend edited
    by hand) is queued by gc and deleted by a later gc once the grace period is over; an upload's
    intent queued meanwhile keeps its own, later time."""
    kept = await store.store(b"named", filename="kept", user_id="alice", scope=Scope.USER)
    ns = store.ns
    orphan = f"grid/{store.sandbox_id}/users/alice/{'0' * 32}.v1-orphan"
    await ns.blobs.put(orphan, b"nobody's")
    in_flight = f"grid/{store.sandbox_id}/users/alice/{'1' * 32}.v1-uploading"
    intent_until = ns.now() + ns.limits.upload_intent_ttl * 10**9
    await ns.meta.defer_delete([in_flight], intent_until)  # its intent, queued before its bytes
    await ns.blobs.put(in_flight, b"on its way")

    assert (await store.gc(dry_run=True)).orphans == 1
    assert orphan not in await ns.meta.pending_deletions()
    assert (await store.gc()).orphans == 1
    await ns.meta.queue_if_absent([in_flight], ns.grace_deadline())  # as a racing gc would: no effect
    clock.advance(ns.limits.blob_grace + 1)
    report = await store.gc()
    assert report.blobs == 1 and report.orphans == 0  # the orphan, not the upload still within its intent
    stored = {key async for key in ns.blobs.keys()}
    assert orphan not in stored and in_flight in stored
    assert await store.retrieve(kept, user_id="alice") == b"named"
