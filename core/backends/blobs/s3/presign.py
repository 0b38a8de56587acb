"""S3's own presigned URLs and multipart calls: :class:`~core.transfers.urls.NativePresign` for S3.

Signing a URL is a local computation in botocore (no request goes out); it
runs on the client of the bridge's asyncio loop like every other S3 call, so
it signs with the same credentials the data path uses. URLs are SigV4
(``X-Amz-Expires``, ``X-Amz-SignedHeaders=host``): the signature covers the
method, the bucket and key, the query (upload id, part number, response
overrides) and the expiry, and asks the client for no header of its own, so
a plain ``curl`` can use it.

Every presigned upload is a multipart upload to the final blob key (see
:class:`~core.transfers.urls.NativePresign` for why). Reading an object back for its
SHA-256 is one streaming GET whose chunks are hashed in a worker thread while
the next one arrives: memory stays at a couple of chunks whatever the size.
"""

from __future__ import annotations

import hashlib
from collections.abc import Awaitable, Callable, Collection
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import quote

import anyio
import anyio.to_thread
import botocore.exceptions
from pydantic import BaseModel

from core.backends.blobs.base import NativeObject, NativePart
from core.errors import ArtifactCorruptedError, ArtifactNotFoundError, InvalidPartError, UploadNotFoundError


class IncompleteUpload(BaseModel):
    """A multipart upload that was started and never completed or aborted."""

    key: str  # the blob key, without the store's prefix
    upload_id: str
    initiated: datetime


T = TypeVar("T")
HASH_CHUNK = 1 << 20
EMPTY_KEY = "presign/empty"  # one shared zero-byte object answers every empty artifact's URL
_PART_REFUSALS = {"InvalidPart", "InvalidPartOrder", "EntityTooSmall", "MalformedXML"}


