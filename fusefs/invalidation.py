"""Keeping the kernel's caches in step with changes made by other processes.

Several mounts (on several hosts) can share one Redis store. The kernel of
each caches directory entries and attributes for as long as the mount says
(:mod:`fusefs.attrs`) and file pages while a file's version is unchanged
(:mod:`fusefs.openfiles`). A change committed through another mount, or
through the library on another host, must not stay hidden behind those
caches: the store announces every change (:mod:`core.backends.meta.changes`), and a
:class:`ChangeFollower` running in the mount's nursery turns each
announcement into ``pyfuse3.invalidate_entry`` (the names whose mapping
changed) and ``pyfuse3.invalidate_inode`` (attributes and pages of the
inodes whose record or content changed). Changes this mount's FUSE requests
made are recognised by their origin and skipped: the kernel learnt of them in
the reply that made them. The mount's other writers (``--serve``'s uploads, the
expiry sweep) stamp another origin (:func:`core.backends.meta.changes.replying`)
and are followed like another host's changes.

Why a thread of its own. ``invalidate_entry`` waits until any request the
kernel has in flight on that directory or entry is answered, and
``invalidate_inode`` waits for pages being read in. Those requests are
answered by the mount's trio loop, so a call made from that loop could wait
for itself. A :class:`KernelInvalidator` thread makes the calls instead,
coalescing what piled up while it was busy (a ``cp -r`` of 10,000 files in
another mount is 10,000 notices, each entry invalidated once).

Notices are what lets the kernel cache for long (:data:`FOLLOWED_CACHE_SECONDS`,
ten minutes): a change elsewhere is dropped on notice, not waited out. But
a notice may be lost (Redis restarted, a reconnect): the feed then reports
a RESYNC, and the follower takes back everything the mount handed out for
long (:mod:`fusefs.handed` records it). And a writer may announce nothing
(a store made with ``ARTIFACT_REDIS_NOTIFY=0``): its scripts count such
changes in ``<prefix>:quiet``, which the follower looks at every
:data:`QUIET_POLL` seconds; while it is there, the mount takes everything
back and hands out :data:`SHORT_CACHE_SECONDS` only, as if it had no
notices. ``open`` always asks the store (close-to-open), answering
``ESTALE`` for an inode that is gone so that the kernel looks the name up
again.
"""

from __future__ import annotations

import errno
import logging
import threading
import time
from collections.abc import Callable

import pyfuse3
import trio

from core import shards
from core.backends.meta.changes import Change, ChangeFeed, ChangeOp
from core.nodes import ROOT_INO, Node
from fusefs.attrs import Inodes
from fusefs.handed import REQUEST_STARTED, Handed
from fusefs.listings import Listings

log = logging.getLogger("artifactfs.mount")

# How long the kernel may answer from its caches on a mount that follows changes: every change
# made elsewhere is dropped on its notice, and a lost notice makes the mount take everything back
# (RESYNC), so this bounds nothing a user can see; it saves a Redis round trip per repeated lookup
# or stat. (Bounded by what fusefs.handed may record, and by an entry's own expiry.)
FOLLOWED_CACHE_SECONDS = 600.0
# While notices cannot be trusted (a writer that sends none is about), or once fusefs.handed is
# full: how late a change elsewhere may be seen through a name or stat the kernel cached.
SHORT_CACHE_SECONDS = 1.0
# A reply the mount computed before a change but the kernel takes in after the change's invalidation
# would hide it for the whole cache time: each notice is acted on again this much later.
AGAIN_SECONDS = 1.0
RESYNC_SETTLE = 5.0  # seconds after a resync during which replies get the short time (requests then in flight)
QUIET_POLL = 0.5  # seconds between looks at the store's count of changes made without a notice
UNFOLLOW_EVERY = 30.0  # seconds between looks for shards a mount follows but holds nothing of
JOIN_TIMEOUT = 5.0  # at unmount, how long to wait for an invalidation the kernel holds up
_GONE = (errno.ENOTCONN, errno.ENODEV, errno.EBADF)  # the session ended: nothing left to invalidate


