"""The HTTP service that honours presigned URLs for backends without their own (filesystem, memory).

A plain ASGI application, written on the ASGI interface itself: it answers
four requests and needs no framework. ``serve`` runs it under hypercorn on
whatever loop the caller is on: trio (``artifactfs serve``, or inside the
mount: ``artifactfs mount --serve``) or asyncio (an application that keeps
artifacts in memory and serves them from its own process).

    GET/HEAD /v1/objects/{artifact_id}           Range (one range), ETag, If-None-Match, If-Range
    PUT      /v1/uploads/{upload_id}             a presign_upload body; answers the ETag
    PUT      /v1/uploads/{upload_id}/parts/{n}   one multipart part; answers the ETag

Bodies stream both ways in 1 MiB pieces: memory stays bounded whatever the
size. A refused URL gets 403 and a one-line reason; the path is only ever
parsed into a signed target (an id), never joined onto a file path.

Running it inside another trio program (the mount)::

    async with trio.open_nursery() as nursery:
        url = await nursery.start(presign_service.serve, transfers, "127.0.0.1", 8470)
"""

from __future__ import annotations

import email.utils
import logging
import re
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any
from urllib.parse import parse_qsl, quote

import anyio
import anyio.abc

from core.errors import (
    AccessDeniedError,
    ArtifactCorruptedError,
    ArtifactNotFoundError,
    ArtifactStoreError,
    ArtifactTooLargeError,
    InvalidArgumentError,
    ProviderError,
    QuotaExceededError,
    UploadConflictError,
    UrlRefusedError,
)
from core.infra.fdlimit import connection_cap, raise_fd_limit
from core.settings import PresignSettings
from core.transfers.connections import bind, lifespan, url_of
from core.transfers.engine import Download, Transfers
from core.transfers.urls import Grant, Refusal, TargetKind
from core.tree.namespace import NS

log = logging.getLogger("artifactfs.presign")

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]

RECV_BYTES = 256 * 1024
MAX_HEADER_BYTES = 16 * 1024  # request line and headers; a URL is well under 1 KiB
_RANGE = re.compile(r"bytes=([0-9]*)-([0-9]*)", re.ASCII)  # \d alone would take any script's digits
# More digits than any size or offset can have: such a number is read as "past the end", never
# converted (int() of over 4,300 digits raises ValueError, which would answer 500).
_MAX_DIGITS = 20
_HUGE = 10**_MAX_DIGITS
_HEADER_SAFE = re.compile(r"[ -~]*", re.ASCII)  # printable ASCII: what a header value may carry here
_FALLBACK_MIME = "application/octet-stream"

# The one place a store error becomes an HTTP status (refusals before anything was sent).
_STATUS: list[tuple[type[ArtifactStoreError], int]] = [
    (UrlRefusedError, 403),
    (ArtifactNotFoundError, 404),  # also expired artifacts, and uploads gone or expired
    (UploadConflictError, 409),
    (ArtifactTooLargeError, 413),
    (QuotaExceededError, 507),
    (AccessDeniedError, 403),
    (InvalidArgumentError, 400),
    (ProviderError, 503),
    (ArtifactCorruptedError, 500),
]


class ClientGone(Exception):
    """The client closed the connection before its request body ended."""


class ClientStalled(Exception):
    """The request body stopped arriving for longer than the settings allow."""


def status_of(exc: ArtifactStoreError) -> int:
    for cls, status in _STATUS:
        if isinstance(exc, cls):
            return status
    return 500


