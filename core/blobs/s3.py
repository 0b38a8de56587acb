"""Blobs in S3 or any S3-compatible store (MinIO, Ceph RGW, IBM COS) via aioboto3.

Writes stream: bytes gather into one part in the writer; a full part goes out
as an UploadPart task while the writer keeps filling the next, and at most
``max_inflight_parts`` are in flight, so memory stays within a few parts
whatever the blob's size. A blob that never fills a part is one PutObject.
A failed write aborts its multipart upload; uploads a crash left behind are
listed and aborted by :meth:`S3BlobStore.abort_incomplete` (``gc``).

Reads are ranged GETs. The first read of a reader fetches exactly what was
asked (random access stays cheap); a read that continues where the last one
ended opens a streaming GET over a readahead window that doubles up to
``max_readahead``, and later sequential reads are served from that one
response as its bytes arrive.

Every network call runs on an asyncio loop through :mod:`core.aio_bridge`,
once per call (never per byte), with bounded retries on timeouts, dropped
connections, 5xx and throttling (botocore's own retries are switched off, so
the count is ours and a dead endpoint fails in seconds).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar

import aioboto3
import aiohttp
import anyio.to_thread
import botocore.exceptions
from botocore.config import Config
from pydantic import BaseModel

from .. import aio_bridge
from ..errors import ArtifactNotFoundError, ProviderError, StoreClosedError
from ..retry import RetryPolicy, retrying
from .s3_presign import S3Presign

T = TypeVar("T")
MiB = 1 << 20
S3_MIN_PART = 5 * MiB  # S3's smallest part but the last
_MAX_PARTS = 10_000

log = logging.getLogger(__name__)

_TRANSIENT_CODES = {
    "InternalError", "ServiceUnavailable", "SlowDown", "Throttling", "ThrottlingException",
    "RequestTimeout", "RequestTimeoutException", "RequestLimitExceeded", "OperationAborted",
}
_NOT_FOUND_CODES = {"NoSuchKey", "404", "NotFound"}


def _status(exc: botocore.exceptions.ClientError) -> int:
    return int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)


def _code(exc: botocore.exceptions.ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


def _transient(exc: BaseException) -> bool:
    if isinstance(exc, botocore.exceptions.ClientError):
        return _status(exc) >= 500 or _status(exc) == 429 or _code(exc) in _TRANSIENT_CODES
    return isinstance(
        exc,
        (
            botocore.exceptions.ConnectionError,  # refused, DNS, connect timeout
            botocore.exceptions.HTTPClientError,  # closed mid-way, read timeout, broken stream
            botocore.exceptions.IncompleteReadError,
            aiohttp.ClientError,
            asyncio.TimeoutError,
            ConnectionError,
        ),
    )


def _not_found(exc: BaseException) -> bool:
    return isinstance(exc, botocore.exceptions.ClientError) and (
        _code(exc) in _NOT_FOUND_CODES or _status(exc) == 404 and _code(exc) != "NoSuchBucket"
    )


class IncompleteUpload(BaseModel):
    """A multipart upload that was started and never completed or aborted."""

    key: str  # the blob key, without the store's prefix
    upload_id: str
    initiated: datetime


class S3BlobStore(S3Presign):
    """A :class:`~core.blobs.base.BlobStore` on one bucket, below an optional key prefix.

    It is a :class:`~core.presign.NativePresign` too (:mod:`core.blobs.s3_presign`):
    presigned URLs are S3's own, and ``abort_incomplete`` (``gc``) lives there.
    """

    def __init__(
        self,
        bucket: str,
        *,
        prefix: str = "",
        endpoint_url: str | None = None,
        region: str = "us-east-1",
        path_style: bool | None = None,
        sse_algorithm: str | None = None,
        sse_kms_key_id: str | None = None,
        part_size: int = 8 * MiB,
        max_inflight_parts: int = 2,
        max_readahead: int = 64 * MiB,
        retry: RetryPolicy | None = None,
        connect_timeout: float = 5.0,
        read_timeout: float = 60.0,
    ) -> None:
        if part_size < S3_MIN_PART:
            raise ValueError(f"part_size must be at least {S3_MIN_PART} bytes (S3's minimum)")
        self.bucket, self.prefix = bucket, prefix
        self.endpoint_url, self.region = endpoint_url, region
        self.part_size, self.max_inflight_parts, self.max_readahead = part_size, max(1, max_inflight_parts), max_readahead
        self._sse: dict[str, str] = {}
        if sse_algorithm:
            self._sse["ServerSideEncryption"] = sse_algorithm
            if sse_kms_key_id:
                self._sse["SSEKMSKeyId"] = sse_kms_key_id
        # S3-compatible stores rarely serve virtual-host names: path style whenever an endpoint is given.
        style = "path" if (path_style if path_style is not None else endpoint_url is not None) else "auto"
        self._config = Config(
            s3={"addressing_style": style},
            signature_version="s3v4",  # presigned URLs too (botocore would sign those with SigV2 here)
            retries={"total_max_attempts": 1},
            connect_timeout=connect_timeout,
            read_timeout=read_timeout,
            max_pool_connections=32,
            tcp_keepalive=True,
        )
        self.retry = retry or RetryPolicy()
        self.list_page_size = 1000  # S3's own maximum; tests make it small to walk pages
        self._clients: aio_bridge.LoopLocal[tuple[Any, contextlib.AsyncExitStack]] = aio_bridge.LoopLocal(
            self._connect, self._disconnect
        )
        self._open = False

    # -- plumbing

    def object_key(self, key: str) -> str:
        return self.prefix + key

    async def _connect(self) -> tuple[Any, contextlib.AsyncExitStack]:
        stack = contextlib.AsyncExitStack()
        client = await stack.enter_async_context(
            aioboto3.Session().client(
                "s3", endpoint_url=self.endpoint_url, region_name=self.region, config=self._config
            )
        )
        return client, stack

    @staticmethod
    async def _disconnect(value: tuple[Any, contextlib.AsyncExitStack]) -> None:
        await value[1].aclose()

    async def client(self) -> Any:
        """The S3 client of the running asyncio loop."""
        return (await self._clients.get())[0]

    async def retried(self, what: str, fn: Callable[[Any], Awaitable[T]]) -> T:
        """``fn(client)`` with bounded retries; runs on an asyncio loop."""

        async def attempt() -> T:
            return await fn(await self.client())

        try:
            return await retrying(attempt, policy=self.retry, transient=_transient, what=f"s3 {what}")
        except botocore.exceptions.ClientError as exc:
            if _not_found(exc):
                raise ArtifactNotFoundError(f"blob {what}: not found") from exc
            raise ProviderError(f"s3 {what}: {_code(exc)} {exc}") from exc
        except botocore.exceptions.BotoCoreError as exc:
            raise ProviderError(f"s3 {what}: {exc}") from exc

    async def call(self, what: str, fn: Callable[[Any], Awaitable[T]]) -> T:
        """:meth:`retried`, from whatever loop the caller runs on."""
        if not self._open:
            raise StoreClosedError("the blob store is closed")
        return await aio_bridge.run(self.retried, what, fn)

    # -- lifecycle

    async def open(self) -> None:
        self._open = True
        try:
            await self.check()
        except BaseException:
            await self.close()
            raise

    async def close(self) -> None:
        self._open = False
        await self._clients.dispose_all()

    async def check(self) -> None:
        try:
            await self.call(f"bucket {self.bucket}", lambda c: c.head_bucket(Bucket=self.bucket))
        except ArtifactNotFoundError:
            raise ProviderError(f"s3 bucket {self.bucket} does not exist") from None

    # -- writing

    async def writer(self, key: str) -> S3Writer:
        if not self._open:
            raise StoreClosedError("the blob store is closed")
        return S3Writer(self, key)

    async def put(self, key: str, data: bytes, *, durable: bool = True) -> None:
        """Every write S3 acknowledges is durable, so ``durable`` changes nothing here."""
        if len(data) > self.part_size:
            writer = S3Writer(self, key)
            try:
                await writer.write(data)
                await writer.commit()
            except BaseException:
                await writer.abort()
                raise
            return
        await self.call(
            key, lambda c: c.put_object(Bucket=self.bucket, Key=self.object_key(key), Body=bytes(data), **self._sse)
        )

    async def sync(self) -> None:
        pass

    async def put_file(self, key: str, path: Path, *, durable: bool = True) -> None:
        """Stream a finished local file up, one part in memory at a time; then delete it."""
        size = os.stat(path).st_size
        if size <= self.part_size:
            await self.put(key, await anyio.to_thread.run_sync(Path(path).read_bytes))
        else:
            writer = S3Writer(self, key)
            try:
                async with await anyio.open_file(path, "rb") as src:
                    while chunk := await src.read(self.part_size):
                        await writer.write(chunk)
                await writer.commit()
            except BaseException:
                await writer.abort()
                raise
        os.unlink(path)

    # -- reading

    async def reader(self, key: str) -> S3Reader:
        """A reader of ``key``; a missing blob raises ArtifactNotFoundError here, not at the first read."""
        head = await self.call(key, lambda c: c.head_object(Bucket=self.bucket, Key=self.object_key(key)))
        return S3Reader(self, key, int(head["ContentLength"]))

    async def delete(self, key: str) -> None:
        await self.call(key, lambda c: c.delete_object(Bucket=self.bucket, Key=self.object_key(key)))

    async def keys(self, prefix: str = "") -> AsyncIterator[str]:
        token: str | None = None
        while True:
            page = await self.call(f"list {prefix!r}", lambda c, t=token: self._list_page(c, prefix, t))
            for key in page.get("Contents", ()):
                yield key["Key"][len(self.prefix) :]
            token = page.get("NextContinuationToken")
            if not page.get("IsTruncated") or not token:
                return

    async def _list_page(self, client: Any, prefix: str, token: str | None) -> dict:
        args: dict[str, Any] = {"Bucket": self.bucket, "Prefix": self.object_key(prefix), "MaxKeys": self.list_page_size}
        if token:
            args["ContinuationToken"] = token
        return await client.list_objects_v2(**args)

    # -- uploads left behind (gc)

    async def incomplete_uploads(self) -> list[IncompleteUpload]:
        """Multipart uploads below this store's prefix that were never finished."""
        found: list[IncompleteUpload] = []
        markers: dict[str, str] = {}
        while True:
            page = await self.call(
                "list uploads",
                lambda c, m=dict(markers): c.list_multipart_uploads(
                    Bucket=self.bucket, Prefix=self.object_key(""), **m
                ),
            )
            for up in page.get("Uploads", ()):
                found.append(
                    IncompleteUpload(
                        key=up["Key"][len(self.prefix) :], upload_id=up["UploadId"], initiated=up["Initiated"]
                    )
                )
            if not page.get("IsTruncated"):
                return found
            markers = {"KeyMarker": page["NextKeyMarker"], "UploadIdMarker": page["NextUploadIdMarker"]}

    async def abort_upload(self, key: str, upload_id: str) -> None:
        async def abort(c: Any) -> None:
            with contextlib.suppress(botocore.exceptions.ClientError):  # already gone: done
                await c.abort_multipart_upload(Bucket=self.bucket, Key=self.object_key(key), UploadId=upload_id)

        await self.call(f"abort {key}", abort)


