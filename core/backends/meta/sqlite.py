"""Metadata in SQLite: the embedded default, and (on ``:memory:``) the memory backend.

Calls run inline on the event loop: a WAL commit with ``synchronous=NORMAL``
takes tens of microseconds, far less than a hop to a worker thread would.
The one thing that could stall the loop is another process's write lock (a
library process writing to the same data dir): a transaction never waits for
it inside SQLite, but polls for it with an async sleep (:class:`GroupCommit`),
so a mount answers every other request meanwhile. Readers never wait for a
writer in WAL mode.

Writers that overlap share one transaction, each in a savepoint of its own,
and one COMMIT (:mod:`sqlite_group`). A commit is durable against a power
loss only after :meth:`SQLiteMetaStore.sync` (one shared ``fdatasync`` of
the WAL in a worker thread): the callers that promise durability call it.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import sqlite3
import time
from collections.abc import Awaitable, Callable, Collection, Sequence
from pathlib import Path
from typing import Any, TypeVar

import anyio

from core.backends.meta import checks
from core.backends.meta.base import ChildrenPage, Cover, Deferred, SearchPage, SearchQuery, Settle, decode_record
from core.backends.meta.sqlite_group import GroupCommit, Member, WalSync
from core.errors import (
    AlreadyExistsError,
    ArtifactCorruptedError,
    ArtifactNotFoundError,
    DirectoryNotEmptyError,
    IsADirectoryError_,
    NotADirectoryError_,
    ProviderError,
    StaleRecordError,
    StoreClosedError,
    StoreFullError,
)
from core.infra.private import FILE_MODE, private_dir, private_file
from core.infra.signing import RecordSigner
from core.models import Scope, Usage
from core import shards
from core.nodes import ROOT_INO, Node, NodeKind, NodeRole, Space, account_of, new_node
from core.settings import Settings

log = logging.getLogger("artifactfs.meta")
_T = TypeVar("_T")

BUSY_TIMEOUT_MS = 10_000  # what a statement other than BEGIN IMMEDIATE may wait inside SQLite (WAL recovery)
LOCK_WAIT = 30.0  # seconds a transaction waits for another process's write lock, polling
_LOCK_POLL = (0.001, 0.025)  # the first and the longest pause between two tries

_SCHEMA = """
CREATE TABLE IF NOT EXISTS node (
    ino INTEGER PRIMARY KEY,
    parent INTEGER NOT NULL,
    name TEXT NOT NULL,
    is_dir INTEGER NOT NULL,
    artifact_id TEXT,
    sandbox_id TEXT,
    scope TEXT,
    session_id TEXT,
    user_id TEXT,
    usage_key TEXT,
    size INTEGER NOT NULL,
    expires_at INTEGER,
    blob_of TEXT,
    record BLOB NOT NULL,
    sig TEXT NOT NULL,
    subdirs INTEGER NOT NULL DEFAULT 0,
    UNIQUE (parent, name)
);
CREATE UNIQUE INDEX IF NOT EXISTS node_artifact ON node(artifact_id) WHERE artifact_id IS NOT NULL;
CREATE INDEX IF NOT EXISTS node_expiry ON node(expires_at) WHERE expires_at IS NOT NULL;
CREATE TABLE IF NOT EXISTS usage (key TEXT PRIMARY KEY, bytes INTEGER NOT NULL, files INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS counter (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
INSERT OR IGNORE INTO counter (name, value) VALUES ('ino', 1);
"""

# The deletion queue (issue #16): blob keys gc may delete from not_before on, if no record names them.
_DEFERRED_SCHEMA = """
CREATE TABLE IF NOT EXISTS deferred_blob (key TEXT PRIMARY KEY, not_before INTEGER NOT NULL);
CREATE INDEX IF NOT EXISTS deferred_blob_due ON deferred_blob(not_before);
"""

# Search pages (issue #12): each space, and each MIME type, in (stored_at, artifact_id) order.
_SEARCH_SCHEMA = """
DROP INDEX IF EXISTS node_user;
DROP INDEX IF EXISTS node_session;
DROP INDEX IF EXISTS node_scope;
CREATE INDEX IF NOT EXISTS node_sandbox_by_time ON node(sandbox_id, stored_at, artifact_id)
    WHERE artifact_id IS NOT NULL;
CREATE INDEX IF NOT EXISTS node_user_by_time ON node(sandbox_id, user_id, stored_at, artifact_id)
    WHERE artifact_id IS NOT NULL;
CREATE INDEX IF NOT EXISTS node_session_by_time ON node(sandbox_id, session_id, stored_at, artifact_id)
    WHERE artifact_id IS NOT NULL;
CREATE INDEX IF NOT EXISTS node_scope_by_time ON node(sandbox_id, scope, stored_at, artifact_id)
    WHERE artifact_id IS NOT NULL;
CREATE INDEX IF NOT EXISTS node_mime_by_time ON node(sandbox_id, mime, stored_at, artifact_id)
    WHERE artifact_id IS NOT NULL;
-- A process of an earlier version inserts rows without these columns: fill them from the record.
CREATE TRIGGER IF NOT EXISTS node_search_fill AFTER INSERT ON node
    WHEN NEW.artifact_id IS NOT NULL AND NEW.stored_at IS NULL
BEGIN
    UPDATE node SET stored_at = json_extract(CAST(NEW.record AS TEXT), '$.crtime_ns'),
                    mime = json_extract(CAST(NEW.record AS TEXT), '$.artifact.mime')
    WHERE ino = NEW.ino;
END;
"""
SEARCH_SCAN = 10_000  # records a page with meta fields reads at most (they are not indexed)
_MIME_MERGE = 32  # MIME types one prefix search merges, each read in order; beyond, the range is sorted

# A directory's subdirectories (st_nlink is 2 + that), kept by the database itself: triggers move
# the parent's count wherever a directory's row is inserted, deleted or given another parent, so no
# write path of this module can leave it wrong, and a read costs nothing more. Not in the record.
_SUBDIR_SCHEMA = """
CREATE TRIGGER IF NOT EXISTS subdir_added AFTER INSERT ON node WHEN NEW.is_dir
BEGIN UPDATE node SET subdirs = subdirs + 1 WHERE ino = NEW.parent; END;
CREATE TRIGGER IF NOT EXISTS subdir_removed AFTER DELETE ON node WHEN OLD.is_dir
BEGIN UPDATE node SET subdirs = subdirs - 1 WHERE ino = OLD.parent; END;
CREATE TRIGGER IF NOT EXISTS subdir_moved AFTER UPDATE OF parent ON node WHEN OLD.is_dir AND OLD.parent != NEW.parent
BEGIN
    UPDATE node SET subdirs = subdirs - 1 WHERE ino = OLD.parent;
    UPDATE node SET subdirs = subdirs + 1 WHERE ino = NEW.parent;
END;
"""
# A store made before the count: the column, counted once.
_SUBDIR_MIGRATION = """
ALTER TABLE node ADD COLUMN subdirs INTEGER NOT NULL DEFAULT 0;
UPDATE node SET subdirs = (SELECT COUNT(*) FROM node AS sub WHERE sub.parent = node.ino AND sub.is_dir
                           AND sub.ino != node.ino) WHERE is_dir;
"""
# Hard links (issue #13): a node's names beyond its primary one (the node row's parent and name).
# The record lists them too, and is the truth: a row here only says where to look. A name is taken
# in the node table or here, never both; every write that adds a name checks both first.
_LINK_SCHEMA = """
CREATE TABLE IF NOT EXISTS link (
    parent INTEGER NOT NULL, name TEXT NOT NULL, ino INTEGER NOT NULL, PRIMARY KEY (parent, name)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS link_ino ON link(ino);
"""
# An account's generation (issue #11): every change of its counters moves it, so a repair can reset
# them conditionally on what it counted (MetaStore.reset_usage).
_COLUMNS = "ino, record, sig, subdirs"
_RECORD_COLUMNS = "node.ino, node.record, node.sig, node.subdirs"  # the same, in a join
# The columns derived from a record, in the order _write computes them.
_FIELDS = ("parent", "name", "is_dir", "artifact_id", "sandbox_id", "scope", "session_id", "user_id", "usage_key",
           "size", "expires_at", "blob_of", "stored_at", "mime")
_FIELDS_SQL = ", ".join(_FIELDS)
_UPDATE_SQL: dict[tuple[int, ...], str] = {}  # changed field positions -> UPDATE statement
_INO_BLOCK = 64  # inode numbers reserved per counter update
_TOUCHED_ROLES = (NodeRole.ENTRY, NodeRole.SCOPE_ROOT)  # directories whose mtime follows their entries
_RESOLVE_SQL: dict[int, str] = {}  # path length -> the query that walks it

# Everything below a directory: one recursive query, following the (parent, name) index down.
_SUBTREE_SQL = f"""
WITH RECURSIVE below(ino, is_dir) AS (
    SELECT ino, is_dir FROM node WHERE parent = ? AND ino != {ROOT_INO}
    UNION
    SELECT node.ino, node.is_dir FROM node JOIN below ON node.parent = below.ino WHERE below.is_dir
)
SELECT {_RECORD_COLUMNS} FROM below JOIN node ON node.ino = below.ino
"""

# Nodes and the directories above each, up to the first that is not an entry. The role is in the
# record alone; UNION answers a directory shared by many chains once (and ends a cycle, were there one).
_LINEAGE_SQL = f"""
WITH RECURSIVE up(ino) AS (
    SELECT value FROM json_each(?)
    UNION
    SELECT node.parent FROM node JOIN up ON node.ino = up.ino
    WHERE json_extract(CAST(node.record AS TEXT), '$.role') = 'entry'
)
SELECT {_RECORD_COLUMNS} FROM up JOIN node ON node.ino = up.ino
"""


def _resolve_sql(length: int) -> str:
    """The query that walks a path of ``length`` names down from a directory, one level per step."""
    sql = _RESOLVE_SQL.get(length)
    if sql is None:
        names = ", ".join(f"({depth}, ?)" for depth in range(1, length + 1))
        sql = _RESOLVE_SQL[length] = f"""
WITH RECURSIVE path(depth, name) AS (VALUES {names}),
walk(depth, ino) AS (
    SELECT 0, ?
    UNION ALL
    SELECT walk.depth + 1, node.ino FROM walk
    JOIN path ON path.depth = walk.depth + 1
    JOIN node ON node.parent = walk.ino AND node.name = path.name
)
SELECT {_RECORD_COLUMNS} FROM walk JOIN node ON node.ino = walk.ino
WHERE walk.depth > 0 ORDER BY walk.depth
"""
    return sql


def _after_batch(read: Callable[..., Awaitable[_T]]) -> Callable[..., Awaitable[_T]]:
    """``read`` once no group-commit batch is open (:meth:`GroupCommit.settled`).

    Why: reads share the writers' connection, and a batch stays open across
    its leader's scheduler pass; a read then would see rows a failed COMMIT
    takes back (a lookup answering an artifact that never existed, gc
    deleting a blob whose removal comes back). With no batch open the gate
    is one attribute test.
    """

    @functools.wraps(read)
    async def gated(self: SQLiteMetaStore, *args: Any, **kwargs: Any) -> _T:
        group = self._group
        if group is not None and group.busy:
            await group.settled()
        return await read(self, *args, **kwargs)

    return gated


class SQLiteMetaStore:
    def __init__(self, path: Path | str, signer: RecordSigner, *, in_data_dir: bool = False) -> None:
        self._path = str(path)
        self._in_data_dir = in_data_dir  # the file's directory is the data dir: owner-only too
        self._signer = signer
        self._db: sqlite3.Connection | None = None
        self._ino_next = self._ino_end = 0  # the reserved block of inode numbers: [next, end)
        self._watermark = checks.RevisionWatermark()
        self._group: GroupCommit | None = None
        self._wal_sync = WalSync(self._path)

    # -- lifecycle

    async def open(self) -> None:
        if self._path != ":memory:":
            self._make_private()
        db = sqlite3.connect(self._path, isolation_level=None, check_same_thread=False, timeout=10)
        await _polled(db, _prepare)
        self._db = db
        self._group = GroupCommit(db, lambda: _try_begin(db), lock_wait=LOCK_WAIT, poll=_LOCK_POLL,
                                  error=_provider_error)
        if await self.get(ROOT_INO) is None:
            root = new_node(parent=0, name="", kind=NodeKind.DIR, mode=0o755, role=NodeRole.ROOT, now_ns=0)
            root.ino = ROOT_INO
            async with self._tx() as db:
                self._write(db, root, insert=True)

    def _make_private(self) -> None:
        """The database owner-only before SQLite opens it: its -wal and -shm take the same mode."""
        path = Path(self._path)
        if self._in_data_dir:
            private_dir(path.parent)
        else:
            path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        private_file(path)
        for suffix in ("-wal", "-shm", "-journal"):
            try:
                os.chmod(f"{path}{suffix}", FILE_MODE)  # made by an older version, perhaps world-readable
            except FileNotFoundError:
                pass

    async def close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None
            self._group = None

    @property
    def db(self) -> sqlite3.Connection:
        if self._db is None:
            raise StoreClosedError("the metadata store is closed")
        return self._db

    def _tx(self) -> Member:
        """A write transaction: the body runs without an await, and may share its COMMIT (GroupCommit)."""
        if self._group is None:
            raise StoreClosedError("the metadata store is closed")
        return self._group.member()

    def read_token(self) -> tuple[int, int]:
        """SQLite's ``data_version`` (it moves when another connection commits) and this connection's
        own count of changes (every savepoint released, every commit or rollback)."""
        assert self._group is not None
        return self.db.execute("PRAGMA data_version").fetchone()[0], self._group.changes

    async def sync(self) -> None:
        """Make every commit so far durable against a power loss (``synchronous=NORMAL`` leaves that
        to a checkpoint): one ``fdatasync`` of the WAL, shared by concurrent callers."""
        if self._db is None:
            raise StoreClosedError("the metadata store is closed")
        await self._wal_sync.sync()

    # -- records

    def _load(self, row: tuple[int, bytes, str, int] | None) -> Node | None:
        if row is None:
            return None
        ino, record, sig, subdirs = row
        node = self._watermark.check(decode_record(self._signer, ino, record, sig))
        node.subdirs = subdirs
        return node

    def _write(self, db: sqlite3.Connection, node: Node, *, insert: bool, old: tuple | None = None) -> None:
        """Insert or rewrite ``node``'s row; ``old`` (its ``_FIELDS`` as stored) narrows an update.

        SQLite rewrites the entries of every index whose columns an UPDATE
        sets, changed or not; setting only the columns that changed makes a
        directory touch or a new version cost a third as much (measured).
        """
        record = node.model_dump_json(exclude_defaults=False).encode()
        space = node.space
        art = node.artifact
        values = (
            node.parent,
            node.name,
            int(node.is_dir),
            art.artifact_id if art else None,
            space.sandbox_id if space else None,
            space.scope.value if space else None,
            space.session_id if space else None,
            space.user_id if space else None,
            account_of(node),
            node.size,
            node.expires_at_ns,
            art.blob_of if art else None,
            node.crtime_ns if art else None,
            art.mime if art else None,
            record,
            self._signer.sign(record),
        )
        if insert:
            db.execute(
                f"INSERT INTO node (ino, {_FIELDS_SQL}, record, sig) VALUES ({', '.join('?' * (len(_FIELDS) + 3))})",
                (node.ino, *values),
            )
        else:
            if old is None:
                changed = tuple(range(len(_FIELDS)))
            else:
                changed = tuple(i for i, (new, was) in enumerate(zip(values, old)) if new != was)
            sql = _UPDATE_SQL.get(changed)
            if sql is None:
                sets = "".join(f"{_FIELDS[i]}=?, " for i in changed)
                sql = _UPDATE_SQL[changed] = f"UPDATE node SET {sets}record=?, sig=? WHERE ino=?"
            cur = db.execute(sql, (*(values[i] for i in changed), *values[-2:], node.ino))
            if cur.rowcount != 1:
                raise ProviderError(f"inode {node.ino} vanished during an update")

    @staticmethod
    def _relink(db: sqlite3.Connection, node: Node, was: Node | None) -> None:
        """The link rows of ``node`` as its record lists them, unless they are ``was``'s (the record
        as stored: None when only a view of it is at hand)."""
        if was is not None and node.links == was.links:
            return
        db.execute("DELETE FROM link WHERE ino=?", (node.ino,))
        db.executemany("INSERT INTO link (parent, name, ino) VALUES (?, ?, ?)",
                       [(link.parent, link.name, node.ino) for link in node.links])

    def _charge(self, db: sqlite3.Connection, node: Node, sign: int) -> None:
        self._account(db, account_of(node), sign * node.size, sign)

    @staticmethod
    def _account(db: sqlite3.Connection, usage_key: str | None, add_bytes: int, add_files: int) -> None:
        if usage_key is not None and (add_bytes or add_files):
            db.execute(
                "INSERT INTO usage (key, bytes, files, gen) VALUES (?, ?, ?, 1) ON CONFLICT(key) DO UPDATE"
                " SET bytes = bytes + excluded.bytes, files = files + excluded.files, gen = gen + 1",
                (usage_key, add_bytes, add_files),
            )

    def _one(self, sql: str, args: tuple) -> Node | None:
        return self._load(self.db.execute(sql, args).fetchone())

    def _many(self, sql: str, args: tuple) -> list[Node]:
        return [n for n in map(self._load, self.db.execute(sql, args).fetchall()) if n is not None]

    # -- reads

    @_after_batch
    async def get(self, ino: int) -> Node | None:
        return self._one(f"SELECT {_COLUMNS} FROM node WHERE ino=?", (ino,))

    @_after_batch
    async def lookup(self, parent: int, name: str) -> Node | None:
        return checks.is_entry(self._entry(self.db, parent, name), parent, name)

    def _entry(self, db: sqlite3.Connection, parent: int, name: str) -> Node | None:
        """The row the (parent, name) columns or a link row point at; the caller holds it against its record."""
        row = db.execute(f"SELECT {_COLUMNS} FROM node WHERE parent=? AND name=?", (parent, name)).fetchone()
        if row is None:
            row = db.execute(f"SELECT {_RECORD_COLUMNS} FROM link JOIN node ON node.ino = link.ino"
                             " WHERE link.parent=? AND link.name=?", (parent, name)).fetchone()
        return self._load(row)

    def _linked(self, db: sqlite3.Connection, parent: int, after: str = "", limit: int = -1) -> list[tuple[str, Node]]:
        """The link rows of directory ``parent`` whose names sort after ``after``, by name, with their nodes."""
        rows = db.execute(
            f"SELECT link.name, {_RECORD_COLUMNS} FROM link JOIN node ON node.ino = link.ino"
            " WHERE link.parent=? AND link.name>? ORDER BY link.name LIMIT ?", (parent, after, limit),
        ).fetchall()
        return [(row[0], node) for row in rows if (node := self._load(row[1:])) is not None]

    def _has_entries(self, db: sqlite3.Connection, ino: int) -> bool:
        """Whether directory ``ino`` holds anything, by its entries' records (a forged parent column is no entry)."""
        rows = db.execute(f"SELECT {_COLUMNS} FROM node WHERE parent=? AND ino!=?", (ino, ROOT_INO))
        if any(node is not None and node.parent == ino for node in map(self._load, rows)):
            return True
        return any(node.has_name(ino, name) for name, node in self._linked(db, ino))

    def _occupant(self, db: sqlite3.Connection, parent: int, name: str) -> Node | None:
        """The entry a write would replace; one whose record is elsewhere is refused, never removed."""
        old = self._entry(db, parent, name)
        if old is None:
            return None
        seen = checks.is_entry(old, parent, name)
        if seen is None:
            raise ArtifactCorruptedError(f"the entry {name!r} of inode {parent} holds inode {old.ino}, recorded elsewhere")
        return seen

    async def entry(self, parent: int, name: str) -> tuple[Node | None, Node | None]:
        return await self.get(parent), await self.lookup(parent, name)

    async def children(self, parent: int) -> list[Node]:
        page = await self.children_page(parent, None, -1)
        return page.nodes

    @_after_batch
    async def children_page(self, parent: int, after: str | None, limit: int) -> ChildrenPage:
        # The (parent, name) index answers this in name order without a sort; BINARY collation is UTF-8 byte order.
        # Hard links come from their own table, a page of them merged in by name.
        start = after if after is not None else ""
        primary = [(node.name, node) for node in self._many(
            f"SELECT {_COLUMNS} FROM node WHERE parent=? AND name>? AND ino!=? ORDER BY name LIMIT ?",
            (parent, start, ROOT_INO, limit),
        )]
        linked = self._linked(self.db, parent, start, limit)
        rows = sorted(primary + linked, key=lambda entry: entry[0])  # code point order is UTF-8 byte order
        more = limit >= 0 and (len(rows) > limit or len(primary) >= limit or len(linked) >= limit)
        if limit >= 0:
            rows = rows[:limit]
        # The cursor is the last name the indexes covered; the page keeps only what the records confirm.
        return ChildrenPage(checks.of_parent(rows, parent), rows[-1][0] if rows else None, more)

    async def new_artifact_id(self, space: Space | None) -> str:
        """Random: this store finds an id by its index, so the id need not name the inode."""
        return shards.new_artifact_id(space)

    @_after_batch
    async def find_artifact(self, artifact_id: str) -> Node | None:
        return checks.has_artifact(self._one(f"SELECT {_COLUMNS} FROM node WHERE artifact_id=?", (artifact_id,)), artifact_id)

    @_after_batch
    async def search(
        self, sandbox_id: str, *, scope: Scope | None, session_id: str | None, user_id: str | None
    ) -> list[Node]:
        sql = f"SELECT {_COLUMNS} FROM node WHERE artifact_id IS NOT NULL AND sandbox_id=?"
        args: list[object] = [sandbox_id]
        for column, value in (("scope", scope.value if scope else None), ("session_id", session_id), ("user_id", user_id)):
            if value is not None:
                sql += f" AND {column}=?"
                args.append(value)
        return checks.in_space(self._many(sql, tuple(args)), sandbox_id, scope, session_id, user_id)

    @_after_batch
    async def search_page(
        self, query: SearchQuery, *, after: tuple[int, str] | None, now_ns: int, limit: int
    ) -> SearchPage:
        order = "ORDER BY stored_at, artifact_id"
        tests = _meta_tests(query.meta)
        if tests is None:  # nothing to test in the database: the index range is the page
            sql, args = self._in_order(query, after, now_ns, limit + 1)
            rows = self.db.execute(sql, args).fetchall()
            more = len(rows) > limit
            rows = rows[:limit]
            end = (rows[-1][4], rows[-1][5]) if rows and more else None
        else:  # a bounded stretch of the range, tested in the database: the page may come back short
            sql_tests, test_args = tests
            sql, args = self._in_order(query, after, now_ns, SEARCH_SCAN)
            # No ORDER BY here: the stretch comes in order, and stops at the page, not at its end.
            rows = sorted(self.db.execute(f"SELECT * FROM ({sql}) WHERE {sql_tests} LIMIT ?",
                                          (*args, *test_args, limit + 1)).fetchall(), key=lambda row: row[4:6])
            more = len(rows) > limit
            rows = rows[:limit]
            end = (rows[-1][4], rows[-1][5]) if rows and more else None
            if not more:  # the stretch's last record, and whether the range goes on after it
                sql, args = self._in_order(query, after, now_ns, SEARCH_SCAN + 1)
                tail = self.db.execute(f"SELECT stored_at, artifact_id FROM ({sql}) {order} LIMIT 2 OFFSET ?",
                                       (*args, SEARCH_SCAN - 1)).fetchall()
                more = len(tail) == 2
                end = (tail[0][0], tail[0][1]) if more else None
        nodes = [n for n in map(self._load, (row[:4] for row in rows)) if n is not None]
        found = checks.in_space(nodes, query.sandbox_id, query.scope, query.session_id, query.user_id)
        return SearchPage(found, end, more)

    def _in_order(
        self, query: SearchQuery, after: tuple[int, str] | None, now_ns: int, most: int
    ) -> tuple[str, list[object]]:
        """A query of up to ``most`` unexpired rows of the search after ``after``, in (stored_at, id) order,
        each a record and its position, read from an index in that order so it costs what it answers.

        A MIME prefix across a sandbox or a scope reads each MIME type it covers in order and merges
        them (types are few); within a session or a user, the space's range is read and tested.
        """
        where = "artifact_id IS NOT NULL AND sandbox_id=? AND (expires_at IS NULL OR expires_at>?)"
        args: list[object] = [query.sandbox_id, now_ns]
        for column, value in (("scope", query.scope.value if query.scope else None),
                              ("session_id", query.session_id), ("user_id", query.user_id)):
            if value is not None:
                where += f" AND {column}=?"
                args.append(value)
        if after is not None:
            where += " AND (stored_at>? OR (stored_at=? AND artifact_id>?))"
            args += [after[0], after[0], after[1]]
        order = "ORDER BY stored_at, artifact_id"
        columns = f"{_COLUMNS}, stored_at, artifact_id"
        prefix = query.mime_prefix
        types = self._mime_types(query.sandbox_id, prefix) if prefix and not (query.session_id or query.user_id) \
            else None
        if types is None:
            if prefix:
                where += " AND mime>=?"
                args.append(prefix)
                if (upper := _next_prefix(prefix)) is not None:
                    where += " AND mime<?"
                    args.append(upper)
            return f"SELECT {columns} FROM node WHERE {where} {order} LIMIT ?", [*args, most]
        if not types:
            return f"SELECT {columns} FROM node WHERE 0 LIMIT ?", [most]
        part = (f"SELECT * FROM (SELECT {columns} FROM node INDEXED BY node_mime_by_time"
                f" WHERE {where} AND mime=? {order} LIMIT ?)")
        merged = " UNION ALL ".join([part] * len(types))
        return f"SELECT * FROM ({merged}) {order} LIMIT ?", [
            *(value for mime in types for value in (*args, mime, most)), most]

    def _mime_types(self, sandbox_id: str, prefix: str) -> list[str] | None:
        """The MIME types of a sandbox's artifacts that start with ``prefix``, one index probe each;
        None if there are more than :data:`_MIME_MERGE` (the range is then read and sorted)."""
        found: list[str] = []
        bound, upper = prefix, _next_prefix(prefix)
        below = "" if upper is None else " AND mime<?"
        while len(found) <= _MIME_MERGE:
            row = self.db.execute(
                "SELECT mime FROM node INDEXED BY node_mime_by_time WHERE artifact_id IS NOT NULL AND sandbox_id=?"
                f" AND mime{'>' if found else '>='}?{below} ORDER BY mime LIMIT 1",
                (sandbox_id, bound) if upper is None else (sandbox_id, bound, upper),
            ).fetchone()
            if row is None:
                return found
            found.append(row[0])
            bound = row[0]
        return None

    @_after_batch
    async def sharers(self, artifact_id: str) -> list[Node]:
        return checks.sharing(self._many(f"SELECT {_COLUMNS} FROM node WHERE blob_of=?", (artifact_id,)), artifact_id)

    @_after_batch
    async def resolve(self, parent: int, names: Sequence[str]) -> list[Node]:
        if not names:
            return []
        found = checks.along(self._many(_resolve_sql(len(names)), (*names, parent)), parent, names)
        if len(found) == len(names) - 1 and (not found or found[-1].is_dir):
            # The last name may be a hard link, which the walk (primary names only) does not follow.
            at = found[-1].ino if found else parent
            last = checks.is_entry(self._entry(self.db, at, names[-1]), at, names[-1])
            if last is not None:
                found.append(last)
        return found

    @_after_batch
    async def subtree(self, root: int) -> list[Node]:
        return checks.below(self._many(_SUBTREE_SQL, (root,)), root)

    @_after_batch
    async def lineage(self, inos: Collection[int]) -> dict[int, Node]:
        if not inos:
            return {}
        if len(inos) == 1:
            # One file's filename (metadata()): most sit in a scope root, which one
            # primary-key read settles; the recursive query costs ~2x as much.
            (ino,) = inos
            node = await self.get(ino)
            if node is None or node.role is not NodeRole.ENTRY:
                return {} if node is None else {ino: node}
        return checks.up_from(self._many(_LINEAGE_SQL, (json.dumps(sorted(set(inos))),)), inos)

    @_after_batch
    async def expired(self, now_ns: int, limit: int = 1000) -> list[Node]:
        found = self._many(
            f"SELECT {_COLUMNS} FROM node WHERE expires_at IS NOT NULL AND expires_at<=? LIMIT ?", (now_ns, limit)
        )
        return checks.is_expired(found, now_ns)

    @_after_batch
    async def usage(self, usage_key: str) -> Usage:
        row = self.db.execute("SELECT bytes, files FROM usage WHERE key=?", (usage_key,)).fetchone()
        return Usage(bytes=row[0], files=row[1]) if row else Usage()

    @_after_batch
    async def usages(self) -> dict[str, Usage]:
        rows = self.db.execute("SELECT key, bytes, files FROM usage ORDER BY key").fetchall()
        return {key: Usage(bytes=size, files=files) for key, size, files in rows}

    @_after_batch
    async def totals(self) -> Usage:
        row = self.db.execute("SELECT COALESCE(SUM(bytes),0), COALESCE(SUM(files),0) FROM usage").fetchone()
        return Usage(bytes=row[0], files=row[1])

    # -- repair

    @_after_batch
    async def usage_generation(self, usage_key: str) -> int:
        row = self.db.execute("SELECT gen FROM usage WHERE key=?", (usage_key,)).fetchone()
        return row[0] if row else 0

    async def reset_usage(self, usage_key: str, usage: Usage, *, generation: int) -> bool:
        async with self._tx() as db:
            row = db.execute("SELECT gen FROM usage WHERE key=?", (usage_key,)).fetchone()
            if (row[0] if row else 0) != generation:
                return False
            db.execute(
                "INSERT INTO usage (key, bytes, files, gen) VALUES (?, ?, ?, ?) ON CONFLICT(key) DO UPDATE"
                " SET bytes = excluded.bytes, files = excluded.files, gen = excluded.gen",
                (usage_key, usage.bytes, usage.files, generation + 1),
            )
        return True

    async def recount_subdirs(self, ino: int) -> int:
        async with self._tx() as db:
            db.execute(
                "UPDATE node SET subdirs = (SELECT COUNT(*) FROM node AS sub WHERE sub.parent = node.ino"
                " AND sub.is_dir AND sub.ino != node.ino) WHERE ino = ?", (ino,),
            )
            row = db.execute("SELECT subdirs FROM node WHERE ino=?", (ino,)).fetchone()
        return row[0] if row else 0

    @_after_batch
    async def orphans(self) -> list[Node]:
        # An entry is its row's (parent, name): only a parent that is gone leaves a row unreached.
        return self._many(
            f"SELECT {_RECORD_COLUMNS} FROM node LEFT JOIN node AS up ON up.ino = node.parent"
            " WHERE up.ino IS NULL AND node.ino != ?", (ROOT_INO,),
        )

    # -- changes

    async def _next_ino(self) -> int:
        """A fresh inode number, from a block reserved in its own committed transaction.

        A counter, never MAX(ino)+1: a freed number must not come back while a
        kernel may hold it. Reserving a block at a time saves a statement and
        a page write per insert; numbers left unused at exit are skipped.
        """
        if self._ino_next >= self._ino_end:
            async with self._tx() as db:
                (end,) = db.execute("UPDATE counter SET value = value + ? WHERE name='ino' RETURNING value",
                                    (_INO_BLOCK,)).fetchone()
            self._ino_next, self._ino_end = end - _INO_BLOCK + 1, end + 1
        ino = self._ino_next
        self._ino_next += 1
        return ino

    def _load_for_update(self, db: sqlite3.Connection, ino: int) -> tuple[Node | None, tuple]:
        """A node read inside a transaction, with its stored columns (to narrow the rewrite)."""
        row = db.execute(f"SELECT {_COLUMNS}, {_FIELDS_SQL} FROM node WHERE ino=?", (ino,)).fetchone()
        if row is None:
            return None, ()
        return self._load(row[:4]), row[4:]

    def _load_at_rev(self, db: sqlite3.Connection, node: Node) -> tuple[Node, tuple]:
        """``node`` as stored, with its columns, if still at the revision its caller read (else
        :class:`StaleRecordError`, or not found)."""
        current, row = self._load_for_update(db, node.ino)
        if current is None:
            raise ArtifactNotFoundError(f"inode {node.ino} was removed")
        if current.rev != node.rev:
            raise StaleRecordError(f"inode {node.ino} changed since it was read", current)
        return current, row

    @staticmethod
    def _check_directory(db: sqlite3.Connection, ino: int) -> None:
        """That ``ino`` is a directory a name can be made in. Its kind is a column: no record decoded."""
        parent = db.execute("SELECT is_dir FROM node WHERE ino=?", (ino,)).fetchone()
        if parent is None:
            raise ArtifactNotFoundError(f"parent inode {ino} does not exist")
        if not parent[0]:
            raise NotADirectoryError_(f"inode {ino} is not a directory")

    def _touch(self, db: sqlite3.Connection, ino: int, now_ns: int) -> None:
        """Set a directory's mtime/ctime, if it is one a user made or a scope root (as Namespace does)."""
        parent, fields = self._load_for_update(db, ino)
        if parent is not None and parent.role in _TOUCHED_ROLES:
            parent.mtime_ns = parent.ctime_ns = now_ns
            parent.rev += 1
            self._write(db, parent, insert=False, old=fields)

    async def insert(
        self, node: Node, *, replace: bool = False, touch_ns: int | None = None, cover: Cover | None = None,
        drop_at_ns: int | None = None,
    ) -> tuple[Node, Node | None]:
        ino = await self._next_ino()
        async with self._tx() as db:
            self._check_directory(db, node.parent)
            old = self._occupant(db, node.parent, node.name)
            if old is not None:
                if not replace:
                    raise AlreadyExistsError(f"{node.name!r} exists")
                if old.is_dir:
                    raise IsADirectoryError_(f"{node.name!r} is a directory")
                self._unname(db, old, ctime_ns=touch_ns, drop_at_ns=drop_at_ns)
            node.ino = ino
            self._write(db, node, insert=True)
            self._charge(db, node, +1)
            dirty: dict[int, tuple[Node, tuple]] = {}  # one read and one write even when root and parent are one
            if cover is not None:
                root, fields = self._load_for_update(db, cover.root.ino)  # as it is now, not as the caller read it
                until = node.expires_at_ns
                if root is not None and root.expires_at_ns is not None and (until is None or until > root.expires_at_ns):
                    root.expires_at_ns = until
                    root.rev += 1
                    dirty[root.ino] = (root, fields)
            if touch_ns is not None:
                directory, fields = dirty.get(node.parent) or self._load_for_update(db, node.parent)
                if directory is not None and directory.role in _TOUCHED_ROLES:
                    directory.mtime_ns = directory.ctime_ns = touch_ns
                    if directory.ino not in dirty:
                        directory.rev += 1
                    dirty[directory.ino] = (directory, fields)
            for changed, fields in dirty.values():
                self._write(db, changed, insert=False, old=fields)
        return node, old

    async def update(self, node: Node) -> None:
        current = await self.commit(node, base_version=None)
        if current is not None:
            raise StaleRecordError(f"inode {node.ino} changed since it was read", current)

    async def commit(self, node: Node, *, base_version: int | None, settle: Settle | None = None) -> Node | None:
        async with self._tx() as db:
            current, row = self._load_for_update(db, node.ino)
            if current is None:
                raise ArtifactNotFoundError(f"inode {node.ino} was removed")
            version = current.artifact.version if current.artifact is not None else None
            if current.rev != node.rev or (base_version is not None and version not in (None, base_version)):
                return current
            self._rewrite(db, _next_rev(node), current, row)
            if settle is not None:
                self._settle(db, settle.keys, settle.not_before_ns, settle.forget)
        node.rev += 1
        return None

    def _rewrite(self, db: sqlite3.Connection, node: Node, current: Node, row: tuple) -> None:
        """Write ``node`` over ``current`` (``row``: its ``_FIELDS`` as stored), moving its usage charge.

        The charge moved is the signed record's, never the columns': a forged
        ``usage_key`` or ``size`` column cannot shift bytes between accounts.
        """
        self._write(db, node, insert=False, old=row)
        self._relink(db, node, current)
        old_key = account_of(current)
        old_size = current.size if old_key is not None else 0
        new_key = account_of(node)
        if old_key == new_key:
            self._account(db, new_key, node.size - old_size, 0)
        else:
            self._account(db, old_key, -old_size, -1)
            self._account(db, new_key, node.size, +1)

    async def rename(
        self, node: Node, new_parent: int, new_name: str, *, replace: bool, touch_ns: int | None = None,
        drop_at_ns: int | None = None,
    ) -> Node | None:
        async with self._tx() as db:
            current, row = self._load_at_rev(db, node)
            old = self._occupant(db, new_parent, new_name)
            if old is not None and old.ino != node.ino:
                if not replace:
                    raise AlreadyExistsError(f"{new_name!r} exists")
                if old.is_dir and not node.is_dir:
                    raise IsADirectoryError_(f"{new_name!r} is a directory")
                if node.is_dir and not old.is_dir:
                    raise NotADirectoryError_(f"{new_name!r} is not a directory")
                if old.is_dir and self._has_entries(db, old.ino):
                    raise DirectoryNotEmptyError(f"{new_name!r} is not empty")
                self._unname(db, old, ctime_ns=touch_ns, drop_at_ns=drop_at_ns)
            elif old is not None:
                if node.has_other_name(new_parent, new_name):
                    return None  # two names of one inode: rename(2) does nothing
                old = None  # renaming onto itself
            moved = node.model_copy(update={"parent": new_parent, "name": new_name, "rev": node.rev + 1})
            self._write(db, moved, insert=False, old=row)
            self._relink(db, moved, current)
            if touch_ns is not None:
                for directory in {node.parent, new_parent}:
                    self._touch(db, directory, touch_ns)
        node.parent, node.name, node.rev = new_parent, new_name, moved.rev
        return old

    async def exchange(self, a: Node, b: Node, *, touch_ns: int | None = None) -> None:
        async with self._tx() as db:
            stored = [self._load_at_rev(db, node)[0] for node in (a, b)]
            a2 = a.model_copy(update={"parent": b.parent, "name": b.name, "rev": a.rev + 1})
            b2 = b.model_copy(update={"parent": a.parent, "name": a.name, "rev": b.rev + 1})
            # Park one side so the UNIQUE(parent, name) constraint never sees both at once.
            db.execute("UPDATE node SET parent=-1 WHERE ino=?", (a.ino,))
            self._write(db, b2, insert=False)
            self._relink(db, b2, stored[1])
            self._write(db, a2, insert=False)
            self._relink(db, a2, stored[0])
            if touch_ns is not None:
                for directory in {a2.parent, b2.parent}:
                    self._touch(db, directory, touch_ns)
        for node, done in ((a, a2), (b, b2)):
            node.parent, node.name, node.rev = done.parent, done.name, done.rev

    async def remove(self, node: Node, *, touch_ns: int | None = None, drop_at_ns: int | None = None) -> Node | None:
        """The protocol's remove; ``touch_ns`` also sets the parent's mtime/ctime."""
        async with self._tx() as db:
            current, row = self._load_for_update(db, node.ino)
            if current is None or not current.has_name(node.parent, node.name):
                return None  # gone from that name already (removed, or moved by another writer)
            if current.is_dir and self._has_entries(db, node.ino):
                raise DirectoryNotEmptyError(f"{node.name!r} is not empty")
            current = current.seen_as(node.parent, node.name)
            self._unname(db, current, row, ctime_ns=touch_ns, drop_at_ns=drop_at_ns)
            if touch_ns is not None:
                self._touch(db, node.parent, touch_ns)
        return current

    def _unname(
        self, db: sqlite3.Connection, node: Node, row: tuple | None = None, *, ctime_ns: int | None = None,
        drop_at_ns: int | None = None,
    ) -> None:
        """Take away the name view ``node`` was reached by: the inode goes with its last name (its
        blob queued for deletion at ``drop_at_ns``, if given), and else its ctime becomes
        ``ctime_ns`` (a link count changed), if given."""
        if len(node.names) == 1:
            db.execute("DELETE FROM node WHERE ino=?", (node.ino,))
            self._charge(db, node, -1)
            key = node.artifact.blob_key if node.artifact is not None else None
            if drop_at_ns is not None and key is not None:
                self._defer(db, [key], drop_at_ns)
            return
        if row is None:
            _, row = self._load_for_update(db, node.ino)
        left = node.without_name()
        left.rev += 1
        if ctime_ns is not None:
            left.ctime_ns = ctime_ns
        self._write(db, left, insert=False, old=row)
        self._relink(db, left, None)  # ``node`` is a view: its links need not be the rows

    async def link(self, node: Node, new_parent: int, new_name: str, *, touch_ns: int | None = None) -> None:
        async with self._tx() as db:
            current, row = self._load_at_rev(db, node)
            self._check_directory(db, new_parent)
            if self._occupant(db, new_parent, new_name) is not None:
                raise AlreadyExistsError(f"{new_name!r} exists")
            linked = node.with_names([*node.names, (new_parent, new_name)])  # the revision says: the names stored
            linked.rev += 1
            self._write(db, linked, insert=False, old=row)
            self._relink(db, linked, current)
            if touch_ns is not None:
                self._touch(db, new_parent, touch_ns)
        node.links, node.rev = linked.links, linked.rev

    # -- the deletion queue

    async def defer_delete(
        self, keys: Collection[str], not_before_ns: int, *, forget: Collection[Deferred] = ()
    ) -> None:
        if not keys and not forget:
            return
        async with self._tx() as db:
            self._settle(db, keys, not_before_ns, forget)

    @classmethod
    def _settle(
        cls, db: sqlite3.Connection, keys: Collection[str], not_before_ns: int, forget: Collection[Deferred]
    ) -> None:
        db.executemany("DELETE FROM deferred_blob WHERE key=? AND not_before=?", [tuple(e) for e in forget])
        cls._defer(db, keys, not_before_ns)

    @staticmethod
    def _defer(db: sqlite3.Connection, keys: Collection[str], not_before_ns: int) -> None:
        db.executemany(
            "INSERT INTO deferred_blob (key, not_before) VALUES (?, ?)"
            " ON CONFLICT(key) DO UPDATE SET not_before = excluded.not_before",
            [(k, not_before_ns) for k in keys],
        )

    @_after_batch
    async def due_deletions(self, now_ns: int, limit: int = 1000) -> list[Deferred]:
        rows = self.db.execute(
            "SELECT key, not_before FROM deferred_blob WHERE not_before<=? ORDER BY not_before, key LIMIT ?",
            (now_ns, limit),
        ).fetchall()
        return [Deferred(key, not_before) for key, not_before in rows]

    async def forget_deletions(self, entries: Collection[Deferred]) -> None:
        if entries:
            async with self._tx() as db:
                db.executemany("DELETE FROM deferred_blob WHERE key=? AND not_before=?", [tuple(e) for e in entries])

    async def queue_if_absent(self, keys: Collection[str], not_before_ns: int) -> None:
        if keys:
            async with self._tx() as db:
                db.executemany("INSERT INTO deferred_blob (key, not_before) VALUES (?, ?) ON CONFLICT(key) DO NOTHING",
                               [(k, not_before_ns) for k in keys])

    @_after_batch
    async def pending_deletions(self) -> list[str]:
        return [row[0] for row in self.db.execute("SELECT key FROM deferred_blob ORDER BY key").fetchall()]


def from_settings(settings: Settings, signer: RecordSigner) -> SQLiteMetaStore:
    """``SESSION_PROVIDER=sqlite``: ``ARTIFACT_SQLITE_PATH``, else ``meta.sqlite3`` in the data dir."""
    if settings.sqlite_path is not None:
        return SQLiteMetaStore(settings.sqlite_path, signer)
    return SQLiteMetaStore(settings.fs_root / "meta.sqlite3", signer, in_data_dir=True)


def in_memory(settings: Settings, signer: RecordSigner) -> SQLiteMetaStore:
    """``SESSION_PROVIDER=memory``: the same store on a private in-memory database."""
    return SQLiteMetaStore(":memory:", signer)


def _next_rev(node: Node) -> Node:
    """``node`` as its conditional write stores it: at the revision after the one it was read at."""
    return node.model_copy(update={"rev": node.rev + 1})


def _prepare(db: sqlite3.Connection) -> None:
    """The connection's settings and the schema, made or brought up to date (idempotent)."""
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=NORMAL")
    # A checkpoint runs inside the COMMIT that crosses this many WAL pages, fsyncs included:
    # 4x SQLite's default halves how often the loop waits for one (+8% stores/s at 64 tasks).
    db.execute("PRAGMA wal_autocheckpoint=4000")
    db.executescript(_SCHEMA)
    db.executescript(_DEFERRED_SCHEMA)
    db.executescript(_LINK_SCHEMA)
    if "subdirs" not in _columns(db, "node"):
        db.executescript(f"BEGIN IMMEDIATE; {_SUBDIR_MIGRATION} COMMIT;")
    db.executescript(_SUBDIR_SCHEMA)
    _add_column(db, "node", "blob_of", "TEXT")  # a store made before checkpoints
    db.execute("CREATE INDEX IF NOT EXISTS node_blob_of ON node(blob_of) WHERE blob_of IS NOT NULL")
    _add_column(db, "usage", "gen", "INTEGER NOT NULL DEFAULT 0")  # before fsck --repair
    _search_order(db)


async def _polled(db: sqlite3.Connection, step: Callable[[sqlite3.Connection], None]) -> None:
    """Run ``step`` (idempotent) until no other connection's write lock is in its way, waiting with
    async pauses, never in SQLite's busy handler.

    A batch of :class:`GroupCommit` holds the write lock across one scheduler
    pass: a second store on the same file in this thread, waiting for that
    lock inside SQLite, would stop the very loop that is to release it.
    """
    deadline, pause = 0.0, _LOCK_POLL[0]
    db.execute("PRAGMA busy_timeout=0")
    while True:
        try:
            step(db)
            break
        except sqlite3.OperationalError as exc:
            if getattr(exc, "sqlite_errorcode", None) != sqlite3.SQLITE_BUSY:
                raise
            if db.in_transaction:
                db.execute("ROLLBACK")
            now = time.monotonic()
            deadline = deadline or now + LOCK_WAIT
            if now > deadline:
                raise ProviderError(f"metadata store: another process held the write lock for {LOCK_WAIT:.0f} s") from exc
            await anyio.sleep(pause)
            pause = min(pause * 2, _LOCK_POLL[1])
    db.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")


def _try_begin(db: sqlite3.Connection) -> bool:
    """``BEGIN IMMEDIATE`` if the write lock is free; False if another process holds it.

    The lock is taken without SQLite's busy handler, which would sleep in C
    with the event loop stopped: :class:`GroupCommit` polls this with async
    pauses instead, for :data:`LOCK_WAIT` seconds at most.
    """
    db.execute("PRAGMA busy_timeout=0")
    try:
        db.execute("BEGIN IMMEDIATE")
    except sqlite3.Error as exc:
        if getattr(exc, "sqlite_errorcode", None) == sqlite3.SQLITE_BUSY:
            return False
        raise _provider_error(exc) from exc
    finally:
        db.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
    return True


def _provider_error(exc: sqlite3.Error) -> ProviderError:
    """A failed statement as the store's error: a full disk is ENOSPC to the caller, not EIO."""
    if getattr(exc, "sqlite_errorcode", None) == sqlite3.SQLITE_FULL:
        return StoreFullError(f"metadata store: {exc}")
    return ProviderError(f"metadata store: {exc}")


def _next_prefix(prefix: str) -> str | None:
    """The least string after every string that starts with ``prefix``: a prefix as an index range
    (None: no string is after them all, the range has no upper end).

    The next character skips the surrogates (0xD800-0xDFFF), which UTF-8 cannot hold (the bound
    would not encode), and a last character U+10FFFF, which has no next, carries to the one before.
    """
    stem = prefix.rstrip("\U0010ffff")
    if not stem:
        return None
    code = ord(stem[-1]) + 1
    return stem[:-1] + chr(0xE000 if 0xD800 <= code <= 0xDFFF else code)


def _meta_tests(meta: dict[str, Any]) -> tuple[str, list[object]] | None:
    """SQL that keeps the records whose meta may equal ``meta`` (a superset: the caller tests each
    record), for the fields a JSON path can name and whose values are plain; None if none is."""
    tests, args = [], []
    for key, value in meta.items():
        if '"' in key or "\\" in key or isinstance(value, (dict, list)) or value is None or _wide(value):
            continue  # tested on the record alone
        tests.append("json_extract(CAST(record AS TEXT), ?) = ?")
        args += [f'$.artifact.meta."{key}"', int(value) if isinstance(value, bool) else value]
    return (" AND ".join(tests), args) if tests else None


def _wide(value: object) -> bool:
    """An int SQLite cannot bind (outside signed 64 bits): JSON holds it, so the record test does."""
    return isinstance(value, int) and not -(2**63) <= value < 2**63


def _columns(db: sqlite3.Connection, table: str) -> set[str]:
    return {row[1] for row in db.execute(f"PRAGMA table_info({table})")}


def _add_column(db: sqlite3.Connection, table: str, column: str, declaration: str) -> None:
    """A column a store made by an older version lacks; two processes opening it at once both may try."""
    if column in _columns(db, table):
        return
    try:
        db.execute(f"ALTER TABLE {table} ADD COLUMN {column} {declaration}")
    except sqlite3.OperationalError as exc:
        if "duplicate column" not in str(exc):
            raise


def _search_order(db: sqlite3.Connection) -> None:
    """The columns and indexes a search page reads in (stored_at, artifact_id) order (issue #12).

    A store made before them gets the columns filled from its records once.
    The old space indexes are replaced by these, whose leading columns are
    the same: a search of a whole space still uses them.
    """
    if not {"stored_at", "mime"} <= _columns(db, "node"):
        # Columns and their fill in one transaction: a lock lost half-way (``_polled`` tries again)
        # must not leave the columns added and empty.
        db.execute("BEGIN IMMEDIATE")
        try:
            present = _columns(db, "node")  # another process may have added them meanwhile
            for column, declaration in (("stored_at", "INTEGER"), ("mime", "TEXT")):
                if column not in present:
                    db.execute(f"ALTER TABLE node ADD COLUMN {column} {declaration}")
            db.execute("UPDATE node SET stored_at = json_extract(CAST(record AS TEXT), '$.crtime_ns'),"
                       " mime = json_extract(CAST(record AS TEXT), '$.artifact.mime') WHERE artifact_id IS NOT NULL")
            db.execute("COMMIT")
        except BaseException:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise
    db.executescript(_SEARCH_SCHEMA)
