"""The FUSE request handlers: where each kernel request becomes a tree operation.

Each handler resolves its inode numbers to nodes, checks the caller
(:mod:`fusefs.callers`), and makes one :class:`core.tree.namespace.Namespace`
call (or hands an open file's bytes to :mod:`fusefs.openfiles`). Errors are
mapped to errno values by :func:`fusefs.errnos.fuse_call`, which guards
every handler.
"""

from __future__ import annotations

import errno
import logging
import mimetypes
import os
import stat
from collections.abc import Awaitable, Callable, Sequence
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Any

import pyfuse3
import trio

from core.errors import (
    AlreadyExistsError,
    ArtifactNotFoundError,
    InvalidArgumentError,
    InvalidNameError,
    IsADirectoryError_,
    NotADirectoryError_,
    ProviderError,
    ReadOnlyError,
)
from core.infra import metrics
from core.models import NamespaceType, Scope
from core.nodes import SPECIAL_KINDS, Node, NodeKind, NodeRole, Space
from core.tree import grid
from core.tree.base import refuse_frozen
from core.tree.checkpoints import HOLDER
from core.tree.namespace import Namespace
from fusefs.attrs import Attributes, Inodes
from fusefs.callers import Callers
from fusefs.defaults import REQUEST_TIMEOUT
from fusefs.dirhandles import PAGE_SIZE, OpenDirectory
from fusefs.errnos import fuse_call
from fusefs.fairness import PER_UID, PerUid
from fusefs.listings import PAGE_NAMES, Listings
from fusefs.openfiles import KernelCache, OpenFile, OpenFiles
from fusefs.watchdog import Watchdog
from fusefs.xattrs import PREFIX as XATTR_USER_PREFIX
from fusefs.xattrs import Presigner, Xattrs

log = logging.getLogger("artifactfs.mount")

_DOT, _DOTDOT = b".", b".."
_CHECKPOINTS = HOLDER.encode()  # <workspace>/.checkpoints: a view of its checkpoints (core.tree.checkpoints)
RESTORE_XATTR = "user.artifact.restore"  # set on a workspace to a checkpoint's name: restore it

# close() publishes a file without waiting for stable storage; this bounds how long
# it may stay only in the page cache (fsync() makes it durable at once).
SYNC_SECONDS = 5.0
GC_SECONDS = 300.0  # how often a mount deletes the blobs whose grace period is over
GC_EXPIRED_BATCHES = 10  # batches of expired nodes (up to 1,000 each) a mount removes per sweep
# A close or fsync may take longer than an ordinary request by the time its bytes need to go out.
PUBLISH_BYTES_PER_SECOND = 1 << 20
_PUBLISHING = frozenset({"flush", "fsync", "release"})
SHUTDOWN_BOUND = 10.0  # seconds the clean-up at unmount may take
_USER_XATTRS = XATTR_USER_PREFIX.encode()
_CREATE_RACES = 10  # creates that find the name taken, then gone again, before they give up
_READ_BYTES, _WRITTEN_BYTES = metrics.FUSE_BYTES.labels("read"), metrics.FUSE_BYTES.labels("write")
REMOTE_CAPACITY = 1 << 50  # bytes statfs reports for a remote blob store (S3): 1 PiB
REMOTE_FILES = 1 << 32  # and files
_NAME_RACES = 10  # unlinks and renames that find the node they looked up replaced at its name, before they give up


def _name(raw: bytes) -> str:
    """A directory entry name from the kernel, checked as the tree checks names."""
    try:
        name = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidNameError("names must be UTF-8") from None
    return grid.validate_name(name)


def _text(raw: bytes, what: str) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidArgumentError(f"{what} must be UTF-8") from None


def guess_mime(name: str) -> str:
    return mimetypes.guess_type(name, strict=False)[0] or "application/octet-stream"


class _Lost:
    """An unlink's or rename's try that found nothing to act on: the nodes it acted on, and why."""

    __slots__ = ("error", "inos")

    def __init__(self, error: ArtifactNotFoundError, *inos: int | None) -> None:
        self.error, self.inos = error, inos

    @staticmethod
    def check(lost: _Lost | None, *nodes: Node | None) -> None:
        """Raise the last try's error if its names still designate the nodes it tried: the
        not-found was then not about a name another host took over (a directory gone, say),
        and trying again would find the same."""
        if lost is not None and lost.inos == tuple(n.ino if n is not None else None for n in nodes):
            raise lost.error