class KernelInvalidator:
    """Invalidates kernel cache entries from a thread of its own, coalescing duplicates."""

    def __init__(self, inodes: Inodes) -> None:
        self._inodes = inodes
        self._cond = threading.Condition()
        self._entries: dict[tuple[int, bytes], None] = {}  # insertion-ordered sets
        self._inos: dict[int, None] = {}
        self._closing = False
        self._thread = threading.Thread(target=self._run, name="artifactfs-invalidate", daemon=True)
        self.calls = 0

    def start(self) -> None:
        self._thread.start()

    def submit(self, change: Change) -> None:
        with self._cond:
            if self._closing:  # the session is gone (or going): nothing to keep for it
                return
            for parent, name in change.entries:
                self._entries[(parent, name)] = None
            for ino in change.inodes:
                self._inos[ino] = None
            self._cond.notify()

    def close(self) -> None:
        """Make no more kernel calls (the FUSE session is ending); the thread then exits."""
        with self._cond:
            self._closing = True
            self._entries.clear()
            self._inos.clear()
            self._cond.notify()

    def join(self, timeout: float) -> bool:
        """Wait (bounded) for the thread; False if a kernel call still holds it."""
        if self._thread.ident is None:
            return True
        self._thread.join(timeout)
        return not self._thread.is_alive()

    def _fuse_ino(self, ino: int) -> int | None:
        """The kernel's number for node ``ino``, or None if this mount cannot show it.

        A mount of one sandbox shows that sandbox as inode 1, so the store's own
        root (also 1) is not in it: its number must not reach the kernel.
        """
        if ino == self._inodes.root_ino:
            return pyfuse3.ROOT_INODE
        if ino == ROOT_INO:
            return None
        return ino

    def _run(self) -> None:
        while True:
            with self._cond:
                while not (self._closing or self._entries or self._inos):
                    self._cond.wait()
                if self._closing:
                    return
                entries, self._entries = self._entries, {}
                inos, self._inos = self._inos, {}
            for parent, name in entries:
                fuse_parent = self._fuse_ino(parent)
                if fuse_parent is not None and not self._call(pyfuse3.invalidate_entry, fuse_parent, name):
                    return
            for ino in inos:
                fuse_ino = self._fuse_ino(ino)
                if fuse_ino is not None and not self._call(pyfuse3.invalidate_inode, fuse_ino, False):
                    return

    def _call(self, fn: Callable[..., None], *args: object) -> bool:
        """One kernel call; False once the session is gone (or closing)."""
        if self._closing:
            return False
        try:
            fn(*args)
        except OSError as exc:
            if exc.errno in _GONE:
                self._closing = True  # detached (a lazy unmount): later notices are dropped, not hoarded
                return False
            if exc.errno != errno.ENOENT:  # ENOENT: the kernel holds nothing of it, the common case
                log.warning("%s%r: %s", fn.__name__, args, exc)
        self.calls += 1
        return True


