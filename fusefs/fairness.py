"""Each uid's requests queue behind its own, not in front of everyone else's (issue #16).

The mount serves every request on one trio loop. Without a bound, a uid
that floods the mount (a build making files from 64 threads) has as many
requests running as it has threads, each taking its turn on the loop and on
the store, and another uid's ``stat`` waits behind all of them. Here each
uid may have at most ``per_uid`` requests running; the rest wait for one of
that uid's own to finish. A uid with nothing running goes straight in, so
what another uid's request waits for is bounded by ``per_uid`` requests of
each busy uid, not by the size of any flood.

The wait is outside the watchdog's deadline (:mod:`fusefs.watchdog`): a
request queued behind its uid's own flood has not started, and is not the
one that overran. The kernel's requests are read by a bounded number of
worker tasks (``pyfuse3.main(max_tasks=...)``); the mount starts enough of
them (``Settings.mount_max_tasks``, 256) that one uid's queue leaves room for
the others unless that uid has more requests outstanding than that (one per
thread it runs, and the kernel's few asynchronous ones).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import trio

PER_UID = 8  # requests one uid may have running at once (Settings.mount_uid_requests)


class PerUid:
    """A bound on in-flight requests per uid; ``None`` bounds nothing."""

    def __init__(self, per_uid: int | None = PER_UID) -> None:
        self.per_uid = per_uid
        self._limiters: dict[int, trio.CapacityLimiter] = {}

    def running(self, uid: int) -> int:
        """Requests of ``uid`` running now (what tests count)."""
        limiter = self._limiters.get(uid)
        return limiter.borrowed_tokens if limiter is not None else 0

    def waiting(self, uid: int) -> int:
        """Requests of ``uid`` queued behind its own."""
        limiter = self._limiters.get(uid)
        return limiter.statistics().tasks_waiting if limiter is not None else 0

    @asynccontextmanager
    async def turn(self, uid: int | None) -> AsyncIterator[None]:
        """Run a request of ``uid`` (None: not tied to a uid, never held) once it is its turn."""
        if self.per_uid is None or uid is None:
            yield
            return
        limiter = self._limiters.get(uid)
        if limiter is None:
            limiter = self._limiters[uid] = trio.CapacityLimiter(self.per_uid)
        # Each request borrows under its own token: one task may answer several requests in turn.
        token = object()
        try:  # a uid within its share goes straight in, without a trip through the scheduler
            limiter.acquire_on_behalf_of_nowait(token)
        except trio.WouldBlock:
            await limiter.acquire_on_behalf_of(token)
        try:
            yield
        finally:
            limiter.release_on_behalf_of(token)
            if limiter.borrowed_tokens == 0 and limiter.statistics().tasks_waiting == 0:
                del self._limiters[uid]  # idle: a mount seen by many uids keeps no state for them
