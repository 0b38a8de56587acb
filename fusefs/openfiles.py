"""Open files: the state every descriptor of one file in this mount shares.

All descriptors of a file share one :class:`OpenFile`, so they see each
other's writes as on a local disk. Until something is written, reads go to
the committed blob (:class:`ReadAhead`). The first write (or truncate)
starts a spool (:mod:`fusefs.spool`): the old bytes are copied in only when
the write needs them (never after ``O_TRUNC`` or for a new file). Closing or
syncing a descriptor that may write *publishes* the spool: the bytes become
a new blob and the node points at it in one metadata commit
(``Namespace.put_spool`` or ``put_blob``, then ``set_content`` + ``commit``).
Every other face of the store sees the old version until that commit, and
the new one after.

A file removed while open keeps its open state here: it can still be read
and written, and publishing it then quietly discards the bytes, as a local
disk drops the data of an unlinked file at its last close.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from enum import Enum
from pathlib import Path
from typing import Any

import anyio
import trio

from core.errors import (
    ArtifactCorruptedError,
    ArtifactNotFoundError,
    ArtifactStoreError,
    ArtifactTooLargeError,
    ProviderError,
    StaleRecordError,
)
from core.nodes import Node
from core.tree.namespace import Namespace
from fusefs.readahead import ReadAhead
from fusefs.spool import MEMORY_LIMIT, FileSpool, MemoryBudget, MemorySpool, Spool
from fusefs.writebehind import WriteBehind

log = logging.getLogger("artifactfs.mount")

_SEEN_MAX = 1 << 20
MEMORY_BUDGET = 64 << 20  # small files being written are spooled in memory, up to this much in all
_TRUNCATE_RACES = 10  # truncates by path that each find another host's version came first


class KernelCache(Enum):
    KEEP = "keep"  # the kernel's pages are of this very version
    DROP = "drop"  # nothing known: start afresh
    STALE = "stale"  # the kernel saw another version: drop pages and refetch attributes


class OpenFile:
    def __init__(self, node: Node, files: OpenFiles) -> None:
        self.ino = node.ino
        self.node = node  # as of the last open or publish: the committed version read from
        self.files = files
        self.opens = 0
        self.spool: Spool | None = None
        self.changed = False  # the spool holds writes or a truncate, not only the committed bytes
        self.open_cut = False  # all that is pending is the cut of an O_TRUNC open
        self.broken: OSError | None = None  # the spool failed a write: what is pending is not what was written
        self.mtime_ns = node.mtime_ns  # moves with writes before they are published
        self.removed = False
        self._reader: ReadAhead | None = None
        # fast_acquire: an uncontended lock is taken without a trip through the scheduler
        # (every create's close publishes under it: 12 -> 5 µs a take).
        self._lock = anyio.Lock(fast_acquire=True)  # spool start, truncate, publish: never interleaved
        self._opening = anyio.Lock(fast_acquire=True)  # the kernel's first reads come several at once: one reader

    @property
    def size(self) -> int:
        return self.spool.size if self.spool is not None else self.node.size

    @property
    def version(self) -> int:
        assert self.node.artifact is not None
        return self.node.artifact.version

    # -- reading

    async def read(self, offset: int, length: int) -> bytes | memoryview:
        if self.spool is not None:
            return self.spool.read(offset, length)
        try:
            reader = self._reader or await self._open_reader()
            return await reader.read(offset, length)
        except ArtifactNotFoundError:
            raise await self._blob_lost() from None

    async def _blob_lost(self) -> ArtifactStoreError:
        """What it means that the blob of the version this file was opened at is missing.

        If the file's record still names that blob, it is damage (EIO). Otherwise another face
        of the store replaced or removed this version, and its blob went with it: the handle is
        stale (ArtifactNotFoundError, which the handlers answer ESTALE), as over NFS.
        """
        if await self._names_our_blob():
            return ArtifactCorruptedError(f"the blob of inode {self.ino} is missing")
        return ArtifactNotFoundError(f"the version of inode {self.ino} open here was replaced or removed")

    async def _names_our_blob(self) -> bool:
        """Whether the file's record still names the blob this descriptor reads."""
        try:
            current = await self.files.ns.get(self.ino)
        except ArtifactNotFoundError:
            return False
        ours, now = self.node.artifact, current.artifact
        return ours is not None and now is not None and ours.blob_key == now.blob_key

    async def _open_reader(self) -> ReadAhead:
        # Opening a blob reader may wait (an S3 request): reads arriving meanwhile must share the one
        # it opens. Two readers would each see half the reads, and neither a whole, checked read.
        async with self._opening:
            if self._reader is not None:
                return self._reader
            art = self.node.artifact
            assert art is not None
            if art.blob_key is None:
                return _EMPTY
            blob = await self.files.ns.blob_reader(art.blob_key, size=self.node.size)  # missing: see read()
            self._reader = ReadAhead(blob, self.node.size, art.sha256, self.files.spawn)
            return self._reader

    async def _close_reader(self) -> None:
        reader, self._reader = self._reader, None
        if reader is not None:
            await reader.close()

    # -- writing

    async def write(self, offset: int, data: bytes) -> None:
        end = offset + len(data)
        if end > self.files.ns.limits.max_artifact_bytes:
            raise ArtifactTooLargeError(f"a file may hold {self.files.ns.limits.max_artifact_bytes} bytes")
        try:
            if self.spool is None or self._lock.locked():
                async with self._lock:
                    overwrites_all = offset == 0 and len(data) >= self.node.size
                    await self._spool(0 if overwrites_all else self.node.size, end)
                    self._write(offset, data)
            else:  # the common case: no await between the check and the write
                self._write(offset, data)
        except OSError as exc:  # the spool's disk full, or the mount out of descriptors
            self.broken, self.open_cut = exc, False  # the next close answers it, even right after O_TRUNC
            raise

    def _write(self, offset: int, data: bytes) -> None:
        spool = self.spool
        assert spool is not None
        if not spool.fits(offset + len(data)):
            assert isinstance(spool, MemorySpool)
            spool = self.spool = self._send_behind(spool.spill(self.files.spool_dir))
        spool.write(offset, data)
        spool.keep_up(self.files.spawn)
        self.changed, self.open_cut = True, False
        self.mtime_ns = self.files.ns.now()

    def _check_size(self, size: int) -> None:
        if size > self.files.ns.limits.max_artifact_bytes:
            raise ArtifactTooLargeError(f"a file may hold {self.files.ns.limits.max_artifact_bytes} bytes")

    async def truncate(self, size: int, *, at_open: bool = False) -> None:
        """ftruncate or O_TRUNC: the cut is published with the next close, as a write would be.

        Except a close right after an ``O_TRUNC`` open (``at_open``) with
        nothing written since: that is how shell ``>`` and ``dd of=`` hand
        the descriptor on (open, dup, close the first, then write), and an
        empty version published then is all other views see, and all a crash
        leaves, until the writer is done (issue #13). The last close
        publishes it.
        """
        self._check_size(size)
        async with self._lock:
            await self._truncate(size)
            self.open_cut = at_open and self.spool is not None

    async def truncate_now(self, size: int) -> None:
        """truncate(2) by path: the file's content cut to ``size``, published before the answer.

        With nothing pending here, the cut is made of the committed version
        alone, so it may replace that version only (``from_version`` of
        :meth:`Namespace.commit`): if another host commits a newer one
        meanwhile, the cut is made again of that one, as truncate(2) applies
        to the content as it is when it runs. Publishing the older version's
        bytes over the newer one instead undid that host's write (issue #16).
        Writes pending here (a descriptor of this mount not closed yet) are
        published cut, as their close would publish them: the last close wins.
        """
        self._check_size(size)
        async with self._lock:
            for _ in range(_TRUNCATE_RACES):
                if self.spool is not None or self.removed:
                    await self._truncate(size)
                    await self._publish()
                    return
                base = self.version
                try:
                    await self._truncate(size, from_version=base)
                    await self._publish(from_version=base)
                    return
                except StaleRecordError:
                    pass  # another version came first: cut that one
                except ArtifactNotFoundError:
                    # The blob read for the cut went with a version committed since; the file
                    # itself gone is ENOENT (get raises), a record still naming that blob is damage.
                    await self._drop_spool()
                    if await self._names_our_blob():
                        raise ArtifactCorruptedError(f"the blob of inode {self.ino} is missing") from None
                except BaseException:
                    await self._drop_spool()  # a cut of the committed bytes alone: nothing of anyone's is lost
                    raise
                await self._drop_spool()
                self.refresh(await self.files.ns.get(self.ino))
            raise ProviderError(f"inode {self.ino}: other versions kept coming, {_TRUNCATE_RACES} times")

    async def _truncate(self, size: int, *, from_version: int | None = None) -> None:
        """Cut the file's open state to ``size``; ``from_version``: only if that is the version stored."""
        if self.spool is None and size == self.node.size:
            await self._touch(from_version)
            return
        spool = await self._spool(min(size, self.node.size), size)
        if not spool.fits(size):
            assert isinstance(spool, MemorySpool)
            spool = self.spool = spool.spill(self.files.spool_dir)
        spool.truncate(size)
        self.changed = True
        self.mtime_ns = self.files.ns.now()

    async def _touch(self, from_version: int | None) -> None:
        """A truncate that leaves the size as it is still sets the mtime, as truncate(2) and O_TRUNC do.

        ``from_version``: the size was that version's; another version stored
        (whatever its size) raises :class:`StaleRecordError`, to cut that one.
        """
        ns = self.files.ns
        self.mtime_ns = ns.now()
        if self.removed:
            return
        try:
            node = await ns.get(self.ino)
        except ArtifactNotFoundError:
            return
        mtime_ns = self.mtime_ns

        def touch(node: Node) -> None:
            stored = node.artifact.version if node.artifact is not None else None
            if from_version is not None and stored != from_version:
                raise StaleRecordError(f"inode {node.ino}: version {stored} came after {from_version}", node)
            node.mtime_ns = mtime_ns

        self.set_times(await ns.update_node(node, touch))

    async def _spool(self, keep: int, reach: int) -> Spool:
        """The spool, started with the first ``keep`` committed bytes if there is none yet.

        ``reach`` is how far the first change goes: whether memory will do.
        """
        if self.spool is not None:
            return self.spool
        art = self.node.artifact
        assert art is not None
        spool: Spool
        if max(keep, reach) <= MEMORY_LIMIT and self.files.memory.take():
            spool = MemorySpool(self.files.memory)
        else:
            spool = self._send_behind(FileSpool.create(self.files.spool_dir))
        try:
            if keep > 0 and art.blob_key is not None:
                try:
                    blob = await self.files.ns.blob_reader(art.blob_key, size=self.node.size)
                    try:
                        if isinstance(spool, FileSpool):
                            await spool.copy_from(blob, keep)
                        else:
                            spool.write(0, await blob.read(0, keep))
                    finally:
                        await blob.close()
                except ArtifactNotFoundError:
                    raise await self._blob_lost() from None
            if keep > spool.size:
                spool.truncate(keep)  # a short blob or none: the rest reads as zeros
        except BaseException:
            with trio.CancelScope(shield=True):
                await spool.discard()
            raise
        self.spool, self.changed, self.open_cut = spool, False, False
        await self._close_reader()
        return spool

    def _send_behind(self, spool: FileSpool) -> FileSpool:
        """Let the spool send whole parts ahead of close, where the blob store takes them (S3)."""
        ns, art = self.files.ns, self.node.artifact
        assert art is not None
        upload = ns.file_upload(self.node)
        if upload is not None:
            spool.behind = WriteBehind(upload, str(spool.path))
        return spool

    async def hold_bytes(self) -> None:
        """The file is about to be removed: its descriptors keep its bytes, as on a local disk.

        Removing it drops its blob, so the committed bytes are copied into the spool first
        (the data of a file unlinked while open is rarely large, and never lost). If another
        host replaced the version they read, its blob went with it: there is nothing left to
        hold (they read ESTALE, as they would without this removal), and the removal goes on.
        """
        async with self._lock:
            try:
                await self._spool(self.node.size, self.node.size)
            except (ArtifactNotFoundError, ArtifactCorruptedError) as exc:
                # The open version's bytes are gone already (replaced through another face, or lost):
                # there is nothing to keep, and the removal goes ahead; reads through the descriptors
                # then answer ESTALE, as they would have before it.
                log.info("inode %d is removed while open, without its bytes: %s", self.ino, exc)

    async def let_bytes_go(self) -> None:
        """The removal :meth:`hold_bytes` prepared for failed: a spool with nothing but the
        committed bytes goes. Published at the last close, that copy of an older version
        would be a new version over whatever another host committed since."""
        async with self._lock:
            if not self.changed:
                await self._drop_spool()

    # -- publishing

    async def publish(self, *, durable: bool = False) -> None:
        """Make what was written the file's new version, in one commit.

        As on a local disk, close() publishes without waiting for stable
        storage (the mount syncs within a few seconds); fsync() passes
        ``durable=True``.
        """
        async with self._lock:
            if self.broken is not None:
                await self._give_up_pending()
            await self._publish(durable=durable)

    async def _give_up_pending(self) -> None:
        """A write failed for want of a resource: publishing the rest would be a version nobody
        wrote (after O_TRUNC, an empty file). The pending change is dropped, the file keeps its
        previous version, and the close answers the error (issue #16)."""
        broken, self.broken = self.broken, None
        await self._drop_spool()
        self.files.forget_cache(self.ino)  # the kernel's pages hold the writes that are dropped
        assert broken is not None
        raise broken

    async def _publish(self, *, durable: bool = False, from_version: int | None = None) -> None:
        """:meth:`publish`, under the lock; ``from_version``: the spool is a cut of that version
        alone, to be published over that version only (:meth:`truncate_now`)."""
        spool = self.spool
        if spool is None:
            return
        if self.removed:  # nowhere to publish to; descriptors still open keep the bytes until the last close
            return
        try:
            key, size, sha256 = await spool.publish(self.files.ns, self.node, durable=durable)
        except BaseException:
            if spool.taken():  # the blob store took the file, then failed
                await self._drop_spool()
                self.files.forget_cache(self.ino)
            raise
        # Until the commit is done, reads keep going to the spool's (unchanged) bytes.
        try:
            committed = await self._commit(key, size, sha256, from_version)
        except BaseException:
            self.files.forget_cache(self.ino)  # the kernel holds pages of a version that never was
            raise
        finally:
            self.spool = None
            with trio.CancelScope(shield=True):
                await spool.close()
        if committed is not None:
            self.node = committed
            self.files.saw(self.ino, self.version)

    async def _commit(self, key: str | None, size: int, sha256: str, from_version: int | None) -> Node | None:
        """Point the node at the new blob; None if the file was removed meanwhile."""
        ns = self.files.ns
        try:
            node = await ns.get(self.ino)  # fresh: a rename or chmod made meanwhile must survive
        except ArtifactNotFoundError:
            node = self.node  # commit() finds it gone and deletes the new blob
        old_blob = node.artifact.blob_key if node.artifact is not None else None
        ns.set_content(node, key, size, sha256)
        node.mtime_ns = self.mtime_ns  # the time of the last write, or what utime set after it
        try:
            return await ns.commit(node, old_blob=old_blob, from_version=from_version)
        except ArtifactNotFoundError:
            self.removed = True
            log.debug("inode %d was removed while open; its last writes are dropped", self.ino)
            return None

    async def _drop_spool(self) -> None:
        spool, self.spool = self.spool, None
        if spool is not None:
            with trio.CancelScope(shield=True):
                await spool.discard()

    def refresh(self, node: Node) -> None:
        """A newer version was committed elsewhere and nothing is pending here: read that one."""
        if self.spool is None:
            self.node, self.mtime_ns = node, node.mtime_ns
            reader, self._reader = self._reader, None
            if reader is not None:
                self.files.spawn(reader.close)

    def set_times(self, node: Node) -> None:
        """Attributes changed through the mount (chmod, utime) while open."""
        self.mtime_ns = node.mtime_ns
        self.node = self.node.model_copy(
            update={"mode": node.mode, "uid": node.uid, "gid": node.gid, "atime_ns": node.atime_ns,
                    "mtime_ns": node.mtime_ns, "ctime_ns": node.ctime_ns}
        )

    async def close(self) -> None:
        """The last descriptor is gone: anything not published is discarded."""
        if self.spool is not None:
            await self._drop_spool()
        if self._reader is not None:
            with trio.CancelScope(shield=True):
                await self._close_reader()


