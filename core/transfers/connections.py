"""The presign service's connections: how many, and how long a slow client may hold one.

hypercorn bounds a request's header size (h11) and closes a connection idle
between requests, or one whose headers never end (``keep_alive_timeout``);
it has no bound on open connections, and its writes are shielded from
cancellation, so a client that stops reading holds its connection (and one
file descriptor of the process) for ever. Inside ``artifactfs mount --serve``
those descriptors are the mount's: once they run out, files cannot be
opened or written. This module runs hypercorn's own connection handler
behind an accept loop that

- keeps at most ``max_connections`` open and answers any beyond with a
  503 before closing them;
- gives every write ``io_timeout`` seconds, then closes the connection;
- on EMFILE/ENFILE pauses accepting and logs one line, not a traceback per
  attempt (trio's ``serve_listeners`` logs each).

A request body that stalls is the application's to time out (it is waiting
in ``receive``): see :mod:`core.transfers.service`. An application on asyncio
that serves its own URLs gets the same bounds (:func:`serve_connections_asyncio`).
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import socket
from collections.abc import Awaitable, Callable
from typing import Any

import trio

from core.errors import ConfigurationError

log = logging.getLogger("artifactfs.presign")

_OUT_OF_FDS = {errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM}
_BUSY = b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
ACCEPT_PAUSE_S = 0.1


class _Departures:
    """Says when the client has gone (EOF or reset), through ``on_gone``.

    hypercorn then ends the request but leaves its keep-alive timer running,
    and the connection (its descriptor, its place under the cap) waits for
    that timer: ``on_gone`` stops it.
    """

    on_gone: Callable[[], Awaitable[None]] | None = None

    async def _watched(self, receiving: Awaitable[Any], closed: tuple[type[BaseException], ...]) -> Any:
        try:
            data = await receiving
        except closed:
            await self._gone()
            raise
        if not data:
            await self._gone()
        return data

    async def _gone(self) -> None:
        if self.on_gone is not None:
            await self.on_gone()


class GuardedStream(_Departures, trio.abc.HalfCloseableStream):
    """A client's socket whose writes give up after ``io_timeout`` seconds.

    hypercorn shields its writes from cancellation from outside; the
    deadline set here, inside the write, still applies.
    """

    def __init__(self, inner: trio.SocketStream, io_timeout: float) -> None:
        self.inner, self.io_timeout = inner, io_timeout

    @property
    def socket(self) -> Any:
        return self.inner.socket  # hypercorn reads the peer's address from it

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        with trio.move_on_after(self.io_timeout):
            await self.inner.send_all(data)
            return
        await trio.aclose_forcefully(self.inner)
        raise trio.BrokenResourceError("the client stopped reading")

    async def wait_send_all_might_not_block(self) -> None:
        await self.inner.wait_send_all_might_not_block()

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        return await self._watched(self.inner.receive_some(max_bytes), (trio.BrokenResourceError, trio.ClosedResourceError))

    async def send_eof(self) -> None:
        await self.inner.send_eof()

    async def aclose(self) -> None:
        await self.inner.aclose()


async def serve_connections(
    sock: socket.socket, app: Any, config: Any, *, max_connections: int, io_timeout: float, stopping: trio.Event,
) -> None:
    """Accept on ``sock`` and run hypercorn's HTTP/1.1 handler on each connection until ``stopping``.

    Then connections in flight get ``config.graceful_timeout`` seconds to end.
    """
    from hypercorn.trio.tcp_server import TCPServer
    from hypercorn.trio.worker_context import WorkerContext
    from hypercorn.typing import ConnectionState
    from hypercorn.utils import wrap_app

    wrapped = wrap_app(app, config.wsgi_max_body_size, "asgi")
    context = WorkerContext(None)
    listener = trio.SocketListener(trio.socket.from_stdlib_socket(sock))

    open_now = 0  # counted when accepted, so a burst cannot overshoot before the handlers start

    async def handle(stream: trio.SocketStream) -> None:
        nonlocal open_now
        guarded = GuardedStream(stream, io_timeout)
        try:
            server = TCPServer(wrapped, config, context, ConnectionState({}), guarded)
            guarded.on_gone = server.idle_task.stop
            await server
        finally:
            open_now -= 1
            await trio.aclose_forcefully(stream)

    async def refuse(stream: trio.SocketStream) -> None:
        with trio.move_on_after(1):  # a few bytes into a fresh socket's buffer: never blocks for long
            try:
                await stream.send_all(_BUSY)
            except trio.BrokenResourceError:
                pass
        await trio.aclose_forcefully(stream)

    async with trio.open_nursery() as connections:
        async with trio.open_nursery() as accepting:

            async def accept_loop() -> None:
                nonlocal open_now
                starved = False
                while True:
                    try:
                        stream = await listener.accept()
                    except OSError as exc:
                        if exc.errno not in _OUT_OF_FDS:
                            raise
                        if not starved:  # one line per episode; trio's own loop logs a traceback per try
                            log.warning("presign service: cannot accept a connection (%s); pausing",
                                        errno.errorcode.get(exc.errno or 0, exc.errno))
                        starved = True
                        await trio.sleep(ACCEPT_PAUSE_S)
                        continue
                    starved = False
                    if open_now >= max_connections:
                        connections.start_soon(refuse, stream)
                    else:
                        open_now += 1
                        connections.start_soon(handle, stream)

            accepting.start_soon(accept_loop)
            await stopping.wait()
            accepting.cancel_scope.cancel()
        await listener.aclose()
        await context.terminated.set()  # keep-alive connections close once their request ends
        connections.cancel_scope.deadline = trio.current_time() + config.graceful_timeout


class _TimedWriter:
    """An asyncio client writer whose ``drain`` gives up after ``io_timeout`` seconds (hypercorn's
    asyncio handler writes, then drains: a client that stops reading would hold it for ever)."""

    def __init__(self, inner: asyncio.StreamWriter, io_timeout: float) -> None:
        self._inner, self._io_timeout = inner, io_timeout

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    async def drain(self) -> None:
        try:
            await asyncio.wait_for(self._inner.drain(), self._io_timeout)
        except TimeoutError:
            self._inner.transport.abort()
            raise ConnectionResetError("the client stopped reading") from None

    async def wait_closed(self) -> None:
        """A close waits for what is still buffered to go out: no longer than a write may take."""
        try:
            await asyncio.wait_for(self._inner.wait_closed(), self._io_timeout)
        except TimeoutError:
            self._inner.transport.abort()


class _WatchedReader(_Departures):
    """An asyncio client reader that says when the client has gone, as :class:`GuardedStream` does."""

    def __init__(self, inner: asyncio.StreamReader) -> None:
        self._inner = inner

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    async def read(self, n: int = -1) -> bytes:
        return await self._watched(self._inner.read(n), (ConnectionError, OSError))


async def serve_connections_asyncio(
    sock: socket.socket, app: Any, config: Any, *, max_connections: int, io_timeout: float,
    stopping: Callable[[], Awaitable[Any]],
) -> None:
    """:func:`serve_connections` for an application on asyncio: the same cap, the same write timeout.

    asyncio's own accept loop pauses by itself when descriptors run out.
    """
    from hypercorn.asyncio.tcp_server import TCPServer
    from hypercorn.asyncio.worker_context import WorkerContext
    from hypercorn.utils import wrap_app

    wrapped = wrap_app(app, config.wsgi_max_body_size, "asgi")
    context = WorkerContext(None)
    loop = asyncio.get_running_loop()
    open_now = 0
    tasks: set[asyncio.Task[Any]] = set()

    async def on_connect(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal open_now
        task = asyncio.current_task()
        assert task is not None
        tasks.add(task)
        task.add_done_callback(tasks.discard)
        if open_now >= max_connections:
            writer.write(_BUSY)  # a few bytes into a fresh socket's buffer: written at once
            writer.close()
            return
        open_now += 1
        watched = _WatchedReader(reader)
        try:
            server = TCPServer(wrapped, loop, config, context, {}, watched, _TimedWriter(writer, io_timeout))  # type: ignore[arg-type]
            watched.on_gone = server.idle_task.stop  # else the keep-alive timer holds a connection its client left
            await server
        finally:
            open_now -= 1
            writer.transport.abort()

    server = await asyncio.start_server(on_connect, sock=sock, backlog=1024)
    try:
        await stopping()
    finally:
        server.close()
        await context.terminated.set()  # keep-alive connections close once their request ends
        if tasks:
            _, late = await asyncio.wait(set(tasks), timeout=config.graceful_timeout)
            for task in late:
                task.cancel()
            await asyncio.gather(*late, return_exceptions=True)


def bind(host: str, port: int, what: str, hint: str) -> socket.socket:
    """A listening socket on ``host``:``port`` (0 picks a free port), or a :class:`ConfigurationError`
    in one sentence: ``what`` cannot listen there, why, and ``hint`` (where the address is set)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        sock = socket.create_server((host, port), family=family, backlog=1024, reuse_port=False)
    except OSError as exc:
        reason = os.strerror(exc.errno) if exc.errno else str(exc)
        raise ConfigurationError(
            f"{what} cannot listen on {host}:{port}: {reason}; choose another address ({hint})"
        ) from None
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def url_of(sock: socket.socket) -> str:
    """``http://host:port`` of a listening socket."""
    host, port = sock.getsockname()[:2]
    return f"http://{f'[{host}]' if ':' in host else host}:{port}"


async def lifespan(
    receive: Callable[[], Awaitable[dict[str, Any]]], send: Callable[[dict[str, Any]], Awaitable[None]]
) -> None:
    """An ASGI app's lifespan: nothing to start or stop, said when asked."""
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return
