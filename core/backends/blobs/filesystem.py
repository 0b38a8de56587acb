"""Blobs as files under a data directory: the embedded default.

Writes go to ``staging/`` and are published by ``rename`` after ``fsync`` of
the file, then ``fsync`` of its directory, so a blob is either whole under
its key or absent; a directory made for a key is itself fsynced into its
parent. Blocking calls run in worker threads; small ones are batched so a
1 KiB store costs one thread hop, not five. A small put that waits for no
fsync (the mount's close, ``durable=False``) into a directory known to
exist runs on the event loop: no thread hop at all.

Concurrent publishes into one directory share its ``fsync`` (group commit,
:class:`_DirSync`): one journal commit covers every rename made before it
started, which is what lets 64 concurrent stores beat 64 lone ones.
"""

from __future__ import annotations

import concurrent.futures
import ctypes
import errno
import os
import threading
import uuid
from collections.abc import AsyncIterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import anyio
import anyio.to_thread

from core.errors import ArtifactNotFoundError, ProviderError, StoreFullError
from core.infra.flushes import SharedFlush
from core.infra.private import new_private_dir, private_dir
from core.settings import Settings

_WRITE_BUFFER = 1 << 20
_IO_THREADS = 64  # a batch's blobs are fsynced in parallel so the filesystem merges their journal commits
_INLINE_READ = 128 * 1024  # smaller reads run on the event loop: cheaper than a thread hop
_INLINE_WRITE = 64 * 1024  # smaller non-durable puts into a known directory too (no fsync to wait for)
_WRITEBACK_STEP = 8 << 20  # a streamed blob has its writeback started every this many bytes
_SYNC_FILE_RANGE_WRITE = 2
_KNOWN_DIRS_MAX = 100_000  # directories known to exist durably; forgotten wholesale past this


