"""Time as the store sees it; tests swap in a clock they can move."""

from __future__ import annotations

import os
import time
from typing import Protocol


class Clock(Protocol):
    def now_ns(self) -> int: ...


class SystemClock:
    def now_ns(self) -> int:
        return time.time_ns()


class ManualClock:
    """A clock that moves only when told to, so TTL tests never sleep."""

    def __init__(self, start_ns: int | None = None) -> None:
        self._now = time.time_ns() if start_ns is None else start_ns

    def now_ns(self) -> int:
        return self._now

    def advance(self, seconds: float) -> None:
        self._now += int(seconds * 1_000_000_000)


class OffsetFileClock:
    """TEST ONLY: the system clock plus an offset in seconds read from a file.

    A test moves the time of a running mount (another process) by rewriting
    the file; it is read again whenever its mtime changes. Selected by the
    mount when ``TEST_CLOCK_ENV`` names such a file; nothing else uses it.
    """

    def __init__(self, path: str) -> None:
        self._path = path
        self._stamp: int | None = None
        self._offset_ns = 0

    def now_ns(self) -> int:
        stamp = os.stat(self._path).st_mtime_ns
        if stamp != self._stamp:
            with open(self._path, encoding="ascii") as f:
                self._offset_ns = int(float(f.read().strip() or 0) * 1_000_000_000)
            self._stamp = stamp
        return time.time_ns() + self._offset_ns


TEST_CLOCK_ENV = "ARTIFACTFS_TEST_CLOCK_FILE"


def clock_from_env() -> Clock:
    """The system clock, unless a test asked for a movable one (``TEST_CLOCK_ENV``)."""
    path = os.environ.get(TEST_CLOCK_ENV)
    return OffsetFileClock(path) if path else SystemClock()
