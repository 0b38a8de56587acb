"""Blobs as files under a data directory: the embedded default.

Writes go to ``staging/`` and are published by ``rename`` after ``fsync`` of
the file, then ``fsync`` of its directory, so a blob is either whole under
its key or absent; a directory made for a key is itself fsynced into its
parent. Blocking calls run in worker threads; small ones are batched so a
1 KiB store costs one thread hop, not five.

Concurrent publishes into one directory share its ``fsync`` (group commit,
:class:`_DirSync`): one journal commit covers every rename made before it
started, which is what lets 64 concurrent stores beat 64 lone ones.
"""

from __future__ import annotations

import os
import threading
import uuid
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import anyio.to_thread

from ..errors import ArtifactNotFoundError, ProviderError

_WRITE_BUFFER = 1 << 20
_PUT_THREADS = 64  # a batch's blobs are fsynced in parallel so the filesystem merges their journal commits
_KNOWN_DIRS_MAX = 100_000  # directories known to exist durably; forgotten wholesale past this


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
        self._put_queue: list[_Put] = []
        self._put_running: anyio.Event | None = None
        self._put_pool: ThreadPoolExecutor | None = None

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
        self.blob_dir.mkdir(parents=True, exist_ok=True)
        self.staging_dir.mkdir(parents=True, exist_ok=True)
        for made in (self.blob_dir, self.staging_dir):
            _fsync_dir(made.parent)
        self._known_dirs = {self._blob_root}

    async def close(self) -> None:
        if self._put_pool is not None:
            self._put_pool.shutdown(wait=False)
            self._put_pool = None

    def _ensure_dir(self, path: str) -> None:
        """Make ``path`` exist durably: created if missing, its entry fsynced into its parent."""
        parent = os.path.dirname(path)
        if path in self._known_dirs or parent == path:
            return
        self._ensure_dir(parent)
        try:
            os.mkdir(path)
        except FileExistsError:
            pass
        self._dir_sync.sync(parent)  # even if it existed: its maker may not have synced it yet
        if len(self._known_dirs) >= _KNOWN_DIRS_MAX:
            self._known_dirs = {self._blob_root}
        self._known_dirs.add(path)

    def _publish(self, tmp: Path | str, key: str) -> None:
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
        self._dir_sync.sync(directory)

    async def writer(self, key: str) -> "_FileWriter":
        return _FileWriter(self, key)

    async def put(self, key: str, data: bytes) -> None:
        """Store ``data`` under ``key``; concurrent puts share one worker-thread job.

        A thread hop costs the event loop 60-130 us under trio, more than a
        1 KiB store's own CPU, so puts that arrive while a batch is running
        wait and go together in the next one (group commit). In the batch each
        blob is still written, fsynced and renamed on its own, in parallel, so
        their fsyncs (and directory fsyncs, see _DirSync) share journal commits.
        """
        self._path(key)  # refuse a bad key before queueing it
        job = _Put(key, data)
        self._put_queue.append(job)
        while not job.done:
            if self._put_running is not None:
                await self._put_running.wait()
                continue
            batch, self._put_queue = self._put_queue, []
            self._put_running = anyio.Event()
            try:
                await anyio.to_thread.run_sync(self._put_batch, batch)
            finally:
                running, self._put_running = self._put_running, None
                running.set()
        if job.error is not None:
            raise _mapped(job.error)

    def _put_batch(self, batch: list["_Put"]) -> None:
        if len(batch) == 1:
            self._put_one(batch[0])
            return
        if self._put_pool is None:
            self._put_pool = ThreadPoolExecutor(_PUT_THREADS, thread_name_prefix="blob-put")
        for _ in self._put_pool.map(self._put_one, batch):
            pass

    def _put_one(self, job: "_Put") -> None:
        tmp = self.staging_path()
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            try:
                view = memoryview(job.data)
                while view:
                    view = view[os.write(fd, view) :]
                os.fsync(fd)
            finally:
                os.close(fd)
            self._publish(tmp, job.key)
        except OSError as exc:
            job.error = exc
            try:
                os.unlink(tmp)
            except OSError:
                pass
        finally:
            job.done = True

    async def put_file(self, key: str, path: Path) -> None:
        def work() -> None:
            fd = os.open(path, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
            self._publish(path, key)

        await _run(work)

    async def reader(self, key: str) -> "_FileReader":
        try:
            fd = os.open(self._path(key), os.O_RDONLY)
        except FileNotFoundError:
            raise ArtifactNotFoundError(f"blob {key} is missing") from None
        except OSError as exc:
            raise ProviderError(f"blob {key}: {exc}") from exc
        return _FileReader(fd)

    async def delete(self, key: str) -> None:
        try:
            os.unlink(self._path(key))
        except FileNotFoundError:
            pass
        except OSError as exc:
            raise ProviderError(f"blob {key}: {exc}") from exc

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


def _mapped(exc: OSError) -> Exception:
    if isinstance(exc, FileNotFoundError):
        return ArtifactNotFoundError(str(exc))
    return ProviderError(f"filesystem blob store: {exc}")


async def _run(fn, *args):
    try:
        return await anyio.to_thread.run_sync(fn, *args)
    except OSError as exc:
        raise _mapped(exc) from exc


class _Put:
    """One queued :meth:`FilesystemBlobStore.put`."""

    __slots__ = ("key", "data", "error", "done")

    def __init__(self, key: str, data: bytes) -> None:
        self.key, self.data = key, data
        self.error: OSError | None = None
        self.done = False


class _FileWriter:
    def __init__(self, store: FilesystemBlobStore, key: str) -> None:
        self._store, self._key = store, key
        self._tmp = store.staging_path()
        self._fd: int | None = None
        self._buf = bytearray()

    def _flush(self, buf: bytes) -> None:
        if self._fd is None:
            self._fd = os.open(self._tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        view = memoryview(buf)
        while view:
            view = view[os.write(self._fd, view) :]

    async def write(self, data: bytes) -> None:
        self._buf += data
        if len(self._buf) >= _WRITE_BUFFER:
            buf, self._buf = self._buf, bytearray()
            await _run(self._flush, buf)

    async def commit(self) -> None:
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
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        try:
            os.unlink(self._tmp)
        except FileNotFoundError:
            pass


class _FileReader:
    def __init__(self, fd: int) -> None:
        self._fd: int | None = fd

    async def read(self, offset: int, length: int) -> bytes:
        if self._fd is None:
            raise ProviderError("blob reader is closed")
        if length <= 128 * 1024:
            return os.pread(self._fd, length, offset)
        return await _run(os.pread, self._fd, length, offset)

    async def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
