"""The byte-storage protocol every blob backend (memory, filesystem, S3) implements.

A blob is immutable once committed: a new artifact version is a new key, so
a reader streaming version 3 never sees bytes of version 4.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Protocol


class BlobWriter(Protocol):
    async def write(self, data: bytes) -> None: ...

    async def commit(self) -> None:
        """Make the bytes durable and visible under the key, all at once."""
        ...

    async def abort(self) -> None: ...


class BlobReader(Protocol):
    async def read(self, offset: int, length: int, *, ahead: bool = False) -> bytes:
        """``ahead``: a prefetcher's read, one of several in flight that may arrive out of order."""
        ...

    async def close(self) -> None: ...


class FileUpload(Protocol):
    """A blob sent a part at a time from a local file that may still be growing."""

    key: str
    part_size: int
    max_parts: int

    async def send(self, index: int, path: str, length: int) -> None: ...

    async def complete(self, count: int, size: int) -> None: ...

    async def abort(self) -> None: ...


class BlobStore(Protocol):
    async def open(self) -> None: ...

    async def close(self) -> None: ...

    async def writer(self, key: str) -> BlobWriter: ...

    async def put(self, key: str, data: bytes, *, durable: bool = True) -> None:
        """Store ``data`` under ``key``, atomically.

        ``durable=False`` publishes without waiting for stable storage, as a
        local disk does on close(); :meth:`sync` makes such blobs durable.
        """
        ...

    async def put_file(self, key: str, path: Path, *, durable: bool = True) -> None:
        """Publish a finished local file under ``key``; the file is consumed."""
        ...

    async def sync(self) -> None:
        """Make every blob published so far with ``durable=False`` durable."""
        ...

    def file_upload(self, key: str) -> FileUpload | None:
        """A way to send a file that is still being written while it grows, where that pays (a
        remote store: the bytes are on their way before close); None where it does not."""
        ...

    async def reader(self, key: str, size: int | None = None) -> BlobReader:
        """A reader of ``key``. ``size``, when the caller knows it, spares a remote store a request
        before the first read; a missing blob may then raise ArtifactNotFoundError at that read."""
        ...

    async def delete(self, key: str) -> None: ...

    def keys(self, prefix: str = "") -> AsyncIterator[str]: ...

    async def check(self) -> None:
        """Raise ProviderError when the backend cannot be reached."""
        ...