def _fsync_file(path: str | Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_published(path: str) -> None:
    """fsync a blob published without waiting; one replaced or deleted since has nothing left to sync."""
    try:
        _fsync_file(path)
    except FileNotFoundError:
        pass


def _fsync_dir(path: str | Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class _DirSync:
    """Group commit of directory fsyncs, for worker threads.

    ``sync(d)`` returns once an fsync of ``d`` that *started after the call*
    has finished, so it covers every rename the caller made before calling.
    While one fsync of ``d`` runs, later callers wait and share the next one.
    Plain threading, so it serves trio and asyncio callers alike.
    """

    class _State:
        __slots__ = ("started", "done", "running", "users")

        def __init__(self) -> None:
            self.started = self.done = self.users = 0
            self.running = False

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._dirs: dict[str, _DirSync._State] = {}

    def sync(self, path: str) -> None:
        with self._cond:
            state = self._dirs.get(path)
            if state is None:
                state = self._dirs[path] = self._State()
            state.users += 1
            need = state.started + 1  # the first fsync to start from now on
            try:
                while state.done < need:
                    if state.running:
                        self._cond.wait()
                        continue
                    state.running = True
                    state.started += 1
                    generation = state.started
                    self._cond.release()
                    try:
                        _fsync_dir(path)
                    finally:
                        self._cond.acquire()
                        state.running = False
                        self._cond.notify_all()
                    state.done = generation
            finally:
                state.users -= 1
                if state.users == 0:
                    del self._dirs[path]


class FilesystemBlobStore:
    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.blob_dir = self.root / "blobs"
        self.staging_dir = self.root / "staging"
        self._blob_root = os.path.abspath(self.blob_dir)
        self._staging_root = os.path.abspath(self.staging_dir)
        self._dir_sync = _DirSync()
        self._known_dirs: set[str] = {self._blob_root}
        self._queue: list[_Job] = []
        self._batch_running: anyio.Event | None = None
        self._pool: ThreadPoolExecutor | None = None  # batched puts, write-behind, read-ahead
        self._unsynced: list[str] = []  # blobs published with durable=False, until sync()
        self._unsynced_lock = threading.Lock()  # worker threads add to it while the loop takes it
        self._flushes = SharedFlush(self._flush_unsynced)

    def _path(self, key: str) -> str:
        # Keys are built from validated ids, but a key is never trusted to stay inside:
        # checked by its components, without a syscall (resolve() cost a dozen lstat calls).
        if not key or "\0" in key or any(part in ("", ".", "..") for part in key.split("/")):
            raise ProviderError(f"blob key {key!r} leaves the blob directory")
        return f"{self._blob_root}/{key}"

    def path_of(self, key: str) -> Path:
        return Path(self._path(key))

    def staging_path(self) -> Path:
        return Path(f"{self._staging_root}/{uuid.uuid4().hex}.part")

    async def open(self) -> None:
        for directory in (self.root, self.blob_dir, self.staging_dir):  # the data dir and ours in it: owner-only
            private_dir(directory)
        for made in (self.blob_dir, self.staging_dir):
            _fsync_dir(made.parent)
        self._known_dirs = {self._blob_root}

    async def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False)
            self._pool = None

    def io_pool(self) -> ThreadPoolExecutor:
        if self._pool is None:
            self._pool = ThreadPoolExecutor(_IO_THREADS, thread_name_prefix="blob-io")
        return self._pool

    def _ensure_dir(self, path: str) -> None:
        """Make ``path`` exist durably: created if missing, its entry fsynced into its parent."""
        parent = os.path.dirname(path)
        if path in self._known_dirs or parent == path:
            return
        self._ensure_dir(parent)
        try:
            new_private_dir(path)
        except FileExistsError:
            pass
        self._dir_sync.sync(parent)  # even if it existed: its maker may not have synced it yet
        if len(self._known_dirs) >= _KNOWN_DIRS_MAX:
            self._known_dirs = {self._blob_root}
        self._known_dirs.add(path)

    def _publish(self, tmp: Path | str, key: str, durable: bool = True) -> None:
        final = self._path(key)
        directory = os.path.dirname(final)
        try:
            self._ensure_dir(directory)
            os.rename(tmp, final)
        except FileNotFoundError:
            if not os.path.exists(tmp):
                raise
            self._known_dirs = {self._blob_root}  # a directory made earlier was removed since: make it again
            self._ensure_dir(directory)
            os.rename(tmp, final)
        if durable:
            self._dir_sync.sync(directory)
        else:
            self._not_synced(final)

    def _not_synced(self, path: str) -> None:
        """``path`` was published without an fsync: the next :meth:`sync` makes it durable."""
        with self._unsynced_lock:
            self._unsynced.append(path)

    async def writer(self, key: str) -> "_FileWriter":
        return _FileWriter(self, key)

    async def put(self, key: str, data: bytes, *, durable: bool = True) -> None:
        """Store ``data`` under ``key``; concurrent puts (and deletes) share one worker-thread job.

        A thread hop costs the event loop 60-130 us under trio, more than a
        1 KiB store's own CPU, so jobs that arrive while a batch is running
        wait and go together in the next one (group commit). In the batch each
        blob is still written, fsynced and renamed on its own, in parallel, so
        their fsyncs (and directory fsyncs, see _DirSync) share journal commits.
        """
        final = self._path(key)  # refuse a bad key before queueing it
        if not durable and len(data) <= _INLINE_WRITE and os.path.dirname(final) in self._known_dirs:
            try:
                if self._put_inline(final, data):
                    return
            except OSError as exc:
                raise _mapped(exc) from exc
        await self._submit(_Job(key, data, durable))

    def _put_inline(self, final: str, data: bytes) -> bool:
        """A small put that waits for no disk (the mount's close): on the event loop.

        Writing 4 KiB to the page cache and a rename cost less than the two
        thread hops of a batch, and nothing here can block for long: no fsync
        (:meth:`sync` makes it durable later, as for any ``durable=False``
        put) and no directory to make. False if the directory went away
        meanwhile: the worker path makes it again, with its fsyncs.
        """
        tmp = f"{self._staging_root}/{uuid.uuid4().hex}.part"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view) :]
            finally:
                os.close(fd)
            os.rename(tmp, final)
        except BaseException as exc:
            try:
                os.unlink(tmp)
            except OSError:
                pass
            if isinstance(exc, FileNotFoundError) and not os.path.isdir(os.path.dirname(final)):
                self._known_dirs = {self._blob_root}  # removed since it was made: forget what we knew
                return False
            raise
        self._not_synced(final)
        return True

    async def _submit(self, job: "_Job") -> None:
        self._queue.append(job)
        while not job.done:
            if self._batch_running is not None:
                await self._batch_running.wait()
                continue
            batch, self._queue = self._queue, []
            self._batch_running = anyio.Event()
            try:
                await anyio.to_thread.run_sync(self._run_batch, batch)
            finally:
                running, self._batch_running = self._batch_running, None
                running.set()
        if job.error is not None:
            raise _mapped(job.error)

    def _run_batch(self, batch: list["_Job"]) -> None:
        if len(batch) == 1:
            self._run_job(batch[0])
            return
        for _ in self.io_pool().map(self._run_job, batch):
            pass

    def _run_job(self, job: "_Job") -> None:
        try:
            if job.data is None:
                self._delete_one(job.key)
            else:
                self._put_one(job.key, job.data, job.durable)
        except OSError as exc:
            job.error = exc
        finally:
            job.done = True

    def _delete_one(self, key: str) -> None:
        try:
            os.unlink(self._path(key))
        except FileNotFoundError:
            pass

    def _put_one(self, key: str, data: bytes, durable: bool) -> None:
        tmp = self.staging_path()
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view) :]
                if durable:
                    os.fsync(fd)
            finally:
                os.close(fd)
            self._publish(tmp, key, durable)
        except OSError:
            try:
                os.unlink(tmp)
            except OSError:
                pass
            raise

    async def put_file(self, key: str, path: Path, *, durable: bool = True) -> None:
        def work() -> None:
            if durable:
                _fsync_file(path)
            self._publish(path, key, durable)

        await _run(work)

    async def sync(self) -> None:
        """Make every blob published with ``durable=False`` before the call durable.

        A flush already running may have taken the list before this caller's
        blobs went in (the mount's fsync() arriving during the periodic
        sync): :class:`SharedFlush` waits for it, then shares the next.
        """
        await self._flushes()

    async def _flush_unsynced(self) -> None:
        """A flush that fails puts its paths back, so a later sync (the periodic loop's retry)
        fsyncs them, and its error is the caller's."""
        with self._unsynced_lock:
            pending, self._unsynced = self._unsynced, []
        if not pending:
            return  # everything published so far is durable: no thread hop
        try:
            await _run(self._fsync_all, pending)
        except BaseException:
            with self._unsynced_lock:
                self._unsynced[:0] = pending
            raise

    def _fsync_all(self, pending: list[str]) -> None:
        """The blobs, then their directories, fsynced.

        In parallel, as a batch of puts is: the filesystem merges the fsyncs' journal commits.
        One after the other, the mount's 5-second sync of 1,000 small closes took 2.7-5.4 s
        (a journal commit each, the disk busy under every create meanwhile); in parallel 0.1-0.2 s.
        """
        if len(pending) == 1:
            _fsync_published(pending[0])
        else:
            for _ in self.io_pool().map(_fsync_published, pending):
                pass
        for directory in {os.path.dirname(p) for p in pending}:
            self._dir_sync.sync(directory)

    def file_upload(self, key: str) -> None:
        """Local bytes gain nothing from going out early: :meth:`put_file` takes the whole file."""
        return None

    async def reader(self, key: str, size: int | None = None) -> "_FileReader":
        try:
            fd = os.open(self._path(key), os.O_RDONLY)
        except FileNotFoundError:
            raise ArtifactNotFoundError(f"blob {key} is missing") from None
        except OSError as exc:
            raise ProviderError(f"blob {key}: {exc}") from exc
        return _FileReader(fd, self)

    async def delete(self, key: str) -> None:
        """Unlink in a worker thread, batched like puts: an unlink can block for milliseconds
        (measured 1.7 ms on ext4 mounted with ``discard``), far too long for the event loop."""
        self._path(key)
        await self._submit(_Job(key, None))

    async def keys(self, prefix: str = "") -> AsyncIterator[str]:
        base = self.blob_dir
        for dirpath, _dirs, files in os.walk(base):
            for name in files:
                key = os.path.relpath(os.path.join(dirpath, name), base)
                if key.startswith(prefix):
                    yield key

    async def check(self) -> None:
        if not os.access(self.blob_dir, os.W_OK):
            raise ProviderError(f"{self.blob_dir} is not writable")


