"""Following a Redis store's change notices (``<prefix>:events``, see :mod:`core.backends.meta.redis.lua`).

Every Lua op that changes the tree publishes one notice in the same atomic
step, so a notice is never sent for a change that did not happen, and the
notices of one channel arrive in commit order. Redis pub/sub keeps nothing
for a subscriber that is away: while the connection is down notices are
lost. The feed then reconnects with backoff, for as long as it is read, and
reports the gap as :data:`core.backends.meta.changes.RESYNC`, so the follower knows its
copies may be stale beyond what notices can tell it.

The subscription is a redis.asyncio connection of its own (a subscribed
connection can do nothing else), reached through :mod:`core.infra.aio_bridge`: one
crossing per batch of notices, never per notice.
"""

from __future__ import annotations

import logging
import random
from urllib.parse import urlsplit, urlunsplit

import anyio
import redis.asyncio as aioredis
from redis.asyncio.client import PubSub
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

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


def parse_notice(raw: bytes) -> Change:
    """One notice: ``op``, then ``e<parent>/<name>``, ``i<ino>``, ``o<origin>`` items, NUL-separated.

    Names are raw bytes (a name holds neither NUL nor ``/``; the parent is
    digits, so the first ``/`` ends it). Items this version does not know are
    skipped, so an older follower survives a newer script.
    """
    op, *items = raw.split(b"\0")
    entries: list[tuple[int, bytes]] = []
    inodes: list[int] = []
    origin = ""
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
        except ValueError:
            log.warning("skipping a malformed item %r of a change notice", item[:80])
    return Change(_OPS.get(op.decode("ascii", "replace"), ChangeOp.OTHER), tuple(entries), tuple(inodes), origin)


class RedisChangeFeed:
    """The :class:`core.backends.meta.changes.ChangeFeed` of one :class:`RedisMetaStore`."""

    def __init__(self, store: RedisMetaStore, *, socket_timeout: float = 5.0) -> None:
        self.origin = store.origin
        self._store = store
        self.channel = store.channel
        self._url = store.url
        self._socket_timeout = socket_timeout
        self._sub: tuple[aioredis.Redis, PubSub] | None = None
        # Notices may have been lost since the last batch. True until subscribed: a feed read without
        # open() may follow a mount that already answered, and what it answered meanwhile is unchecked.
        self._gap = True
        self._outage_logged = False

    # -- in the caller's world

    async def open(self) -> None:
        """Subscribe, confirmed by the server: every change committed after this returns is delivered.

        Called before anything read from the store is handed out, so nothing
        can have been missed: the first batch is no RESYNC.
        """
        try:
            await aio_bridge.run(self._subscribe)
        except (RedisError, OSError) as exc:
            raise ProviderError(f"cannot subscribe to {self.channel}: {exc!r}") from exc
        self._gap = False

    async def next_batch(self) -> list[Change]:
        return await aio_bridge.run(self._next_batch)

    async def close(self) -> None:
        await aio_bridge.run(self._drop)

    async def unannounced(self) -> int:
        return await self._store.unannounced()

    # -- on an asyncio loop

    async def _subscribe(self) -> PubSub:
        if self._sub is not None:
            return self._sub[1]
        client = aioredis.Redis.from_url(
            await self._node_url(), socket_connect_timeout=self._socket_timeout, socket_timeout=self._socket_timeout,
            health_check_interval=10, retry=Retry(NoBackoff(), 0),  # reconnects are ours, with backoff
        )
        pubsub = client.pubsub()  # the confirmation is awaited; _next_batch keeps only "message"s
        try:
            await pubsub.subscribe(self.channel)
            # SUBSCRIBE is only sent so far: a change the server commits before it reads it is not
            # delivered. Its confirmation is the first message on this connection.
            confirmed = await pubsub.get_message(timeout=self._socket_timeout)
            if confirmed is None or confirmed.get("type") != "subscribe":
                raise RedisTimeoutError(f"no confirmation of the subscription to {self.channel}: {confirmed!r}")
        except BaseException:
            with anyio.CancelScope(shield=True):
                await _quietly_close(client, pubsub)
            raise
        self._sub = (client, pubsub)
        return pubsub

    async def _node_url(self) -> str:
        """Where to subscribe: the store's URL; on a cluster, any node the store's client knows, picked
        anew each time (a notice is published to every node, and the one named may be the one down)."""
        if not self._store.cluster:
            return self._url
        client, _ = await self._store._clients.get()
        nodes = client.get_nodes()  # type: ignore[attr-defined]
        if not nodes:
            return self._url
        node = random.choice(nodes)
        parts = urlsplit(self._url)
        userinfo = parts.netloc.rpartition("@")[0]
        netloc = f"{userinfo}@{node.host}:{node.port}" if userinfo else f"{node.host}:{node.port}"
        return urlunsplit(parts._replace(netloc=netloc))

    async def _drop(self) -> None:
        sub, self._sub = self._sub, None
        if sub is not None:
            with anyio.CancelScope(shield=True):
                await _quietly_close(*sub)

    async def _next_batch(self) -> list[Change]:
        delay = RECONNECT_FIRST
        while True:
            try:
                pubsub = await self._subscribe()
                if self._gap:  # subscribed again: say so before anything new
                    self._gap = False
                    if self._outage_logged:
                        log.info("change notices from %s resumed; some may have been lost", self.channel)
                        self._outage_logged = False
                    return [RESYNC]
                message = await pubsub.get_message(timeout=IDLE_WAIT)
                if message is None:
                    continue
                batch = [message]
                while len(batch) < MAX_BATCH:
                    more = await pubsub.get_message(timeout=0)
                    if more is None:
                        break
                    batch.append(more)
            except (RedisError, OSError) as exc:
                if not self._outage_logged:
                    log.warning("change notices from %s interrupted (%r); reconnecting", self.channel, exc)
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
            changes = [parse_notice(m["data"]) for m in batch if m.get("type") == "message"]
            if changes:
                return changes


async def _quietly_close(client: aioredis.Redis, pubsub: PubSub) -> None:
    try:
        await pubsub.aclose()
    except (RedisError, OSError):
        pass
    try:
        await client.aclose()
    except (RedisError, OSError):
        pass


def follow(meta: MetaStore) -> RedisChangeFeed:
    """The changes other processes commit to the Redis store ``meta`` (the registry's feed of ``redis``)."""
    if not isinstance(meta, RedisMetaStore):
        raise ConfigurationError(f"Redis change notices need a Redis metadata store, not {type(meta).__name__}")
    return RedisChangeFeed(meta)