class Operations(pyfuse3.Operations):
    supports_dot_lookup = True
    enable_writeback_cache = False  # writes must reach the spool in order, and close must publish them
    enable_acl = False

    def __init__(
        self, ns: Namespace, *, root_ino: int, sandbox_id: str, callers: Callers, data_dir: Path, spool_dir: Path,
        presigner: Presigner | None = None, request_timeout: float | None = REQUEST_TIMEOUT,
        readdir_page: int = PAGE_SIZE, per_uid: int | None = PER_UID, blobs_on_disk: bool = True,
    ) -> None:
        super().__init__()
        self.ns = ns
        self.blobs_on_disk = blobs_on_disk  # the blob store keeps its bytes on the data dir's disk
        self.fair = PerUid(per_uid)
        self.watchdog = Watchdog(request_timeout, allowance=self._publish_allowance, admit=self._admit)
        self.sandbox_id = sandbox_id  # whose users' quotas statfs reports
        self.data_dir = data_dir
        self.inodes = Inodes(root_ino)
        self.callers = callers
        self.attrs = Attributes(self.inodes, callers, os.getgid())
        self.xattrs = Xattrs(presigner, ns.limits)
        self.files = OpenFiles(ns, spool_dir, self._spawn, self._invalidate)
        metrics.SPOOL_BYTES.set_function(self.files.spooled_bytes)
        self._dirs: dict[int, OpenDirectory] = {}
        self.readdir_page = readdir_page
        self._next_dir = 1
        self._removed_dirs: dict[int, Node] = {}  # ino -> a directory removed while open here, as it was
        self.listings = Listings()  # lookups in name order answered from a page read ahead (followed stores)
        self._nursery: trio.Nursery | None = None

    # -- the mount's background work

    def start(self, nursery: trio.Nursery) -> None:
        """Background tasks (readahead, hashing, cache invalidation, syncing) run in ``nursery``."""
        self._nursery = nursery
        nursery.start_soon(self._sync_periodically)
        nursery.start_soon(self._collect_garbage_periodically)

    async def _sync_periodically(self) -> None:
        """Closed files become durable within SYNC_SECONDS, as ext4's commit interval bounds it."""
        while True:
            await trio.sleep(SYNC_SECONDS)
            try:
                await self.ns.sync_blobs()
            except Exception:
                log.exception("background sync of published blobs failed; retrying in %s s", SYNC_SECONDS)

    async def _collect_garbage_periodically(self) -> None:
        """Blobs past their grace period go within GC_SECONDS of it (issue #16); any mount may do it."""
        while True:
            await trio.sleep(GC_SECONDS)
            try:
                await self.collect_once()
            except Exception:
                log.exception("background gc failed; retrying in %s s", GC_SECONDS)

    async def collect_once(self) -> None:
        """One background sweep: expired entries (a bounded number of batches, so a backlog is worked
        off over several sweeps rather than in one long one), then the blobs past their grace period.
        No library process is needed for expiry to free anything (issue #11)."""
        await self.ns.collect_expired(batches=GC_EXPIRED_BATCHES)
        await self.ns.collect_garbage()

    def _spawn(self, fn: Callable[..., Awaitable[Any]], *args: Any) -> None:
        assert self._nursery is not None, "Operations.start() was not called"
        self._nursery.start_soon(self._background, fn, args)

    @staticmethod
    async def _background(fn: Callable[..., Awaitable[Any]], args: tuple[Any, ...]) -> None:
        try:
            await fn(*args)
        except Exception:
            log.exception("background task %s failed", getattr(fn, "__qualname__", fn))

    def _invalidate(self, ino: int) -> None:
        """Drop the kernel's cached pages and attributes of ``ino`` (from a thread: it may block)."""
        self._spawn(trio.to_thread.run_sync, _invalidate_inode, self.inodes.fuse(ino), False)

    def _publish_allowance(self, name: str, args: tuple[Any, ...]) -> float:
        """Seconds a publishing request may take beyond the usual bound, by the bytes it has to send."""
        if name not in _PUBLISHING:
            return 0.0
        handle = self.files.find(args[1])
        spool = handle.file.spool if handle is not None else None
        return spool.size / PUBLISH_BYTES_PER_SECOND if spool is not None else 0.0

    def _admit(self, name: str, args: tuple[Any, ...]) -> AbstractAsyncContextManager[None]:
        """A request's turn among its uid's own (:mod:`fusefs.fairness`). Requests on an open
        handle carry no caller: the open that made the handle took its uid's turn. One that may
        change the tree drops the read-ahead windows (:mod:`fusefs.listings`) as it starts and ends."""
        uid = getattr(args[-1], "uid", None) if args else None  # the RequestContext, which comes last
        turn = self.fair.turn(uid if isinstance(uid, int) else None)
        if self.attrs.handed is None:  # no followed store, no windows to drop: nothing more per request
            return turn
        return _Changing(turn, self.listings) if self._may_change(name, args) else turn

    def _may_change(self, name: str, args: tuple[Any, ...]) -> bool:
        """Whether a request may change the store: reads do not, nor the close of a handle with nothing to publish."""
        if name in _READS:
            return False
        if name in _HANDLE_CLOSES:
            handle = self.files.find(args[0])
            return handle is None or handle.writable or handle.file.spool is not None
        return True

    async def shutdown(self, bound: float = SHUTDOWN_BOUND) -> None:
        """Unmount: drop what was never published, sync what was; give up after ``bound`` seconds."""
        with trio.move_on_after(bound) as waited:
            dropped = await self.files.close_all()
            if dropped:
                log.warning(
                    "unmount: %d file(s) still open with unpublished writes; those writes were discarded", dropped
                )
            await self.ns.sync_blobs()
        if waited.cancelled_caught:
            log.error("unmount: clean-up did not finish within %.0f s; left the rest undone", bound)

    # -- helpers

    def _attr(self, node: Node) -> pyfuse3.EntryAttributes:
        now = self.ns.now()
        if node.kind is NodeKind.FILE:
            file = self.files.get(node.ino)
            if file is not None and file.spool is not None:
                return self.attrs.of(node, now, size=file.size, mtime_ns=file.mtime_ns)
            assert node.artifact is not None
            self.files.saw(node.ino, node.artifact.version)
        return self.attrs.of(node, now)

    def _looked_up(self, node: Node) -> pyfuse3.EntryAttributes:
        """``_attr`` for a reply that adds one to the kernel's lookup count of ``node``: counted, so
        that a FORGET of part of them does not drop what fusefs.handed must take back later."""
        attr = self._attr(node)
        if self.attrs.handed is not None:
            self.attrs.handed.looked_up(node.ino)
        return attr

    async def _node(self, inode: int) -> Node:
        return await self.ns.get(self.inodes.node(inode))

    async def _named(self, inode: int) -> Node:
        """The node of an inode the kernel reached through a name it caches.

        If the store no longer has it, another host removed or replaced it behind that
        name: ESTALE makes the kernel look the name up again and retry (open, stat), as
        over NFS, instead of failing on a name that may well exist.
        """
        try:
            return await self._node(inode)
        except ArtifactNotFoundError:
            raise pyfuse3.FUSEError(errno.ESTALE) from None

    async def _parent_of(self, node: Node) -> Node:
        return node if node.ino == self.inodes.root_ino else await self.ns.get(node.parent)

    async def _entry(
        self, parent_inode: int, raw: bytes, ctx: pyfuse3.RequestContext, *, write: bool, ahead: bool = False
    ) -> tuple[Node, Node | None]:
        """A directory the caller may use and its entry ``raw`` (None if there is none), in one read
        (``ahead``: or none, from a page read ahead for a lookup, :mod:`fusefs.listings`)."""
        try:
            name = _name(raw)
        except InvalidNameError:
            # The caller's access is refused before its name, as the VFS checks a directory before looking in it.
            await self.callers.check(ctx.uid, await self._node(parent_inode), write=write)
            raise
        handed = self.attrs.handed
        if ahead and handed is not None and handed.trusted:  # only where every change drops the windows
            parent, node = await self._entry_ahead(self.inodes.node(parent_inode), name)
        else:
            parent, node = await self.ns.entry(self.inodes.node(parent_inode), name)
        if write:
            refuse_frozen(parent)  # a read-only filesystem says so before it looks at permissions
        await self.callers.check(ctx.uid, parent, write=write)
        return parent, node

    async def _entry_ahead(self, parent_ino: int, name: str) -> tuple[Node, Node | None]:
        """:meth:`Namespace.entry`, answered from a window when one covers ``name``; a lookup that
        carries on a walk in name order reads the page after ``name`` for the lookups to come."""
        listings = self.listings
        window = listings.find(parent_ino, name)
        if window is not None and self.ns.visible(window.parent):
            node = window.nodes.get(name)
            return window.parent, node if self.ns.visible(node) else None
        epoch = listings.epoch
        parent, node = await self.ns.entry(parent_ino, name)
        if node is not None and parent.is_dir and listings.walking(parent_ino, name):
            page = await self.ns.list_page(parent, name, PAGE_NAMES)
            listings.keep(epoch, parent, name, node, page.nodes, page.last, page.more)
        return parent, node

    # -- lookups and attributes

    @fuse_call
    async def lookup(self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        if name in (_DOT, _DOTDOT):
            parent = await self._node(parent_inode)
            return self._looked_up(parent if name == _DOT else await self._parent_of(parent))
        parent, node = await self._entry(parent_inode, name, ctx, write=False, ahead=True)
        if node is not None and node.role is NodeRole.CHECKPOINTS:
            node = None  # its one way in is the view below: a directory the kernel sees with one parent
        elif node is None and name == _CHECKPOINTS and _is_workspace(parent):
            node = await self.ns.checkpoints.holder(parent, create=True)  # hidden from readdir, as ZFS's .zfs
        if node is None:
            raise ArtifactNotFoundError(f"{name!r} not found")
        return self._looked_up(node)

    async def forget(self, inode_list: Sequence[tuple[int, int]]) -> None:
        # Nodes live in the store, not in this process; only the record of what the kernel holds shrinks.
        handed = self.attrs.handed
        if handed is not None:
            for inode, nlookup in inode_list:
                handed.forget(self.inodes.node(inode), nlookup)

    @fuse_call
    async def getattr(self, inode: int, ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        file = self.files.get(self.inodes.node(inode))
        if file is not None:  # open here: its own state is the newest, even after an unlink
            return self.attrs.of(file.node, self.ns.now(), size=file.size, mtime_ns=file.mtime_ns, removed=file.removed)
        removed_dir = self._removed_dirs.get(self.inodes.node(inode))
        if removed_dir is not None:  # fstat of an open directory that is gone, as on a local disk
            return self.attrs.of(removed_dir, self.ns.now(), removed=True)
        return self._attr(await self._named(inode))

    @fuse_call
    async def setattr(
        self, inode: int, attr: pyfuse3.EntryAttributes, fields: pyfuse3.SetattrFields, fh: int | None,
        ctx: pyfuse3.RequestContext,
    ) -> pyfuse3.EntryAttributes:
        file = self.files.get(self.inodes.node(inode))
        if file is not None and file.removed:  # ftruncate, fchmod, futimens of an unlinked open file
            return await self._setattr_removed(file, attr, fields, ctx)
        node = await self._node(inode)
        refuse_frozen(node)  # before anything: a truncate would copy the file first (EROFS, as a read-only fs)
        await self.callers.check(ctx.uid, node, write=True)
        if fields.update_size:
            if node.is_dir:
                raise IsADirectoryError_(f"{node.name!r} is a directory")
            if not node.is_file:
                raise InvalidArgumentError("only files have a size to set")
            # Through a descriptor (ftruncate) the change is published with the file's next
            # close; by path (truncate) it is published before we answer.
            await self.files.truncate(node, attr.st_size, publish=fh is None)
            node = await self._node(inode)
        if fields.update_mode or fields.update_uid or fields.update_gid or fields.update_atime or fields.update_mtime:
            if node.role not in (NodeRole.ENTRY, NodeRole.SCOPE_ROOT):
                raise ReadOnlyError(f"{node.name or '/'!r} is part of the fixed tree")

            def change(node: Node) -> None:
                if fields.update_mode:
                    node.mode = attr.st_mode & 0o7777
                if fields.update_uid:
                    node.uid = attr.st_uid
                if fields.update_gid:
                    node.gid = attr.st_gid
                if fields.update_atime:
                    node.atime_ns = attr.st_atime_ns
                if fields.update_mtime:
                    node.mtime_ns = attr.st_mtime_ns

            node = await self.ns.update_node(node, change)
            if fields.update_uid and node.role is NodeRole.SCOPE_ROOT:
                self.callers.forget_session(node)
            file = self.files.get(node.ino)
            if file is not None:  # unpublished writes keep their mtime unless this sets one
                file.set_times(node if fields.update_mtime else node.model_copy(update={"mtime_ns": file.mtime_ns}))
        return self._attr(node)

    async def _setattr_removed(
        self, file: OpenFile, attr: pyfuse3.EntryAttributes, fields: pyfuse3.SetattrFields, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        """A file removed while open lives on in its open state alone, as on a local disk, until closed."""
        await self.callers.check(ctx.uid, file.node, write=True)
        if fields.update_size:
            await file.truncate(attr.st_size)
        changes: dict[str, int] = {}
        if fields.update_mode:
            changes["mode"] = attr.st_mode & 0o7777
        if fields.update_uid:
            changes["uid"] = attr.st_uid
        if fields.update_gid:
            changes["gid"] = attr.st_gid
        if fields.update_atime:
            changes["atime_ns"] = attr.st_atime_ns
        if fields.update_mtime:
            changes["mtime_ns"] = attr.st_mtime_ns
        if changes:
            file.set_times(file.node.model_copy(update={"mtime_ns": file.mtime_ns, **changes, "ctime_ns": self.ns.now()}))
        return self.attrs.of(file.node, self.ns.now(), size=file.size, mtime_ns=file.mtime_ns, removed=True)

    # -- directories

    @fuse_call
    async def opendir(self, inode: int, ctx: pyfuse3.RequestContext) -> int:
        node = await self._node(inode)
        if not node.is_dir:
            raise NotADirectoryError_(f"{node.name!r} is not a directory")
        await self.callers.check(ctx.uid, node, write=False)
        fh = self._next_dir
        self._next_dir += 1
        self._dirs[fh] = OpenDirectory(node, self.readdir_page)
        return fh

    @fuse_call
    async def readdir(self, fh: int, start_id: int, token: pyfuse3.ReaddirToken) -> None:
        # Offsets are positions (S-readdir-offsets): "." is 1, ".." 2, then the names, a page at a time.
        directory = self._dirs[fh]
        entries = await directory.entries_from(self.ns, max(start_id, 2))
        # A request past its bound was answered already: its token must not be replied to again.
        await trio.lowlevel.checkpoint_if_cancelled()
        node = directory.node
        if start_id == 0 and not pyfuse3.readdir_reply(token, _DOT, self._attr(node), 1):
            return
        if start_id <= 1 and not pyfuse3.readdir_reply(token, _DOTDOT, self._parent_entry(node), 2):
            return
        for child, offset in entries:
            if child.role is NodeRole.CHECKPOINTS:
                continue  # namespaces/.checkpoints: reached as <workspace>/.checkpoints alone (one parent)
            if not pyfuse3.readdir_reply(token, child.name.encode(), self._attr(child), offset):
                break
            if self.attrs.handed is not None:  # readdirplus: a lookup of each entry but . and ..
                self.attrs.handed.looked_up(child.ino)

    def _parent_entry(self, node: Node) -> pyfuse3.EntryAttributes:
        """The ``..`` of a listing: its inode number and type are all readdir tells (readdirplus
        skips the attributes of ``.`` and ``..``), so the parent is not read for it."""
        if node.ino == self.inodes.root_ino:
            return self._attr(node)
        attr = pyfuse3.EntryAttributes()
        attr.st_ino = self.inodes.fuse(node.parent)
        attr.st_mode = stat.S_IFDIR
        return attr

    @fuse_call
    async def releasedir(self, fh: int) -> None:
        directory = self._dirs.pop(fh, None)
        if directory is not None and directory.node.ino in self._removed_dirs:
            if not any(d.node.ino == directory.node.ino for d in self._dirs.values()):
                del self._removed_dirs[directory.node.ino]

    def _dir_removed(self, node: Node) -> None:
        """``node`` (a directory) is gone; descriptors still open on it keep its attributes."""
        if any(d.node.ino == node.ino for d in self._dirs.values()):
            self._removed_dirs[node.ino] = node

    @fuse_call
    async def fsyncdir(self, fh: int, datasync: bool) -> None:
        pass  # every directory change was committed before its request was answered

    @fuse_call
    async def mkdir(self, parent_inode: int, name: bytes, mode: int, ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        parent = await self._node(parent_inode)
        entry = _name(name)
        if parent.role is NodeRole.CHECKPOINTS:  # mkdir <workspace>/.checkpoints/<name>: a checkpoint, as on ZFS
            workspace = await self.ns.checkpoints.workspace_of(parent)
            await self.callers.check(ctx.uid, workspace, write=True)
            return self._looked_up(await self.ns.checkpoints.create(workspace, entry))
        refuse_frozen(parent)
        if parent.role in (NodeRole.ROOT, NodeRole.SESSIONS, NodeRole.USERS):
            self.callers.check_new_scope(ctx.uid, parent, entry)
        else:
            await self.callers.check(ctx.uid, parent, write=True)
        return self._looked_up(
            await self.ns.mkdir(parent, entry, mode, ctx.uid, ctx.gid, session_user=self.callers.session_user(ctx.uid),
                                made_by_uid=self.callers.claimant(ctx.uid))
        )

    @fuse_call
    async def rmdir(self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> None:
        parent, node = await self.ns.entry(self.inodes.node(parent_inode), _name(name))
        if node is None:
            raise ArtifactNotFoundError(f"{name!r} not found")
        await self.callers.check(ctx.uid, parent if parent.space is not None else node, write=True)
        if parent.role is NodeRole.CHECKPOINTS and node.checkpoint is not None:
            await self.callers.check(ctx.uid, await self.ns.checkpoints.workspace_of(parent), write=True)
            await self.ns.checkpoints.drop(node)  # rmdir of a checkpoint, whole: it is not an ordinary directory
        else:
            await self.ns.rmdir(node)
        self._dir_removed(node)
        if node.role is NodeRole.SCOPE_ROOT:
            self.callers.forget_session(node)

    # -- files

    @fuse_call
    async def create(
        self, parent_inode: int, name: bytes, mode: int, flags: int, ctx: pyfuse3.RequestContext
    ) -> tuple[pyfuse3.FileInfo, pyfuse3.EntryAttributes]:
        for _ in range(_CREATE_RACES):
            try:
                node = await self._new_file(parent_inode, name, mode, ctx)
            except AlreadyExistsError:
                if flags & os.O_EXCL:
                    raise
                # Made meanwhile by another host or process: O_CREAT without O_EXCL opens it, as open(2) does.
                _, node = await self._entry(parent_inode, name, ctx, write=False)
                if node is None:
                    continue  # and removed again: create it after all
                info = await self._open_node(self.inodes.fuse(node.ino), node, flags, ctx)
                return info, self._looked_up(node)
            fh, _, _ = self.files.open(node, writable=True)
            return pyfuse3.FileInfo(fh=fh, keep_cache=True), self._looked_up(node)
        raise AlreadyExistsError(f"{name!r} kept being made and removed by others")

    @fuse_call
    async def mknod(
        self, parent_inode: int, name: bytes, mode: int, rdev: int, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        kind = SPECIAL_KINDS.get(stat.S_IFMT(mode))
        if kind is None:
            if stat.S_IFMT(mode) not in (0, stat.S_IFREG):
                raise InvalidArgumentError(f"mknod of file type {stat.S_IFMT(mode):o}")
            return self._looked_up(await self._new_file(parent_inode, name, mode, ctx))
        parent = await self._node(parent_inode)
        await self.callers.check(ctx.uid, parent, write=True)
        return self._looked_up(await self.ns.special(parent, _name(name), kind, mode, rdev, ctx.uid, ctx.gid))

    async def _new_file(self, parent_inode: int, name: bytes, mode: int, ctx: pyfuse3.RequestContext) -> Node:
        """An empty artifact: owner and scope from the directory, MIME type from the name."""
        parent = await self._node(parent_inode)
        entry = _name(name)
        await self.callers.check(ctx.uid, parent, write=True)
        space = self.ns.entry_space(parent, entry)  # refuses the fixed tree
        node = await self.ns.file_node(
            parent, entry, mode=mode, uid=ctx.uid, gid=ctx.gid, ttl=self.ns.default_ttl(space.scope),
            mime=guess_mime(entry),
        )
        return await self.ns.insert_file(node, replace=False, parent=parent)

    @fuse_call
    async def open(self, inode: int, flags: int, ctx: pyfuse3.RequestContext) -> pyfuse3.FileInfo:
        node = await self._named(inode)  # always the store's newest version: close-to-open
        return await self._open_node(inode, node, flags, ctx)

    async def _open_node(self, inode: int, node: Node, flags: int, ctx: pyfuse3.RequestContext) -> pyfuse3.FileInfo:
        if node.is_dir:
            raise IsADirectoryError_(f"{node.name!r} is a directory")
        writable = flags & os.O_ACCMODE != os.O_RDONLY
        if writable or flags & os.O_TRUNC:
            refuse_frozen(node)
        await self.callers.check(ctx.uid, node, write=writable or bool(flags & os.O_TRUNC))
        fh, file, cache = self.files.open(node, writable)
        if writable and flags & os.O_TRUNC:
            try:
                await file.truncate(0, at_open=True)
            except BaseException:
                await self.files.release(fh)
                raise
        if cache is KernelCache.STALE:  # committed through another face since the kernel looked
            _invalidate_inode(inode, True)
        return pyfuse3.FileInfo(fh=fh, keep_cache=cache is KernelCache.KEEP)

    @fuse_call
    async def read(self, fh: int, off: int, size: int) -> bytes | memoryview:
        try:
            data = await self.files.handle(fh).file.read(off, size)
            _READ_BYTES.inc(len(data))
            return data
        except ArtifactNotFoundError:
            # The version this descriptor reads was replaced or removed through another face of
            # the store, which dropped its blob: the handle is stale (as over NFS), not the name missing.
            raise pyfuse3.FUSEError(errno.ESTALE) from None

    @fuse_call
    async def write(self, fh: int, off: int, buf: bytes) -> int:
        try:
            await self.files.handle(fh).file.write(off, buf)
        except ArtifactNotFoundError:
            # The first write keeps the bytes around it, of the version this descriptor opened: as in read().
            raise pyfuse3.FUSEError(errno.ESTALE) from None
        _WRITTEN_BYTES.inc(len(buf))
        return len(buf)

    @fuse_call
    async def flush(self, fh: int) -> None:
        handle = self.files.handle(fh)
        if handle.writable and not handle.file.open_cut:  # an O_TRUNC open's cut alone waits for release
            await handle.file.publish()

    @fuse_call
    async def fsync(self, fh: int, datasync: bool) -> None:
        handle = self.files.handle(fh)
        if handle.writable:
            await handle.file.publish(durable=True)
        await self.ns.sync_blobs()  # versions published by earlier closes, too

    @fuse_call
    async def release(self, fh: int) -> None:
        await self.files.release(fh)

    # unlink(2) and rename(2) act on whatever a name designates when they run. The node a name
    # was looked up as may leave it before the conditional write that removes or moves it (another
    # host stored a new file over the name, or renamed one onto it): the write then finds nothing
    # to act on (ArtifactNotFoundError), though the name never stopped existing. So the name is
    # looked up again and the call made on what it designates now: ENOENT only once the name
    # itself is gone (issue #16). The library's delete and move work by artifact id, and are right
    # to answer not-found then.

    @fuse_call
    async def unlink(self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> None:
        lost: _Lost | None = None
        for _ in range(_NAME_RACES):
            _, node = await self._entry(parent_inode, name, ctx, write=True)
            if node is None:
                raise ArtifactNotFoundError(f"{name!r} not found")
            _Lost.check(lost, node)
            try:
                await self._unlink(node)
                return
            except ArtifactNotFoundError as exc:
                lost = _Lost(exc, node.ino)
        raise ProviderError(f"{name!r} kept being replaced by others, {_NAME_RACES} times")

    async def _unlink(self, node: Node) -> None:
        if not node.is_file:  # a symlink (no open state to keep), or a directory (refused: EISDIR)
            await self.ns.unlink(node)
            return
        await self.files.removing(node.ino)
        try:
            survivor = await self.ns.unlink(node)
        except BaseException:
            await self.files.kept(node.ino)
            raise
        if survivor is None:
            self.files.removed(node.ino)
        else:  # another name (a hard link) still leads to it
            await self.files.kept(node.ino)
            self.files.relinked(survivor)

    @fuse_call
    async def rename(
        self, parent_inode_old: int, name_old: bytes, parent_inode_new: int, name_new: bytes, flags: int,
        ctx: pyfuse3.RequestContext,
    ) -> None:
        exchange = bool(flags & pyfuse3.RENAME_EXCHANGE)
        lost: _Lost | None = None
        for _ in range(_NAME_RACES):
            old_parent, node = await self._entry(parent_inode_old, name_old, ctx, write=True)
            target: Node | None = None
            if parent_inode_new == parent_inode_old and not exchange:
                new_parent = old_parent  # the target, if any, comes back from the rename: no need to look it up first
            else:
                new_parent, target = await self._entry(parent_inode_new, name_new, ctx, write=True)
            new_name = _name(name_new)
            if node is None:
                raise ArtifactNotFoundError(f"{name_old!r} not found")
            if exchange and target is None:
                raise pyfuse3.FUSEError(errno.ENOENT)
            if not exchange and flags & ~pyfuse3.RENAME_NOREPLACE:
                raise InvalidArgumentError(f"unknown rename flags {flags:#x}")
            _Lost.check(lost, node, target)
            try:
                if exchange:
                    assert target is not None
                    await self.ns.exchange(node, target)
                else:
                    await self._rename(node, new_parent, new_name, replace=not flags & pyfuse3.RENAME_NOREPLACE)
                return
            except ArtifactNotFoundError as exc:
                lost = _Lost(exc, node.ino, target.ino if target is not None else None)
        raise ProviderError(f"{name_old!r} kept being replaced by others, {_NAME_RACES} times")

    async def _rename(self, node: Node, new_parent: Node, new_name: str, *, replace: bool) -> None:
        old_name = node.name
        replaced = await self.ns.rename(node, new_parent, new_name, replace=replace, replacing=self._replacing)
        if replaced is not None and replaced.last_name:
            self.files.removed(replaced.ino)
            if replaced.is_dir:
                self._dir_removed(replaced)
        elif replaced is not None:  # it lives on under its other names
            self.files.relinked(replaced.without_name())
        await self._reguess_mime(node, old_name)

    async def _replacing(self, target: Node) -> None:
        """A rename is replacing ``target``: a descriptor open on it keeps its bytes, as on a local disk."""
        if target.is_file:
            await self.files.removing(target.ino)

    async def _reguess_mime(self, moved: Node, old_name: str) -> None:
        """A MIME type guessed from a temporary name (``.x.pdf.Ab12``) follows the final one."""
        if not self._mime_follows(moved, old_name):
            return
        node = await self.ns.get(moved.ino)  # fresh: a version committed meanwhile must survive

        def follow(node: Node) -> None:
            if self._mime_follows(node, old_name):
                node.artifact.mime = guess_mime(node.name)  # type: ignore[union-attr]

        if self._mime_follows(node, old_name):
            await self.ns.update_node(node, follow)

    @staticmethod
    def _mime_follows(node: Node, old_name: str) -> bool:
        art = node.artifact
        return art is not None and art.mime == guess_mime(old_name) and art.mime != guess_mime(node.name)

    @fuse_call
    async def link(self, inode: int, new_parent_inode: int, new_name: bytes, ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        node = await self._named(inode)
        await self.callers.check(ctx.uid, node, write=False)
        new_parent, existing = await self._entry(new_parent_inode, new_name, ctx, write=True)
        if existing is not None:
            raise AlreadyExistsError(f"{new_name!r} exists")
        linked = await self.ns.link(node, new_parent, _name(new_name))
        self.files.relinked(linked)
        return self._looked_up(linked)

    @fuse_call
    async def symlink(
        self, parent_inode: int, name: bytes, target: bytes, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        parent = await self._node(parent_inode)
        await self.callers.check(ctx.uid, parent, write=True)
        return self._looked_up(await self.ns.symlink(parent, _name(name), _text(target, "a symlink target"), ctx.uid, ctx.gid))

    @fuse_call
    async def readlink(self, inode: int, ctx: pyfuse3.RequestContext) -> bytes:
        node = await self._node(inode)
        if node.target is None:
            raise InvalidArgumentError(f"{node.name!r} is not a symlink")
        return node.target.encode()

    # -- the filesystem

    @fuse_call
    async def statfs(self, ctx: pyfuse3.RequestContext) -> pyfuse3.StatvfsData:
        disk = os.statvfs(self.data_dir)
        stats = pyfuse3.StatvfsData()
        stats.f_bsize, stats.f_frsize = disk.f_bsize, disk.f_frsize
        stats.f_blocks, stats.f_bfree, stats.f_bavail = disk.f_blocks, disk.f_bfree, disk.f_bavail
        stats.f_files, stats.f_ffree, stats.f_favail = disk.f_files, disk.f_ffree, disk.f_favail
        if not self.blobs_on_disk:  # S3 has no size to ask: a large constant, less what the store holds
            held = await self.ns.totals()
            stats.f_blocks = REMOTE_CAPACITY // disk.f_frsize
            stats.f_bfree = stats.f_bavail = max(0, REMOTE_CAPACITY - held.bytes) // disk.f_frsize
            stats.f_files = REMOTE_FILES
            stats.f_ffree = stats.f_favail = max(0, REMOTE_FILES - held.files)
        stats.f_namemax = grid.MAX_NAME_BYTES
        user = self.callers.session_user(ctx.uid) if self.callers.enforce else None
        if user is not None:  # a uid with one user: its quota is what it may still fill
            used, bytes_left, files_left = await self.ns.headroom(
                Space(sandbox_id=self.sandbox_id, scope=Scope.USER, user_id=user)
            )
            if bytes_left is not None:
                stats.f_bfree = stats.f_bavail = min(stats.f_bavail, bytes_left // disk.f_frsize)
                stats.f_blocks = min(stats.f_blocks, used.bytes // disk.f_frsize + stats.f_bavail)
            if files_left is not None:
                stats.f_ffree = stats.f_favail = min(stats.f_favail, files_left)
                stats.f_files = min(stats.f_files, used.files + stats.f_favail)
        return stats

    # -- extended attributes

    @fuse_call
    async def getxattr(self, inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> bytes:
        if not name.startswith(_USER_XATTRS):
            # Only user.* is supported. Saying so (rather than "no such attribute") lets ls -l and
            # cp stop asking for security.selinux and ACLs per file: they remember it per device.
            # The kernel's security.capability check before each write takes it as "none".
            raise pyfuse3.FUSEError(errno.EOPNOTSUPP)
        node = await self._node(inode)
        await self.callers.check(ctx.uid, node, write=False)
        return await self.xattrs.get(node, _text(name, "an attribute name"), self.ns.now())

    @fuse_call
    async def setxattr(self, inode: int, name: bytes, value: bytes, ctx: pyfuse3.RequestContext) -> None:
        node = await self._node(inode)
        await self.callers.check(ctx.uid, node, write=True)
        key, now = _text(name, "an attribute name"), self.ns.now()
        if key == RESTORE_XATTR:
            await self._restore(node, _text(value, "a checkpoint's name"))
            return
        # update_node moves the session out first if this moves the node's expiry (user.artifact.ttl)
        await self.ns.update_node(node, lambda node: self.xattrs.set(node, key, value, now))

    async def _restore(self, workspace: Node, checkpoint_id: str) -> None:
        """``setfattr -n user.artifact.restore -v <checkpoint> <workspace>`` (``artifactfs checkpoint restore``)."""
        if not _is_workspace(workspace):
            raise InvalidArgumentError(f"{workspace.name!r} is not a workspace: nothing to restore")
        restored = await self.ns.checkpoints.restore(workspace, await self.ns.checkpoints.find(workspace, checkpoint_id))
        # The kernel did not ask for this change: its name for the workspace now leads to another inode.
        self._spawn(trio.to_thread.run_sync, _invalidate_entry, self.inodes.fuse(restored.parent),
                    restored.name.encode())
        self._invalidate(workspace.ino)

    @fuse_call
    async def listxattr(self, inode: int, ctx: pyfuse3.RequestContext) -> list[bytes]:
        node = await self._node(inode)
        await self.callers.check(ctx.uid, node, write=False)
        return self.xattrs.names(node)

    @fuse_call
    async def removexattr(self, inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> None:
        node = await self._node(inode)
        await self.callers.check(ctx.uid, node, write=True)
        key = _text(name, "an attribute name")
        await self.ns.update_node(node, lambda node: self.xattrs.remove(node, key))


# Requests that change nothing in the store: the others drop the read-ahead windows.
_READS = frozenset({"lookup", "getattr", "readdir", "opendir", "releasedir", "read", "readlink", "getxattr",
                    "listxattr", "statfs", "forget", "access", "open"})
_HANDLE_CLOSES = frozenset({"flush", "release"})  # change the store only when they publish


class _Changing:
    """A request's turn, for one that may change the tree: the windows are dropped as it starts
    (a lookup meanwhile reads afresh) and as it ends (a page read across it is not kept)."""

    __slots__ = ("_listings", "_turn")

    def __init__(self, turn: AbstractAsyncContextManager[None], listings: Listings) -> None:
        self._turn, self._listings = turn, listings

    async def __aenter__(self) -> None:
        await self._turn.__aenter__()
        self._listings.drop()

    async def __aexit__(self, *exc: object) -> bool | None:
        self._listings.drop()
        return await self._turn.__aexit__(*exc)  # type: ignore[arg-type]


def _is_workspace(node: Node | None) -> bool:
    return node is not None and node.namespace is not None and node.namespace.type is NamespaceType.WORKSPACE


def _invalidate_entry(fuse_parent: int, name: bytes) -> None:
    try:
        pyfuse3.invalidate_entry(fuse_parent, name)
    except OSError as exc:
        if exc.errno != errno.ENOENT:
            log.warning("invalidating entry %r of inode %d: %s", name, fuse_parent, exc)


def _invalidate_inode(fuse_ino: int, attr_only: bool) -> None:
    try:
        pyfuse3.invalidate_inode(fuse_ino, attr_only)
    except OSError as exc:
        if exc.errno != errno.ENOENT:  # ENOENT: the kernel holds nothing of it
            log.warning("invalidating inode %d: %s", fuse_ino, exc)
