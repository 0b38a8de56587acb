"""metadata() reuses its answer while the store is unchanged, and never past a change.

Counted (statements), never timed: a second metadata() of an unchanged
artifact reads no record, and any commit, by this store, another store on
the same data dir (another process's view) or a failed one, makes the next
call read again.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from core import ArtifactExpiredError, ArtifactStore, Limits
from core.backends.meta.sqlite import SQLiteMetaStore
from core.errors import AccessDeniedError
from core.infra.clock import ManualClock


def fs_store(root: Path, clock: ManualClock) -> ArtifactStore:
    return ArtifactStore(storage_provider="filesystem", session_provider="sqlite", fs_root=root, clock=clock,
                         limits=Limits())


def record_reads(store: ArtifactStore) -> list[str]:
    """The SELECTs of ``store``'s metadata connection, as they run."""
    meta = store.ns.meta
    assert isinstance(meta, SQLiteMetaStore)
    seen: list[str] = []
    meta.db.set_trace_callback(lambda sql: seen.append(sql) if sql.startswith("SELECT") else None)
    return seen


async def test_an_unchanged_artifact_is_described_without_a_read(tmp_path: Path) -> None:
    clock = ManualClock()
    store = fs_store(tmp_path, clock)
    session = await store.create_session()
    aid = await store.store(b"x", filename="a.txt", session_id=session, meta={"k": [1]})
    reads = record_reads(store)
    first = await store.metadata(aid)
    assert reads
    reads.clear()
    second = await store.metadata(aid)
    assert reads == []  # the answer was kept
    assert second == first
    second.meta["k"].append(2)  # an answer is the caller's own: changing it changes no later one
    assert (await store.metadata(aid)).meta == {"k": [1]}
    await store.close()


async def test_a_change_by_this_store_is_seen_at_once(tmp_path: Path) -> None:
    clock = ManualClock()
    store = fs_store(tmp_path, clock)
    session = await store.create_session()
    aid = await store.store(b"x", filename="a.txt", session_id=session)
    assert (await store.metadata(aid)).meta == {}
    await store.update_file(aid, meta={"v": 2})
    assert (await store.metadata(aid)).meta == {"v": 2}
    await store.move_file(aid, new_filename="d/b.txt")
    assert (await store.metadata(aid)).filename == "d/b.txt"
    await store.update_file(aid, data=b"longer")
    assert (await store.metadata(aid)).bytes == 6
    await store.close()


async def test_a_change_by_another_process_is_seen_at_once(tmp_path: Path) -> None:
    clock = ManualClock()
    mine, other = fs_store(tmp_path, clock), fs_store(tmp_path, clock)  # two connections, as two processes have
    session = await mine.create_session()
    aid = await mine.store(b"x", filename="a.txt", session_id=session)
    assert (await mine.metadata(aid)).summary == ""
    await other.update_file(aid, summary="changed elsewhere")
    assert (await mine.metadata(aid)).summary == "changed elsewhere"
    await other.delete(aid)
    with pytest.raises(Exception) as gone:
        await mine.metadata(aid)
    assert "not found" in str(gone.value)
    await mine.close()
    await other.close()


async def test_expiry_and_access_are_checked_on_every_call(tmp_path: Path) -> None:
    clock = ManualClock()
    store = fs_store(tmp_path, clock)
    session = await store.create_session(user_id="alice")
    aid = await store.store(b"x", filename="a.txt", session_id=session, user_id="alice", ttl=60)
    await store.metadata(aid, session_id=session, user_id="alice")
    with pytest.raises(AccessDeniedError):  # a kept answer is not a way around the access rules
        await store.metadata(aid, session_id=session, user_id="mallory")
    clock.advance(61)
    with pytest.raises(ArtifactExpiredError):
        await store.metadata(aid, session_id=session, user_id="alice")
    await store.close()


@pytest.mark.parametrize("bad_id", [[], {}, None, 7])
async def test_an_id_that_is_no_string_is_refused_as_a_store_error(tmp_path: Path, bad_id: object) -> None:
    """Regression: the kept answers were looked up by the id before it was checked, and a list
    (unhashable) escaped as a raw TypeError (found by tests/test_fuzz.py)."""
    from core.errors import ArtifactStoreError

    store = fs_store(tmp_path, ManualClock())
    await store.create_session()
    with pytest.raises(ArtifactStoreError):
        await store.metadata(bad_id)  # type: ignore[arg-type]
    await store.close()
