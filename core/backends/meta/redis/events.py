"""Following a Redis store's change notices: one channel per shard (see :mod:`core.backends.meta.redis.lua`).

Every Lua op that changes the tree publishes one notice in the same atomic
step, on its shard's channel (``SPUBLISH``), so a notice is never sent for a
change that did not happen, and the notices of one shard arrive in commit
order, numbered. A follower subscribes to the shards it holds copies of
(:meth:`RedisChangeFeed.watch`), and reads nothing of the others: on a
cluster, a notice travels only to the nodes of its slot.

Redis pub/sub keeps nothing for a subscriber that is away: while the
connection is down notices are lost. The feed then reconnects with backoff,
for as long as it is read, and reports the gap as
:data:`core.backends.meta.changes.RESYNC`, so the follower knows its copies
may be stale beyond what notices can tell it; so does a number skipped.

The subscription is a redis.asyncio connection of its own (a subscribed
connection can do nothing else; on a cluster, one per node it needs),
reached through :mod:`core.infra.aio_bridge`: one crossing per batch of
notices, never per notice.
"""

from __future__ import annotations

import logging
import re
import time

import anyio
import redis.asyncio as aioredis
from redis.asyncio.client import PubSub
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from core import shards
from core.backends.meta.base import MetaStore
from core.backends.meta.changes import RESYNC, Change, ChangeOp
from core.backends.meta.redis.store import RedisMetaStore
from core.errors import ConfigurationError, ProviderError
from core.infra import aio_bridge

log = logging.getLogger("artifactfs.changes")

_OPS = {op.value: op for op in ChangeOp}
IDLE_WAIT = 1.0  # seconds one read waits for a notice before looking again (and health-checking)
MAX_BATCH = 4096  # notices handed over per crossing at most
RECONNECT_FIRST, RECONNECT_MAX = 0.05, 2.0  # backoff between attempts to subscribe again
_CHANNEL = re.compile(rb":\{(\d+)\}:events$")  # a shard's channel: <prefix>:{<shard>}:events


def parse_notice(raw: bytes) -> Change:
    """One notice: ``op``, then ``e<parent>/<name>``, ``i<ino>``, ``o<origin>``, ``s<seq>`` items, NUL-separated.

    Names are raw bytes (a name holds neither NUL nor ``/``; the parent is
    digits, so the first ``/`` ends it). Items this version does not know are
    skipped, so an older follower survives a newer script.
    """
    op, *items = raw.split(b"\0")
    entries: list[tuple[int, bytes]] = []
    inodes: list[int] = []
    origin, seq = "", 0
    for item in items:
        kind, rest = item[:1], item[1:]
        try:
            if kind == b"e":
                parent, _, name = rest.partition(b"/")
                entries.append((int(parent), name))
            elif kind == b"i":
                inodes.append(int(rest))
            elif kind == b"o":
                origin = rest.decode("ascii", "replace")
            elif kind == b"s":
                seq = int(rest)
        except ValueError:
            log.warning("skipping a malformed item %r of a change notice", item[:80])
    op_ = _OPS.get(op.decode("ascii", "replace"), ChangeOp.OTHER)
    return Change(op_, tuple(entries), tuple(inodes), origin, seq)


def _shard_of(channel: bytes | str) -> int | None:
    found = _CHANNEL.search(channel if isinstance(channel, bytes) else channel.encode())
    return int(found.group(1)) if found else None