class ChangeFollower:
    """The mount's background task that follows the store's change notices."""

    def __init__(
        self, feed: ChangeFeed, inodes: Inodes, handed: Handed, changed: Callable[[int], None] | None = None,
        listings: Listings | None = None, replying: str | None = None,
    ) -> None:
        self._feed = feed
        # The origin of the changes whose reply told the kernel (the mount's FUSE requests run under
        # core.backends.meta.changes.replying(it)); by default the feed's, i.e. all of this process's.
        self._replying = replying or feed.origin
        self._listings = listings  # pages read ahead for lookups: dropped at every notice, own ones too
        self._handed = handed  # what the kernel was told it may keep for long: taken back when in doubt
        self._kernel = KernelInvalidator(inodes)
        self._changed = changed  # told of every inode changed elsewhere (cached owners and such)
        self._quiet = 0  # the store's count of changes made without a notice, as last seen
        self._settling = 0  # resyncs whose in-flight requests may still answer from before the gap
        self._nursery: trio.Nursery | None = None
        self._again: list[Change] = []  # foreign changes to invalidate once more, AGAIN_SECONDS on
        self._asked: set[int] = set()  # shards whose notices the feed was asked to follow
        self._to_ask: set[int] = set()  # ... and those not yet passed on to it
        self._ask_now = trio.Event()
        self._dropping: set[int] = set()  # shards whose notices the feed is being told to stop
        self.own = self.foreign = self.resyncs = 0

    def followed(self, node: Node) -> bool:
        """Whether the notices of ``node``'s shard and of its entry's were followed before the request
        answering began (so a change after what it read is announced); asks for those not yet.

        The mount hands the kernel long cache times only for such nodes: a shard is followed
        from the first reply about one of its nodes on, so the notices a mount reads grow with
        what it has cached, not with the store's traffic (issue #17). Outside a request (a
        sweep), a shard followed RESYNC_SETTLE seconds counts.
        """
        started = REQUEST_STARTED.get()
        if started is None:
            started = time.monotonic() - RESYNC_SETTLE
        ok, home, above = True, shards.of_ino(node.ino), shards.of_ino(node.parent)
        for shard in (home,) if home == above else (home, above):  # every reply passes here: no set made
            if shard in self._dropping:
                ok = False
                continue
            since = self._feed.following(shard)
            if since is None:
                ok = False
                if shard not in self._asked:
                    self._asked.add(shard)
                    self._to_ask.add(shard)
                    self._ask_now.set()
            elif since > started:
                ok = False
        return ok

    async def _drop_unheld(self) -> None:
        while True:
            await trio.sleep(UNFOLLOW_EVERY)
            await self.let_go()

    async def let_go(self) -> set[int]:
        """Stop following the shards of which the kernel keeps nothing for long any more (every
        UNFOLLOW_EVERY seconds): a mount's notices follow what it holds, not what it once held."""
        held = {shards.UPPER, *(shards.of_ino(ino) for ino in self._handed.inodes_and_parents())}
        unheld = self._asked - held
        if not unheld:
            return unheld
        # No await between the look above and this: every long time handed out so far is in it,
        # and none is handed for these shards until they are followed anew.
        self._dropping |= unheld
        try:
            await self._feed.unwatch(unheld)
        except Exception:  # a Redis outage: the feed subscribes to what it follows when it is back
            log.debug("following fewer shards failed", exc_info=True)
        finally:
            self._dropping -= unheld
            self._asked -= unheld
        return unheld

    async def _watch_asked(self) -> None:
        while True:
            await self._ask_now.wait()
            self._ask_now = trio.Event()
            asked, self._to_ask = self._to_ask, set()
            try:
                await self._feed.watch(asked)
            except Exception:  # a Redis outage: asked again at the next reply about them
                log.debug("following more shards failed", exc_info=True)
                self._asked -= asked

    async def check_quiet(self) -> None:
        """Look at the store's count of unannounced changes; a move means notices missed something."""
        quiet = await self._feed.unannounced()
        if quiet == self._quiet:
            return
        if quiet and self._handed.trusted:
            log.info("a writer on this store sends no change notices; the kernel caches for %g s now",
                     self._handed.short_seconds)
        elif not quiet:
            log.info("no unannounced changes for a while; the kernel caches for %g s again", self._handed.long_seconds)
        self._quiet = quiet
        self._trust()
        self._take_back()  # whatever was handed out before this look may hide an unannounced change

    def _trust(self) -> None:
        self._handed.trusted = not self._quiet and not self._settling

    async def run(self) -> None:
        self._kernel.start()
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            nursery.start_soon(self._watch_quiet)
            nursery.start_soon(self._invalidate_again)
            nursery.start_soon(self._watch_asked)
            nursery.start_soon(self._drop_unheld)
            await self._follow()

    async def _follow(self) -> None:
        while True:
            try:
                batch = await self._feed.next_batch()
            except Exception:  # the feed reconnects by itself; anything else must not end the mount
                log.warning("reading change notices failed; trying again", exc_info=True)
                self._resync()  # notices may have been lost meanwhile
                await trio.sleep(1.0)
                continue
            for change in batch:
                self._take(change)

    async def _watch_quiet(self) -> None:
        while True:
            await trio.sleep(QUIET_POLL)
            try:
                await self.check_quiet()
            except Exception:  # a Redis outage: the feed's RESYNC will take everything back
                log.debug("looking for unannounced changes failed", exc_info=True)

    async def _invalidate_again(self) -> None:
        """Each change's names and inodes are dropped twice: at its notice, and once more a second on.

        The kernel guards an entry against a lookup answered across its invalidation, and
        recent kernels attributes too (an attribute version); the second pass covers any
        reply that still slipped in between, which the long cache time would otherwise keep.
        """
        while True:
            await trio.sleep(AGAIN_SECONDS)
            again, self._again = self._again, []
            for change in again:
                self._kernel.submit(change)

    def _resync(self) -> None:
        """Notices may have been lost: take everything back, and hand out short times for a while.

        A request that read the store before the gap closed may answer after the
        take-back; while settling, its answer is cached only briefly.
        """
        self.resyncs += 1
        self._settling += 1
        self._trust()
        self._take_back()
        if self._nursery is not None:
            self._nursery.start_soon(self._settled)

    async def _settled(self) -> None:
        await trio.sleep(RESYNC_SETTLE)
        self._settling -= 1
        self._trust()

    def _take_back(self) -> None:
        """Drop from the kernel everything it was allowed to keep for long."""
        if self._listings is not None:
            self._listings.drop()
        entries, inodes = self._handed.take_all()
        if entries or inodes:
            taken = Change(ChangeOp.RESYNC, tuple(entries), tuple(inodes))
            self._kernel.submit(taken)
            self._again.append(taken)  # a reply in flight across the take-back: dropped a second on

    def _take(self, change: Change) -> None:
        if self._listings is not None:
            self._listings.drop()
        if change.op is ChangeOp.RESYNC:
            log.info("change notices may have been lost; dropping what the kernel cached")
            self._resync()
            return
        if change.origin and change.origin == self._replying:
            self.own += 1
            return
        self.foreign += 1
        if self._changed is not None:
            for ino in change.inodes:
                self._changed(ino)
        self._kernel.submit(change)
        self._again.append(change)

    def stop(self) -> None:
        """The FUSE session is ending: no kernel call may start after this."""
        self._kernel.close()

    async def join(self) -> None:
        self._kernel.close()
        if not await trio.to_thread.run_sync(self._kernel.join, JOIN_TIMEOUT):
            log.warning("a kernel cache invalidation was still pending at unmount")
        log.info("change notices: %d from elsewhere followed, %d of our own skipped", self.foreign, self.own)
