"""Blobs as files under a data directory: the embedded default.

Writes go to ``staging/`` and are published by ``rename`` after ``fsync`` of
the file and of its new directory, so a blob is either whole under its key
or absent. Blocking calls run in worker threads; small ones are batched so a
1 KiB store costs one thread hop, not five.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import anyio.to_thread

from ..errors import ArtifactNotFoundError, ProviderError

_WRITE_BUFFER = 1 << 20


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class FilesystemBlobStore:
    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.blob_dir = self.root / "blobs"
        self.staging_dir = self.root / "staging"

    def path_of(self, key: str) -> Path:
        # Keys are built from validated ids, but a key is never trusted to stay inside.
        path = (self.blob_dir / key).resolve()
        if not path.is_relative_to(self.blob_dir.resolve()):
            raise ProviderError(f"blob key {key!r} leaves the blob directory")
        return path

    def staging_path(self) -> Path:
        return self.staging_dir / f"{uuid.uuid4().hex}.part"

    async def open(self) -> None:
        self.blob_dir.mkdir(parents=True, exist_ok=True)
        self.staging_dir.mkdir(parents=True, exist_ok=True)

    async def close(self) -> None:
        pass

    def _publish(self, tmp: Path, key: str) -> None:
        final = self.path_of(key)
        final.parent.mkdir(parents=True, exist_ok=True)
        os.rename(tmp, final)
        _fsync_dir(final.parent)

    async def writer(self, key: str) -> "_FileWriter":
        return _FileWriter(self, key)

    async def put(self, key: str, data: bytes) -> None:
        def work() -> None:
            tmp = self.staging_path()
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view) :]
                os.fsync(fd)
            finally:
                os.close(fd)
            self._publish(tmp, key)

        await _run(work)

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
            fd = os.open(self.path_of(key), os.O_RDONLY)
        except FileNotFoundError:
            raise ArtifactNotFoundError(f"blob {key} is missing") from None
        except OSError as exc:
            raise ProviderError(f"blob {key}: {exc}") from exc
        return _FileReader(fd)

    async def delete(self, key: str) -> None:
        try:
            os.unlink(self.path_of(key))
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


async def _run(fn, *args):
    try:
        return await anyio.to_thread.run_sync(fn, *args)
    except FileNotFoundError as exc:
        raise ArtifactNotFoundError(str(exc)) from exc
    except OSError as exc:
        raise ProviderError(f"filesystem blob store: {exc}") from exc


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