class S3Writer:
    """Buffers one part in the caller's world; crosses the bridge once per part."""

    def __init__(self, store: S3BlobStore, key: str) -> None:
        self._store, self._key = store, key
        self._buf = bytearray()
        self._upload: _Multipart | None = None
        self._size = 0

    @property
    def upload_id(self) -> str | None:
        return self._upload.upload_id if self._upload else None

    async def write(self, data: bytes) -> None:
        self._buf += data
        self._size += len(data)
        part_size = self._store.part_size
        while len(self._buf) >= part_size:
            # Hand the buffer itself over as the part: only the overhang (less than a write) is copied.
            part, self._buf = self._buf, bytearray(memoryview(self._buf)[part_size:])
            del part[part_size:]
            await self._send(part)

    async def _send(self, part: bytes | bytearray) -> None:
        if self._upload is None:
            self._upload = await aio_bridge.run(_Multipart.start, self._store, self._key)
        await aio_bridge.run(self._upload.add_part, part)

    async def commit(self) -> None:
        if self._upload is None:
            data, self._buf = bytes(self._buf), bytearray()
            await self._store.put(self._key, data)
            return
        if self._buf:
            part, self._buf = bytes(self._buf), bytearray()
            await self._send(part)
        upload, self._upload = self._upload, None
        try:
            await aio_bridge.run(upload.complete, self._size)
        except BaseException:
            self._upload = upload  # so that abort() still finds it
            raise

    async def abort(self) -> None:
        self._buf = bytearray()
        upload, self._upload = self._upload, None
        if upload is not None:
            with anyio.CancelScope(shield=True):
                await aio_bridge.run(upload.abort)


