"""The byte-storage protocol every blob backend (memory, filesystem, S3) implements.

A blob is immutable once committed: a new artifact version is a new key, so
a reader streaming version 3 never sees bytes of version 4.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Collection
from datetime import timedelta
from pathlib import Path
from typing import Protocol, runtime_checkable

from pydantic import BaseModel


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


class NativePart(BaseModel, frozen=True):
    """One part of a backend multipart upload, as the backend lists it."""

    part_number: int
    etag: str  # as the backend quotes it
    size: int


class NativeObject(BaseModel, frozen=True):
    """What the backend holds under a key: its size, its own ETag and (when hashed) its SHA-256."""

    size: int
    etag: str
    sha256: str | None = None


@runtime_checkable
class NativePresign(Protocol):
    """What a blob store offers when its own endpoint honours signed URLs (S3).

    When the store's :class:`~core.backends.blobs.base.BlobStore` also implements this,
    :class:`core.transfers.engine.Transfers` hands out the backend's URLs instead of
    the service's (:mod:`core.transfers.native`); the records, access checks and
    publishing stay the same.

    Every upload, a single presigned PUT included, is a backend multipart
    upload straight to the blob key the artifact will be published under: a
    part URL dies with its upload when it is completed or aborted, so no URL
    can overwrite a published blob afterwards (a plain PutObject URL could,
    until it expires). Signing is local; creating an upload is one request.
    """

    min_part_bytes: int  # the backend's smallest part but the last

    async def presign_get(self, key: str | None, expires: int, *, mime: str, filename: str) -> str:
        """A GET URL of ``key`` (None: an empty artifact) that answers with ``mime`` and ``filename``."""
        ...

    async def create_multipart(self, key: str, *, mime: str) -> str:
        """Start a native multipart upload for ``key``; returns its native id."""
        ...

    async def presign_part(self, key: str, native_id: str, part_number: int, expires: int) -> str: ...

    async def list_parts(self, key: str, native_id: str) -> list[NativePart] | None:
        """The parts uploaded so far, by number; None when the upload is gone (completed or aborted)."""
        ...

    async def complete_multipart(self, key: str, native_id: str, parts: list[tuple[int, str]]) -> None:
        """Join the (part number, ETag) parts; InvalidPartError when the backend refuses them."""
        ...

    async def abort_multipart(self, key: str, native_id: str) -> None:
        """Drop the upload and its parts; an upload already gone is no error."""
        ...

    async def stat(self, key: str) -> NativeObject | None:
        """The object under ``key`` without reading it; None when there is none."""
        ...

    async def digest(self, key: str) -> NativeObject:
        """Read the object back once, in bounded memory, for its size and SHA-256."""
        ...

    async def abort_incomplete(self, older_than: timedelta, spare: Collection[str] = ()) -> int:
        """Abort native uploads started before ``older_than`` ago, except the ``spare`` ids; returns how many."""
        ...
