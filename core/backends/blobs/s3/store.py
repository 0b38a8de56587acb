"""Blobs in S3 or any S3-compatible store (MinIO, Ceph RGW, IBM COS).

Writes stream: bytes gather into one part in the writer; a full part goes out
as an UploadPart task while the writer keeps filling the next, and at most
``max_inflight_parts`` are in flight, so memory stays within a few parts
whatever the blob's size. A blob that never fills a part is one PutObject.
A failed write aborts its multipart upload; uploads a crash left behind are
listed and aborted by :meth:`S3BlobStore.abort_incomplete` (``gc``).

Reads are ranged GETs. The first read of a reader fetches exactly what was
asked (random access stays cheap); a read that continues where the last one
ended opens a streaming GET over a first window of 8 MiB, and the next one
streams on to the end of the blob (or ``max_readahead``): later sequential
reads are served from that response as its bytes arrive, and a reader that
stops early costs what the connection had buffered when it is closed. Every
GET is a request to pay for, and stock moto copies the whole object for each
(DESIGN §9), so a long sequential read makes as few as it can.

Object reads, writes and deletes go out through :mod:`core.backends.blobs.s3.http`
(our own signed aiohttp requests: botocore costs ~2 ms of CPU per request);
listings, ``gc`` and presigned URLs through aioboto3, whose client is made
only when one of those is first used. Every network call runs on an asyncio
loop through :mod:`core.infra.aio_bridge`, once per call (never per byte), with
bounded retries on timeouts, dropped connections, 5xx, throttling and bodies
S3 refused as damaged on the way (every object and part is sent with its
SHA-256; botocore's own retries are switched off, so the count is ours and a
dead endpoint fails in seconds).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
import anyio.to_thread
import botocore.exceptions

from core.backends.blobs.s3.http import Body, FileRegion, S3Error, S3Http
from core.backends.blobs.s3.presign import IncompleteUpload, S3Presign
from core.backends.blobs.s3.sigv4 import Credentials
from core.errors import ArtifactNotFoundError, ProviderError, StoreClosedError
from core.infra import aio_bridge
from core.infra.retry import RetryPolicy, retrying
from core.settings import Settings

T = TypeVar("T")
MiB = 1 << 20
S3_MIN_PART = 5 * MiB  # S3's smallest part but the last
_MAX_PARTS = 10_000
# A part sent from a file costs a chunk of memory, not its size (s3_http.FileRegion), so such parts are
# bigger and more go at once (moto, 256 MiB: 8 MiB x 2 in flight 108-157 MB/s, 16 MiB x 4 136-174 MB/s).
FILE_PARTS_IN_FLIGHT = 4

log = logging.getLogger(__name__)

_TRANSIENT_CODES = {
    "InternalError", "ServiceUnavailable", "SlowDown", "Throttling", "ThrottlingException",
    "RequestTimeout", "RequestTimeoutException", "RequestLimitExceeded", "OperationAborted",
}
# A 400 with one of these: the bytes S3 received do not match the checksum or signed hash they were
# sent with (MinIO names it XAmzContentChecksumMismatch). The source bytes are intact, so a fresh
# send is the remedy, as for a dropped connection.
_DAMAGED_CODES = {"BadDigest", "InvalidDigest", "XAmzContentSHA256Mismatch", "XAmzContentChecksumMismatch"}
_NOT_FOUND_CODES = {"NoSuchKey", "404", "NotFound"}


def _status(exc: botocore.exceptions.ClientError) -> int:
    return int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)


def _code(exc: botocore.exceptions.ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


def _transient_answer(status: int, code: str) -> bool:
    """Whether an error S3 answered may pass on a fresh send: its own fault, throttling, damage on the way."""
    return status >= 500 or status == 429 or code in _TRANSIENT_CODES or status == 400 and code in _DAMAGED_CODES


def _transient(exc: BaseException) -> bool:
    if isinstance(exc, S3Error):
        return _transient_answer(exc.status, exc.code)
    if isinstance(exc, botocore.exceptions.ClientError):
        return _transient_answer(_status(exc), _code(exc))
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
    if isinstance(exc, S3Error):
        return exc.code in _NOT_FOUND_CODES or exc.status == 404 and exc.code != "NoSuchBucket"
    return isinstance(exc, botocore.exceptions.ClientError) and (
        _code(exc) in _NOT_FOUND_CODES or _status(exc) == 404 and _code(exc) != "NoSuchBucket"
    )


def _dns_compatible(bucket: str) -> bool:
    """Whether the bucket name can be a host name label (virtual-host addressing)."""
    return re.fullmatch(r"[a-z0-9][a-z0-9-]{1,61}[a-z0-9]", bucket) is not None


class S3BlobStore(S3Presign):
    """A :class:`~core.backends.blobs.base.BlobStore` on one bucket, below an optional key prefix.

    It is a :class:`~core.transfers.urls.NativePresign` too (:mod:`core.backends.blobs.s3.presign`):
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
        file_part_size: int = 16 * MiB,
        max_inflight_parts: int = 2,
        max_readahead: int = 1 << 30,
        retry: RetryPolicy | None = None,
        connect_timeout: float = 5.0,
        read_timeout: float = 60.0,
        credentials: Credentials | None = None,
    ) -> None:
        if min(part_size, file_part_size) < S3_MIN_PART:
            raise ValueError(f"part sizes must be at least {S3_MIN_PART} bytes (S3's minimum)")
        self.file_part_size = file_part_size
        self.bucket, self.prefix = bucket, prefix
        self.endpoint_url, self.region = endpoint_url, region
        self.part_size, self.max_inflight_parts, self.max_readahead = part_size, max(1, max_inflight_parts), max_readahead
        self._sse: dict[str, str] = {}  # as botocore's parameters
        self._sse_headers: dict[str, str] = {}  # as headers of our own requests
        if sse_algorithm:
            self._sse["ServerSideEncryption"] = sse_algorithm
            self._sse_headers["x-amz-server-side-encryption"] = sse_algorithm
            if sse_kms_key_id:
                self._sse["SSEKMSKeyId"] = sse_kms_key_id
                self._sse_headers["x-amz-server-side-encryption-aws-kms-key-id"] = sse_kms_key_id
        # S3-compatible stores rarely serve virtual-host names: path style whenever an endpoint is given.
        # A bucket name that is no DNS label (dots, capitals) has to go in the path too.
        use_path = path_style if path_style is not None else endpoint_url is not None
        use_path = use_path or not _dns_compatible(bucket)
        style = "path" if use_path else "auto"
        self._http_args: dict[str, Any] = {
            "endpoint_url": endpoint_url, "region": region, "path_style": use_path,
            "connect_timeout": connect_timeout, "read_timeout": read_timeout, "max_connections": 32,
            "credentials": credentials,
        }
        # The same keys for botocore's client (listings, gc, presigned URLs); none: its own chain finds them.
        self._client_keys: dict[str, str | None] = {} if credentials is None else {
            "aws_access_key_id": credentials.access_key, "aws_secret_access_key": credentials.secret_key,
            "aws_session_token": credentials.token,
        }
        self._botocore_config: dict[str, Any] = {
            "s3": {"addressing_style": style},
            "signature_version": "s3v4",  # presigned URLs too (botocore would sign those with SigV2 here)
            "retries": {"total_max_attempts": 1},
            "connect_timeout": connect_timeout,
            "read_timeout": read_timeout,
            "max_pool_connections": 32,
            "tcp_keepalive": True,
        }
        self.retry = retry or RetryPolicy()
        self.list_page_size = 1000  # S3's own maximum; tests make it small to walk pages
        self._clients: aio_bridge.LoopLocal[tuple[Any, contextlib.AsyncExitStack]] = aio_bridge.LoopLocal(
            self._connect, self._disconnect
        )
        self._https: aio_bridge.LoopLocal[S3Http] = aio_bridge.LoopLocal(self._connect_http, S3Http.close)
        self._open = False

    # -- plumbing

    def object_key(self, key: str) -> str:
        return self.prefix + key

    async def _connect(self) -> tuple[Any, contextlib.AsyncExitStack]:
        import aioboto3  # with a client's service model, ~20 MiB: loaded only when first needed
        from botocore.config import Config

        stack = contextlib.AsyncExitStack()
        client = await stack.enter_async_context(
            aioboto3.Session().client(
                "s3", endpoint_url=self.endpoint_url, region_name=self.region, config=Config(**self._botocore_config),
                **self._client_keys,
            )
        )
        return client, stack

    @staticmethod
    async def _disconnect(value: tuple[Any, contextlib.AsyncExitStack]) -> None:
        await value[1].aclose()

    async def _connect_http(self) -> S3Http:
        http = S3Http(self.bucket, **self._http_args)
        await http.open()
        return http

    async def client(self) -> Any:
        """The botocore S3 client of the running asyncio loop."""
        return (await self._clients.get())[0]

    async def retried(self, what: str, fn: Callable[[Any], Awaitable[T]]) -> T:
        """``fn(botocore client)`` with bounded retries; runs on an asyncio loop."""
        return await self._retrying(what, fn, self.client)

    async def sent(self, what: str, fn: Callable[[S3Http], Awaitable[T]]) -> T:
        """``fn(S3Http)`` with bounded retries; runs on an asyncio loop."""
        return await self._retrying(what, fn, self._https.get)

    async def _retrying(self, what: str, fn: Callable[[Any], Awaitable[T]], via: Callable[[], Awaitable[Any]]) -> T:
        async def attempt() -> T:
            return await fn(await via())

        try:
            return await retrying(attempt, policy=self.retry, transient=_transient, what=f"s3 {what}")
        except S3Error as exc:
            if _not_found(exc):
                raise ArtifactNotFoundError(f"blob {what}: not found") from exc
            raise ProviderError(f"s3 {what}: {exc}") from exc
        except botocore.exceptions.ClientError as exc:
            if _not_found(exc):
                raise ArtifactNotFoundError(f"blob {what}: not found") from exc
            raise ProviderError(f"s3 {what}: {_code(exc)} {exc}") from exc
        except botocore.exceptions.BotoCoreError as exc:
            raise ProviderError(f"s3 {what}: {exc}") from exc

    async def call(self, what: str, fn: Callable[[Any], Awaitable[T]]) -> T:
        """:meth:`retried`, from whatever loop the caller runs on."""
        self._check_open()
        return await aio_bridge.run(self.retried, what, fn)

    async def send(self, what: str, fn: Callable[[S3Http], Awaitable[T]]) -> T:
        """:meth:`sent`, from whatever loop the caller runs on."""
        self._check_open()
        return await aio_bridge.run(self.sent, what, fn)

    def _check_open(self) -> None:
        if not self._open:
            raise StoreClosedError("the blob store is closed")

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
        await self._https.dispose_all()
        await self._clients.dispose_all()

    async def check(self) -> None:
        try:
            await self.send(f"bucket {self.bucket}", S3Http.head_bucket)
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
        await self.send(key, lambda h: h.put_object(self.object_key(key), data, self._sse_headers))

    async def sync(self) -> None:
        pass

    async def put_file(self, key: str, path: Path, *, durable: bool = True) -> None:
        """Send a finished local file up, then delete it.

        Each part goes out as a region of the file, read a chunk at a time as the
        request is sent: memory stays at a chunk per part in flight, whatever the part size.
        """
        size = os.stat(path).st_size
        if size <= self.part_size:
            await self.put(key, await anyio.to_thread.run_sync(Path(path).read_bytes))
        else:
            upload = S3FileUpload(self, key, part_size=max(self.file_part_size, -(-size // _MAX_PARTS)))
            count = -(-size // upload.part_size)
            try:
                for index in range(count):
                    await upload.send(index, str(path), min(upload.part_size, size - index * upload.part_size))
                await upload.complete(count, size)
            except BaseException:
                await upload.abort()
                raise
        os.unlink(path)

    def file_upload(self, key: str) -> S3FileUpload:
        """Send a local file that is still being written part by part (see :class:`S3FileUpload`)."""
        return S3FileUpload(self, key)

    # -- reading

    async def reader(self, key: str, size: int | None = None) -> S3Reader:
        """A reader of ``key``. Given its ``size``, no request goes out until the first read (and a
        missing blob raises ArtifactNotFoundError there); without, a HEAD finds both out now."""
        if size is None:
            head = await self.send(key, lambda h: h.head_object(self.object_key(key)))
            size = int(head["Content-Length"])
        return S3Reader(self, key, size)

    async def delete(self, key: str) -> None:
        await self.send(key, lambda h: h.delete_object(self.object_key(key)))

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


def from_settings(settings: Settings) -> S3BlobStore:
    """``ARTIFACT_PROVIDER=s3``: the bucket, endpoint, keys, encryption and timeouts the settings name."""
    credentials = None
    if settings.aws_access_key_id and settings.aws_secret_access_key is not None:
        token = settings.aws_session_token.get_secret_value() if settings.aws_session_token is not None else None
        credentials = Credentials(settings.aws_access_key_id, settings.aws_secret_access_key.get_secret_value(), token)
    return S3BlobStore(
        settings.bucket, prefix=settings.s3_prefix, endpoint_url=settings.s3_endpoint_url,
        region=settings.s3_region, sse_algorithm=settings.s3_sse_algorithm,
        sse_kms_key_id=settings.s3_sse_kms_key_id, connect_timeout=settings.s3_connect_timeout,
        read_timeout=settings.s3_read_timeout, credentials=credentials,
    )


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

    def __init__(self, store: S3BlobStore, key: str, upload_id: str, in_flight: int) -> None:
        self.store, self.key, self.upload_id, self.in_flight = store, key, upload_id, in_flight
        self.object_key = store.object_key(key)
        self.parts: dict[int, tuple[str, str]] = {}  # number -> (ETag, checksum), as completion lists them
        self.inflight: set[asyncio.Task[None]] = set()
        self.next_number = 1

    @classmethod
    async def start(cls, store: S3BlobStore, key: str, in_flight: int | None = None) -> _Multipart:
        upload_id = await store.sent(
            f"{key} (start upload)", lambda h: h.create_multipart(store.object_key(key), store._sse_headers)
        )
        return cls(store, key, upload_id, in_flight or store.max_inflight_parts)

    async def add_part(self, data: Body, number: int | None = None) -> None:
        """Start uploading ``data`` as part ``number`` (the next one by default), after waiting for room.

        Sending a number again replaces that part (the last one sent wins).
        """
        await self._settle(self.in_flight - 1)
        number = number or self.next_number
        if number > _MAX_PARTS:
            raise ProviderError(f"blob {self.key} needs more than {_MAX_PARTS} parts; raise part_size")
        self.next_number = max(self.next_number, number + 1)
        self.inflight.add(asyncio.create_task(self._upload(number, data)))

    async def _upload(self, number: int, data: Body) -> None:
        self.parts[number] = await self.store.sent(
            f"{self.key} (part {number})", lambda h: h.upload_part(self.object_key, self.upload_id, number, data)
        )

    async def _settle(self, allowed: int) -> None:
        """Wait until at most ``allowed`` parts are in flight; a failed part raises here."""
        while len(self.inflight) > allowed:
            done, _ = await asyncio.wait(self.inflight, return_when=asyncio.FIRST_COMPLETED)
            self.inflight -= done
            for task in done:
                task.result()

    async def complete(self, size: int, count: int | None = None) -> None:
        """Join parts 1 to ``count`` (every part sent, by default); parts beyond are dropped by S3."""
        await self._settle(0)
        numbers = range(1, (count or self.next_number - 1) + 1)
        if any(number not in self.parts for number in numbers):
            raise ProviderError(f"blob {self.key}: parts are missing")
        parts = [(number, *self.parts[number]) for number in numbers]

        async def finish(h: S3Http) -> None:
            try:
                await h.complete_multipart(self.object_key, self.upload_id, parts)
            except S3Error as exc:
                # A retry after a lost reply finds the upload gone: it is done if the object is whole.
                if exc.code != "NoSuchUpload":
                    raise
                head = await h.head_object(self.object_key)
                if int(head["Content-Length"]) != size:
                    raise

        await self.store.sent(f"{self.key} (complete upload)", finish)

    async def abort(self) -> None:
        for task in self.inflight:
            task.cancel()
        await asyncio.gather(*self.inflight, return_exceptions=True)
        self.inflight.clear()
        try:
            await self.store.sent(
                f"{self.key} (abort upload)", lambda h: h.abort_multipart(self.object_key, self.upload_id)
            )
        except Exception as exc:  # gc finds it later through incomplete_uploads()
            log.warning("could not abort upload %s of blob %s: %s", self.upload_id, self.key, exc)


class S3FileUpload:
    """A blob sent from a local file a part at a time, in any order, some of them while the file
    is still being written (the mount's spool, ``fusefs/spool.py``, decides which and when).

    Parts are ``part_size`` regions of the file (the last one shorter), read as they go out.
    """

    def __init__(self, store: S3BlobStore, key: str, *, part_size: int | None = None) -> None:
        self.store, self.key = store, key
        self.part_size = part_size or store.file_part_size
        self.max_parts = _MAX_PARTS
        self._upload: _Multipart | None = None

    async def send(self, index: int, path: str, length: int) -> None:
        """Start sending part ``index`` (from 0) of the file at ``path``; waits while enough are in flight.

        A part that failed earlier raises here (or in :meth:`complete`).
        """
        if self._upload is None:
            self._upload = await aio_bridge.run(_Multipart.start, self.store, self.key, FILE_PARTS_IN_FLIGHT)
        region = FileRegion(path, index * self.part_size, length)
        await aio_bridge.run(self._upload.add_part, region, index + 1)

    async def complete(self, count: int, size: int) -> None:
        """Make the blob of parts 0 to ``count - 1``, all sent (and any still going out done)."""
        assert self._upload is not None, "complete() before any part was sent"
        await aio_bridge.run(self._upload.complete, size, count)
        self._upload = None

    async def abort(self) -> None:
        upload, self._upload = self._upload, None
        if upload is not None:
            with anyio.CancelScope(shield=True):
                await aio_bridge.run(upload.abort)


class S3Reader:
    """A reader whose state lives on an asyncio loop; one bridge crossing per read."""

    def __init__(self, store: S3BlobStore, key: str, size: int) -> None:
        self._ranges = _Ranges(store, key, size)

    async def read(self, offset: int, length: int, *, ahead: bool = False) -> bytes:
        return await aio_bridge.run(self._ranges.read, offset, length, ahead)

    async def close(self) -> None:
        with anyio.CancelScope(shield=True):
            await aio_bridge.run(self._ranges.close)


class _Ranges:
    """Ranged GETs, with a streaming readahead window for sequential reads.

    A prefetcher (the mount's readahead) fetches a file's next chunks at once,
    so its reads reach the stream a little out of order. One of those (``ahead``)
    that lands a short way past the stream does not abandon it: the bytes it
    skips are kept aside (at most ``STASH_BYTES``) for the read that asked for
    them and comes next. Any other read is taken at its word: exact, unless it
    continues where the last one ended.
    """

    FIRST_WINDOW = 8 * MiB  # then to the end: a file read this far is likely read whole
    STASH_BYTES = 8 * MiB

    def __init__(self, store: S3BlobStore, key: str, size: int) -> None:
        self.store, self.key = store, key
        self.size: int | None = size  # as recorded; a blob is immutable, so it stays true
        self.pos = -1  # just past the last byte handed out
        self.window = self.FIRST_WINDOW
        self.body: Any = None
        self.body_pos = self.body_end = 0
        self.stash: dict[int, bytes] = {}  # offset -> bytes a read skipped over
        self.stashed = 0
        # One stream, one read at a time: two reads of one body split its bytes between them, or
        # one waits forever (the mount's readahead reads a file's chunks concurrently).
        self.lock = asyncio.Lock()

    def _unstash(self, at: int, want: int) -> bytes | None:
        """Up to ``want`` stashed bytes from ``at``, or None; what is taken is forgotten."""
        for start, data in self.stash.items():
            if start <= at < start + len(data):
                del self.stash[start]
                cut = at - start
                taken = data[cut : cut + want]
                if cut:
                    self.stash[start] = data[:cut]
                if cut + len(taken) < len(data):
                    self.stash[at + len(taken)] = data[cut + len(taken) :]
                self.stashed -= len(taken)
                return taken
        return None

    async def _skip_to(self, at: int) -> bool:
        """Keep the open stream's bytes up to ``at`` aside; False when the stream ends first."""
        gap = at - self.body_pos
        if self.body is None or gap <= 0 or at >= self.body_end:
            return False
        data = bytearray()
        while len(data) < gap:
            chunk = await self.body.content.read(gap - len(data))
            if not chunk:
                break
            data += chunk
        self.stash[self.body_pos] = bytes(data)
        self.stashed += len(data)
        self.body_pos += len(data)
        self.pos = self.body_pos
        return self.body_pos == at

    def _near(self, at: int, ahead: bool) -> bool:
        """A prefetcher's read a little past the stream, whose skipped bytes fit aside."""
        gap = at - max(self.pos, 0)
        return ahead and 0 <= gap and self.stashed + gap <= self.STASH_BYTES

    def _plan(self, at: int, want: int, ahead: bool) -> tuple[int, int]:
        """The range of a new GET for a read of ``want`` bytes at ``at``."""
        start, end = at, at + want
        if at == self.pos or self._near(at, ahead):  # sequential: stream ahead, from where the stream ended
            start = max(self.pos, 0)
            end = max(end, start + self.window)
            self.window = self.store.max_readahead
        else:  # a jump: what was kept aside is for a reader that is gone
            self.stash.clear()
            self.stashed = 0
        return start, end if self.size is None else min(end, self.size)

    async def _open(self, h: S3Http, start: int, end: int) -> bool:
        """Open a GET of bytes ``[start, end)``; False when ``start`` is past the end."""
        try:
            reply = await h.get_range(self.store.object_key(self.key), start, end)
        except S3Error as exc:
            if exc.code == "InvalidRange" or exc.status == 416:
                self.size = start if self.size is None else self.size
                return False
            raise
        total = reply.headers.get("Content-Range", "").rpartition("/")[2]
        if total.isdigit():
            self.size = int(total)
        self.body, self.body_pos, self.body_end = reply, start, min(end, self.size or end)
        return True

    async def read(self, offset: int, length: int, ahead: bool) -> bytes:
        out = bytearray()

        async def fill(h: S3Http) -> None:
            """Fetch the rest of the request; a retry resumes after the bytes already got."""
            try:
                while len(out) < length:
                    at, want = offset + len(out), length - len(out)
                    if self.size is not None:
                        want = min(want, self.size - at)
                    if want <= 0:
                        return
                    kept = self._unstash(at, want)
                    if kept is not None:
                        out.extend(kept)
                        continue
                    if self.body is None or self.body_pos != at and not (
                        self._near(at, ahead) and await self._skip_to(at)
                    ):
                        self._drop_body()
                        start, end = self._plan(at, want, ahead)
                        if not await self._open(h, start, end) or start < at and not await self._skip_to(at):
                            return  # the blob ends before ``at``
                    chunk = await self.body.content.read(min(want, self.body_end - self.body_pos))
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
                await self.store.sent(f"{self.key} @{offset}", fill)
        return bytes(out)

    def _drop_body(self) -> None:
        if self.body is not None:
            self.body.release()  # a body read to its end gives its connection back; any other is closed
            self.body = None

    async def close(self) -> None:
        self._drop_body()
        self.stash.clear()