class _Multipart:
    """One multipart upload; lives and runs on an asyncio loop."""

    def __init__(self, store: S3BlobStore, key: str, upload_id: str) -> None:
        self.store, self.key, self.upload_id = store, key, upload_id
        self.object_key = store.object_key(key)
        self.etags: dict[int, str] = {}
        self.inflight: set[asyncio.Task[None]] = set()
        self.next_number = 1

    @classmethod
    async def start(cls, store: S3BlobStore, key: str) -> _Multipart:
        reply = await store.retried(
            f"{key} (start upload)",
            lambda c: c.create_multipart_upload(Bucket=store.bucket, Key=store.object_key(key), **store._sse),
        )
        return cls(store, key, reply["UploadId"])

    async def add_part(self, data: bytes | bytearray) -> None:
        """Start uploading ``data`` as the next part, after waiting for room."""
        await self._settle(self.store.max_inflight_parts - 1)
        number = self.next_number
        if number > _MAX_PARTS:
            raise ProviderError(f"blob {self.key} needs more than {_MAX_PARTS} parts; raise part_size")
        self.next_number += 1
        self.inflight.add(asyncio.create_task(self._upload(number, data)))

    async def _upload(self, number: int, data: bytes | bytearray) -> None:
        reply = await self.store.retried(
            f"{self.key} (part {number})",
            lambda c: c.upload_part(
                Bucket=self.store.bucket, Key=self.object_key, UploadId=self.upload_id, PartNumber=number, Body=data
            ),
        )
        self.etags[number] = reply["ETag"]

    async def _settle(self, allowed: int) -> None:
        """Wait until at most ``allowed`` parts are in flight; a failed part raises here."""
        while len(self.inflight) > allowed:
            done, _ = await asyncio.wait(self.inflight, return_when=asyncio.FIRST_COMPLETED)
            self.inflight -= done
            for task in done:
                task.result()

    async def complete(self, size: int) -> None:
        await self._settle(0)
        parts = [{"PartNumber": n, "ETag": self.etags[n]} for n in sorted(self.etags)]
        if [p["PartNumber"] for p in parts] != list(range(1, self.next_number)):
            raise ProviderError(f"blob {self.key}: parts are missing")
        store = self.store

        async def finish(c: Any) -> None:
            try:
                await c.complete_multipart_upload(
                    Bucket=store.bucket, Key=self.object_key, UploadId=self.upload_id, MultipartUpload={"Parts": parts}
                )
            except botocore.exceptions.ClientError as exc:
                # A retry after a lost reply finds the upload gone: it is done if the object is whole.
                if _code(exc) != "NoSuchUpload":
                    raise
                head = await c.head_object(Bucket=store.bucket, Key=self.object_key)
                if head["ContentLength"] != size:
                    raise

        await store.retried(f"{self.key} (complete upload)", finish)

    async def abort(self) -> None:
        for task in self.inflight:
            task.cancel()
        await asyncio.gather(*self.inflight, return_exceptions=True)
        self.inflight.clear()
        try:
            await self.store.retried(
                f"{self.key} (abort upload)",
                lambda c: c.abort_multipart_upload(
                    Bucket=self.store.bucket, Key=self.object_key, UploadId=self.upload_id
                ),
            )
        except Exception as exc:  # gc finds it later through incomplete_uploads()
            log.warning("could not abort upload %s of blob %s: %s", self.upload_id, self.key, exc)