def _code(exc: botocore.exceptions.ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


def _sole(group: BaseExceptionGroup) -> BaseException:
    while isinstance(group, BaseExceptionGroup) and len(group.exceptions) == 1:
        group = group.exceptions[0]
    return group


def content_disposition(filename: str) -> str:
    """The header a download answers with: shown inline, saved under the artifact's name."""
    return f"inline; filename*=UTF-8''{quote(filename, safe='')}"


class S3Presign:
    """Mixed into :class:`~core.backends.blobs.s3.store.S3BlobStore`, whose bucket, keys, SSE and calls it uses."""

    min_part_bytes = 5 << 20  # S3's smallest part but the last
    _empty_ready: bool = False

    if TYPE_CHECKING:  # provided by S3BlobStore
        bucket: str
        _sse: dict[str, str]

        def object_key(self, key: str) -> str: ...

        async def call(self, what: str, fn: Callable[[Any], Awaitable[T]]) -> T: ...

        async def abort_upload(self, key: str, upload_id: str) -> None: ...

        async def incomplete_uploads(self) -> list[IncompleteUpload]: ...

    # -- URLs

    async def _sign(self, operation: str, params: dict[str, Any], expires: int) -> str:
        return await self.call(
            f"sign {operation}", lambda c: c.generate_presigned_url(operation, Params=params, ExpiresIn=expires)
        )

    async def presign_get(self, key: str | None, expires: int, *, mime: str, filename: str) -> str:
        if key is None:
            key = await self._empty_object()
        params = {
            "Bucket": self.bucket, "Key": self.object_key(key),
            "ResponseContentType": mime, "ResponseContentDisposition": content_disposition(filename),
        }
        return await self._sign("get_object", params, expires)

    async def _empty_object(self) -> str:
        """The shared empty object, written once per process (a PUT of nothing is idempotent)."""
        if not self._empty_ready:
            await self.call(
                EMPTY_KEY, lambda c: c.put_object(Bucket=self.bucket, Key=self.object_key(EMPTY_KEY), Body=b"", **self._sse)
            )
            self._empty_ready = True
        return EMPTY_KEY

    async def presign_part(self, key: str, native_id: str, part_number: int, expires: int) -> str:
        params = {"Bucket": self.bucket, "Key": self.object_key(key), "UploadId": native_id, "PartNumber": part_number}
        return await self._sign("upload_part", params, expires)

    # -- multipart uploads

    async def create_multipart(self, key: str, *, mime: str) -> str:
        reply = await self.call(
            f"{key} (start presigned upload)",
            lambda c: c.create_multipart_upload(Bucket=self.bucket, Key=self.object_key(key), ContentType=mime, **self._sse),
        )
        return str(reply["UploadId"])

    async def list_parts(self, key: str, native_id: str) -> list[NativePart] | None:
        async def page(c: Any, marker: int) -> dict | None:
            try:
                return await c.list_parts(
                    Bucket=self.bucket, Key=self.object_key(key), UploadId=native_id, PartNumberMarker=marker
                )
            except botocore.exceptions.ClientError as exc:
                if _code(exc) == "NoSuchUpload":
                    return None
                raise

        parts: list[NativePart] = []
        marker = 0
        while True:
            reply = await self.call(f"{key} (list parts)", lambda c, m=marker: page(c, m))
            if reply is None:
                return None
            parts += [NativePart(part_number=p["PartNumber"], etag=p["ETag"], size=p["Size"]) for p in reply.get("Parts", ())]
            if not reply.get("IsTruncated"):
                return parts
            marker = int(reply["NextPartNumberMarker"])

    async def complete_multipart(self, key: str, native_id: str, parts: list[tuple[int, str]]) -> None:
        listed = {"Parts": [{"PartNumber": n, "ETag": etag} for n, etag in parts]}

        async def finish(c: Any) -> None:
            try:
                await c.complete_multipart_upload(
                    Bucket=self.bucket, Key=self.object_key(key), UploadId=native_id, MultipartUpload=listed
                )
            except botocore.exceptions.ClientError as exc:
                code = _code(exc)
                if code in _PART_REFUSALS:
                    raise InvalidPartError(f"S3 refused the parts: {code}: {exc.response['Error'].get('Message', '')}") from None
                if code == "NoSuchUpload":
                    raise UploadNotFoundError(f"S3 upload {native_id} is gone (completed or aborted)") from None
                raise

        await self.call(f"{key} (complete presigned upload)", finish)

    async def abort_multipart(self, key: str, native_id: str) -> None:
        await self.abort_upload(key, native_id)

    async def abort_incomplete(self, older_than: timedelta = timedelta(days=1), spare: Collection[str] = ()) -> int:
        """Abort uploads started before ``older_than`` ago (a crash's leftovers), except ``spare`` ids.

        ``spare`` holds the presigned uploads still open: their age says
        nothing, a client may take days to send its parts.
        """
        cutoff = datetime.now(UTC) - older_than
        stale = [u for u in await self.incomplete_uploads() if u.initiated <= cutoff and u.upload_id not in spare]
        for upload in stale:
            await self.abort_upload(upload.key, upload.upload_id)
        return len(stale)

    # -- objects

    async def stat(self, key: str) -> NativeObject | None:
        try:
            head = await self.call(key, lambda c: c.head_object(Bucket=self.bucket, Key=self.object_key(key)))
        except ArtifactNotFoundError:
            return None
        return NativeObject(size=int(head["ContentLength"]), etag=str(head["ETag"]))

    async def digest(self, key: str) -> NativeObject:
        async def read(c: Any) -> NativeObject:
            reply = await c.get_object(Bucket=self.bucket, Key=self.object_key(key))
            body, expected = reply["Body"], int(reply["ContentLength"])
            sha = hashlib.sha256()
            size = 0
            to_hash, chunks = anyio.create_memory_object_stream[bytes](2)

            async def hash_all() -> None:
                async with chunks:
                    async for chunk in chunks:
                        await anyio.to_thread.run_sync(sha.update, chunk)

            try:
                async with anyio.create_task_group() as tg:
                    tg.start_soon(hash_all)
                    async with to_hash:
                        while chunk := await body.read(HASH_CHUNK):
                            size += len(chunk)
                            await to_hash.send(chunk)
            except BaseExceptionGroup as group:
                raise _sole(group) from None  # so the retry policy sees the fault itself
            finally:
                body.close()
            if size != expected:
                raise ArtifactCorruptedError(f"blob {key}: read {size} bytes of {expected}")
            return NativeObject(size=size, etag=str(reply["ETag"]), sha256=sha.hexdigest())

        return await self.call(f"{key} (hash)", read)
