"""Inode numbers and attributes as the kernel sees them.

Cache lifetimes
---------------
The kernel keeps each entry and attribute set we return for
:data:`CACHE_SECONDS`. Every change made through this mount reaches the
kernel in the reply that made it (create, setattr, rename, unlink, write),
so inside one mount the caches are never wrong. What they can miss is a
change made through another face of the store (the library on the same
data dir, another mount): a ``stat`` may show the old attributes for up to
``CACHE_SECONDS``. Opening a file always asks the store, so ``open`` sees
the newest version (close-to-open consistency: :mod:`fusefs.openfiles`
drops stale page cache and attributes then), and listings are never cached
(a directory read always reaches us), so a new artifact shows up at once.

A long lifetime is what makes ``ls -l`` of a large directory cheap: the
attributes come with the listing (readdirplus) and the ``lstat`` of each
entry that follows is answered by the kernel. Five seconds covers a listing
of tens of thousands of entries with room to spare, while keeping the
window for a foreign change short. On a store that announces its changes
(Redis) the window is not needed: each change's notice drops what it names,
so replies carry ten minutes, recorded so they can all be taken back
(:mod:`fusefs.handed`). An entry that expires sooner (a session artifact
near its TTL) is cached only until it expires, so it vanishes from lookups
on time.

Ownership shown
---------------
A node made by the library (or by the tree itself) carries uid 0. Without
``allow_other`` that is shown as the mounting user, whose store it is; with
it, as the uid mapped to the node's user when there is one. With
``allow_other``, ``sessions/``, ``users/`` and ``shared/`` are shown
``1777`` so the kernel lets every uid try, and :mod:`fusefs.callers` decides;
entries inside a user's or a session's space are then never cached as
entries, so no uid reaches one through a lookup another uid made.
"""

from __future__ import annotations

import stat

import pyfuse3

from core.nodes import Node, NodeRole
from fusefs.callers import Callers
from fusefs.handed import Handed

CACHE_SECONDS = 5.0
BLOCK_SIZE = 1 << 20  # st_blksize: tools size their buffers by it, and large FUSE requests are cheaper
_NS = 1_000_000_000
_OPEN_TO_ALL = 0o1777


class Inodes:
    """FUSE inode numbers are node inos, except that the mount root is always 1."""

    def __init__(self, root_ino: int) -> None:
        self.root_ino = root_ino

    def node(self, fuse_ino: int) -> int:
        return self.root_ino if fuse_ino == pyfuse3.ROOT_INODE else fuse_ino

    def fuse(self, node_ino: int) -> int:
        return pyfuse3.ROOT_INODE if node_ino == self.root_ino else node_ino


class Attributes:
    def __init__(self, inodes: Inodes, callers: Callers, mount_gid: int) -> None:
        self.inodes = inodes
        self.callers = callers
        self.mount_gid = mount_gid
        self._open_dirs = callers.enforce
        self.cache_seconds = CACHE_SECONDS  # when nothing is handed out for long (no change feed)
        self.handed: Handed | None = None  # on a mount that follows the change feed: long times, taken back on notice

    def _owner(self, node: Node) -> tuple[int, int]:
        if node.uid != 0:
            return node.uid, node.gid
        if self._open_dirs and node.space is not None:
            uid = self.callers.uid_of_user(node.space.user_id)
            if uid is not None:
                return uid, node.gid
        if self.callers.mount_uid == 0:
            return 0, node.gid
        return self.callers.mount_uid, self.mount_gid

    def _mode(self, node: Node) -> int:
        mode = node.st_mode
        if self._open_dirs and (
            node.role in (NodeRole.SESSIONS, NodeRole.USERS)
            or (node.role is NodeRole.SCOPE_ROOT and node.space is not None and node.space.owner is None)
        ):
            mode = stat.S_IFDIR | _OPEN_TO_ALL
        return mode

    def of(
        self, node: Node, now_ns: int, *, size: int | None = None, mtime_ns: int | None = None, removed: bool = False
    ) -> pyfuse3.EntryAttributes:
        """The attributes of ``node``; an open file passes its own size and mtime, and ``removed``
        once no name leads to it (``fstat`` after ``unlink`` or ``rmdir``: no links, as on ext4)."""
        attr = pyfuse3.EntryAttributes()
        attr.st_ino = self.inodes.fuse(node.ino)
        attr.st_mode = self._mode(node)
        attr.st_nlink = 0 if removed else node.nlink
        attr.st_uid, attr.st_gid = self._owner(node)
        attr.st_rdev = node.rdev
        attr.st_size = node.size if size is None else size
        attr.st_blksize = BLOCK_SIZE
        attr.st_blocks = (attr.st_size + 511) // 512
        attr.st_atime_ns = node.atime_ns
        attr.st_mtime_ns = node.mtime_ns if mtime_ns is None else mtime_ns
        attr.st_ctime_ns = node.ctime_ns
        attr.st_birthtime_ns = node.crtime_ns
        timeout = self.cache_seconds if self.handed is None else self.handed.hand(node)
        if node.expires_at_ns is not None:
            timeout = min(timeout, max(0.0, (node.expires_at_ns - now_ns) / _NS))
        attr.attr_timeout = attr.entry_timeout = timeout
        if self._open_dirs and node.role is NodeRole.ENTRY and node.space is not None and node.space.owner is not None:
            # The kernel's dentry cache is shared by every uid: an entry it holds would let any uid
            # reach it without asking us. Inside a user's or a session's space each path walk must
            # come here, where fusefs.callers checks the calling uid.
            attr.entry_timeout = 0
        return attr