class RedisChangeFeed:
    """The :class:`core.backends.meta.changes.ChangeFeed` of one :class:`RedisMetaStore`.

    It follows the shards it is asked to (:meth:`watch`), each on its own
    channel, always the upper tree's. A shard is followed from the
    confirmation of its subscription on; its notices are numbered, so a
    number skipped (or a shard's count found ahead of the notices read, two
    looks in a row: :meth:`unannounced`) is a lost notice, reported as a
    RESYNC like a reconnect.
    """

    def __init__(self, store: RedisMetaStore, *, socket_timeout: float = 5.0) -> None:
        self.origin = store.origin
        self._store = store
        self._url = store.url
        self._socket_timeout = socket_timeout
        self._sub: tuple[aioredis.Redis | None, PubSub] | None = None
        self._reader: aioredis.Redis | None = None  # where the feed reads a shard's count (the subscription's server)
        # Notices may have been lost since the last batch. True until subscribed: a feed read without
        # open() may follow a mount that already answered, and what it answered meanwhile is unchecked.
        self._gap = True
        self._outage_logged = False
        self._wanted: set[int] = {shards.UPPER}  # the shards followed (asked for), subscribed or not yet
        self._since: dict[int, float] = {}  # shard -> when its subscription was confirmed
        self._seen: dict[int, int] = {}  # shard -> the number of its last notice read (or its count then)
        self._ahead: dict[int, int] = {}  # shard -> a count one look found ahead of the notices read
        self._early: list[Change] = []  # notices read while confirming subscriptions: the next batch's

    def channel(self, shard: int) -> str:
        return self._store.key("events", shard=shard)

    # -- in the caller's world

    async def open(self) -> None:
        """Subscribe, confirmed by the server: every change committed after this returns is delivered.

        Called before anything read from the store is handed out, so nothing
        can have been missed: the first batch is no RESYNC.
        """
        try:
            await aio_bridge.run(self._subscribe)
        except (RedisError, OSError) as exc:
            raise ProviderError(f"cannot subscribe to {self.channel(shards.UPPER)}: {exc!r}") from exc
        self._gap = False

    async def next_batch(self) -> list[Change]:
        return await aio_bridge.run(self._next_batch)

    async def close(self) -> None:
        await aio_bridge.run(self._drop)

    async def watch(self, wanted: set[int]) -> None:
        await aio_bridge.run(self._watch, set(wanted))

    async def unwatch(self, dropped: set[int]) -> None:
        await aio_bridge.run(self._unwatch, set(dropped) - {shards.UPPER})

    def following(self, shard: int) -> float | None:
        return self._since.get(shard)  # a dict read: safe from another thread

    async def unannounced(self) -> int:
        return await aio_bridge.run(self._unannounced)

    # -- on an asyncio loop

    async def _unannounced(self) -> int:
        """The followed shards' counts of changes made without a notice; and a look at their notice
        counts: one ahead of the notices read on two looks in a row had its notice lost."""
        counts = await self._store.counters(self._wanted, "quiet", "seq")
        quiet = 0
        for shard, (unannounced, count) in counts.items():
            quiet += int(unannounced or 0)
            count = int(count or 0)
            if shard in self._since and count > self._seen.get(shard, 0):
                if self._ahead.get(shard) == count:
                    log.warning("a change notice of shard %d was lost (count %d, read %d)", shard, count,
                                self._seen.get(shard, 0))
                    self._gap = True
                self._ahead[shard] = count
            else:
                self._ahead.pop(shard, None)
        return quiet

    async def _watch(self, wanted: set[int]) -> None:
        new = wanted - self._wanted
        if not new:
            return
        self._wanted |= new
        if self._sub is not None:
            try:  # confirmed as the reader meets the confirmations (_confirmed)
                await self._sub[1].ssubscribe(*(self.channel(shard) for shard in sorted(new)))
            except (RedisError, OSError):
                pass  # the reader's next read fails as well, and subscribes to all of them again

    async def _unwatch(self, dropped: set[int]) -> None:
        self._wanted -= dropped
        for shard in dropped:
            self._since.pop(shard, None)
            self._seen.pop(shard, None)
            self._ahead.pop(shard, None)
        if self._sub is not None and dropped:
            try:  # notices already on their way are read and followed like any
                await self._sub[1].sunsubscribe(*(self.channel(shard) for shard in sorted(dropped)))
            except (RedisError, OSError):
                pass  # the reader's next read fails as well, and subscribes to what is still followed

    async def _read(self, pubsub: PubSub, timeout: float) -> dict | None:
        if self._store.cluster:
            return await pubsub.get_sharded_message(timeout=timeout)  # type: ignore[attr-defined]
        return await pubsub.get_message(timeout=timeout)

    async def _subscribe(self) -> PubSub:
        if self._sub is not None:
            return self._sub[1]
        client: aioredis.Redis | None
        if self._store.cluster:  # sharded pub/sub: a connection to each node that holds a followed shard
            store_client, _ = await self._store._clients.get()
            client, pubsub, self._reader = None, store_client.pubsub(), store_client
        else:
            client = aioredis.Redis.from_url(
                self._url, socket_connect_timeout=self._socket_timeout, socket_timeout=self._socket_timeout,
                health_check_interval=10, retry=Retry(NoBackoff(), 0),  # reconnects are ours, with backoff
            )
            pubsub, self._reader = client.pubsub(), client
        self._since.clear()
        try:
            wanted = sorted(self._wanted)
            await pubsub.ssubscribe(*(self.channel(shard) for shard in wanted))
            # SSUBSCRIBE is only sent so far: a change the server commits before it reads it is not
            # delivered. Its confirmations come first on the connection (notices may follow them).
            deadline = anyio.current_time() + self._socket_timeout
            while any(shard not in self._since for shard in wanted):
                message = await self._read(pubsub, max(0.0, deadline - anyio.current_time()))
                if message is None:
                    raise RedisTimeoutError(f"no confirmation of the subscriptions to {self.channel(shards.UPPER)}, ...")
                await self._take(message, self._early)
            # Followed as if for ever: at open nothing was read before, and after a gap the RESYNC that
            # follows makes the follower settle (a shard asked for later is followed from its confirmation).
            self._since.update(dict.fromkeys(wanted, 0.0))
        except BaseException:
            with anyio.CancelScope(shield=True):
                await _quietly_close(client, pubsub)
            raise
        self._sub = (client, pubsub)
        return pubsub

    async def _take(self, message: dict, into: list[Change]) -> None:
        """One message read: a confirmation (the shard followed from now on) or a notice (into ``into``)."""
        kind, shard = message.get("type"), _shard_of(message.get("channel") or b"")
        if shard is None:
            return
        if kind == "ssubscribe":
            await self._confirmed(shard)
        elif kind == "smessage":
            change = parse_notice(message["data"])
            seen = self._seen.get(shard)
            if seen is not None and change.seq > seen + 1:
                log.warning("a change notice of shard %d was lost (read %d, then %d)", shard, seen, change.seq)
                self._gap = True
            if change.seq:
                self._seen[shard] = max(seen or 0, change.seq)
            into.append(change)

    async def _confirmed(self, shard: int) -> None:
        """``shard`` is followed from here: its notices so far are counted as read."""
        assert self._reader is not None
        count = await self._reader.get(self._store.key("seq", shard=shard))
        self._seen[shard] = max(self._seen.get(shard, 0), int(count or 0))
        self._ahead.pop(shard, None)
        self._since[shard] = time.monotonic()

    async def _drop(self) -> None:
        sub, self._sub = self._sub, None
        self._since.clear()
        if sub is not None:
            with anyio.CancelScope(shield=True):
                await _quietly_close(*sub)

    async def _next_batch(self) -> list[Change]:
        delay = RECONNECT_FIRST
        while True:
            try:
                pubsub = await self._subscribe()
                if self._gap:  # subscribed again, or a notice lost: say so before anything new
                    self._gap = False
                    if self._outage_logged:
                        log.info("change notices from %s resumed; some may have been lost", self._store.prefix)
                        self._outage_logged = False
                    return [RESYNC]
                batch, self._early = self._early, []
                while len(batch) < MAX_BATCH:
                    message = await self._read(pubsub, IDLE_WAIT if not batch else 0)
                    if message is None:
                        break
                    await self._take(message, batch)
                if self._gap:  # a number skipped: whatever came with it, after the RESYNC
                    self._gap = False
                    return [RESYNC, *batch]
            except (RedisError, OSError) as exc:
                if not self._outage_logged:
                    log.warning("change notices from %s interrupted (%r); reconnecting", self._store.prefix, exc)
                    self._outage_logged = True
                self._gap = True
                await self._drop()
                await anyio.sleep(delay)
                delay = min(delay * 2, RECONNECT_MAX)
                continue
            except anyio.get_cancelled_exc_class():
                # A read cut short may leave half a reply on the connection: start afresh next time.
                self._gap = True
                await self._drop()
                raise
            if batch:
                return batch


async def _quietly_close(client: aioredis.Redis | None, pubsub: PubSub) -> None:
    try:
        await pubsub.aclose()
    except (RedisError, OSError):
        pass
    if client is not None:
        try:
            await client.aclose()
        except (RedisError, OSError):
            pass


def follow(meta: MetaStore) -> RedisChangeFeed:
    """The changes other processes commit to the Redis store ``meta`` (the registry's feed of ``redis``)."""
    if not isinstance(meta, RedisMetaStore):
        raise ConfigurationError(f"Redis change notices need a Redis metadata store, not {type(meta).__name__}")
    return RedisChangeFeed(meta)
