"""The mount's request handlers without a kernel: :class:`fusefs.operations.Operations`
called directly, with the arguments the kernel would send.

A test drives the handlers in the order the kernel would (lookup, create,
write, flush, release, open, read, ...) and sees what the kernel would get:
a value, or ``pyfuse3.FUSEError`` with an errno. No mount, no kernel cache in
between: what a test asks is exactly what the handlers are asked.

What the kernel does on its own is not here: mode-bit checks
(``default_permissions``), path walking, the dentry and attribute caches,
``O_APPEND`` offsets. Those are tested through real mounts (``tests/fuse``).

Paths given to :class:`Kernel` are relative to the mount's root, which is
one sandbox (``--sandbox app``): ``users/alice/f.txt``.
"""

from __future__ import annotations

import errno
import os
import uuid
from collections.abc import AsyncIterator, Awaitable, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple, cast

import pyfuse3
import trio

from core.backends.blobs.base import BlobStore
from core.backends.blobs.memory import MemoryBlobStore
from core.backends.meta.base import MetaStore
from core.backends.meta.redis.store import RedisMetaStore
from core.backends.meta.sqlite import SQLiteMetaStore
from core.infra.clock import Clock, SystemClock
from core.infra.signing import RecordSigner
from core.settings import Limits
from core.tree.namespace import Namespace
from fusefs.callers import Callers
from fusefs.defaults import REQUEST_TIMEOUT
from fusefs.operations import Operations
from fusefs.xattrs import Presigner

SANDBOX = "app"
SIGNER = RecordSigner(b"k" * 32)


@dataclass(frozen=True)
class Caller:
    """What the kernel tells a handler of the calling process (``pyfuse3.RequestContext``)."""

    uid: int = 0
    gid: int = 0
    pid: int = 1
    umask: int = 0o022


ROOT = Caller()


def ctx(caller: Caller) -> pyfuse3.RequestContext:
    """A :class:`Caller` where the handlers' signatures say ``RequestContext`` (they read uid and gid)."""
    return cast(pyfuse3.RequestContext, caller)


@dataclass(frozen=True)
class Fields:
    """Which attributes a ``setattr`` changes (``pyfuse3.SetattrFields``, whose fields are read-only)."""

    update_size: bool = False
    update_mode: bool = False
    update_uid: bool = False
    update_gid: bool = False
    update_atime: bool = False
    update_mtime: bool = False
    update_ctime: bool = False


def attributes(**values: int) -> pyfuse3.EntryAttributes:
    """An ``EntryAttributes`` with ``values`` (``st_size=0``, ``st_mode=0o600``, ...) set."""
    attr = pyfuse3.EntryAttributes()
    for name, value in values.items():
        setattr(attr, name, value)
    return attr


async def errno_of(request: Awaitable[Any]) -> int | None:
    """The errno a request is answered with, or None if it succeeds."""
    try:
        await request
    except pyfuse3.FUSEError as exc:
        return exc.errno
    return None


def name_of(code: int | None) -> str:
    return "success" if code is None else errno.errorcode.get(code, str(code))


@dataclass
class Listing:
    """The buffer of one ``readdir`` request (``pyfuse3.ReaddirToken``): room for ``room`` entries."""

    room: int
    entries: list[tuple[bytes, pyfuse3.EntryAttributes, int]] = field(default_factory=list)


def _readdir_reply(token: Listing, name: bytes, attr: pyfuse3.EntryAttributes, next_id: int) -> bool:
    if len(token.entries) >= token.room:
        return False
    token.entries.append((name, attr, next_id))
    return True


@contextmanager
def _listing_replies() -> Iterator[None]:
    """``pyfuse3.readdir_reply`` fills a kernel buffer; here it fills a :class:`Listing`."""
    real = pyfuse3.readdir_reply
    pyfuse3.readdir_reply = _readdir_reply  # type: ignore[assignment]
    try:
        yield
    finally:
        pyfuse3.readdir_reply = real