class _EmptyReader:
    async def read(self, offset: int, length: int, *, ahead: bool = False) -> bytes:
        return b""

    async def close(self) -> None:
        pass


_EMPTY: Any = _EmptyReader()


class Handle:
    __slots__ = ("file", "writable")

    def __init__(self, file: OpenFile, writable: bool) -> None:
        self.file, self.writable = file, writable


class OpenFiles:
    """Open files by inode, handles by number, and what the kernel's page cache holds."""

    def __init__(
        self, ns: Namespace, spool_dir: Path, spawn: Callable[..., Any], invalidate: Callable[[int], None]
    ) -> None:
        self.ns, self.spool_dir, self.spawn, self.invalidate = ns, spool_dir, spawn, invalidate
        self.memory = MemoryBudget(MEMORY_BUDGET)
        self._files: dict[int, OpenFile] = {}
        self._handles: dict[int, Handle] = {}
        self._next_fh = 1
        # ino -> the file version the kernel last got attributes or pages of. It decides at open
        # whether the kernel keeps its page cache (same version) or must drop it and refetch the
        # attributes (a version committed through another face since).
        self._seen: dict[int, int] = {}

    def get(self, ino: int) -> OpenFile | None:
        return self._files.get(ino)

    def spooled_bytes(self) -> int:
        """What the spools of the files open for writing hold (the metrics' scrape asks, from its thread)."""
        return sum(file.spool.size for file in list(self._files.values()) if file.spool is not None)

    def handle(self, fh: int) -> Handle:
        return self._handles[fh]

    def find(self, fh: int) -> Handle | None:
        return self._handles.get(fh)

    def forget_cache(self, ino: int) -> None:
        """The kernel's pages of ``ino`` are wrong: drop them now, and never keep them at the next open."""
        self._seen.pop(ino, None)
        self.invalidate(ino)

    def saw(self, ino: int, version: int) -> None:
        """The kernel was shown this version of ``ino`` (attributes, or pages it wrote)."""
        if len(self._seen) >= _SEEN_MAX and ino not in self._seen:
            self._seen.clear()  # forgetting only costs a dropped page cache at the next open
        self._seen[ino] = version

    def _attach(self, node: Node) -> OpenFile:
        file = self._files.get(node.ino)
        if file is None:
            file = self._files[node.ino] = OpenFile(node, self)
        elif node.artifact is not None and file.node.artifact is not None and node.artifact.version != file.version:
            file.refresh(node)
        file.opens += 1
        return file

    def open(self, node: Node, writable: bool) -> tuple[int, OpenFile, KernelCache]:
        """A new handle on ``node``, and what the kernel may keep of what it cached."""
        file = self._attach(node)
        seen = self._seen.get(node.ino)
        if file.spool is not None or seen == file.version:
            cache = KernelCache.KEEP
        else:
            cache = KernelCache.DROP if seen is None else KernelCache.STALE
        self.saw(node.ino, file.version)
        fh = self._next_fh
        self._next_fh += 1
        self._handles[fh] = Handle(file, writable)
        return fh, file, cache

    async def release(self, fh: int) -> None:
        handle = self._handles.pop(fh)
        await self._let_go(handle.file, publish=handle.writable)

    async def _let_go(self, file: OpenFile, *, publish: bool) -> None:
        file.opens -= 1
        try:
            if (publish or file.opens == 0) and file.spool is not None:
                await file.publish()
        finally:
            # Another handle may have come and gone while this one published (a slow S3): only the
            # first to find the file unused, and still ours, lets it go.
            if file.opens == 0 and self._files.get(file.ino) is file:
                del self._files[file.ino]
                await file.close()

    async def truncate(self, node: Node, size: int, *, publish: bool) -> OpenFile:
        """Truncate through the open state (made for the purpose if the file is closed).

        ``publish``: a truncate by path, published before the answer (and only
        over the version it cut, :meth:`OpenFile.truncate_now`); else an
        ftruncate, published with the descriptor's close.
        """
        file = self._attach(node)
        try:
            if publish:
                await file.truncate_now(size)
            else:
                await file.truncate(size)
        finally:
            await self._let_go(file, publish=False)
        return file

    async def removing(self, ino: int) -> None:
        """``ino`` is about to be unlinked or replaced: an open file keeps what it holds."""
        file = self._files.get(ino)
        if file is not None and not file.removed:
            await file.hold_bytes()

    async def kept(self, ino: int) -> None:
        """The removal :meth:`removing` announced did not happen: the file is as it was."""
        file = self._files.get(ino)
        if file is not None and not file.removed:
            await file.let_bytes_go()

    def relinked(self, node: Node) -> None:
        """``node`` gained or lost a name: an open file's fstat shows its names as they are now.

        Only the names: its next commit is still conditional on the record it read, and takes
        the stored one's names when it rebases.
        """
        file = self._files.get(node.ino)
        if file is not None and not file.removed:
            file.node.links = list(node.links)

    def removed(self, ino: int) -> None:
        file = self._files.get(ino)
        if file is not None:
            file.removed = True

    async def close_all(self) -> int:
        """At unmount: what was never published is discarded. Returns how many files that was."""
        dropped = 0
        for file in list(self._files.values()):
            dropped += file.spool is not None
            await file.close()
        self._files.clear()
        self._handles.clear()
        return dropped
