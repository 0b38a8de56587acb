"""The S3 requests of the data path, sent straight over aiohttp.

Reading, writing and deleting objects (and the multipart calls of a write)
are what every open, read and close of a file costs. Through botocore each
such request spends about 2 ms of CPU in endpoint rules, hooks, signing and
response parsing, as much as a round trip to the store; here it is a signed
aiohttp request and a header or two read back. Everything else (listings,
presigned URLs, ``gc``) stays on botocore, made only when first needed.

Signing is :mod:`core.backends.blobs.s3.sigv4`; credentials are the keys the
settings carry (``AWS_ACCESS_KEY_ID`` ...), else botocore's usual chain
(profile, SSO, instance role), refreshed when they rotate.
Every PutObject and UploadPart carries the SHA-256 of its body
(``x-amz-checksum-sha256``), which S3 checks before it stores a byte: a body
damaged on the way is refused (``BadDigest``) and sent again, instead of
being stored and found at the next verified read.
Errors are :class:`S3Error` with S3's status and code, so the store's retry
rules see the same facts they see from botocore.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import xml.etree.ElementTree as ET
from collections.abc import AsyncIterator, Iterator, Mapping
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

import aiohttp
from yarl import URL

from core.backends.blobs.s3.sigv4 import Credentials, canonical_query, sign, uri_encode
from core.errors import ProviderError

HASH_IN_THREAD = 256 * 1024  # a bigger body is hashed off the event loop
FILE_CHUNK = 1 << 20  # a file region goes out this much at a time
CHECKSUM_HEADER = "x-amz-checksum-sha256"
_EMPTY_DIGEST = hashlib.sha256(b"").digest()


class FileRegion:
    """``length`` bytes of a local file from ``offset``: a request body that is never whole in memory.

    A part read into memory, then into the socket's send buffer (asyncio copies
    what the socket cannot take at once), costs twice its size while it is in
    flight; a region costs one chunk.
    """

    __slots__ = ("length", "offset", "path")

    def __init__(self, path: str, offset: int, length: int) -> None:
        self.path, self.offset, self.length = path, offset, length

    def __len__(self) -> int:
        return self.length

    def _chunks(self) -> Iterator[bytes]:
        with open(self.path, "rb") as src:
            src.seek(self.offset)
            left = self.length
            while left > 0:
                chunk = src.read(min(FILE_CHUNK, left))
                if not chunk:
                    raise ProviderError(f"{self.path} ended {left} bytes before the part it was to send")
                left -= len(chunk)
                yield chunk

    def sha256(self) -> bytes:
        """The region's digest, read a chunk at a time (blocking: run it off the loop)."""
        digest = hashlib.sha256()
        for chunk in self._chunks():
            digest.update(chunk)
        return digest.digest()

    async def stream(self) -> AsyncIterator[bytes]:
        chunks = self._chunks()
        while (chunk := await asyncio.to_thread(next, chunks, None)) is not None:
            yield chunk


Body = bytes | bytearray | memoryview | FileRegion


async def sha256_of(body: Body) -> bytes:
    """The SHA-256 of a request body; a big one is hashed off the event loop."""
    if not body:
        return _EMPTY_DIGEST
    if isinstance(body, FileRegion):
        return await asyncio.to_thread(body.sha256)
    if len(body) < HASH_IN_THREAD:
        return hashlib.sha256(body).digest()
    return await asyncio.to_thread(lambda: hashlib.sha256(body).digest())


def checksum_text(digest: bytes) -> str:
    """A digest as S3's checksum headers and elements carry it (base64, where SigV4 wants hex)."""
    return base64.b64encode(digest).decode("ascii")


class S3Error(Exception):
    """S3 answered with an error status (or, for CompleteMultipartUpload, an error body)."""

    def __init__(self, status: int, code: str, message: str = "") -> None:
        super().__init__(f"{status} {code}: {message}" if message else f"{status} {code}")
        self.status, self.code, self.message = status, code, message


def _xml_fields(body: bytes, *names: str) -> dict[str, str]:
    """The first text of each named element anywhere in an S3 XML reply (namespaces ignored)."""
    found: dict[str, str] = {}
    try:
        root = ET.fromstring(body)
    except ET.ParseError:
        return found
    for element in root.iter():
        tag = element.tag.rpartition("}")[2]
        if tag in names and tag not in found:
            found[tag] = element.text or ""
    return found


