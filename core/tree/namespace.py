"""The tree of artifacts: every change to nodes and blobs goes through here.

Both faces of the store stand on this layer: :class:`core.api.store.ArtifactStore`
(artifact ids, the reference API) and the mount (inodes). It keeps the layout
of DESIGN §2, hides expired nodes, enforces size limits and quotas, and
keeps blobs and metadata in step: a blob is written under a fresh key first,
the metadata commit makes it visible, and only then is the old blob removed.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, NamedTuple

import anyio

from core.backends.blobs.base import BlobStore
from core.backends.meta.base import ChildrenPage, Cover, MetaStore, SearchPage, SearchQuery
from core.errors import (
    AlreadyExistsError,
    ArtifactExpiredError,
    ArtifactStoreError,
    ArtifactNotFoundError,
    CrossScopeError,
    DirectoryLinkError,
    DirectoryNotEmptyError,
    InvalidArgumentError,
    IsADirectoryError_,
    NotADirectoryError_,
    ProviderError,
    ReadOnlyError,
    StaleRecordError,
    TooManyLinksError,
)
from core.infra import metrics
from core.infra.clock import Clock
from core.models import BackendHealth, Scope, Usage
from core.nodes import (
    MADE_BY_UID,
    MAX_LINKS,
    ROOT_INO,
    SPECIAL_KINDS,
    Artifact,
    NamespaceRecord,
    Node,
    NodeKind,
    NodeRole,
    Space,
    new_node,
)
from core.settings import Limits
from core.tree import grid
from core.tree.base import EMPTY_SHA256, MAX_RACES, NS, Change, adopt, expiry_ns, refuse_frozen
from core.tree.checkpoints import Checkpoints
from core.tree.content import Content
from core.tree.non_entries import NonEntries
from core.tree.pages import Bound, FilesPage, files_page
from core.tree.quotas import Quotas


def _filename(node: Node, known: Mapping[int, Node]) -> str:
    """``node``'s path below its scope root, from the records of its directories (``known``).

    The names of the entries above it, up to the first directory that is
    not an entry (the scope root); a directory missing from ``known`` (gone)
    ends the path there. Bounded by the records known, so even a cycle
    (which no rename makes) cannot hold it.
    """
    parts = [node.name]
    parent = known.get(node.parent)
    while parent is not None and parent.role is NodeRole.ENTRY and len(parts) <= len(known):
        parts.append(parent.name)
        parent = known.get(parent.parent)
    return "/".join(reversed(parts))


HEALTH_TIMEOUT = 5.0  # seconds a backend has to answer a health probe
LOST_AND_FOUND = "lost+found"  # where fsck --repair puts what no directory reached, in each scope


class _FixedInos(NamedTuple):
    """Inode numbers of one sandbox's fixed directories."""

    box: int
    sessions: int
    users: int
    shared: int


