"""Blobs in process memory: the zero-configuration default of the library."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

from core.errors import ArtifactNotFoundError
from core.settings import Settings


class MemoryBlobStore:
    def __init__(self) -> None:
        # A streamed blob keeps the buffer it was written into: never changed once committed, and a
        # copy into bytes would hold the artifact twice at the end of its upload.
        self._blobs: dict[str, bytes | bytearray] = {}

    async def open(self) -> None:
        pass

    async def close(self) -> None:
        self._blobs.clear()

    async def writer(self, key: str) -> "_MemoryWriter":
        return _MemoryWriter(self._blobs, key)

    async def put(self, key: str, data: bytes, *, durable: bool = True) -> None:
        self._blobs[key] = bytes(data)

    async def put_file(self, key: str, path: Path, *, durable: bool = True) -> None:
        self._blobs[key] = path.read_bytes()
        path.unlink()

    async def sync(self) -> None:
        pass  # nothing here outlives the process anyway

    def file_upload(self, key: str) -> None:
        """Local bytes gain nothing from going out early: :meth:`put_file` takes the whole file."""
        return None

    async def reader(self, key: str, size: int | None = None) -> "_MemoryReader":
        try:
            return _MemoryReader(self._blobs[key])
        except KeyError:
            raise ArtifactNotFoundError(f"blob {key} is missing") from None

    async def delete(self, key: str) -> None:
        self._blobs.pop(key, None)

    async def keys(self, prefix: str = "") -> AsyncIterator[str]:
        for key in list(self._blobs):
            if key.startswith(prefix):
                yield key

    async def check(self) -> None:
        pass

    def corrupt(self, key: str, offset: int = 0) -> None:
        """Flip one byte in place: for integrity tests only."""
        data = bytearray(self._blobs[key])
        data[offset] ^= 0xFF
        self._blobs[key] = bytes(data)


def from_settings(settings: Settings) -> MemoryBlobStore:
    """``ARTIFACT_PROVIDER=memory``: nothing to configure."""
    return MemoryBlobStore()


class _MemoryWriter:
    def __init__(self, blobs: dict[str, bytes | bytearray], key: str) -> None:
        self._blobs, self._key, self._parts = blobs, key, bytearray()

    async def write(self, data: bytes) -> None:
        self._parts += data

    async def commit(self) -> None:
        self._blobs[self._key], self._parts = self._parts, bytearray()

    async def abort(self) -> None:
        self._parts = bytearray()


class _MemoryReader:
    def __init__(self, data: bytes | bytearray) -> None:
        self._data = memoryview(data)

    async def read(self, offset: int, length: int, *, ahead: bool = False) -> bytes:
        return bytes(self._data[offset : offset + length])

    async def close(self) -> None:
        pass
