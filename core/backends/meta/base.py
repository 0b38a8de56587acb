"""The metadata protocol every backend (memory, SQLite, Redis) implements.

Each method that changes more than one record is one transaction in the
backend. Usage (bytes and file count per user or session) is kept by the
backend in the same transaction as the change that alters it, so quotas
never drift from what is stored.

A new, removed or renamed entry sets its directory's mtime and ctime in the
same transaction when the caller passes ``touch_ns`` (the time to set).
Only the directories whose times follow their entries get it: a scope root
and the directories below one, never the fixed tree above (``sessions/``,
``users/``, a sandbox). For a remote store each call is a round trip, so
everything one change needs travels in one call.

No write is blind (issue #16). Every node record carries a revision
(``Node.rev``) that each write of it bumps, and every op that rewrites a
record the caller read (update, commit, rename, exchange) is conditional on
that revision: if another writer (another host, another process) changed
the record meanwhile, the op changes nothing and reports the record as it
is now, for the caller to re-apply its own change to. A successful write
sets the caller's ``node.rev`` to the revision it stored.

Reads that answer many nodes cost round trips per page, never per node
(issue #9): a search, a walk of a subtree, the directories above a set of
nodes (their filenames) and a path below a directory are one call each
(per page of ~1,000 records on Redis). Every record they answer is verified
like any other (:func:`decode_record`); a node's path is computed by the
caller from the records of its directories as they are, never stored, so a
directory rename (one record) cannot leave any path stale.

Hard links (issue #13). A non-directory may have several names, all in its
record (``Node.links``). Reads by name (lookup, entry, children, resolve)
answer the node *seen through* that name (:meth:`Node.seen_as`); the name ops
(remove, rename, exchange) act on the name their node was reached by, and
an inode goes only with its last name: until then a remove, or a replace by
insert or rename, rewrites it without that name. Reads by inode, a subtree
walk and lineage go by the primary name alone, so a linked artifact has one
filename. ``insert`` and ``rename`` answer the node they took a name from,
as it was (its names included): the caller tells by them whether it lives on.
"""

from __future__ import annotations

import json
from collections.abc import Collection, Sequence
from typing import Any, NamedTuple, Protocol

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from core.errors import ArtifactCorruptedError
from core.infra import tally
from core.infra.signing import RecordSigner
from core.models import Scope, Usage
from core.nodes import Node, Space


def decode_record(signer: RecordSigner, ino: int, record: bytes | None, sig: str | None) -> Node:
    """A stored node record, trusted only once its signature and inode number check out.

    Every backend loads records through here, so a record edited outside
    the store reads as corrupted the same way everywhere (DESIGN §6).
    """
    counting = tally.current()
    if counting is not None:
        counting.records += 1
    if record is None or sig is None or not signer.verify(record, sig):
        raise ArtifactCorruptedError(f"the metadata record of inode {ino} fails its signature")
    try:
        node = Node.model_validate_json(record)
    except ValidationError:
        node = _decoded_slowly(ino, record)
    if node.ino != ino:
        raise ArtifactCorruptedError(f"the metadata record of inode {ino} names inode {node.ino}")
    return node


def _decoded_slowly(ino: int, record: bytes) -> Node:
    """A signed record the fast parser refused, parsed by the standard library instead.

    pydantic's JSON parser stops at about 200 levels of nesting, fewer than
    its serialiser writes: before ``meta`` had a depth limit, a store could
    write a record it then could not read, and every listing that met it
    failed. Such a record is the store's own (its signature checked), so it
    is read the slow way; only one that fails this too is corrupted.
    """
    try:
        return Node.model_validate(json.loads(record))
    except (ValueError, RecursionError, ValidationError) as exc:  # JSONDecodeError is a ValueError
        raise ArtifactCorruptedError(f"the metadata record of inode {ino} is unreadable") from exc


class ChildrenPage(NamedTuple):
    """One page of a directory, by name.

    ``last`` is the greatest name the page covered (records that vanished
    between the backend's index and its read included), or None when no name
    sorts after ``after`` at all; ``more`` is False once the page reached the
    directory's end.
    """

    nodes: list[Node]
    last: str | None
    more: bool


