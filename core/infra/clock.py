"""Time as the store sees it: the system clock, or one a caller moves (a store's ``clock=``)."""

from __future__ import annotations

import time
from typing import Protocol


class Clock(Protocol):
    """Where the store, and a mount, read the time of TTLs and timestamps from."""

    def now_ns(self) -> int: ...


class SystemClock:
    def now_ns(self) -> int:
        return time.time_ns()


class ManualClock:
    """A clock that moves only when told to: a run through TTLs that never sleeps (simulations, tests)."""

    def __init__(self, start_ns: int | None = None) -> None:
        self._now = time.time_ns() if start_ns is None else start_ns

    def now_ns(self) -> int:
        return self._now

    def advance(self, seconds: float) -> None:
        self._now += int(seconds * 1_000_000_000)