class PresignService:
    """The ASGI application; one per :class:`Transfers` (that is, per store)."""

    def __init__(self, transfers: Transfers) -> None:
        self.transfers = transfers
        self.io_timeout = transfers.settings.io_timeout

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await lifespan(receive, send)
        elif scope["type"] == "http":
            await self._http(scope, receive, send)

    async def _http(self, scope: Scope, receive: Receive, send: Send) -> None:
        method = scope["method"]
        started = False

        async def tracked(message: dict[str, Any]) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        if _header_bytes(scope) > MAX_HEADER_BYTES:
            # h11 bounds only a head still arriving; one large read can bring a complete one bigger
            await _text(tracked, 431, "request headers too large", [(b"connection", b"close")])
            return
        try:
            grant = self._grant(method, scope)
            if grant.target.kind is TargetKind.OBJECT:
                await self._get(grant, method, _headers(scope), receive, tracked)
            else:
                await self._put(grant, _headers(scope), receive, tracked)
        except ClientGone:
            return
        except ClientStalled:
            if not started:  # the connection closes after this: the body was never read to its end
                await _text(tracked, 408, "request body timed out", [(b"connection", b"close")])
            return
        except ArtifactStoreError as exc:
            if started:
                raise  # mid-body: the connection is cut, so the client sees an incomplete response
            status = status_of(exc)
            reason = exc.reason if isinstance(exc, UrlRefusedError) else str(exc)
            if status >= 500:
                log.error("%s %s: %s", method, scope["path"], exc)
            await _text(tracked, status, reason)

    def _grant(self, method: str, scope: Scope) -> Grant:
        try:
            pairs = parse_qsl(scope["query_string"].decode("ascii"), keep_blank_values=True, strict_parsing=True)
        except (UnicodeDecodeError, ValueError):
            raise UrlRefusedError(Refusal.MALFORMED.value) from None
        query = dict(pairs)
        if len(query) != len(pairs):
            raise UrlRefusedError(Refusal.MALFORMED.value)  # a repeated field: which one was signed?
        return self.transfers.signer.verify(method, scope["path"], query, self.transfers.ns.now() // NS)

    # -- downloads

    async def _get(self, grant: Grant, method: str, headers: dict[str, str], receive: Receive, send: Send) -> None:
        found = await self.transfers.download(grant.target.ident)
        common = [
            (b"etag", found.etag.encode()),
            (b"accept-ranges", b"bytes"),
            (b"last-modified", email.utils.formatdate(found.mtime_ns / NS, usegmt=True).encode()),
            (b"cache-control", b"private, max-age=0"),
        ]
        if _etag_matches(headers.get("if-none-match"), found.etag):
            await send({"type": "http.response.start", "status": 304, "headers": common})
            await send({"type": "http.response.body", "body": b""})
            return
        wanted = headers.get("range")
        if wanted is not None and headers.get("if-range", found.etag) != found.etag:
            wanted = None  # the client's copy is of another version: send it all
        span = _parse_range(wanted, found.size) if wanted is not None else None
        if span == "unsatisfiable":
            await _text(send, 416, "range not satisfiable", [(b"content-range", f"bytes */{found.size}".encode())])
            return
        start, end = span if isinstance(span, tuple) else (0, found.size)
        status = 206 if isinstance(span, tuple) else 200
        out = common + [
            (b"content-type", _content_type(found.mime).encode()),
            (b"content-length", str(end - start).encode()),
            (b"content-disposition", f"inline; filename*=UTF-8''{quote(found.name, safe='', errors='replace')}".encode()),
        ]
        if status == 206:
            out.append((b"content-range", f"bytes {start}-{end - 1}/{found.size}".encode()))
        await send({"type": "http.response.start", "status": status, "headers": out})
        if method == "HEAD":
            await send({"type": "http.response.body", "body": b""})
            return
        await self._stream(found, start, end, receive=receive, send=send)

    async def _stream(self, found: Download, start: int, end: int, *, receive: Receive, send: Send) -> None:
        """Send the bytes as a reader task produces them; stop as soon as the client goes away.

        The last send must not be cancelled: within it hypercorn ends the
        response and tells this app the request is over (``http.disconnect``),
        then arms its keep-alive timer or closes the connection. Cancelling
        it there (as the watcher did on that very disconnect) left the
        connection with neither, open for ever.
        """
        chunks_in, chunks_out = anyio.create_memory_object_stream[bytes](1)
        ending = False
        async with anyio.create_task_group() as tg:

            async def watch() -> None:
                while (await receive())["type"] != "http.disconnect":
                    pass
                if not ending:
                    tg.cancel_scope.cancel()

            tg.start_soon(watch)
            tg.start_soon(found.pump, self.transfers.ns, self.transfers.block_maps, start, end, chunks_in)
            async with chunks_out:
                async for chunk in chunks_out:
                    await send({"type": "http.response.body", "body": chunk, "more_body": True})
            ending = True
            with anyio.CancelScope(shield=True):
                await send({"type": "http.response.body", "body": b""})
            tg.cancel_scope.cancel()

    # -- uploads

    async def _put(self, grant: Grant, headers: dict[str, str], receive: Receive, send: Send) -> None:
        length = _content_length(headers.get("content-length"))
        part = await self.transfers.receive(
            grant.target, _body(receive, self.io_timeout), content_length=length, url_max_bytes=grant.max_bytes,
        )
        await send({"type": "http.response.start", "status": 200, "headers": [
            (b"etag", part.etag.encode()), (b"content-length", b"0"),
        ]})
        await send({"type": "http.response.body", "body": b""})


async def _body(receive: Receive, timeout: float) -> AsyncIterator[bytes]:
    """The request body's pieces; a client that stops sending for ``timeout`` seconds is dropped.

    hypercorn has no such timeout of its own (its read timeout would also cut
    a download whose client, rightly, sends nothing while it reads).
    """
    while True:
        with anyio.move_on_after(timeout) as waited:
            message = await receive()
        if waited.cancelled_caught:
            raise ClientStalled()
        if message["type"] == "http.disconnect":
            raise ClientGone()
        yield message.get("body", b"")
        if not message.get("more_body", False):
            return


def _header_bytes(scope: Scope) -> int:
    return len(scope.get("raw_path") or b"") + len(scope["query_string"]) + sum(
        len(name) + len(value) + 4 for name, value in scope["headers"])


def _headers(scope: Scope) -> dict[str, str]:
    return {name.decode("latin-1").lower(): value.decode("latin-1") for name, value in scope["headers"]}


def _content_type(mime: str) -> str:
    """The stored MIME type, unless it cannot be a header value.

    The API refuses such a type now; one stored before that (a CR, a NUL)
    would make the HTTP layer fail the response halfway, a 500 for a
    download that is fine: its bytes go out as octets instead.
    """
    return mime if _HEADER_SAFE.fullmatch(mime) else _FALLBACK_MIME


def _content_length(header: str | None) -> int | None:
    """The request's Content-Length; a malformed one is a 400, an absurd one a 413."""
    if header is None:
        return None
    header = header.strip()
    if not header or not header.isascii() or not header.isdigit():  # "²".isdigit() is True, int("²") raises
        raise InvalidArgumentError("Content-Length is not a number")
    if len(header) > _MAX_DIGITS:
        raise ArtifactTooLargeError(f"Content-Length has {len(header)} digits")
    return int(header)


def _number(digits: str) -> int:
    """A Range number: digits too many for any real offset read as one past every end."""
    digits = digits.lstrip("0") or "0"
    return _HUGE if len(digits) > _MAX_DIGITS else int(digits)


def _etag_matches(header: str | None, etag: str) -> bool:
    if header is None:
        return False
    tags = [t.strip().removeprefix("W/") for t in header.split(",")]
    return "*" in tags or etag in tags


def _parse_range(header: str, size: int) -> tuple[int, int] | str | None:
    """[start, end) for one byte range; None to ignore the header (as RFC 9110 allows)."""
    match = _RANGE.fullmatch(header.strip())
    if match is None:
        return None  # several ranges, or not bytes: the whole body is a valid answer
    first, last = match.groups()
    if first == "" and last == "":
        return None
    if first == "":  # the last N bytes
        n = _number(last)
        return (max(size - n, 0), size) if n > 0 and size > 0 else "unsatisfiable"
    start = _number(first)
    end = size if last == "" else min(_number(last) + 1, size)
    if last != "" and _number(last) < start:
        return None  # invalid: ignored
    return (start, end) if start < size else "unsatisfiable"


async def _text(send: Send, status: int, text: str, extra: list[tuple[bytes, bytes]] | None = None) -> None:
    body = f"{status} {text}\n".encode()
    await send({"type": "http.response.start", "status": status, "headers": [
        (b"content-type", b"text/plain; charset=utf-8"), (b"content-length", str(len(body)).encode()),
        *(extra or []),
    ]})
    await send({"type": "http.response.body", "body": body})


def listen(settings: PresignSettings, host: str | None = None, port: int | None = None) -> socket.socket:
    """The service's listening socket (``settings``' address unless given); port 0 picks a free one.

    A caller that must fail before doing anything else when the address is
    taken (the mount, before it mounts) binds here and hands the socket to
    :func:`serve`. An address it cannot take is a :class:`ConfigurationError`
    that says so in one sentence.
    """
    return bind(
        settings.host if host is None else host, settings.port if port is None else port, "the presign service",
        "the command's address option, or ARTIFACT_SERVE_HOST / ARTIFACT_SERVE_PORT",
    )


async def serve(
    transfers: Transfers, host: str | None = None, port: int | None = None, *,
    sock: socket.socket | None = None,
    shutdown_trigger: Callable[[], Awaitable[Any]] | None = None,
    task_status: anyio.abc.TaskStatus[str] = anyio.TASK_STATUS_IGNORED,
) -> None:
    """Serve ``transfers`` over HTTP until cancelled (or ``shutdown_trigger`` returns).

    Binds (unless given ``sock``, from :func:`listen`) before reporting ready
    (``task_status.started(url)``), so a client may connect the moment
    ``start`` returns. Unless the settings name a public base URL, the
    store's URLs point here from now.
    """
    settings = transfers.settings
    cap = connection_cap(settings.max_connections, raise_fd_limit())
    if sock is None:
        sock = listen(settings, host, port)
    url = url_of(sock)
    if settings.base_url is None:
        transfers.base_url = url

    from hypercorn.config import Config

    config = Config()
    config.accesslog = None
    config.errorlog = log
    config.keep_alive_timeout = settings.idle_timeout  # also bounds the wait for a request's headers
    config.h11_max_incomplete_size = MAX_HEADER_BYTES
    config.graceful_timeout = 2
    import sniffio

    if sniffio.current_async_library() == "trio":
        from hypercorn.trio import tcp_server
    else:
        from hypercorn.asyncio import tcp_server  # type: ignore[no-redef]
    # hypercorn reads a socket 64 KiB at a time and hands each read to the app as
    # one message; for multi-MiB bodies that per-message cost is most of an
    # upload's CPU time. Larger reads (a module setting, so process-wide) keep
    # memory bounded and roughly double PUT throughput here.
    tcp_server.MAX_RECV = max(tcp_server.MAX_RECV, RECV_BYTES)
    app = PresignService(transfers)
    stop, stopped = anyio.Event(), anyio.Event()
    on_trio = sniffio.current_async_library() == "trio"
    from core.transfers.connections import serve_connections, serve_connections_asyncio

    async def run() -> None:
        # Shielded: the server is stopped through ``stop``, which lets
        # requests in flight finish (asyncio's hypercorn cannot be cancelled cleanly).
        with anyio.CancelScope(shield=True):
            try:
                if on_trio:
                    await serve_connections(
                        sock, app, config, max_connections=cap, io_timeout=settings.io_timeout,
                        stopping=stop,  # type: ignore[arg-type]
                    )
                else:
                    await serve_connections_asyncio(
                        sock, app, config, max_connections=cap, io_timeout=settings.io_timeout, stopping=stop.wait,
                    )
            finally:
                stopped.set()

    async with anyio.create_task_group() as tg:
        tg.start_soon(run)
        task_status.started(url)
        log.info("presign service on %s (at most %d connections)", url, cap)
        try:
            await (shutdown_trigger or anyio.sleep_forever)()
        finally:
            stop.set()
            with anyio.CancelScope(shield=True):
                await stopped.wait()