class Namespace(Content, Quotas):
    """The tree over one metadata store and one blob store: the only door to either.

    Content (blobs, versions, verified reads) and quotas live in their own
    modules (:mod:`core.tree.content`, :mod:`core.tree.quotas`); this one
    holds the tree: reading it, the fixed upper levels, creating, moving and
    removing entries, and expiry.
    """

    def __init__(self, meta: MetaStore, blobs: BlobStore, clock: Clock, limits: Limits) -> None:
        super().__init__(meta, blobs, clock, limits)
        self._fixed_inos: dict[str, _FixedInos] = {}
        self._non_entries = NonEntries()  # directories a filename need not read (scope roots, ...)
        self.checkpoints = Checkpoints(self)

    # -- the backends behind this door: nothing else calls them

    async def open(self) -> None:
        await self.blobs.open()
        await self.meta.open()

    async def close(self) -> None:
        await self.meta.close()
        await self.blobs.close()

    async def check_blobs(self) -> None:
        """Raise the backend's error if the blob store does not answer."""
        await self.blobs.check()

    async def check_meta(self) -> None:
        """Raise the backend's error if the metadata store does not answer."""
        await self.meta.get(ROOT_INO)

    async def health(self, timeout: float = HEALTH_TIMEOUT) -> dict[str, BackendHealth]:
        """Probe the metadata and blob stores at once, each within ``timeout`` seconds (retries included).

        Never raises for a backend's fault: that is the answer.
        """
        found: dict[str, BackendHealth] = {}

        async def probe(name: str, check: Callable[[], Awaitable[None]]) -> None:
            start = time.monotonic()
            error: str | None = f"no answer within {timeout:g} s"
            with anyio.move_on_after(timeout):
                try:
                    await check()
                    error = None
                except ArtifactStoreError as exc:
                    error = f"{type(exc).__name__}: {exc}"
            found[name] = BackendHealth(ok=error is None, seconds=round(time.monotonic() - start, 6), error=error)

        async with anyio.create_task_group() as tg:
            tg.start_soon(probe, "metadata", self.check_meta)
            tg.start_soon(probe, "blobs", self.check_blobs)
        return {name: found[name] for name in ("metadata", "blobs")}

    async def totals(self) -> Usage:
        return await self.meta.totals()

    # -- reading the tree

    def visible(self, node: Node | None) -> bool:
        return node is not None and not node.expired(self.now())

    async def get(self, ino: int) -> Node:
        node = await self.meta.get(ino)
        if not self.visible(node):
            raise ArtifactNotFoundError(f"inode {ino} does not exist")
        return node  # type: ignore[return-value]

    async def find(self, parent: Node, name: str) -> Node | None:
        node = await self.meta.lookup(parent.ino, name)
        return node if self.visible(node) else None

    async def child(self, parent: Node, name: str) -> Node:
        node = await self.find(parent, name)
        if node is None:
            raise ArtifactNotFoundError(f"{name!r} not found")
        return node

    async def entry(self, parent_ino: int, name: str) -> tuple[Node, Node | None]:
        """Directory ``parent_ino`` and its entry ``name`` (None if there is none), read together.

        One read where :meth:`get` then :meth:`find` would be two: a path
        walk's every step needs both the directory and the entry.
        """
        parent, node = await self.meta.entry(parent_ino, name)
        if not self.visible(parent):
            raise ArtifactNotFoundError(f"inode {parent_ino} does not exist")
        return parent, node if self.visible(node) else None  # type: ignore[return-value]

    async def list(self, parent: Node) -> list[Node]:
        now = self.now()
        return [n for n in await self.meta.children(parent.ino) if not n.expired(now)]

    async def list_page(self, parent: Node, after: str | None, limit: int) -> ChildrenPage:
        """One page of :meth:`list`: the visible entries among the next ``limit`` names after ``after``.

        ``last`` and ``more`` are the backend's, so an expired entry skipped here still moves the
        cursor on: a page of nothing but expired entries is not the directory's end.
        """
        page = await self.meta.children_page(parent.ino, after, limit)
        now = self.now()
        return page._replace(nodes=[n for n in page.nodes if not n.expired(now)])

    async def lookup(self, parent_ino: int, name: str) -> Node | None:
        """The entry ``name`` of ``parent_ino`` as stored, expired or not: what a new entry there replaces."""
        return await self.meta.lookup(parent_ino, name)

    async def find_artifact(self, artifact_id: str) -> Node | None:
        """The record of ``artifact_id`` as stored, expired or not."""
        return await self.meta.find_artifact(artifact_id)

    async def search(
        self, sandbox_id: str, *, scope: Scope | None, session_id: str | None, user_id: str | None
    ) -> list[Node]:
        """File nodes of a sandbox matching the given space fields, expired or not (indexed).

        A checkpoint's frozen copies are not artifacts of their own to a search: they are found
        through their checkpoint.
        """
        found = await self.meta.search(sandbox_id, scope=scope, session_id=session_id, user_id=user_id)
        return [node for node in found if node.role is not NodeRole.FROZEN]

    async def search_page(self, query: SearchQuery, *, after: tuple[int, str] | None, limit: int) -> SearchPage:
        """A page of :meth:`search`'s artifacts, unexpired, in (stored_at, artifact_id) order (issue #12)."""
        now = self.now()
        page = await self.meta.search_page(query, after=after, now_ns=now, limit=limit)
        kept = [node for node in page.nodes if node.role is not NodeRole.FROZEN and not node.expired(now)]
        return page._replace(nodes=kept)

    async def artifact_node(self, artifact_id: str) -> Node:
        grid.validate_id(artifact_id, "artifact id")
        node = await self.meta.find_artifact(artifact_id)
        if node is None:
            raise ArtifactNotFoundError(f"artifact {artifact_id} not found")
        if node.expired(self.now()):
            raise ArtifactExpiredError(f"artifact {artifact_id} has expired")
        return node

    async def filename_of(self, node: Node) -> str:
        """``node``'s path below its scope root (its artifact's filename), read in one round trip."""
        return (await self.filenames([node]))[0]

    async def filenames(self, nodes: Sequence[Node]) -> list[str]:
        """The paths of ``nodes`` below their scope roots, from one read of all their directories.

        Paths are never stored: they are made from the directories' records
        as they are now, so a directory renamed a moment ago shows its new
        name in every path below it. The records come in one read for all
        the nodes (issue #9: a search of 20 files once made 81 round trips).
        """
        parents = {node.parent for node in nodes if node.parent not in self._non_entries}
        known = await self.meta.lineage(parents) if parents else {}
        self._non_entries.learn(known.values())
        return [_filename(node, known) for node in nodes]

    async def files_below(self, root: Node) -> list[tuple[str, Node]]:
        """Every visible file below directory ``root``, with its path from ``root``, from one walk.

        What walking the tree with :meth:`list` a directory at a time finds
        (an expired node is left out, and an expired directory hides what
        is below it), without a round trip per directory: the backend walks
        the subtree (:meth:`MetaStore.subtree`), and the paths are made here
        from the records it answered.
        """
        now = self.now()
        children: dict[int, list[Node]] = {}
        for node in await self.meta.subtree(root.ino):
            children.setdefault(node.parent, []).append(node)
        found: list[tuple[str, Node]] = []
        walked = {root.ino}
        pending = [(root.ino, "")]
        while pending:
            ino, prefix = pending.pop()
            for child in children.get(ino, ()):
                if child.expired(now) or child.role is not NodeRole.ENTRY:
                    continue  # an expired entry, or the checkpoints of a workspace (found through it)
                if child.is_dir and child.ino not in walked:
                    walked.add(child.ino)
                    pending.append((child.ino, f"{prefix}{child.name}/"))
                elif child.is_file:
                    found.append((prefix + child.name, child))
        return found

    async def files_page(self, root: Node, *, after: Bound | None, prefix: str, limit: int) -> FilesPage:
        """Up to ``limit`` visible files below ``root`` in path order, after ``after``: what
        :meth:`files_below` finds, read a page at a time (:mod:`core.tree.pages`)."""
        return await files_page(self.meta, root, now_ns=self.now(), after=after, prefix=prefix, limit=limit)

    # -- the fixed upper tree

    async def _fixed_dir(self, parent: Node, name: str, role: NodeRole, space: Space | None = None) -> Node:
        node = await self.meta.lookup(parent.ino, name)
        if node is not None and not node.expired(self.now()):
            return node
        fresh = new_node(parent=parent.ino, name=name, kind=NodeKind.DIR, mode=0o755, now_ns=self.now(), role=role, space=space)
        try:
            node, _ = await self.meta.insert(fresh)
        except AlreadyExistsError:
            node = await self.meta.lookup(parent.ino, name)  # a racing creator won
            if node is None:
                raise
        return node

    async def _fixed(self, sandbox_id: str) -> _FixedInos:
        """The inode numbers of a sandbox's fixed directories, made if missing.

        Nothing removes, renames or expires these directories (rmdir, rename
        and expiry refuse them), so their numbers are cached: a store then
        finds its scope in one metadata read instead of four.
        """
        fixed = self._fixed_inos.get(sandbox_id)
        if fixed is not None:
            return fixed
        grid.validate_id(sandbox_id, "sandbox id")
        root = await self.meta.get(ROOT_INO)
        assert root is not None
        box = await self._fixed_dir(root, sandbox_id, NodeRole.SANDBOX)
        sessions = await self._fixed_dir(box, grid.SESSIONS_DIR, NodeRole.SESSIONS)
        users = await self._fixed_dir(box, grid.USERS_DIR, NodeRole.USERS)
        shared = await self._fixed_dir(box, grid.SHARED_DIR, NodeRole.SCOPE_ROOT,
                                       Space(sandbox_id=sandbox_id, scope=Scope.SANDBOX))
        fixed = self._fixed_inos[sandbox_id] = _FixedInos(box.ino, sessions.ino, users.ino, shared.ino)
        return fixed

    async def sandbox(self, sandbox_id: str) -> Node:
        box = await self.meta.get((await self._fixed(sandbox_id)).box)
        assert box is not None
        return box

    async def scope_root(
        self, space: Space, *, create: bool = True, uid: int = 0, gid: int = 0, made_by_uid: int | None = None
    ) -> Node:
        """The directory of a session, a user, or the shared scope; ``made_by_uid``: a session made through the mount."""
        fixed = await self._fixed(space.sandbox_id)
        if space.scope is Scope.SANDBOX:
            return await self.get(fixed.shared)
        holder_ino = fixed.sessions if space.scope is Scope.SESSION else fixed.users
        name = space.session_id if space.scope is Scope.SESSION else space.user_id
        assert name is not None
        existing = await self.meta.lookup(holder_ino, name)
        if existing is not None and existing.expired(self.now()):
            await self.purge(existing)
            existing = None
        if existing is not None or not create:
            if existing is None:
                raise ArtifactNotFoundError(f"{space.scope.value} {name} does not exist")
            return existing
        node = new_node(
            parent=holder_ino, name=name, kind=NodeKind.DIR, mode=0o755, now_ns=self.now(),
            role=NodeRole.SCOPE_ROOT, space=space, uid=uid, gid=gid,
        )
        if space.scope is Scope.SESSION:
            node.expires_at_ns = self.now() + self.limits.session_ttl * NS
            node.session_meta = {"user_id": space.user_id, "custom_metadata": {}}
            if made_by_uid is not None:
                node.session_meta[MADE_BY_UID] = made_by_uid
        try:
            node, _ = await self.meta.insert(node)
        except AlreadyExistsError:
            node = await self.meta.lookup(holder_ino, name)  # type: ignore[assignment]
            if node is None:
                raise
        return node

    async def walk(self, space: Space, names: Sequence[str]) -> list[Node]:
        """The scope root of ``space``, then the nodes along the path ``names`` below it, in one read.

        As stored: the list ends at the first name that is missing (an empty
        list: no scope root), and expired nodes are in it; whether they count
        is the caller's rule. A store at depth d reads its directories with
        this, not one lookup each (issue #9).
        """
        fixed = await self._fixed(space.sandbox_id)
        if space.scope is Scope.SANDBOX:
            holder, name = fixed.box, grid.SHARED_DIR
        else:
            holder = fixed.sessions if space.scope is Scope.SESSION else fixed.users
            name = space.session_id if space.scope is Scope.SESSION else space.user_id  # type: ignore[assignment]
        assert name is not None
        return await self.meta.resolve(holder, [name, *names])

    async def place(self, space: Space, dirs: Sequence[str]) -> tuple[Node, Node]:
        """The scope root of ``space`` and the directory ``dirs`` below it, each made if missing.

        ``mkdir -p`` from the scope root, with :meth:`scope_root`'s rules (a
        missing or expired scope is made anew); when the directories exist,
        the whole path costs one read, whatever its depth.
        """
        path = await self.walk(space, dirs)
        if path and self.visible(path[0]):
            return path[0], await self.mkdirs(path[0], list(dirs), known=path[1:])
        root = await self.scope_root(space)
        return root, await self.mkdirs(root, list(dirs))

    async def session_root(self, sandbox_id: str, session_id: str) -> Node | None:
        return await self.meta.lookup((await self._fixed(sandbox_id)).sessions, session_id)

    async def cover_session(self, space: Space, expires_at_ns: int | None) -> None:
        """Keep a session alive at least as long as the artifacts in it."""
        root = await self._session_cover(space)

        def cover(root: Node) -> None:
            if root.expires_at_ns is not None and (expires_at_ns is None or expires_at_ns > root.expires_at_ns):
                root.expires_at_ns = expires_at_ns

        if root is not None and (expires_at_ns is None or expires_at_ns > root.expires_at_ns):  # type: ignore[operator]
            await self.update_node(root, cover, ctime=False)

    async def _session_cover(
        self, space: Space, parent: Node | None = None, root: Node | None = None
    ) -> Node | None:
        """The root of ``space`` if it is a session's, which expires: what an artifact in it must not outlive.

        ``parent``, the directory a new node goes into as the caller read it, or ``root``, the
        scope root as the caller read it, saves reading the root again (the insert checks the
        root's expiry as it is then).
        """
        if space.scope is not Scope.SESSION:
            return None
        if root is not None and root.role is NodeRole.SCOPE_ROOT and root.space == space:
            pass
        elif parent is not None and parent.role is NodeRole.SCOPE_ROOT and parent.space == space:
            root = parent
        else:
            root = await self.scope_root(space)
        return root if root.expires_at_ns is not None else None

    async def _insert(self, node: Node, *, replace: bool = False, cover: Node | None = None) -> tuple[Node, Node | None]:
        """``meta.insert`` with the parent's new times, the blob of a file it replaces queued for gc
        and, if ``cover`` (a session root) expires before the node, that root's later expiry, in one
        transaction."""
        covering = None if cover is None else Cover(cover)
        drop_at = self.grace_deadline() if replace else None

        async def insert() -> tuple[Node, Node | None]:
            return await self.meta.insert(node, replace=replace, touch_ns=self.now(), cover=covering, drop_at_ns=drop_at)

        try:
            return await insert()
        except AlreadyExistsError:
            if not await self._clear_expired(node.parent, node.name):
                raise
            return await insert()

    # -- expired entries in the way

    async def _clear_expired(self, parent_ino: int, name: str) -> bool:
        """Collect the entry ``name`` of ``parent_ino`` if it has expired; whether it is gone now.

        Expired entries are invisible but stay stored until collected; one that holds a
        name someone is making again is collected then, so it is gone for every operation.
        """
        old = await self.meta.lookup(parent_ino, name)
        if old is not None and old.expired(self.now()):
            await self.purge(old)
            return await self.meta.lookup(parent_ino, name) is None
        return False

    async def _clear_expired_children(self, directory: Node) -> bool:
        """Collect the entries of ``directory`` if every one has expired; whether any were."""
        children = await self.meta.children(directory.ino)
        now = self.now()
        if not children or not all(child.expired(now) for child in children):
            return False
        for child in children:
            await self.purge(child)
        return True

    # -- creating entries

    def entry_space(self, parent: Node, name: str) -> Space:
        """The space a new entry under ``parent`` belongs to, or why none may be made."""
        grid.validate_name(name)
        if parent.kind is not NodeKind.DIR:
            raise NotADirectoryError_(f"{parent.name!r} is not a directory")
        refuse_frozen(parent)
        if parent.role not in (NodeRole.SCOPE_ROOT, NodeRole.ENTRY) or parent.space is None:
            raise ReadOnlyError(f"nothing but scope directories can be made in {parent.name or '/'!r}")
        return parent.space

    async def mkdir(
        self, parent: Node, name: str, mode: int = 0o755, uid: int = 0, gid: int = 0, *, session_user: str | None = None,
        made_by_uid: int | None = None, namespace: NamespaceRecord | None = None,
    ) -> Node:
        """A directory; in ``sessions/`` a new session (of ``session_user``; ``made_by_uid``: a uid's claim,
        see :func:`core.api.access.check_session_join`), in ``users/`` a user space; with ``namespace``, a
        workspace, made with its record in one insert."""
        if parent.role in (NodeRole.SESSIONS, NodeRole.USERS, NodeRole.ROOT):
            return await self._mkdir_fixed(parent, name, uid, gid, session_user, made_by_uid)
        space = self.entry_space(parent, name)
        node = new_node(parent=parent.ino, name=name, kind=NodeKind.DIR, mode=mode & 0o7777, now_ns=self.now(),
                        space=space, uid=uid, gid=gid)
        node.namespace = namespace
        node, _ = await self._insert(node)
        return node

    async def _mkdir_fixed(
        self, parent: Node, name: str, uid: int, gid: int, session_user: str | None, made_by_uid: int | None
    ) -> Node:
        if await self.find(parent, name) is not None:
            raise AlreadyExistsError(f"{name!r} exists")
        if parent.role is NodeRole.ROOT:
            return await self.sandbox(name)
        box = await self.get(parent.parent)
        kind = grid.validate_id(name, "session id" if parent.role is NodeRole.SESSIONS else "user id")
        if parent.role is NodeRole.SESSIONS:
            space = Space(sandbox_id=box.name, scope=Scope.SESSION, session_id=kind, user_id=session_user)
            return await self.scope_root(space, uid=uid, gid=gid, made_by_uid=made_by_uid)
        space = Space(sandbox_id=box.name, scope=Scope.USER, user_id=kind)
        return await self.scope_root(space, uid=uid, gid=gid)

    async def mkdirs(
        self, root: Node, parts: list[str], uid: int = 0, gid: int = 0, *, known: Sequence[Node] | None = None
    ) -> Node:
        """``mkdir -p`` below a scope root; returns the last directory.

        ``known`` is what :meth:`walk` just read along ``parts`` (a part past
        its end was missing then): the directories in it are not read again.
        """
        node = root
        for at, part in enumerate(parts):
            if known is None:
                found = await self.find(node, part)
            else:
                found = known[at] if at < len(known) and self.visible(known[at]) else None
            if found is None:
                try:
                    found = await self.mkdir(node, part, 0o755, uid, gid)
                except AlreadyExistsError:
                    found = await self.find(node, part)  # made meanwhile by another writer
                    if found is None:
                        raise
            if not found.is_dir:
                raise NotADirectoryError_(f"{part!r} is a file, not a directory")
            node = found
        return node

    def default_ttl(self, scope: Scope) -> int | None:
        return self.limits.default_ttl if scope is Scope.SESSION else None

    async def new_artifact_id(self, space: Space) -> str:
        return await self.meta.new_artifact_id(space)

    def grid_key(self, node: Node) -> str:
        assert node.space is not None and node.artifact is not None
        return grid.grid_key(node.space.sandbox_id, node.space.scope, node.space.owner, node.artifact.artifact_id)

    async def file_node(
        self, parent: Node, name: str, *, mode: int = 0o644, uid: int = 0, gid: int = 0, ttl: int | None,
        artifact_id: str | None = None, mime: str = "application/octet-stream", summary: str = "",
        meta: dict[str, Any] | None = None,
    ) -> Node:
        """An empty file node, not yet stored."""
        space = self.entry_space(parent, name)
        node = new_node(parent=parent.ino, name=name, kind=NodeKind.FILE, mode=mode & 0o7777, now_ns=self.now(),
                        space=space, uid=uid, gid=gid)
        node.artifact = Artifact(
            artifact_id=artifact_id or await self.new_artifact_id(space), mime=mime, summary=summary,
            meta=meta or {}, sha256=EMPTY_SHA256, version=0, ttl=ttl,
        )
        node.expires_at_ns = expiry_ns(self.now(), ttl)
        return node

    @staticmethod
    def created_at_publish(node: Node) -> Node:
        """Date a new file from its first content (``set_content``), not from its draft: its four times are
        that instant and its TTL runs from it, however long its bytes took to arrive."""
        assert node.artifact is not None
        node.crtime_ns = node.atime_ns = node.mtime_ns
        node.expires_at_ns = expiry_ns(node.mtime_ns, node.artifact.ttl)
        return node

    async def insert_file(
        self, node: Node, *, replace: bool, parent: Node | None = None, root: Node | None = None
    ) -> Node:
        """Store a file node (empty, or with a blob already written for it); ``parent`` is its
        directory and ``root`` its scope root, if the caller has just read them."""
        assert node.space is not None
        if self.has_quota(node.space.scope):
            old = await self.meta.lookup(node.parent, node.name) if replace else None
            # a replaced file gives its room back, unless it lives on under another name
            replaced = old if old is not None and old.is_file and old.last_name else None
            await self.ensure_room(node.space, node.size - (replaced.size if replaced else 0), 0 if replaced else 1)
        cover = await self._session_cover(node.space, parent, root)
        node, _ = await self._insert(node, replace=replace, cover=cover)  # which queued a replaced file's blob
        await self.settle_blobs(node.artifact.blob_key if node.artifact is not None else None, [])
        metrics.stored(node.size, new=True)
        return node

    async def symlink(self, parent: Node, name: str, target: str, uid: int = 0, gid: int = 0) -> Node:
        space = self.entry_space(parent, name)
        if not target or "\0" in target or len(target.encode("utf-8", "surrogateescape")) > grid.MAX_PATH_BYTES:
            raise InvalidArgumentError("bad symlink target")
        node = new_node(parent=parent.ino, name=name, kind=NodeKind.SYMLINK, mode=0o777, now_ns=self.now(),
                        space=space, uid=uid, gid=gid)
        node.target = target
        node.size = len(target.encode("utf-8", "surrogateescape"))
        node, _ = await self._insert(node)
        return node

    async def special(
        self, parent: Node, name: str, kind: NodeKind, mode: int, rdev: int = 0, uid: int = 0, gid: int = 0
    ) -> Node:
        """A FIFO, device or socket: a node with a type, a mode and (devices) a device number, and
        no bytes; it is never an artifact, so the library's listings and search do not show it."""
        if kind not in SPECIAL_KINDS.values():
            raise InvalidArgumentError(f"{kind.value} is not a special file type")
        space = self.entry_space(parent, name)
        node = new_node(parent=parent.ino, name=name, kind=kind, mode=mode & 0o7777, now_ns=self.now(),
                        space=space, uid=uid, gid=gid)
        if kind in (NodeKind.CHAR_DEVICE, NodeKind.BLOCK_DEVICE):
            node.rdev = rdev
        node, _ = await self._insert(node)
        return node

    async def update_node(self, node: Node, change: Change, *, ctime: bool = True) -> Node:
        """Apply ``change`` (mode, times, metadata fields) to ``node`` and store it; returns ``node``.

        The write is conditional on the record ``node`` was read as: if it
        changed meanwhile (a new version, a rename, another attribute), the
        change is applied again to the record as it is then, never written
        over it. An entry whose expiry the change moves out first moves its
        session out (an artifact never outlives its session). ``ctime``: the
        change sets the node's ctime.
        """
        refuse_frozen(node)
        for _ in range(MAX_RACES):
            expires = node.expires_at_ns
            change(node)
            if ctime:
                node.ctime_ns = self.now()
            if node.expires_at_ns != expires and node.role is NodeRole.ENTRY and node.space is not None:
                await self.cover_session(node.space, node.expires_at_ns)
            try:
                await self.meta.update(node)
                return node
            except StaleRecordError as exc:
                current = exc.current if isinstance(exc.current, Node) else await self.meta.get(node.ino)
                if current is None:
                    raise ArtifactNotFoundError(f"{node.name!r} was removed") from None
                adopt(node, current)
        raise ProviderError(f"{node.name!r}: the record kept changing, {MAX_RACES} times")

    # -- removing and moving

    async def link(self, node: Node, new_parent: Node, new_name: str) -> Node:
        """Give ``node`` the further name ``new_name`` in ``new_parent`` (a hard link); returns it.

        Within one scope only (EXDEV across, as a rename), and never a
        directory (EPERM, as on Linux). The inode's ctime moves, and the
        write is conditional on the record ``node`` was read as, like every
        other: if it changed meanwhile, the link is made on it as it is now.
        """
        if node.is_dir:
            raise DirectoryLinkError(f"{node.name!r} is a directory: no hard links to directories")
        refuse_frozen(node)
        if node.role is not NodeRole.ENTRY:
            raise ReadOnlyError(f"{node.name!r} cannot be linked")
        space = self.entry_space(new_parent, new_name)
        if node.space is None or space.usage_key != node.space.usage_key:
            raise CrossScopeError("link across scopes")
        cleared = False
        for _ in range(MAX_RACES):
            if len(node.names) >= MAX_LINKS:
                raise TooManyLinksError(f"{node.name!r} has {MAX_LINKS} names already")
            now = self.now()
            linked = node.model_copy(update={"ctime_ns": now})
            try:
                await self.meta.link(linked, new_parent.ino, new_name, touch_ns=now)
                adopt(node, linked)
                return node
            except AlreadyExistsError:
                if cleared or not await self._clear_expired(new_parent.ino, new_name):
                    raise
                cleared = True
            except StaleRecordError as exc:
                current = exc.current if isinstance(exc.current, Node) else await self.meta.get(node.ino)
                if current is None or current.expired(self.now()):
                    raise ArtifactNotFoundError(f"{node.name!r} was removed meanwhile") from None
                adopt(node, current)
        raise ProviderError(f"{node.name!r}: the record kept changing, {MAX_RACES} times")

    async def unlink(self, node: Node, *, every_name: bool = False) -> Node | None:
        """Remove the name ``node`` was reached by (``every_name``: all its names, the artifact).

        Returns the inode as its other names still have it, or None if it
        went with this one: a file with hard links keeps its bytes until its
        last name goes.
        """
        if node.is_dir:
            raise IsADirectoryError_(f"{node.name!r} is a directory")
        refuse_frozen(node)
        if node.role is not NodeRole.ENTRY:
            raise ReadOnlyError(f"{node.name!r} cannot be removed")
        for _ in range(MAX_LINKS + MAX_RACES):
            # The blob of the version removed (which may be newer than the one read) is queued for
            # gc by the remove itself: nothing between the two can leak it.
            removed = await self.meta.remove(node, touch_ns=self.now(), drop_at_ns=self.grace_deadline())
            if removed is None:
                raise ArtifactNotFoundError(f"{node.name!r} was removed or moved meanwhile")
            if removed.last_name:
                return None
            node = removed.without_name()  # the inode as it was left, seen through its next name
            node.rev += 1
            if not every_name:
                return node
        raise ProviderError(f"{node.name!r}: its names kept changing")

    async def rmdir(self, node: Node) -> None:
        if not node.is_dir:
            raise NotADirectoryError_(f"{node.name!r} is not a directory")
        refuse_frozen(node)
        if node.role not in (NodeRole.ENTRY, NodeRole.SCOPE_ROOT) or (
            node.space is not None and node.space.scope is Scope.SANDBOX and node.role is NodeRole.SCOPE_ROOT
        ):
            raise ReadOnlyError(f"{node.name!r} cannot be removed")
        try:
            removed = await self.meta.remove(node, touch_ns=self.now())
        except DirectoryNotEmptyError:
            if not await self._clear_expired_children(node):
                raise
            removed = await self.meta.remove(node, touch_ns=self.now())
        if removed is None:
            raise ArtifactNotFoundError(f"{node.name!r} was removed or moved meanwhile")
        if node.namespace is not None:  # a workspace removed by hand: its checkpoints go with it
            holder = await self.checkpoints.holder(node, create=False)
            if holder is not None:
                await self.purge(holder)

    async def rename(
        self, node: Node, new_parent: Node, new_name: str, *, replace: bool = True,
        replacing: Callable[[Node], Awaitable[object]] | None = None,
    ) -> Node | None:
        """Move ``node``; returns the node it replaced, if any.

        ``replacing`` is called with that node after the move, if it went
        with the name (its last), while its blob waits out the grace period
        in gc's queue: an open descriptor of it may still copy its bytes.
        """
        refuse_frozen(node)
        if node.role is not NodeRole.ENTRY:
            raise ReadOnlyError(f"{node.name!r} cannot be renamed")
        if node.namespace is not None:  # its id names its place (core.api.namespaces)
            raise ReadOnlyError(f"{node.name!r} is a namespace: it keeps its name")
        space = self.entry_space(new_parent, new_name)
        if node.space is None or space.usage_key != node.space.usage_key:
            raise CrossScopeError("rename across scopes")
        if node.is_dir and new_parent.ino != node.parent:  # within its own directory it cannot go below itself
            await self._refuse_own_subtree(node, new_parent)
        if node.has_other_name(new_parent.ino, new_name):
            return None  # two names of one inode: rename(2) does nothing
        now = self.now()
        moved = node.model_copy(update={"ctime_ns": now})
        cleared = False
        for _ in range(MAX_RACES):
            try:
                replaced = await self.meta.rename(
                    moved, new_parent.ino, new_name, replace=replace, touch_ns=now, drop_at_ns=self.grace_deadline()
                )
                break
            except (AlreadyExistsError, DirectoryNotEmptyError) as exc:
                # The target may be an expired entry, or a directory of nothing but expired entries.
                if cleared or not await self._clear_expired_target(new_parent, new_name, exc):
                    raise
                cleared = True
            except StaleRecordError as exc:
                # Changed since read: move it as it is now (a new version, a chmod must survive),
                # unless it left the name the caller gave; then that name is gone, as POSIX says.
                current = exc.current if isinstance(exc.current, Node) else await self.meta.get(node.ino)
                if current is None or not current.has_name(node.parent, node.name):
                    raise ArtifactNotFoundError(f"{node.name!r} was moved or removed meanwhile") from None
                current = current.seen_as(node.parent, node.name)
                if current.has_other_name(new_parent.ino, new_name):
                    return None  # linked there meanwhile: two names of one inode now
                moved = current.model_copy(update={"ctime_ns": now})
        else:
            raise ProviderError(f"{node.name!r}: the record kept changing, {MAX_RACES} times")
        adopt(node, moved)
        if replaced is not None and replaced.last_name and replacing is not None:
            await replacing(replaced)  # its blob, queued by the rename, waits out the grace period
        return replaced

    async def rehome(self, orphan: Node) -> str:
        """Move a record no entry reaches (fsck's orphan) to ``lost+found/#<ino>-<name>`` of its scope.

        Returns that path below the scope root. Conditional on the record as
        fsck read it (StaleRecordError if it changed since); a fixed
        directory (a scope root, a sandbox's) is not an entry and stays.
        """
        if orphan.role is not NodeRole.ENTRY or orphan.space is None:
            raise ReadOnlyError(f"{orphan.name!r} is not an entry of a scope")
        _, found = await self.place(orphan.space, [LOST_AND_FOUND])
        name = f"#{orphan.ino}-{orphan.name}"
        if len(name.encode()) > grid.MAX_NAME_BYTES:
            name = f"#{orphan.ino}"
        now = self.now()
        moved = orphan.model_copy(update={"ctime_ns": now})
        await self.meta.rename(moved, found.ino, name, replace=False, touch_ns=now)
        adopt(orphan, moved)
        return f"{LOST_AND_FOUND}/{name}"

    async def _clear_expired_target(self, parent: Node, name: str, refusal: Exception) -> bool:
        if isinstance(refusal, AlreadyExistsError):
            return await self._clear_expired(parent.ino, name)
        target = await self.meta.lookup(parent.ino, name)
        return target is not None and await self._clear_expired_children(target)

    async def exchange(self, a: Node, b: Node) -> None:
        refuse_frozen(a)
        refuse_frozen(b)
        if a.role is not NodeRole.ENTRY or b.role is not NodeRole.ENTRY:
            raise ReadOnlyError("only entries below a scope can be exchanged")
        if a.space is None or b.space is None or a.space.usage_key != b.space.usage_key:
            raise CrossScopeError("exchange across scopes")
        if a.is_dir:
            await self._refuse_own_subtree(a, await self.get(b.parent))
        if b.is_dir:
            await self._refuse_own_subtree(b, await self.get(a.parent))
        if a.ino == b.ino:
            return  # two names of one inode: each already is what the other would become
        for _ in range(MAX_RACES):
            try:
                # both directories change, as a rename changes its two
                await self.meta.exchange(a, b, touch_ns=self.now())
                return
            except StaleRecordError:
                # Exchange them as they are now, if each is still the entry the caller named.
                for node in (a, b):
                    current = await self.meta.get(node.ino)
                    if current is None or not current.has_name(node.parent, node.name):
                        raise ArtifactNotFoundError(f"{node.name!r} was moved or removed meanwhile") from None
                    adopt(node, current.seen_as(node.parent, node.name))
        raise ProviderError(f"exchange of {a.name!r}: the records kept changing, {MAX_RACES} times")

    async def _refuse_own_subtree(self, node: Node, new_parent: Node) -> None:
        cursor: Node | None = new_parent
        while cursor is not None and cursor.role is NodeRole.ENTRY:
            if cursor.ino == node.ino:
                raise InvalidArgumentError("cannot move a directory into itself")
            cursor = await self.meta.get(cursor.parent)

    async def purge(self, node: Node, into: Usage | None = None) -> int:
        """Remove a whole subtree with its blobs; returns the files removed (and adds them, with
        their bytes, to ``into``)."""
        removed = 0
        if node.is_dir:
            for child in await self.meta.children(node.ino):
                removed += await self.purge(child, into)
        gone = await self.meta.remove(node, drop_at_ns=self.grace_deadline())  # which queues the blob of what goes
        if gone is not None and gone.is_file and gone.last_name:  # None: moved or removed meanwhile, not ours to purge
            removed += 1
            if into is not None:
                into.add(1, gone.size)
        return removed

    # -- expiry

    async def collect_expired(self, into: Usage | None = None, *, batches: int | None = None) -> int:
        """Delete expired artifacts, sessions and their blobs; returns artifacts removed.

        ``batches``: stop after that many batches of expired nodes (a
        background sweep at a bounded rate), else go on until none is left.
        """
        removed = 0
        for _ in itertools.count() if batches is None else range(batches):
            batch = await self.meta.expired(self.now())
            if not batch:
                break
            for node in batch:
                if await self.meta.get(node.ino) is not None:
                    removed += await self.purge(node, into)
        return removed

    async def expired_now(self, limit: int = 1_000_000) -> Usage:
        """What :meth:`collect_expired` would remove now (a dry run): the expired files, and the
        files below expired directories (sessions), each counted once."""
        found = Usage()
        counted: set[int] = set()
        for node in await self.meta.expired(self.now(), limit):
            below = await self.meta.subtree(node.ino) if node.is_dir else [node]
            for file in below:
                if file.is_file and file.ino not in counted:
                    counted.add(file.ino)
                    found.add(1, file.size)
        return found