def from_settings(settings: Settings) -> FilesystemBlobStore:
    """``ARTIFACT_PROVIDER=filesystem``: ``blobs/`` and ``staging/`` in the data dir."""
    return FilesystemBlobStore(settings.fs_root)


def _mapped(exc: OSError) -> Exception:
    if isinstance(exc, FileNotFoundError):
        return ArtifactNotFoundError(str(exc))
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return StoreFullError(f"filesystem blob store: {exc}")
    return ProviderError(f"filesystem blob store: {exc}")


async def _run(fn, *args):
    try:
        return await anyio.to_thread.run_sync(fn, *args)
    except OSError as exc:
        raise _mapped(exc) from exc


class _Job:
    """One queued put (``data``) or delete (``data`` is None)."""

    __slots__ = ("key", "data", "durable", "error", "done")

    def __init__(self, key: str, data: bytes | None, durable: bool = True) -> None:
        self.key, self.data, self.durable = key, data, durable
        self.error: OSError | None = None
        self.done = False


def _writeback_starter():
    """``sync_file_range(SYNC_FILE_RANGE_WRITE)`` where libc has it, else nothing."""
    try:
        func = ctypes.CDLL(None, use_errno=True).sync_file_range
    except (OSError, AttributeError):
        return lambda fd, offset, length: None
    func.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
    func.restype = ctypes.c_int
    return lambda fd, offset, length: func(fd, offset, length, _SYNC_FILE_RANGE_WRITE)


