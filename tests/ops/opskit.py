"""The mount's request handlers without a kernel: :class:`fusefs.operations.Operations`
called directly, with the arguments the kernel would send.

A test drives the handlers in the order the kernel would (lookup, create,
write, flush, release, open, read, ...) and sees what the kernel would get:
a value, or ``pyfuse3.FUSEError`` with an errno. No mount, no kernel cache in
between: what a test asks is exactly what the handlers are asked.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import NamedTuple

import pyfuse3
import trio

from core.backends.blobs.base import BlobStore
from core.backends.blobs.memory import MemoryBlobStore
from core.backends.meta.base import MetaStore
from core.backends.meta.redis.store import RedisMetaStore
from core.backends.meta.sqlite import SQLiteMetaStore
from core.infra.clock import SystemClock
from core.infra.signing import RecordSigner
from core.tree.namespace import Limits, Namespace
from fusefs.callers import Callers
from fusefs.operations import Operations
from fusefs.options import REQUEST_TIMEOUT

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


class Kernel:
    """Sends requests to the handlers as the kernel would, a few steps at a time."""

    def __init__(self, ops: Operations) -> None:
        self.ops = ops

    async def lookup(self, path: str) -> pyfuse3.EntryAttributes:
        """The attributes of ``path`` (relative to the sandbox root), looked up name by name."""
        attr = await self.ops.getattr(pyfuse3.ROOT_INODE, ROOT)
        for name in filter(None, path.split("/")):
            attr = await self.ops.lookup(attr.st_ino, name.encode(), ROOT)
        return attr

    async def directory(self, path: str) -> int:
        """The inode of directory ``path``, made (with its parents) if missing."""
        ino = pyfuse3.ROOT_INODE
        for name in filter(None, path.split("/")):
            try:
                ino = (await self.ops.lookup(ino, name.encode(), ROOT)).st_ino
            except pyfuse3.FUSEError:
                ino = (await self.ops.mkdir(ino, name.encode(), 0o755, ROOT)).st_ino
        return ino

    async def write_file(self, path: str, data: bytes, *, piece: int = 128 * 1024) -> int:
        """``cp``: create, write in kernel-sized pieces, close. Returns the inode."""
        parent, name = path.rsplit("/", 1)
        info, attr = await self.ops.create(await self.directory(parent), name.encode(), 0o644, os.O_WRONLY, ROOT)
        for offset in range(0, len(data), piece):
            await self.ops.write(info.fh, offset, data[offset : offset + piece])
        await self.ops.flush(info.fh)
        await self.ops.release(info.fh)
        return attr.st_ino

    async def open(self, path: str, flags: int = os.O_RDONLY) -> int:
        return (await self.ops.open((await self.lookup(path)).st_ino, flags, ROOT)).fh

    async def read(self, fh: int, offset: int, size: int) -> bytes:
        return bytes(await self.ops.read(fh, offset, size))

    async def truncate(self, path: str, size: int) -> None:
        """``truncate(2)`` by path: a setattr of the size with no file handle."""
        attr = pyfuse3.EntryAttributes()
        attr.st_size = size
        fields = SimpleNamespace(update_size=True, update_mode=False, update_uid=False, update_gid=False,
                                 update_atime=False, update_mtime=False)
        await self.ops.setattr((await self.lookup(path)).st_ino, attr, fields, None, ROOT)  # type: ignore[arg-type]


@asynccontextmanager
async def kernel(
    tmp_path: Path, *, blobs: BlobStore | None = None, request_timeout: float | None = REQUEST_TIMEOUT,
    meta: MetaStore | None = None,
) -> AsyncIterator[Kernel]:
    """Handlers over a fresh in-memory store (or ``meta`` and ``blobs``, opened and closed here),
    their background work running, shut down after."""
    blobs = blobs or MemoryBlobStore()
    meta = meta or SQLiteMetaStore(":memory:", SIGNER)
    await blobs.open()
    await meta.open()
    ns = Namespace(meta, blobs, SystemClock(), Limits())
    box = await ns.sandbox(SANDBOX)
    callers = Callers(ns, enforce=False, mount_uid=0, admin_uids=frozenset(), user_uids={})
    spool = tmp_path / "spool"
    spool.mkdir()
    ops = Operations(
        ns, root_ino=box.ino, sandbox_id=SANDBOX, callers=callers, data_dir=tmp_path, spool_dir=spool,
        request_timeout=request_timeout,
    )
    try:
        async with trio.open_nursery() as nursery:
            ops.start(nursery)
            yield Kernel(ops)
            await ops.shutdown()
            nursery.cancel_scope.cancel()
    finally:
        await meta.close()
        await blobs.close()


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
