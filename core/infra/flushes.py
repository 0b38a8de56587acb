"""One flush shared by every caller that overlaps it, and none missed.

Why: an fsync covers what was written before it started, not what a caller
wrote while it ran. A caller that finds a flush running therefore waits for
it and then shares the next one; callers arriving together pay for one.
Used for SQLite's WAL and for the blobs the mount published without waiting.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import anyio


class SharedFlush:
    """``await flush()`` returns once a run of ``run`` that started after the call has ended
    (or raises what that run raised)."""

    def __init__(self, run: Callable[[], Awaitable[None]]) -> None:
        self._run = run
        self._started = self._done = 0
        self._idle: anyio.Event | None = None  # set when the running flush ends

    async def __call__(self) -> None:
        need = self._started + 1
        while self._done < need:
            if self._idle is not None:
                await self._idle.wait()
                continue
            self._started += 1
            generation, idle = self._started, anyio.Event()
            self._idle = idle
            try:
                with anyio.CancelScope(shield=True):  # its waiters count on it finishing
                    await self._run()
                self._done = generation
            finally:
                self._idle = None
                idle.set()