class Kernel:
    """Sends requests to the handlers as the kernel would, a few steps at a time."""

    def __init__(self, ops: Operations) -> None:
        self.ops = ops
        self.invalidated: list[tuple[int, bool]] = []  # (inode, attributes only) the handlers asked to drop

    @property
    def ns(self) -> Namespace:
        return self.ops.ns

    # -- names

    async def lookup(self, path: str, caller: Caller = ROOT) -> pyfuse3.EntryAttributes:
        """The attributes of ``path`` (relative to the sandbox root), looked up name by name."""
        attr = await self.ops.getattr(pyfuse3.ROOT_INODE, ctx(caller))
        for name in filter(None, path.split("/")):
            attr = await self.ops.lookup(attr.st_ino, name.encode(), ctx(caller))
        return attr

    async def ino(self, path: str, caller: Caller = ROOT) -> int:
        return int((await self.lookup(path, caller)).st_ino)

    async def entry(self, path: str, caller: Caller = ROOT) -> tuple[int, bytes]:
        """The inode of ``path``'s directory and its last name, as the kernel sends them."""
        parent, _, name = path.rpartition("/")
        return await self.ino(parent, caller), name.encode()

    async def directory(self, path: str) -> int:
        """The inode of directory ``path``, made (with its parents) if missing."""
        ino = pyfuse3.ROOT_INODE
        for name in filter(None, path.split("/")):
            try:
                ino = (await self.ops.lookup(ino, name.encode(), ctx(ROOT))).st_ino
            except pyfuse3.FUSEError:
                ino = (await self.ops.mkdir(ino, name.encode(), 0o755, ctx(ROOT))).st_ino
        return ino

    # -- files

    async def create(
        self, path: str, flags: int = os.O_WRONLY, mode: int = 0o644, caller: Caller = ROOT
    ) -> tuple[int, pyfuse3.EntryAttributes]:
        """``open(path, O_CREAT | flags, mode)`` where the kernel found no entry: (fh, attributes)."""
        parent, name = await self.entry(path, caller)
        info, attr = await self.ops.create(parent, name, mode, flags | os.O_CREAT, ctx(caller))
        return info.fh, attr

    async def write_file(self, path: str, data: bytes, *, piece: int = 128 * 1024, caller: Caller = ROOT) -> int:
        """``cp``: create, write in kernel-sized pieces, close. Returns the inode."""
        if caller == ROOT:
            await self.directory(path.rsplit("/", 1)[0])
        fh, attr = await self.create(path, caller=caller)
        for offset in range(0, len(data), piece):
            await self.ops.write(fh, offset, data[offset : offset + piece])
        await self.close(fh)
        return int(attr.st_ino)

    async def open(self, path: str, flags: int = os.O_RDONLY, caller: Caller = ROOT) -> int:
        return (await self.ops.open(await self.ino(path, caller), flags, ctx(caller))).fh

    async def read(self, fh: int, offset: int, size: int) -> bytes:
        return bytes(await self.ops.read(fh, offset, size))

    async def read_all(self, fh: int, piece: int = 128 * 1024) -> bytes:
        """Every byte a descriptor reads, in kernel-sized pieces, until a short read."""
        data = bytearray()
        while True:
            got = await self.read(fh, len(data), piece)
            data += got
            if len(got) < piece:
                return bytes(data)

    async def read_file(self, path: str, caller: Caller = ROOT) -> bytes:
        """``cat``: open, read to the end, close."""
        fh = await self.open(path, caller=caller)
        try:
            return await self.read_all(fh)
        finally:
            await self.ops.release(fh)

    async def close(self, fh: int) -> None:
        """``close(2)`` of the last descriptor: the kernel's flush, then release."""
        await self.ops.flush(fh)
        await self.ops.release(fh)

    async def setattr(
        self, path: str, fields: Fields, fh: int | None = None, caller: Caller = ROOT, **values: int
    ) -> pyfuse3.EntryAttributes:
        """``truncate``, ``chmod``, ``chown``, ``utimensat``: the fields to change and their values."""
        return await self.ops.setattr(
            await self.ino(path), attributes(**values), cast(pyfuse3.SetattrFields, fields), fh, ctx(caller)
        )

    async def truncate(self, path: str, size: int) -> None:
        """``truncate(2)`` by path: a setattr of the size with no file handle."""
        await self.setattr(path, Fields(update_size=True), st_size=size)

    # -- the tree

    async def mkdir(self, path: str, mode: int = 0o755, caller: Caller = ROOT) -> pyfuse3.EntryAttributes:
        parent, name = await self.entry(path, caller)
        return await self.ops.mkdir(parent, name, mode, ctx(caller))

    async def rmdir(self, path: str, caller: Caller = ROOT) -> None:
        parent, name = await self.entry(path, caller)
        await self.ops.rmdir(parent, name, ctx(caller))

    async def unlink(self, path: str, caller: Caller = ROOT) -> None:
        parent, name = await self.entry(path, caller)
        await self.ops.unlink(parent, name, ctx(caller))

    async def rename(self, old: str, new: str, flags: int = 0, caller: Caller = ROOT) -> None:
        old_parent, old_name = await self.entry(old, caller)
        new_parent, new_name = await self.entry(new, caller)
        await self.ops.rename(old_parent, old_name, new_parent, new_name, flags, ctx(caller))

    async def link(self, existing: str, new: str, caller: Caller = ROOT) -> pyfuse3.EntryAttributes:
        parent, name = await self.entry(new, caller)
        return await self.ops.link(await self.ino(existing, caller), parent, name, ctx(caller))

    async def symlink(self, path: str, target: str, caller: Caller = ROOT) -> pyfuse3.EntryAttributes:
        parent, name = await self.entry(path, caller)
        return await self.ops.symlink(parent, name, target.encode(), ctx(caller))

    async def readdir(self, fh: int, start: int = 0, room: int = 1 << 16) -> list[tuple[bytes, pyfuse3.EntryAttributes, int]]:
        """One ``readdir`` request from offset ``start`` with room for ``room`` entries."""
        token = Listing(room)
        with _listing_replies():
            await self.ops.readdir(fh, start, cast(pyfuse3.ReaddirToken, token))
        return token.entries

    async def listdir(self, path: str, caller: Caller = ROOT) -> list[str]:
        """``ls -a``: opendir, readdir until empty, releasedir; the names in listing order."""
        fh = await self.ops.opendir(await self.ino(path, caller), ctx(caller))
        names: list[str] = []
        offset = 0
        try:
            while batch := await self.readdir(fh, offset):
                names += [name.decode() for name, _, _ in batch]
                offset = batch[-1][2]
        finally:
            await self.ops.releasedir(fh)
        return names

    # -- extended attributes

    async def getxattr(self, path: str, name: str, caller: Caller = ROOT) -> bytes:
        return await self.ops.getxattr(await self.ino(path, caller), name.encode(), ctx(caller))

    async def setxattr(self, path: str, name: str, value: bytes, caller: Caller = ROOT) -> None:
        await self.ops.setxattr(await self.ino(path, caller), name.encode(), value, ctx(caller))

    async def listxattr(self, path: str, caller: Caller = ROOT) -> list[str]:
        return [name.decode() for name in await self.ops.listxattr(await self.ino(path, caller), ctx(caller))]

    async def removexattr(self, path: str, name: str, caller: Caller = ROOT) -> None:
        await self.ops.removexattr(await self.ino(path, caller), name.encode(), ctx(caller))


