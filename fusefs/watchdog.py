"""Every kernel request gets an answer within a bound.

A process waiting on a FUSE request that is never answered sits in ``D``
state: it cannot be killed, and the mount cannot be unmounted. A handler can
fail to answer for reasons no review rules out: a lost wake-up, a backend
that never replies. So every handler runs under a deadline of ``timeout``
seconds (plus time for the bytes a close still has to send): past it, the
handler is cancelled where it waits, unwinds (its clean-up runs), and the
kernel gets ``EIO``; the log names the request, its arguments and how long
it waited. At unmount every running request is called off at once
(:meth:`Watchdog.stop`), so the request loop ends in moments.

Cancellation reaches every wait on another task, on Redis or S3 (through the
asyncio bridge) and on our own events. It does not reach a worker thread
blocked inside a system call of the local disk (the embedded store's SQLite
or blob files): such a request is answered when the disk answers, as with
any local filesystem on a hung disk. Running each handler in a task of its
own would cover that too, at ~40 µs per request against ~5 µs for a deadline
(``scripts/bench`` has the figures), so it is not done.
"""

from __future__ import annotations

import errno
import logging
from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager, nullcontext
from typing import Any

import pyfuse3
import trio

log = logging.getLogger("artifactfs.mount")


class RequestTimeout(pyfuse3.FUSEError):
    """A request answered ``EIO`` because its handler did not finish in time."""

    def __init__(self) -> None:
        super().__init__(errno.EIO)


class Watchdog:
    """Runs each handler under its request's deadline.

    ``timeout`` None sets no bound. ``allowance(name, args)`` adds seconds for requests
    whose work grows with the data (a close that publishes a large file). ``admit(name, args)``
    is entered before the deadline starts: a request waiting for its turn there
    (:mod:`fusefs.fairness`) has not started yet, so the wait is not counted against it.
    """

    def __init__(
        self, timeout: float | None, *, allowance: Callable[[str, tuple[Any, ...]], float] | None = None,
        admit: Callable[[str, tuple[Any, ...]], AbstractAsyncContextManager[None]] | None = None,
    ) -> None:
        self.timeout, self._allowance, self._admit = timeout, allowance, admit
        self._running: set[trio.CancelScope] = set()
        self.late = 0  # requests answered EIO because their handler overran
        self._stopped = False

    async def answer(
        self, name: str, handler: Callable[..., Awaitable[Any]], args: tuple[Any, ...], describe: Callable[[], str]
    ) -> Any:
        async with self._admit(name, args) if self._admit is not None else nullcontext():
            return await self._bounded(name, handler, args, describe)

    async def _bounded(
        self, name: str, handler: Callable[..., Awaitable[Any]], args: tuple[Any, ...], describe: Callable[[], str]
    ) -> Any:
        if self.timeout is None:
            return await handler(*args)
        started = trio.current_time()
        bound = self.timeout + (self._allowance(name, args) if self._allowance else 0.0)
        scope = trio.CancelScope(deadline=started + bound)
        if self._stopped:  # queued for its uid's turn (fusefs.fairness) when the unmount came: called off too
            scope.cancel()
        self._running.add(scope)
        try:
            with scope:
                return await handler(*args)
        finally:
            self._running.discard(scope)
        # called off: past its deadline, or at unmount
        self.late += 1
        why = "called off at unmount" if self._stopped else "no answer"
        log.error("%s(%s): %s after %.1f s; answered EIO", name, describe(), why, trio.current_time() - started)
        raise RequestTimeout

    def stop(self) -> None:
        """Unmount: every request still running is called off and answered now."""
        self._stopped = True
        for scope in self._running:
            scope.cancel()
