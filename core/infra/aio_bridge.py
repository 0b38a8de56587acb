"""The one door from any anyio event loop into asyncio-only clients.

redis.asyncio and aioboto3 run on asyncio alone, yet core is awaited from
trio as well (the mount, pytest-trio tests). Under asyncio a call goes
straight to the caller's own loop and costs nothing extra. Under any other
loop it crosses to one asyncio loop kept in a daemon thread, through anyio's
``BlockingPortal.call_async``: the calling task waits without blocking its
loop, and cancelling it cancels the asyncio side too. The crossing costs
about a tenth of a millisecond (``scripts/bench`` measures it), so backends
cross once per operation, never per byte or per key.

A client (a connection pool, an HTTP session) belongs to the loop that made
it, so backends keep one per loop in a :class:`LoopLocal`.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Awaitable, Callable
from typing import Generic, ParamSpec, TypeVar

import anyio
import anyio.to_thread
import sniffio
from anyio.from_thread import BlockingPortal

T = TypeVar("T")
_BRIDGE_THREAD = "artifactfs-asyncio"
P = ParamSpec("P")


def on_asyncio() -> bool:
    """True when the calling task runs on an asyncio loop."""
    try:
        return sniffio.current_async_library() == "asyncio"
    except sniffio.AsyncLibraryNotFoundError:
        return False


class _PortalThread:
    """One asyncio loop in a daemon thread, started on first use.

    A daemon thread, not anyio's ``start_blocking_portal`` (an executor
    thread): a process that forgets to close a store must still exit.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.portal: BlockingPortal | None = None
        self.loop: asyncio.AbstractEventLoop | None = None

    def start(self) -> BlockingPortal:
        with self._lock:
            if self.portal is None:
                ready: list[tuple[BlockingPortal, asyncio.AbstractEventLoop]] = []
                started = threading.Event()

                async def serve() -> None:
                    asyncio.get_running_loop().set_exception_handler(_quiet_connection_errors)
                    async with BlockingPortal() as portal:
                        ready.append((portal, asyncio.get_running_loop()))
                        started.set()
                        await portal.sleep_until_stopped()

                thread = threading.Thread(
                    target=anyio.run, args=(serve,), kwargs={"backend": "asyncio"},
                    name=_BRIDGE_THREAD, daemon=True,
                )
                thread.start()
                if not started.wait(30) or not ready:
                    raise RuntimeError("the asyncio bridge thread did not start")
                self.portal, self.loop = ready[0]
            return self.portal

    async def get(self) -> BlockingPortal:
        if self.portal is not None:
            return self.portal
        return await anyio.to_thread.run_sync(self.start)


_THREAD = _PortalThread()
log = logging.getLogger("artifactfs.bridge")


def _quiet_connection_errors(loop: asyncio.AbstractEventLoop, context: dict) -> None:
    """A connection reset under an HTTP client's own background task is one line, not a traceback.

    aiohttp leaves the exception of its request-writing task unretrieved when the
    server drops the connection; the request itself fails too, and is retried and
    reported by the backend (core.infra.retry). Anything else goes to asyncio's handler.
    """
    exc = context.get("exception")
    if isinstance(exc, ConnectionError):  # aiohttp's ClientConnectionResetError is one
        log.warning("%s: %r", context.get("message", "connection error"), exc)
        return
    loop.default_exception_handler(context)


async def run(fn: Callable[P, Awaitable[T]], *args: P.args, **kwargs: P.kwargs) -> T:
    """Await ``fn(*args)`` on an asyncio loop: the caller's own, else the bridge's."""
    if on_asyncio():
        return await fn(*args, **kwargs)
    portal = await _THREAD.get()
    if kwargs:
        return await portal.call_async(lambda: fn(*args, **kwargs))
    return await portal.call_async(fn, *args)


def bridge_loop() -> asyncio.AbstractEventLoop | None:
    """The bridge thread's loop, once it has started (for tests and teardown)."""
    return _THREAD.loop


async def _on_loop(loop: asyncio.AbstractEventLoop, fn: Callable[[], Awaitable[None]]) -> None:
    """Await ``fn()`` on ``loop``, whichever thread runs it, if it still runs."""
    if on_asyncio() and asyncio.get_running_loop() is loop:
        await fn()
    elif loop is _THREAD.loop and _THREAD.portal is not None:
        await _THREAD.portal.call_async(fn)
    elif loop.is_running():
        future = asyncio.run_coroutine_threadsafe(fn(), loop)
        await anyio.to_thread.run_sync(future.result, 30)
    # A loop that has stopped took its sockets with it: nothing left to close.


class LoopLocal(Generic[T]):
    """One lazily made value (a client) per asyncio loop, disposed of together.

    :meth:`get` runs on an asyncio loop (inside :func:`run`); :meth:`dispose_all`
    runs in the caller's world, whatever loop that is.
    """

    def __init__(self, make: Callable[[], Awaitable[T]], dispose: Callable[[T], Awaitable[None]]) -> None:
        self._make, self._dispose = make, dispose
        self._values: dict[asyncio.AbstractEventLoop, T] = {}

    async def get(self) -> T:
        loop = asyncio.get_running_loop()
        value = self._values.get(loop)
        if value is not None:
            return value
        value = await self._make()
        if loop in self._values:  # another task of this loop made one meanwhile
            await self._dispose(value)
            return self._values[loop]
        self._values[loop] = value
        return value

    async def dispose_all(self) -> None:
        values, self._values = self._values, {}
        for loop, value in values.items():
            await _on_loop(loop, lambda value=value: self._dispose(value))


def call_blocking(fn: Callable[P, Awaitable[T]], *args: P.args, **kwargs: P.kwargs) -> T:
    """Run ``fn(*args)`` to its end from synchronous code, on the bridge's loop.

    For the reference API's few synchronous methods (``list_namespaces``,
    ``get_namespace_info``), which must still read the metadata store: the
    calling thread waits, and with it any loop it runs. Never from the
    bridge's own thread, which would wait for itself.
    """
    if threading.current_thread().name == _BRIDGE_THREAD:
        raise RuntimeError("call_blocking() from the bridge's own loop would wait for ever")
    portal = _THREAD.start()
    return portal.call(lambda: fn(*args, **kwargs))