class S3Reader:
    """A reader whose state lives on an asyncio loop; one bridge crossing per read."""

    def __init__(self, store: S3BlobStore, key: str, size: int) -> None:
        self._ranges = _Ranges(store, key, size)

    async def read(self, offset: int, length: int) -> bytes:
        return await aio_bridge.run(self._ranges.read, offset, length)

    async def close(self) -> None:
        with anyio.CancelScope(shield=True):
            await aio_bridge.run(self._ranges.close)


class _Ranges:
    """Ranged GETs, with a streaming readahead window for sequential reads."""

    FIRST_WINDOW = 4 * MiB

    def __init__(self, store: S3BlobStore, key: str, size: int) -> None:
        self.store, self.key = store, key
        self.size: int | None = size  # from HEAD; a blob is immutable, so it stays true
        self.pos = -1  # just past the last byte handed out
        self.window = self.FIRST_WINDOW
        self.body: Any = None
        self.body_pos = self.body_end = 0
        # One stream, one read at a time: two reads of one body split its bytes between them, or
        # one waits forever (the mount's readahead reads a file's chunks concurrently).
        self.lock = asyncio.Lock()

    async def _open(self, c: Any, start: int, end: int) -> bool:
        """Open a GET of bytes ``[start, end)``; False when ``start`` is past the end."""
        try:
            reply = await c.get_object(
                Bucket=self.store.bucket, Key=self.store.object_key(self.key), Range=f"bytes={start}-{end - 1}"
            )
        except botocore.exceptions.ClientError as exc:
            if _code(exc) == "InvalidRange" or _status(exc) == 416:
                self.size = start if self.size is None else self.size
                return False
            raise
        total = str(reply.get("ContentRange", "")).rpartition("/")[2]
        if total.isdigit():
            self.size = int(total)
        self.body, self.body_pos, self.body_end = reply["Body"], start, min(end, self.size or end)
        return True

    async def read(self, offset: int, length: int) -> bytes:
        out = bytearray()

        async def fill(c: Any) -> None:
            """Fetch the rest of the request; a retry resumes after the bytes already got."""
            try:
                while len(out) < length:
                    at, want = offset + len(out), length - len(out)
                    if self.size is not None:
                        want = min(want, self.size - at)
                    if want <= 0:
                        return
                    if self.body is None or self.body_pos != at:
                        self._drop_body()
                        span = want
                        if at == self.pos:  # sequential: stream ahead
                            span = max(want, self.window)
                            self.window = min(self.window * 2, self.store.max_readahead)
                        if not await self._open(c, at, at + span):
                            return
                    chunk = await self.body.read(min(want, self.body_end - self.body_pos))
                    if not chunk:  # the blob ends here
                        self.size = at
                        self._drop_body()
                        return
                    out.extend(chunk)
                    self.body_pos += len(chunk)
                    self.pos = self.body_pos
                    if self.body_pos >= self.body_end:
                        self._drop_body()
            except BaseException:
                self._drop_body()
                raise

        if length > 0:
            async with self.lock:
                await self.store.retried(f"{self.key} @{offset}", fill)
        return bytes(out)

    def _drop_body(self) -> None:
        if self.body is not None:
            self.body.close()
            self.body = None

    async def close(self) -> None:
        self._drop_body()
