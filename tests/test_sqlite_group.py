"""SQLite group commit: overlapping writers share one COMMIT and one WAL fsync, and a failing one
undoes only itself. Counted (statements, fsyncs), never timed."""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio
import trio.testing

from core import ArtifactStore
from core.backends.meta import sqlite_group
from core.backends.meta.sqlite import SQLiteMetaStore
from core.errors import ProviderError
from core.infra.signing import RecordSigner
from core.models import Usage
from core.nodes import ROOT_INO, NodeKind, new_node

SIGNER = RecordSigner(b"sqlite-group-test-key-0123456789ab")
STORES = 32


class Counts:
    """Statements run on a connection and WAL fsyncs, in the order they happened."""

    def __init__(self) -> None:
        self.events: list[str] = []

    def commits(self) -> int:
        return self.events.count("COMMIT")

    def fsyncs(self) -> int:
        return self.events.count("FSYNC")


@pytest.fixture
def counts(monkeypatch: pytest.MonkeyPatch) -> Iterator[Counts]:
    seen = Counts()
    flush = sqlite_group.WalSync._flush

    def counted(self: sqlite_group.WalSync) -> None:
        flush(self)
        seen.events.append("FSYNC")  # after it returned: what came before is durable

    monkeypatch.setattr(sqlite_group.WalSync, "_flush", counted)
    yield seen


def traced(meta: SQLiteMetaStore, counts: Counts) -> None:
    meta.db.set_trace_callback(lambda sql: counts.events.append(sql.split()[0].upper()))


async def open_store(tmp_path: Path) -> tuple[ArtifactStore, SQLiteMetaStore, str]:
    """A store on the embedded default, its metadata store and a session."""
    store = ArtifactStore(storage_provider="filesystem", session_provider="sqlite", fs_root=tmp_path / "data")
    session = await store.create_session(user_id="alice")
    meta = store.ns.meta
    assert isinstance(meta, SQLiteMetaStore)
    return store, meta, session


@pytest.mark.semantics("S-durable-store")
async def test_concurrent_stores_share_commits_and_wal_fsyncs(tmp_path: Path, counts: Counts) -> None:
    store, meta, session = await open_store(tmp_path)
    traced(meta, counts)
    ids: list[str] = []

    async def one(i: int) -> None:
        ids.append(await store.store(b"x" * 1024, filename=f"f{i}", session_id=session))

    async with trio.open_nursery() as nursery:
        for i in range(STORES):
            nursery.start_soon(one, i)
    assert len(ids) == STORES
    # Alone, each store is 3 transactions and one WAL fsync: 96 and 32 here.
    assert counts.commits() <= STORES, counts.commits()
    assert 1 <= counts.fsyncs() <= STORES // 2, counts.fsyncs()
    assert counts.events[-1] in ("FSYNC", "COMMIT")
    listed = await store.list_by_session(session, limit=100)
    assert len(listed) == STORES
    await store.close()


@pytest.mark.semantics("S-durable-store")
async def test_store_returns_after_its_commit_is_fsynced(tmp_path: Path, counts: Counts) -> None:
    store, meta, session = await open_store(tmp_path)
    traced(meta, counts)
    inserted: list[int] = []
    meta.db.set_trace_callback(lambda sql: (counts.events.append(sql.split()[0].upper()),
                                            inserted.append(len(counts.events)) if sql.startswith("INSERT INTO node") else None))
    await store.store(b"data", filename="one.txt", session_id=session)
    first_insert = inserted[0]
    commit_after = counts.events.index("COMMIT", first_insert)
    assert "FSYNC" in counts.events[commit_after:], counts.events  # the record's commit is on disk on return

    counts.events.clear()
    await store.update_file((await store.list_by_session(session))[0].artifact_id, meta={"v": 2})
    assert counts.fsyncs() == 0  # a meta-only update is committed, not fsynced (as an attribute change)
    await store.close()


@pytest.mark.semantics("S-durable-fsync")
async def test_the_mounts_sync_fsyncs_the_wal(tmp_path: Path, counts: Counts) -> None:
    store, _, _ = await open_store(tmp_path)
    await store.ns.sync_blobs()  # what the mount's fsync and periodic sync call
    assert counts.fsyncs() == 1
    await store.close()