class SearchQuery(BaseModel):
    """What a search page asks the metadata store for: a space, and optionally a MIME type prefix and
    meta fields that must equal the values given (the store may answer more; the caller checks each
    record)."""

    model_config = ConfigDict(frozen=True)

    sandbox_id: str
    scope: Scope | None = None
    session_id: str | None = None
    user_id: str | None = None
    mime_prefix: str | None = None
    meta: dict[str, Any] = Field(default_factory=dict)


class SearchPage(NamedTuple):
    """Artifacts in (stored_at, artifact_id) order; ``last`` is the position the page covered (a record
    read and refused included), None with ``more`` False once the search is exhausted."""

    nodes: list[Node]
    last: tuple[int, str] | None
    more: bool


_MISSING = object()


def search_matches(node: Node, query: SearchQuery, now_ns: int) -> bool:
    """Whether an artifact's record answers ``query``'s MIME type and meta fields and is unexpired."""
    art = node.artifact
    return (
        art is not None and not node.expired(now_ns)
        and (not query.mime_prefix or art.mime.startswith(query.mime_prefix))
        and all(art.meta.get(key, _MISSING) == value for key, value in query.meta.items())
    )


def search_position(node: Node) -> tuple[int, str]:
    """Where an artifact sorts in a search: (stored_at ns, artifact id)."""
    return node.crtime_ns, node.artifact.artifact_id if node.artifact is not None else ""


class Cover(NamedTuple):
    """A session root to move out so it expires no sooner than the node an insert adds.

    ``root`` is the root as the caller read it. The store applies the cover
    only if the root still needs it, in the insert's own transaction, so an
    artifact never outlives its session and a refused insert stretches
    nothing.
    """

    root: Node


class Deferred(NamedTuple):
    """A queued blob key and the time gc may delete it from, as the queue holds it (issue #16)."""

    key: str
    not_before_ns: int


class Settle(NamedTuple):
    """What a commit changes in the deletion queue in its own step, as :meth:`MetaStore.defer_delete` would.

    ``forget``: the entries it meets (the upload intent of the blob it now
    names), each dropped only if still queued for its time; ``keys``: the
    blobs it stops naming, queued for ``not_before_ns``. One step instead of
    two is one transaction less per close on SQLite, a round trip on Redis.
    """

    keys: Collection[str]
    not_before_ns: int
    forget: Collection[Deferred] = ()


