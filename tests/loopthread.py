"""An asyncio loop in a daemon thread of its own: how a test's in-process server runs beside sync tests.

The server's ``opened`` coroutine runs first (start returns once it has,
or failed); the loop then serves until :meth:`LoopThread.stop`, after which
``closing`` runs on the same loop and the loop is closed.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable

START_TIMEOUT = 30.0


class LoopThread:
    def __init__(self, name: str) -> None:
        self.name = name
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    def start(self, opened: Callable[[], Awaitable[None]], closing: Callable[[], Awaitable[None]]) -> None:
        started = threading.Event()

        def run() -> None:
            loop = self._loop = asyncio.new_event_loop()
            try:
                loop.run_until_complete(opened())
            finally:
                started.set()  # serving, or failed (and the thread's exception says why)
            loop.run_forever()
            loop.run_until_complete(closing())
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()

        self._thread = threading.Thread(target=run, name=self.name, daemon=True)
        self._thread.start()
        if not started.wait(START_TIMEOUT):
            raise RuntimeError(f"{self.name} did not start")

    def stop(self) -> None:
        """Stop serving and wait (bounded) for ``closing`` and the thread to end; idempotent."""
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        loop.call_soon_threadsafe(loop.stop)
        thread.join(START_TIMEOUT)
        self._loop = self._thread = None