async def test_a_failing_member_undoes_itself_alone(tmp_path: Path) -> None:
    """Three writers in one scheduler pass share a transaction; the one that fails after writing
    leaves no trace and takes nothing of the others with it. trio runs them in any order: when
    the failing one leads, it rolls back the transaction it alone is in, and the others share
    the next; repeated so the member case surely comes up too."""
    for attempt in range(8):
        path = tmp_path / f"meta-{attempt}.sqlite3"
        meta = SQLiteMetaStore(path, SIGNER)
        await meta.open()
        statements: list[str] = []
        meta.db.set_trace_callback(statements.append)
        outcomes: dict[str, str] = {}

        async def writer(key: str, fail: bool) -> None:
            try:
                async with meta._tx() as db:
                    db.execute("INSERT INTO usage (key, bytes, files) VALUES (?, 1, 1)", (key,))
                    db.execute("UPDATE usage SET bytes = 2 WHERE key = ?", (key,))
                    if fail:
                        raise ValueError("refused after writing")
                outcomes[key] = "ok"
            except ValueError:
                outcomes[key] = "failed"

        async with trio.open_nursery() as nursery:
            nursery.start_soon(writer, "a", False)
            nursery.start_soon(writer, "b", True)
            nursery.start_soon(writer, "c", False)
        assert outcomes == {"a": "ok", "b": "failed", "c": "ok"}
        assert statements.count("COMMIT") == 1  # a and c in one batch, whichever order they ran in
        assert statements.count("BEGIN IMMEDIATE") <= 2

        other = sqlite3.connect(path)  # what another process sees: committed rows only
        try:
            rows = dict(other.execute("SELECT key, bytes FROM usage").fetchall())
        finally:
            other.close()
        assert rows == {"a": 2, "c": 2}
        await meta.close()