# Starts writing a range of a file to disk without waiting (a hint: errors surface at fsync).
# A streamed blob's final fsync then waits for its last few MiB, not for all of it.
_start_writeback = _writeback_starter()


async def _settled(pending: Future) -> object:
    """The result of a pool job, waiting in a worker thread only if it is not done yet."""
    if not pending.done():
        await anyio.to_thread.run_sync(concurrent.futures.wait, [pending])
    try:
        return pending.result()
    except OSError as exc:
        raise _mapped(exc) from exc


class _FileWriter:
    """Streams into a staging file; the buffer before last is written while the next one fills.

    Hashing a 1 MiB chunk on the event loop takes longer than writing it to
    the page cache, so with one write in flight (write-behind) the writes
    cost the loop nothing, not even a thread hop, in the common case.
    """

    def __init__(self, store: FilesystemBlobStore, key: str) -> None:
        self._store, self._key = store, key
        self._tmp = store.staging_path()
        self._fd: int | None = None
        self._buf = bytearray()
        self._inflight: Future | None = None
        self._written = self._kicked = 0  # bytes written; bytes whose writeback was started

    def _flush(self, buf: bytes | bytearray) -> None:
        if self._fd is None:
            self._fd = os.open(self._tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        view = memoryview(buf)
        while view:
            view = view[os.write(self._fd, view) :]
        self._written += len(buf)
        if self._written - self._kicked >= _WRITEBACK_STEP:
            _start_writeback(self._fd, self._kicked, self._written - self._kicked)
            self._kicked = self._written

    async def _settle(self) -> None:
        pending, self._inflight = self._inflight, None
        if pending is not None:
            await _settled(pending)

    async def write(self, data: bytes) -> None:
        self._buf += data
        if len(self._buf) >= _WRITE_BUFFER:
            buf, self._buf = self._buf, bytearray()
            await self._settle()
            self._inflight = self._store.io_pool().submit(self._flush, buf)

    async def commit(self) -> None:
        await self._settle()
        buf, self._buf = self._buf, bytearray()

        def work() -> None:
            self._flush(buf)
            assert self._fd is not None
            os.fsync(self._fd)
            os.close(self._fd)
            self._fd = None
            self._store._publish(self._tmp, self._key)

        await _run(work)

    async def abort(self) -> None:
        self._buf = bytearray()
        pending, self._inflight = self._inflight, None
        if pending is not None:
            concurrent.futures.wait([pending])  # at most one buffer: the staging file goes now, not later
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        try:
            os.unlink(self._tmp)
        except FileNotFoundError:
            pass


class _FileReader:
    """Ranged reads; a sequential reader gets its next chunk read ahead in a pool thread.

    A stream download hashes each chunk on the event loop; meanwhile the
    next one is read, so the loop rarely waits for the disk or pays a hop.
    A reader that asks faster than the read-ahead delivers (no hashing) gets
    plain reads instead: waiting on a pool thread costs a hop and a thread more.
    """

    def __init__(self, fd: int, store: FilesystemBlobStore) -> None:
        self._fd: int | None = fd
        self._store = store
        self._next = 0  # where a sequential reader reads next
        self._ahead: tuple[int, int, Future] | None = None  # (offset, length, job)
        self._read_ahead = True  # until the reader outpaces it

    async def read(self, offset: int, length: int, *, ahead: bool = False) -> bytes:
        if self._fd is None:
            raise ProviderError("blob reader is closed")
        if length <= _INLINE_READ:
            return os.pread(self._fd, length, offset)
        ahead = self._ahead
        if ahead is not None and ahead[:2] == (offset, length):
            self._ahead = None
            if not ahead[2].done():
                self._read_ahead = False
            data = await _settled(ahead[2])  # blobs never change, so read-ahead bytes are never stale
        else:
            if ahead is not None and (ahead[2].cancel() or ahead[2].done()):
                self._ahead = None  # a wrong guess; one still reading stays until it ends (close() waits for it)
            data = await _run(os.pread, self._fd, length, offset)
        sequential = offset == self._next
        self._next = offset + len(data)
        if sequential and len(data) == length and self._ahead is None and self._read_ahead:
            self._ahead = (self._next, length, self._store.io_pool().submit(os.pread, self._fd, length, self._next))
        return data  # type: ignore[return-value]

    async def close(self) -> None:
        fd, self._fd = self._fd, None
        if fd is None:
            return
        ahead, self._ahead = self._ahead, None
        if ahead is not None and not ahead[2].cancel() and not ahead[2].done():
            ahead[2].add_done_callback(lambda _job: os.close(fd))  # still reading: close after it
        else:
            os.close(fd)
