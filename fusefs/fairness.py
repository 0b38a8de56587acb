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

Every request passes here, so the common case costs a dict lookup and a
count: a uid within its share goes straight in, and only a request over
it parks on an Event of its own in its uid's FIFO. A finishing request
hands its slot to the first in that FIFO rather than freeing it, so a
newcomer cannot overtake the queue. (A ``trio.CapacityLimiter`` per uid,
as before, cost 8 µs per request against 2.)
"""

from __future__ import annotations

from collections import deque
from contextlib import AbstractAsyncContextManager
from types import TracebackType

import trio

PER_UID = 8  # requests one uid may have running at once (Settings.mount_uid_requests)


class _Share:
    """One uid's requests: how many run, and who waits for a slot, first come first served."""

    __slots__ = ("queue", "running")

    def __init__(self) -> None:
        self.running = 0
        self.queue: deque[trio.Event] = deque()


class PerUid:
    """A bound on in-flight requests per uid; ``None`` bounds nothing."""

    def __init__(self, per_uid: int | None = PER_UID) -> None:
        self.per_uid = per_uid
        self._shares: dict[int, _Share] = {}  # only uids with a request running or waiting

    def running(self, uid: int) -> int:
        """Requests of ``uid`` running now (what tests count)."""
        share = self._shares.get(uid)
        return share.running if share is not None else 0

    def waiting(self, uid: int) -> int:
        """Requests of ``uid`` queued behind its own."""
        share = self._shares.get(uid)
        return len(share.queue) if share is not None else 0

    def turn(self, uid: int | None) -> _Turn | _Free:
        """Run a request of ``uid`` (None: not tied to a uid, never held) once it is its turn."""
        if self.per_uid is None or uid is None:
            return _FREE
        return _Turn(self, uid)

    async def _enter(self, uid: int) -> None:
        share = self._shares.get(uid)
        if share is None:
            share = self._shares[uid] = _Share()
        if (self.per_uid is None or share.running < self.per_uid) and not share.queue:
            share.running += 1  # within its share: no trip through the scheduler
            return
        ready = trio.Event()
        share.queue.append(ready)
        try:
            await ready.wait()
        except BaseException:
            if ready.is_set():  # handed a slot just as it was called off: pass the slot on
                self._leave(uid)
            else:
                share.queue.remove(ready)
            raise

    def _leave(self, uid: int) -> None:
        share = self._shares[uid]
        if share.queue and (self.per_uid is None or share.running <= self.per_uid):
            share.queue.popleft().set()  # the slot goes to the first waiter: running stays as it is
            return
        share.running -= 1
        if share.running == 0 and not share.queue:
            del self._shares[uid]  # idle: a mount seen by many uids keeps no state for them


class _Turn(AbstractAsyncContextManager[None]):
    """``async with`` one request's turn among its uid's (a class: cheaper than a generator)."""

    __slots__ = ("_fair", "_uid")

    def __init__(self, fair: PerUid, uid: int) -> None:
        self._fair, self._uid = fair, uid

    async def __aenter__(self) -> None:
        await self._fair._enter(self._uid)

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._fair._leave(self._uid)


class _Free(AbstractAsyncContextManager[None]):
    """The turn of a request tied to no uid: no wait, nothing held."""

    __slots__ = ()

    async def __aenter__(self) -> None:
        return None

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        return None


_FREE = _Free()