async def test_a_failed_commit_fails_every_member(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    meta = SQLiteMetaStore(tmp_path / "meta.sqlite3", SIGNER)
    await meta.open()
    failures: list[str] = []
    finish = sqlite_group.GroupCommit.finish

    async def failing_finish(self: sqlite_group.GroupCommit, batch: sqlite_group._Batch) -> None:
        real = self._db
        self._db = _CommitFails(real)  # type: ignore[assignment]
        try:
            await finish(self, batch)
        finally:
            self._db = real

    monkeypatch.setattr(sqlite_group.GroupCommit, "finish", failing_finish)

    async def writer(key: str) -> None:
        try:
            async with meta._tx() as db:
                db.execute("INSERT INTO usage (key, bytes, files) VALUES (?, 1, 1)", (key,))
        except ProviderError:
            failures.append(key)

    async with trio.open_nursery() as nursery:
        for key in ("a", "b", "c"):
            nursery.start_soon(writer, key)
    assert sorted(failures) == ["a", "b", "c"]
    monkeypatch.undo()
    assert meta.db.execute("SELECT COUNT(*) FROM usage").fetchone() == (0,)  # all rolled back, visible to none
    async with meta._tx() as db:  # and the next writer starts a fresh batch
        db.execute("INSERT INTO usage (key, bytes, files) VALUES ('d', 1, 1)")
    assert meta.db.execute("SELECT key FROM usage").fetchall() == [("d",)]
    await meta.close()


@pytest.mark.semantics("S-durable-store")
async def test_a_read_during_an_open_batch_never_sees_what_its_failed_commit_takes_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The leader yields once with its transaction open, on the connection every read uses. A reader
    that runs in that pass (a lookup, gc's look at usage) must wait for the batch's end: here its
    COMMIT fails as a full disk's does, and the row it would have seen never existed."""
    meta = SQLiteMetaStore(tmp_path / "meta.sqlite3", SIGNER)
    await meta.open()
    group = meta._group
    assert group is not None
    real = group._db
    written = trio.Event()
    seen: dict[str, object] = {}

    async def others_run_then_commit_fails() -> None:  # the leader's pass: every runnable task runs to a block
        await trio.testing.wait_all_tasks_blocked()
        group._db = _CommitFails(real)  # type: ignore[assignment]

    monkeypatch.setattr(sqlite_group.anyio.lowlevel, "cancel_shielded_checkpoint", others_run_then_commit_fails)

    async def writer() -> None:
        node = new_node(parent=ROOT_INO, name="n", kind=NodeKind.FILE, mode=0o644, now_ns=1)
        node.ino = 1000
        with pytest.raises(ProviderError):
            async with meta._tx() as db:
                meta._write(db, node, insert=True)
                db.execute("INSERT INTO usage (key, bytes, files) VALUES ('a', 1, 1)")
                written.set()

    async def reader() -> None:
        await written.wait()
        token = meta.read_token()  # as metadata() takes it, before its reads
        seen["lookup"] = await meta.lookup(ROOT_INO, "n")
        seen["get"] = await meta.get(1000)
        seen["usage"] = await meta.usage("a")
        seen["token"] = token

    async with trio.open_nursery() as nursery:
        nursery.start_soon(writer)
        nursery.start_soon(reader)
    group._db = real
    assert seen["lookup"] is None and seen["get"] is None
    assert seen["usage"] == Usage()
    assert meta.read_token() != seen["token"]  # an answer kept under the reader's token is never reused
    assert meta.db.execute("SELECT COUNT(*) FROM usage").fetchone() == (0,)
    await meta.close()


# What a coroutine method of the store is when it is not a gated read: a write (it reads inside its
# own transaction), a read made only of gated ones, or the store's own life.
UNGATED = {"insert", "update", "remove", "rename", "exchange", "link", "commit", "defer_delete", "forget_deletions",
           "queue_if_absent", "recount_subdirs", "reset_usage", "entry", "children", "open", "close", "sync",
           "new_artifact_id"}


def test_every_read_of_the_store_waits_for_an_open_batch() -> None:
    """A method added later must say which it is: a read outside a transaction would see a batch's
    uncommitted rows (see the test below)."""
    import inspect

    methods = {name for name, f in vars(SQLiteMetaStore).items()
               if inspect.iscoroutinefunction(f) and not name.startswith("_")}
    gated = {name for name in methods if hasattr(getattr(SQLiteMetaStore, name), "__wrapped__")}
    assert methods - gated == UNGATED


async def test_a_lone_reader_passes_the_gate_without_a_checkpoint(tmp_path: Path) -> None:
    """No batch open: the read gate costs one attribute test, not a scheduler pass."""
    meta = SQLiteMetaStore(tmp_path / "meta.sqlite3", SIGNER)
    await meta.open()
    with trio.CancelScope() as scope:
        scope.cancel()  # any checkpoint would raise Cancelled
        assert (await meta.get(ROOT_INO)) is not None
    assert not scope.cancelled_caught
    await meta.close()


async def test_a_lone_writer_commits_once_and_the_memory_store_has_nothing_to_fsync(
    tmp_path: Path, counts: Counts
) -> None:
    meta = SQLiteMetaStore(":memory:", SIGNER)
    await meta.open()
    statements: list[str] = []
    meta.db.set_trace_callback(statements.append)
    async with meta._tx() as db:
        db.execute("INSERT INTO usage (key, bytes, files) VALUES ('a', 1, 1)")
    assert statements.count("COMMIT") == 1
    await meta.sync()
    assert counts.fsyncs() == 0
    assert not os.path.exists(":memory:-wal")
    await meta.close()


class _CommitFails:
    """A connection whose COMMIT fails as a full disk's would."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db

    def __getattr__(self, name: str) -> object:
        return getattr(self._db, name)

    def execute(self, sql: str, *args: object) -> sqlite3.Cursor:
        if sql == "COMMIT":
            raise sqlite3.OperationalError("disk I/O error")
        return self._db.execute(sql, *args)


async def test_a_second_store_opens_while_a_batch_holds_the_lock(tmp_path: Path) -> None:
    """A batch holds the write lock across one scheduler pass: a second connection in the same thread
    must wait for it with async pauses, not in SQLite's busy handler, which would stop the loop that
    is to release it (found as "database is locked" after 10 s in tests/test_namespaces.py)."""
    for attempt in range(8):  # trio may run the two tasks in either order: some attempts open mid-batch
        path = tmp_path / f"meta-{attempt}.sqlite3"
        first = SQLiteMetaStore(path, SIGNER)
        await first.open()
        second = SQLiteMetaStore(path, SIGNER)

        async def write() -> None:
            async with first._tx() as db:
                db.execute("INSERT INTO usage (key, bytes, files) VALUES ('a', 1, 1)")

        async with trio.open_nursery() as nursery:
            nursery.start_soon(write)
            nursery.start_soon(second.open)
        assert second.db.execute("SELECT key FROM usage").fetchall() == [("a",)]
        await second.close()
        await first.close()


async def test_closing_the_store_under_an_open_batch_fails_its_members_without_hanging(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    meta = SQLiteMetaStore(tmp_path / "meta.sqlite3", SIGNER)
    await meta.open()
    outcomes: list[str] = []

    async def close_instead_of_yielding() -> None:  # the leader's one scheduler pass, where another task closes
        await meta.close()

    monkeypatch.setattr(sqlite_group.anyio.lowlevel, "cancel_shielded_checkpoint", close_instead_of_yielding)

    async def writer(key: str) -> None:
        try:
            async with meta._tx() as db:
                db.execute("INSERT INTO usage (key, bytes, files) VALUES (?, 1, 1)", (key,))
            outcomes.append("ok")
        except ProviderError:
            outcomes.append("failed")

    with trio.fail_after(60):  # a generous bound: a member left waiting would hang here
        await writer("a")
    assert outcomes == ["failed"]
