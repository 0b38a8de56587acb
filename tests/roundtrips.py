"""Counting a store's requests at the redis-server itself, with ``MONITOR``.

``MONITOR`` shows every command a client sends and, marked ``lua``, the
calls a script makes inside its one round trip, which are not counted. Only
commands naming one store's key prefix count, so other stores on the same
server (other tests) and the change feed's health checks do not, nor a
mount's periodic look at its shards' ``quiet`` and ``seq`` counters (and
the registry of shards), nor its subscriptions to shards' notices. A marker
(``ECHO``) sent before and after an operation delimits it: every request
the operation made was answered before it returned, so its commands lie
between the two. A pipeline would show as one command per call, and count
so.

Nothing here is timed. The monitor's connection waits for as long as the
server is quiet (a slow machine may keep it quiet for seconds while a mount
starts), and a marker is awaited for :data:`MARK_TIMEOUT` only as a bound on
a hang, never as a measurement.

Kept out of conftest.py so test modules (here and in ``tests/fuse``) import
it by a name that is unique in the tree.
"""

from __future__ import annotations

import queue
import re
import secrets
import threading
from collections.abc import Awaitable, Callable
from typing import Self, TypeVar

import redis
from redis.exceptions import RedisError
from servers import RedisServer

MARK_TIMEOUT = 120.0  # seconds a marker may take to come through the monitor: a bound on a hang, not a measure
T = TypeVar("T")


class Seen(str):
    """One command the server saw, as ``MONITOR`` printed it (its arguments joined by spaces)."""

    client: str  # the connection that sent it, "address:port"

    def __new__(cls, command: str, client: str) -> Self:
        seen = super().__new__(cls, command)
        seen.client = client
        return seen


class RoundTrips:
    """The commands a store's clients send between two markers, as MONITOR reports them."""

    def __init__(self, server: RedisServer, prefix: str) -> None:
        self._server = server
        self._prefix = prefix
        # A mount's look, twice a second, for changes made without notices or notices lost, and its
        # subscriptions to the notices of shards it meets (fusefs.invalidation): background work of
        # its own, not a round trip of any request.
        store = re.escape(prefix)
        self._polls = re.compile(
            rf"GET {store}:{{\d+}}:(quiet|seq)|SMEMBERS {store}:{{0}}:shards|SSUBSCRIBE( {store}:{{\d+}}:events)+"
        )
        self._seen: queue.Queue[Seen | None] = queue.Queue()
        self._stop = f"stop-{secrets.token_hex(8)}"  # the marker that ends the monitor's thread
        # No socket timeout: a monitor waits for commands for as long as the server is quiet.
        self._client = redis.Redis.from_url(server.url, socket_timeout=None)
        self._monitor = self._client.monitor()
        self._monitor.__enter__()
        self._thread = threading.Thread(target=self._follow, name="redis-monitor", daemon=True)
        self._thread.start()

    def _follow(self) -> None:
        try:
            while True:
                seen = self._monitor.next_command()
                if seen is not None and seen["client_type"] != "lua":  # a script's calls are its one trip
                    command = seen["command"]
                    self._seen.put(Seen(command, f"{seen['client_address']}:{seen['client_port']}"))
                    if command == f"ECHO {self._stop}":
                        return
        except (RedisError, OSError):
            self._seen.put(None)  # the monitor's connection closed

    def close(self) -> None:
        with self._server.client() as client:
            client.echo(self._stop)
        self._thread.join(MARK_TIMEOUT)
        self._monitor.__exit__()
        self._client.close()

    def _mark(self, token: str) -> list[Seen]:
        """Send a marker; the store's commands the monitor showed before it."""
        with self._server.client() as client:
            client.echo(token)
        seen: list[Seen] = []
        while True:
            command = self._seen.get(timeout=MARK_TIMEOUT)
            assert command is not None, "the MONITOR connection closed"
            if command == f"ECHO {token}":
                return seen
            if self._prefix in command and not self._polls.fullmatch(command):
                seen.append(command)

    def during(self, operation: Callable[[], object]) -> list[Seen]:
        """The store's commands while ``operation()`` ran."""
        token = secrets.token_hex(8)
        self._mark(f"{token}-before")
        operation()
        return self._mark(f"{token}-after")

    async def during_async(self, operation: Callable[[], Awaitable[T]]) -> tuple[list[Seen], T]:
        """The store's commands while ``await operation()`` ran, and what it returned.

        The markers are sent from this thread and block it briefly: nothing
        else of the caller's may run (and send commands) between a marker
        and the operation.
        """
        token = secrets.token_hex(8)
        self._mark(f"{token}-before")
        result = await operation()
        return self._mark(f"{token}-after"), result