@asynccontextmanager
async def kernel(
    tmp_path: Path, *, blobs: BlobStore | None = None, request_timeout: float | None = REQUEST_TIMEOUT,
    limits: Limits | None = None, clock: Clock | None = None, presigner: Presigner | None = None,
    allow_other: bool = False, user_uids: dict[str, int] | None = None, admin_uids: frozenset[int] = frozenset(),
    meta: MetaStore | None = None,
) -> AsyncIterator[Kernel]:
    """Handlers over a fresh in-memory store (or ``meta`` and ``blobs``, opened and closed here),
    their background work running, shut down after.

    ``allow_other`` checks each caller's uid as ``-o allow_other`` does, with the
    ``--map-user`` map ``user_uids`` and the ``--admin-uid`` set ``admin_uids``; the
    mount itself is root's.
    """
    blobs = blobs or MemoryBlobStore()
    meta = meta or SQLiteMetaStore(":memory:", SIGNER)
    await blobs.open()
    await meta.open()
    ns = Namespace(meta, blobs, clock or SystemClock(), limits or Limits())
    callers = Callers(
        ns, enforce=allow_other, mount_uid=0, admin_uids=admin_uids, user_uids=dict(user_uids or {}),
    )
    real_invalidate = pyfuse3.invalidate_inode
    invalidated: list[tuple[int, bool]] = []
    # There is no kernel to tell: the handlers' requests to drop cached pages are recorded instead.
    pyfuse3.invalidate_inode = lambda ino, attr_only=False: invalidated.append((ino, attr_only))  # type: ignore[assignment]
    try:
        async with _serving(ns, callers, tmp_path / "spool", presigner, request_timeout) as k:
            k.invalidated = invalidated
            yield k
    finally:
        pyfuse3.invalidate_inode = real_invalidate
        await meta.close()
        await blobs.close()


