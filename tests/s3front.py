"""A strict S3 front for the tests: an HTTP proxy before moto that checks what moto does not.

moto (5.2) keeps a PUT whatever its ``x-amz-checksum-sha256`` says (its
``_get_checksum`` leaves "AWS computes the provided value and verifies" as a
TODO), and it checks no ``Content-MD5`` or signed payload hash either, so a
client that sent wrong checksums, or none, would pass every test run on it.
The front stands where S3 would check, on 127.0.0.1 in a thread of its own:

- a PUT whose body does not match its ``x-amz-checksum-sha256`` is refused
  with S3's ``400 BadDigest``, one whose body does not match its signed
  payload hash (``x-amz-content-sha256``) with ``400 XAmzContentSHA256Mismatch``,
  before moto sees either;
- an upload started with ``x-amz-checksum-algorithm: SHA256`` must list each
  part's checksum, as accepted, when it is completed (else ``400 InvalidPart``),
  as S3 requires;
- every request is recorded (:class:`Seen`): a test counts the PUTs that came
  without a checksum, or with a wrong one;
- :meth:`S3Front.corrupt` flips one byte of the body of the next PUTs, before
  checking: what a bad NIC, a bad cable or a broken proxy does on the way.

Everything else goes to moto unchanged (method, path and query as sent, every
header but the connection's own) and moto's answer comes back as it is. moto
checks no signature, so the Host the client signed need not be moto's.
"""

from __future__ import annotations

import base64
import hashlib
import re
import threading
from dataclasses import dataclass
from typing import Self
from xml.etree import ElementTree as ET

import aiohttp
from aiohttp import web
from loopthread import LoopThread
from multidict import CIMultiDict
from yarl import URL

_HOP_BY_HOP = {"host", "connection", "keep-alive", "transfer-encoding", "content-length", "te", "upgrade"}
_NOT_A_HASH = re.compile(r"UNSIGNED-PAYLOAD|STREAMING-.*")
_REFUSALS = {
    "BadDigest": "The SHA256 you specified did not match the calculated checksum.",
    "XAmzContentSHA256Mismatch": "The provided 'x-amz-content-sha256' header does not match what was computed.",
    "InvalidPart": "One or more of the specified parts could not be found, or its checksum is not the one uploaded.",
}


@dataclass(frozen=True)
class Seen:
    """One request as the front saw it, and how it was answered."""

    operation: str  # PutObject, UploadPart, CreateMultipartUpload, CompleteMultipartUpload, or the method
    path: str
    size: int  # of the body, as received
    checksum: str | None  # x-amz-checksum-sha256 as sent
    checksum_ok: bool | None  # None: no checksum came
    payload_hash: str | None  # x-amz-content-sha256 as sent
    algorithm: str | None  # x-amz-checksum-algorithm as sent (CreateMultipartUpload)
    listed: tuple[tuple[int, str | None], ...]  # CompleteMultipartUpload: (part number, ChecksumSHA256) listed
    corrupted: bool  # the front flipped a byte of the body
    status: int
    error: str | None  # the S3 error code the front answered with, if it refused

    @property
    def carries_body(self) -> bool:
        return self.operation in ("PutObject", "UploadPart") and self.size > 0


def operation(method: str, query: object) -> str:
    """The S3 operation of a request, for the data path's requests (other ones go by their method)."""
    if method == "PUT":
        return "UploadPart" if "partNumber" in query else "PutObject"  # type: ignore[operator]
    if method == "POST" and "uploads" in query:  # type: ignore[operator]
        return "CreateMultipartUpload"
    if method == "POST" and "uploadId" in query:  # type: ignore[operator]
        return "CompleteMultipartUpload"
    return method


def sha256_b64(data: bytes) -> str:
    return base64.b64encode(hashlib.sha256(data).digest()).decode("ascii")


def s3_error(code: str) -> web.Response:
    """An error answer as S3 words it (the client parses Code and Message)."""
    document = (
        '<?xml version="1.0" encoding="UTF-8"?>'
        f"<Error><Code>{code}</Code><Message>{_REFUSALS[code]}</Message><RequestId>s3front</RequestId></Error>"
    )
    return web.Response(status=400, body=document.encode(), content_type="application/xml")


def _children(element: ET.Element, name: str) -> list[ET.Element]:
    return [child for child in element if child.tag.rpartition("}")[2] == name]


def _text(element: ET.Element, name: str) -> str | None:
    found = _children(element, name)
    return found[0].text if found else None


def listed_parts(document: bytes) -> tuple[tuple[int, str | None], ...]:
    """``(PartNumber, ChecksumSHA256)`` of each part a CompleteMultipartUpload document lists."""
    try:
        root = ET.fromstring(document)
    except ET.ParseError:
        return ()
    parts = _children(root, "Part")
    return tuple((int(_text(part, "PartNumber") or 0), _text(part, "ChecksumSHA256")) for part in parts)