class MetaStore(Protocol):
    async def open(self) -> None: ...

    async def close(self) -> None: ...

    async def get(self, ino: int) -> Node | None: ...

    async def lookup(self, parent: int, name: str) -> Node | None: ...

    async def entry(self, parent: int, name: str) -> tuple[Node | None, Node | None]:
        """Directory ``parent`` and its entry ``name``, in one read (a lookup needs both)."""
        ...

    async def children(self, parent: int) -> list[Node]: ...

    async def children_page(self, parent: int, after: str | None, limit: int) -> ChildrenPage:
        """Up to ``limit`` entries of ``parent`` whose names sort after ``after`` (all, if None), by name.

        Names sort by their UTF-8 bytes (code points), in every backend alike. A
        listing pages through a directory with this, holding one page at a time
        whatever the directory's size (issue #16); the name is the cursor, so an
        entry present all along is answered exactly once however the directory
        changes between pages. Expired entries are answered like the others.
        """
        ...

    async def find_artifact(self, artifact_id: str) -> Node | None: ...

    async def search(
        self, sandbox_id: str, *, scope: Scope | None, session_id: str | None, user_id: str | None
    ) -> list[Node]:
        """File nodes of a sandbox matching the given space fields (indexed)."""
        ...

    async def search_page(
        self, query: SearchQuery, *, after: tuple[int, str] | None, now_ns: int, limit: int
    ) -> SearchPage:
        """Up to ``limit`` unexpired artifacts of ``query`` after position ``after`` (stored_at ns,
        artifact id), in that order (issue #12).

        An index range in that order (SQLite: the space's, or the MIME
        type's; Redis: the space's sorted set, in one script), so a page
        costs what it holds. What is not indexed (meta fields; MIME types on
        Redis) is tested on a bounded stretch of the space per page, which
        may come back short (even empty) with ``more`` and a ``last`` past
        what it read. The caller checks each record again
        (:func:`search_matches`): an index only says where to look.
        """
        ...

    async def sharers(self, artifact_id: str) -> list[Node]:
        """The files holding a blob of artifact ``artifact_id`` that is not their own (``blob_of``):
        checkpoints' copies and what was restored from them (issue #10). One read."""
        ...

    async def resolve(self, parent: int, names: Sequence[str]) -> list[Node]:
        """The nodes along the path ``names`` below directory ``parent``, in one read.

        The i-th node is the entry ``names[i]`` of the one before it (of
        ``parent`` for the first); the list ends at the first name that is
        missing, or below a node that is not a directory. Expired nodes are
        answered like the others: whether they count is the caller's rule.
        A store at depth d reads its directories with this, not one lookup
        each (issue #9).
        """
        ...

    async def subtree(self, root: int) -> list[Node]:
        """Every node below directory ``root`` (not ``root`` itself), expired ones included, in any order.

        One walk of the tree in the backend (a recursive query, a script
        per page), so listing a session costs round trips per page, not per
        directory. A node moved meanwhile is answered under the directory it
        is in when the walk reaches it, or not at all.
        """
        ...

    async def lineage(self, inos: Collection[int]) -> dict[int, Node]:
        """Nodes ``inos`` and the directories above each, by ino, in one read (per page).

        Each chain goes up to and including the first node that is not an
        entry (a scope root, or the fixed tree): what a node's filename is
        made of. A node that is gone ends its chain. Each record is answered
        once, however many chains share it.
        """
        ...

    async def new_artifact_id(self, space: Space | None) -> str:
        """A fresh artifact id for a file of ``space`` (None: the upper tree), each different from every
        other this store has made. A file inserted must hold one of these: a store may name the file's
        inode by it (the Redis store does, and keeps no map from ids to inodes)."""
        ...

    async def insert(
        self, node: Node, *, replace: bool = False, touch_ns: int | None = None, cover: Cover | None = None,
        drop_at_ns: int | None = None,
    ) -> tuple[Node, Node | None]:
        """Add ``node`` under ``node.parent``; returns it with its new ino.

        With ``replace`` an existing non-directory entry of that name is
        removed in the same transaction and returned; otherwise an existing
        name raises :class:`AlreadyExistsError`. A parent that does not
        exist raises :class:`ArtifactNotFoundError`. ``drop_at_ns``: see
        :meth:`remove`.
        """
        ...

    async def update(self, node: Node) -> None:
        """Rewrite an existing node (attributes), if it is still at revision ``node.rev``.

        Else changes nothing and raises :class:`StaleRecordError` with the
        stored node. A node that is gone raises :class:`ArtifactNotFoundError`.
        """
        ...

    async def commit(self, node: Node, *, base_version: int | None, settle: Settle | None = None) -> Node | None:
        """Rewrite file ``node`` with a new version, if the stored one is still at revision
        ``node.rev`` (and so still ``base_version``), and make the queue changes of ``settle``.

        Returns None when done; else changes nothing and returns the stored
        node (another version was committed, or the node changed, meanwhile).
        A node that is gone raises :class:`ArtifactNotFoundError`.
        """
        ...

    async def rename(
        self, node: Node, new_parent: int, new_name: str, *, replace: bool, touch_ns: int | None = None,
        drop_at_ns: int | None = None,
    ) -> Node | None:
        """Move ``node`` (as it is given, ctime and all); returns the node it replaced, if any
        (``drop_at_ns``: see :meth:`remove`).

        Only if ``node`` is still at revision ``node.rev``: else nothing
        changes and :class:`StaleRecordError` carries the stored node. A node
        that is gone raises :class:`ArtifactNotFoundError`.

        Replacing a directory needs it empty (DirectoryNotEmptyError), and a
        file cannot replace a directory or the reverse. ``touch_ns`` sets
        the times of both directories.
        """
        ...

    async def link(self, node: Node, new_parent: int, new_name: str, *, touch_ns: int | None = None) -> None:
        """Give non-directory ``node`` (as it is given, ctime and all) the further name ``new_name`` in ``new_parent``.

        Only if ``node`` is still at revision ``node.rev`` (else
        :class:`StaleRecordError` with the stored node); a taken name raises
        :class:`AlreadyExistsError`. Sets ``node``'s links and revision to
        what it stored; ``touch_ns`` sets the new name's directory's times.
        """
        ...

    async def exchange(self, a: Node, b: Node, *, touch_ns: int | None = None) -> None:
        """Swap two entries atomically (RENAME_EXCHANGE), if both are still at the revisions given
        (else :class:`StaleRecordError`)."""
        ...

    async def remove(self, node: Node, *, touch_ns: int | None = None, drop_at_ns: int | None = None) -> Node | None:
        """Unlink ``node`` if it is still the entry ``node.parent``/``node.name``; a directory must be empty.

        Returns the record as stored then, seen through that name, or None
        if that entry no longer names the inode (removed or moved
        meanwhile): nothing changes. With ``drop_at_ns``, the blob of an
        inode the change removes (its last name gone) is queued for deletion
        at that time (:meth:`defer_delete`) in the same transaction, as
        stored then, whatever version the caller read: no crash between the
        change and a later call can leave it named by nothing and queued
        nowhere (issue #16).
        """
        ...

    async def expired(self, now_ns: int, limit: int = 1000) -> list[Node]: ...

    async def usage(self, usage_key: str) -> Usage: ...

    async def totals(self) -> Usage: ...

    async def usages(self) -> dict[str, Usage]:
        """Every usage account (``<sandbox>/<scope>/<owner>``) with what it holds: ``status``'s table."""
        ...

    # -- repair (``fsck --repair``, issue #11): each conditional, or one atomic step of the backend

    async def usage_generation(self, usage_key: str) -> int:
        """How many changes have charged the account so far: every change of its counters moves it.

        A repair reads it before counting the account's records and resets
        the counters only if it has not moved, so a store or delete that
        raced the count is never overwritten by it.
        """
        ...

    async def reset_usage(self, usage_key: str, usage: Usage, *, generation: int) -> bool:
        """Set the account to ``usage`` if its generation is still ``generation``; False if it moved."""
        ...

    async def recount_subdirs(self, ino: int) -> int:
        """Count directory ``ino``'s subdirectories and keep that as its count, in one atomic step."""
        ...

    async def orphans(self) -> list[Node]:
        """Records that no directory entry reaches: their parent is gone, or its entry names another.

        A scan of every record (fsck's, not a request's): such records come
        only from damage, since every change that unnames a directory's
        entries is refused while it has any.
        """
        ...

    # -- the deletion queue (issue #16): blobs wait here before gc deletes them

    async def defer_delete(
        self, keys: Collection[str], not_before_ns: int, *, forget: Collection[Deferred] = ()
    ) -> None:
        """Queue blob ``keys`` for deletion no sooner than ``not_before_ns``, and drop ``forget`` from the queue.

        One atomic change. A key already queued takes the new time (later or
        sooner): the last caller knows best when the blob stops being needed.
        An entry of ``forget`` goes only if still queued for its time, as
        :meth:`forget_deletions` (a commit's intent, unless another writer
        has queued the key for deletion since).
        The queue holds keys only; whether a record still names a key is
        decided by gc when it is due, from the signed records, never from
        the queue, so a wrong or stale entry costs a look-up, never a blob.
        """
        ...

    async def due_deletions(self, now_ns: int, limit: int = 1000) -> list[Deferred]:
        """Up to ``limit`` queued keys whose time has come (``not_before_ns <= now_ns``), soonest first.

        A backend may round a time up to its own resolution (Redis: a
        microsecond), never down: a key is never due early.
        """
        ...

    async def forget_deletions(self, entries: Collection[Deferred]) -> None:
        """Drop each entry from the queue, if its key is still queued for the time given.

        Conditional on what gc read, like every other metadata change: a key
        queued again meanwhile (superseded after gc found it named) stays.
        """
        ...

    async def queue_if_absent(self, keys: Collection[str], not_before_ns: int) -> None:
        """Queue each of ``keys`` that is not queued already (an orphan found by gc), never moving
        the time of one that is: an upload's intent keeps its own."""
        ...

    async def pending_deletions(self) -> list[str]:
        """Every queued key, due or not (audits and tests: what the bucket may hold beyond the records)."""
        ...

    def read_token(self) -> object | None:
        """A value that differs whenever a change may have been committed since it was taken (by
        this process or any other), for callers that keep what they read; None: no such value,
        keep nothing. Cheap: no round trip."""
        ...

    async def sync(self) -> None:
        """Make every change committed so far durable (SQLite: one shared fsync of its WAL).

        A committed change is visible at once; callers that promise
        durability (``store()``, the mount's ``fsync``) call this after it.
        A backend whose commits are durable when acknowledged does nothing.
        """
        ...