def _error(status: int, body: bytes) -> S3Error:
    fields = _xml_fields(body, "Code", "Message") if body else {}
    return S3Error(status, fields.get("Code") or str(status), fields.get("Message", ""))


class S3Http:
    """One bucket's object requests over one aiohttp session (one per asyncio loop, like any client)."""

    def __init__(
        self,
        bucket: str,
        *,
        endpoint_url: str | None,
        region: str,
        path_style: bool,
        connect_timeout: float,
        read_timeout: float,
        max_connections: int,
        credentials: Credentials | None = None,
    ) -> None:
        self.bucket, self.region = bucket, region
        endpoint = urlsplit(endpoint_url or f"https://s3.{region}.amazonaws.com")
        self._scheme = endpoint.scheme
        if path_style:
            self._host, self._root = endpoint.netloc, f"{endpoint.path.rstrip('/')}/{uri_encode(bucket, keep_slash=False)}/"
        else:
            self._host, self._root = f"{bucket}.{endpoint.netloc}", f"{endpoint.path.rstrip('/')}/"
        self._timeout = aiohttp.ClientTimeout(sock_connect=connect_timeout, sock_read=read_timeout)
        self._max_connections = max_connections
        self._session: aiohttp.ClientSession | None = None
        self._given = credentials  # keys from the settings; None: botocore's chain finds them
        self._credentials: Any = None  # the given keys, or botocore's (refreshing) object

    # -- plumbing

    async def open(self) -> None:
        self._credentials = self._given or await resolve_credentials()
        connector = aiohttp.TCPConnector(limit=self._max_connections, ttl_dns_cache=300)
        self._session = aiohttp.ClientSession(connector=connector, timeout=self._timeout, auto_decompress=False)

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def _frozen(self) -> Credentials:
        keys = self._credentials
        if isinstance(keys, Credentials):
            return keys
        frozen = await keys.get_frozen_credentials()  # botocore's refresh happens here
        return Credentials(frozen.access_key, frozen.secret_key, frozen.token)

    async def send(
        self,
        method: str,
        key: str | None,
        *,
        query: Mapping[str, str] | None = None,
        headers: Mapping[str, str] | None = None,
        body: Body = b"",
        digest: bytes | None = None,
    ) -> aiohttp.ClientResponse:
        """One signed request for ``key`` (None: the bucket); an error status raises :class:`S3Error`.

        ``digest`` is the body's SHA-256 when the caller has taken it already.
        The response is returned unread: the caller reads (or streams) the body and releases it.
        """
        assert self._session is not None, "S3Http.open() was not called"
        # The payload is signed over TLS too (botocore sends UNSIGNED-PAYLOAD there): a PUT's body is
        # hashed for its checksum anyway, so signing it costs no second pass, and a store that ignores
        # checksum headers still has the signed hash to check the bytes against.
        payload_hash = (digest if digest is not None else await sha256_of(body)).hex()
        url, signed = self.prepare(
            method, key, query or {}, headers or {}, payload_hash, await self._frozen(), datetime.now(UTC)
        )
        data: Any = body or None
        if isinstance(body, FileRegion):
            data = body.stream()
            signed["content-length"] = str(body.length)  # S3 takes no chunked bodies
        response = await self._session.request(
            method, URL(url, encoded=True), headers=signed, data=data,
            skip_auto_headers=("Content-Type", "Accept-Encoding"),
        )
        if response.status >= 300:
            try:
                raise _error(response.status, b"" if method == "HEAD" else await response.read())
            finally:
                response.release()
        return response

    def prepare(
        self,
        method: str,
        key: str | None,
        query: Mapping[str, str],
        headers: Mapping[str, str],
        payload_sha256: str,
        credentials: Credentials,
        now: datetime,
    ) -> tuple[str, dict[str, str]]:
        """The URL (encoded) and the signed headers of a request."""
        path = self._root + (uri_encode(key, keep_slash=True) if key else "")
        query_text = canonical_query(dict(query))
        signed = sign(method, self._host, path, query_text, dict(headers), payload_sha256, credentials, self.region, now)
        return f"{self._scheme}://{self._host}{path}" + (f"?{query_text}" if query_text else ""), signed

    async def _done(self, method: str, key: str | None, **kwargs: Any) -> tuple[Mapping[str, str], bytes]:
        """A request whose whole (small) reply body is read."""
        response = await self.send(method, key, **kwargs)
        try:
            return response.headers, await response.read()
        finally:
            response.release()

    # -- objects

    async def head_bucket(self) -> None:
        await self._done("HEAD", None)

    async def head_object(self, key: str) -> Mapping[str, str]:
        return (await self._done("HEAD", key))[0]

    async def get_range(self, key: str, start: int, end: int) -> aiohttp.ClientResponse:
        """A streaming GET of bytes ``[start, end)``; read ``.content``, then ``close()`` it."""
        return await self.send("GET", key, headers={"Range": f"bytes={start}-{end - 1}"})

    async def _checked_put(
        self, key: str, body: Body, headers: Mapping[str, str], query: Mapping[str, str] | None = None
    ) -> tuple[Mapping[str, str], str]:
        """A PUT whose body S3 checks against its SHA-256; returns the reply's headers and the checksum sent.

        The body is hashed once, here, for both the checksum and the signed payload hash; a retry
        comes back here and hashes again, so a file region that changed under a refused send is
        sent with the hash of what it holds now.
        """
        digest = await sha256_of(body)
        checksum = checksum_text(digest)
        reply, _ = await self._done(
            "PUT", key, query=query, headers={**headers, CHECKSUM_HEADER: checksum}, body=body, digest=digest
        )
        return reply, checksum

    async def put_object(self, key: str, body: Body, headers: Mapping[str, str]) -> None:
        await self._checked_put(key, body, headers)

    async def delete_object(self, key: str) -> None:
        await self._done("DELETE", key)

    # -- multipart

    async def create_multipart(self, key: str, headers: Mapping[str, str]) -> str:
        """Start an upload whose parts all carry their SHA-256 (S3 then wants each listed at completion)."""
        headers = {**headers, "x-amz-checksum-algorithm": "SHA256"}
        _, body = await self._done("POST", key, query={"uploads": ""}, headers=headers)
        upload_id = _xml_fields(body, "UploadId").get("UploadId")
        if not upload_id:
            raise S3Error(500, "InternalError", "CreateMultipartUpload returned no UploadId")
        return upload_id

    async def upload_part(self, key: str, upload_id: str, number: int, body: Body) -> tuple[str, str]:
        """Send part ``number``; returns its ETag and checksum, both of which completion lists."""
        reply, checksum = await self._checked_put(
            key, body, {}, {"partNumber": str(number), "uploadId": upload_id}
        )
        etag = reply.get("ETag")
        if not etag:
            raise S3Error(500, "InternalError", f"UploadPart {number} returned no ETag")
        return etag, checksum

    async def complete_multipart(self, key: str, upload_id: str, parts: list[tuple[int, str, str]]) -> None:
        """Join ``(number, ETag, checksum)`` parts, as :meth:`upload_part` returned them."""
        listed = "".join(
            f"<Part><PartNumber>{n}</PartNumber><ETag>{_xml_text(etag)}</ETag>"
            f"<ChecksumSHA256>{checksum}</ChecksumSHA256></Part>"
            for n, etag, checksum in parts
        )
        document = f'<CompleteMultipartUpload xmlns="http://s3.amazonaws.com/doc/2006-03-01/">{listed}</CompleteMultipartUpload>'
        _, body = await self._done(
            "POST", key, query={"uploadId": upload_id}, body=document.encode(), headers={"Content-Type": "application/xml"}
        )
        if b"<Error>" in body[:512]:  # S3 may answer 200 and report the failure in the body
            raise _error(500, body)

    async def abort_multipart(self, key: str, upload_id: str) -> None:
        await self._done("DELETE", key, query={"uploadId": upload_id})


async def resolve_credentials() -> Any:
    """Keys from botocore's whole chain (environment, profile, SSO, instance role), which refreshes
    what expires. The chain weighs ~7 MiB, so it is loaded only for a store given no keys."""
    from aiobotocore.session import AioSession

    found = await AioSession().get_credentials()
    if found is None:
        raise ProviderError("no AWS credentials found (environment, profile or instance role)")
    return found


def _xml_text(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace('"', "&quot;")