@asynccontextmanager
async def another_mount(k: Kernel, tmp_path: Path) -> AsyncIterator[Kernel]:
    """A second mount of ``k``'s store, as on a second host sharing one Redis and one bucket: the same
    metadata and blobs, its own open files and spool. (Its kernel's invalidations go to ``k``'s list.)"""
    ns = Namespace(k.ns.meta, k.ns.blobs, k.ns.clock, k.ns.limits)
    callers = Callers(ns, enforce=False, mount_uid=0, admin_uids=frozenset(), user_uids={})
    async with _serving(ns, callers, tmp_path / "spool-2", None, REQUEST_TIMEOUT) as second:
        yield second


@asynccontextmanager
async def _serving(
    ns: Namespace, callers: Callers, spool: Path, presigner: Presigner | None, request_timeout: float | None
) -> AsyncIterator[Kernel]:
    box = await ns.sandbox(SANDBOX)
    spool.mkdir()
    ops = Operations(
        ns, root_ino=box.ino, sandbox_id=SANDBOX, callers=callers, data_dir=spool.parent, spool_dir=spool,
        presigner=presigner, request_timeout=request_timeout,
    )
    async with trio.open_nursery() as nursery:
        ops.start(nursery)
        yield Kernel(ops)
        await ops.shutdown()
        nursery.cancel_scope.cancel()


class Hosts(NamedTuple):
    """Host A, a mount (its handlers), and host B (another mount's or a library process's
    :class:`Namespace`) on one metadata store and one blob store."""

    a: Kernel
    b: Namespace
    blobs: MemoryBlobStore


@asynccontextmanager
async def two_hosts(tmp_path: Path, redis_url: str | None = None) -> AsyncIterator[Hosts]:
    """A and B on one SQLite file, or (``redis_url``) on one Redis under a prefix of their own.

    Each host has a metadata store instance of its own, as two processes would: what B
    changes, A reads from the store, never from a shared object.
    """
    metas: list[MetaStore]
    if redis_url is None:
        path = tmp_path / "meta.sqlite3"
        metas = [SQLiteMetaStore(path, SIGNER), SQLiteMetaStore(path, SIGNER)]
    else:
        prefix = f"ops-{uuid.uuid4().hex[:12]}"
        metas = [RedisMetaStore(redis_url, SIGNER, prefix=prefix) for _ in range(2)]
    blobs = MemoryBlobStore()
    await metas[1].open()
    try:
        async with kernel(tmp_path, blobs=blobs, meta=metas[0]) as a:
            yield Hosts(a, Namespace(metas[1], blobs, SystemClock(), Limits()), blobs)
    finally:
        await metas[1].close()