class S3Front:
    """The front before one moto server; ``endpoint`` is what a store under test is given."""

    def __init__(self, upstream: str, host: str = "127.0.0.1") -> None:
        self.upstream, self.host = upstream.rstrip("/"), host
        self.port = 0
        self._lock = threading.Lock()
        self._seen: list[Seen] = []
        self._to_corrupt: list[str | None] = []  # one entry per PUT still to damage: its operation, or any
        self._sha256_uploads: set[str] = set()  # upload ids started with x-amz-checksum-algorithm: SHA256
        self._accepted: dict[tuple[str, int], str] = {}  # (upload id, part number) -> checksum of the part kept
        self._serving = LoopThread("s3front")
        self._runner: web.AppRunner | None = None
        self._session: aiohttp.ClientSession | None = None

    @property
    def endpoint(self) -> str:
        return f"http://{self.host}:{self.port}"

    # -- what a test asks

    @property
    def seen(self) -> list[Seen]:
        """Every request so far, in the order the front answered them."""
        with self._lock:
            return list(self._seen)

    def puts(self) -> list[Seen]:
        """The PutObject and UploadPart requests that carried bytes."""
        return [seen for seen in self.seen if seen.carries_body]

    def corrupt(self, count: int = 1, operation: str | None = None) -> None:
        """Flip one byte of the body of the next ``count`` PUTs (of ``operation`` only, if given)."""
        with self._lock:
            self._to_corrupt.extend([operation] * count)

    # -- lifecycle

    def start(self) -> Self:
        self._serving.start(self._open, self._shut)
        if not self.port:
            raise RuntimeError("the S3 front did not start")
        return self

    def close(self) -> None:
        """Stop serving, close every connection, end the thread."""
        self._serving.stop()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    async def _open(self) -> None:
        app = web.Application(client_max_size=1 << 30)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._session = aiohttp.ClientSession(auto_decompress=False)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, 0)
        await site.start()
        self.port = self._runner.addresses[0][1]

    async def _shut(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
        if self._session is not None:
            await self._session.close()

    # -- answering

    def _take_corruption(self, op: str) -> bool:
        with self._lock:
            for i, wanted in enumerate(self._to_corrupt):
                if wanted in (None, op):
                    del self._to_corrupt[i]
                    return True
        return False

    def _refusal(self, op: str, request: web.Request, body: bytes) -> str | None:
        """The S3 error code S3 would answer this request with for its checksums, or None."""
        if op in ("PutObject", "UploadPart") and body:
            checksum = request.headers.get("x-amz-checksum-sha256")
            if checksum is not None and checksum != sha256_b64(body):
                return "BadDigest"
            payload_hash = request.headers.get("x-amz-content-sha256")
            signed = payload_hash and not _NOT_A_HASH.fullmatch(payload_hash)
            if signed and payload_hash != hashlib.sha256(body).hexdigest():
                return "XAmzContentSHA256Mismatch"
        if op == "CompleteMultipartUpload":
            upload_id = request.query["uploadId"]
            with self._lock:
                declared = upload_id in self._sha256_uploads
                accepted = {number: c for (up, number), c in self._accepted.items() if up == upload_id}
            if declared and any(accepted.get(number) != c for number, c in listed_parts(body)):
                return "InvalidPart"
        return None

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        op = operation(request.method, request.query)
        corrupted = op in ("PutObject", "UploadPart") and bool(body) and self._take_corruption(op)
        if corrupted:
            damaged = bytearray(body)
            damaged[len(damaged) // 2] ^= 0xFF
            body = bytes(damaged)
        refusal = self._refusal(op, request, body)
        if refusal is not None:
            self._record(op, request, body, corrupted, 400, refusal)
            return s3_error(refusal)
        headers = CIMultiDict((k, v) for k, v in request.headers.items() if k.lower() not in _HOP_BY_HOP)
        assert self._session is not None
        async with self._session.request(
            request.method, URL(self.upstream + request.raw_path, encoded=True), headers=headers,
            data=body or None, skip_auto_headers=("Content-Type", "Accept-Encoding", "User-Agent"),
        ) as reply:
            payload = await reply.read()
            self._remember(op, request, reply.status, payload)
            self._record(op, request, body, corrupted, reply.status, None)
            answer = CIMultiDict((k, v) for k, v in reply.headers.items() if k.lower() not in _HOP_BY_HOP)
        if request.method == "HEAD":  # no body, and the size of the one a GET would have
            response = web.StreamResponse(status=reply.status, headers=answer)
            if "Content-Length" in reply.headers:
                response.content_length = int(reply.headers["Content-Length"])
            return response
        return web.Response(status=reply.status, body=payload, headers=answer)

    def _remember(self, op: str, request: web.Request, status: int, payload: bytes) -> None:
        """What completing an upload is later checked against: its declared algorithm, its parts' checksums."""
        if status != 200:
            return
        with self._lock:
            algorithm = request.headers.get("x-amz-checksum-algorithm", "").upper()
            if op == "CreateMultipartUpload" and algorithm == "SHA256":
                upload_id = _text(ET.fromstring(payload), "UploadId")
                if upload_id:
                    self._sha256_uploads.add(upload_id)
            elif op == "UploadPart":
                number = int(request.query["partNumber"])
                self._accepted[(request.query["uploadId"], number)] = request.headers.get("x-amz-checksum-sha256", "")

    def _record(self, op: str, request: web.Request, body: bytes, corrupted: bool, status: int,
                error: str | None) -> None:
        checksum = request.headers.get("x-amz-checksum-sha256")
        seen = Seen(
            operation=op, path=request.path, size=len(body), checksum=checksum,
            checksum_ok=None if checksum is None else checksum == sha256_b64(body),
            payload_hash=request.headers.get("x-amz-content-sha256"),
            algorithm=request.headers.get("x-amz-checksum-algorithm"),
            listed=listed_parts(body) if op == "CompleteMultipartUpload" else (),
            corrupted=corrupted, status=status, error=error,
        )
        with self._lock:
            self._seen.append(seen)
