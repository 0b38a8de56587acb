"""A proxy in front of redis-server that can hold one client's command: forced interleavings.

A test that wants "host X reads, host Y changes, then X writes" must not
hope for that order: it gives each host (a mount process, a library
process) a :class:`RedisProxy` of its own and arms a :class:`Hold` on it.
The proxy reads the RESP commands the host sends, counts them, and forwards
them one by one; the first call of the store's Lua script whose op (its
``ARGV[1]``: ``rename``, ``update``, ``remove``, ``insert``, ...) is one the
hold names, and whose records pass the hold's test, is kept back before
redis-server sees it. That connection waits there (its later commands
queue behind it, so their order is kept); the host's other connections go
on. The test waits until the hold has caught its call, runs the other
host's step to its end, then releases the hold and the call goes out.

Nothing here depends on timing: a hold is caught or not, and the test
waits for that with a bound (which only a broken host can reach).

The proxy speaks RESP only as far as it must: it splits what a client sends
into commands (arrays of bulk strings, or inline commands) and copies the
server's replies back untouched, so pub/sub, pipelines and scripts pass
through as they are.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Self

from loopthread import LoopThread

from core.backends.meta.redis import packing
from core.backends.meta.redis.lua import FIELDS
from core.backends.meta.redis.store import unsealed

_CRLF = b"\r\n"
_SCRIPT_CALLS = (b"EVALSHA", b"EVAL", b"EVALSHA_RO", b"EVAL_RO")


class ProtocolError(Exception):
    """The client sent something that is not RESP."""


class CommandReader:
    """Splits a client's byte stream into commands: ``(raw bytes, [arguments])``."""

    def __init__(self) -> None:
        self._buffer = bytearray()

    def feed(self, data: bytes) -> None:
        self._buffer += data

    def commands(self) -> list[tuple[bytes, list[bytes]]]:
        """Every complete command received so far, in order."""
        out = []
        while True:
            parsed = self._parse()
            if parsed is None:
                return out
            end, args = parsed
            out.append((bytes(self._buffer[:end]), args))
            del self._buffer[:end]

    def _line(self, at: int) -> tuple[bytes, int] | None:
        end = self._buffer.find(_CRLF, at)
        return None if end < 0 else (bytes(self._buffer[at:end]), end + 2)

    def _parse(self) -> tuple[int, list[bytes]] | None:
        if not self._buffer:
            return None
        head = self._line(0)
        if head is None:
            return None
        line, at = head
        if not line.startswith(b"*"):  # an inline command (redis-cli, telnet)
            return at, line.split()
        args = []
        for _ in range(int(line[1:])):
            size_line = self._line(at)
            if size_line is None:
                return None
            size, at = size_line
            if not size.startswith(b"$"):
                raise ProtocolError(f"expected a bulk string, got {size[:20]!r}")
            length = int(size[1:])
            if len(self._buffer) < at + length + 2:
                return None
            args.append(bytes(self._buffer[at : at + length]))
            at += length + 2
        return at, args


@dataclass(frozen=True)
class ScriptCall:
    """One call of a Lua script, as the proxy saw it: its op and its arguments."""

    op: str
    keys: tuple[bytes, ...]
    argv: tuple[bytes, ...]

    @classmethod
    def parse(cls, args: list[bytes]) -> ScriptCall | None:
        """The script call in a command, if it is one (``EVAL[SHA] script numkeys keys... argv...``)."""
        if len(args) < 3 or args[0].upper() not in _SCRIPT_CALLS:
            return None
        numkeys = int(args[2])
        keys, argv = args[3 : 3 + numkeys], args[3 + numkeys :]
        if not argv:
            return None
        return cls(argv[0].decode("utf-8", "replace"), tuple(keys), tuple(argv))

    def records(self) -> list[dict[str, Any]]:
        """The node records among the arguments, unpacked and decoded: a node travels as its ino, then its
        fields in ``FIELDS`` order, its sealed record first, then the fields it is packed against."""
        found = []
        for at in range(1, len(self.argv) - len(FIELDS) + 1):
            fields = dict(zip(FIELDS, self.argv[at : at + len(FIELDS)]))
            with contextlib.suppress(ValueError):
                record = json.loads(packing.unpacked(unsealed(fields["rec"])[1], int(self.argv[at - 1]), fields))
                if isinstance(record, dict):
                    found.append(record)
        return found


@dataclass(eq=False)
class Hold:
    """Keeps back the first script call whose op is in ``ops`` and that ``where`` accepts."""

    ops: frozenset[str]
    where: Callable[[ScriptCall], bool] | None = None
    call: ScriptCall | None = field(default=None, init=False)
    _caught: threading.Event = field(default_factory=threading.Event, init=False)
    _released: threading.Event = field(default_factory=threading.Event, init=False)

    def matches(self, call: ScriptCall) -> bool:
        return call.op in self.ops and (self.where is None or self.where(call))

    @property
    def caught(self) -> bool:
        return self._caught.is_set()

    def wait_caught(self, timeout: float) -> bool:
        return self._caught.wait(timeout)

    def release(self) -> None:
        self._released.set()

    def _catch(self, call: ScriptCall) -> None:
        self.call = call
        self._caught.set()


class RedisProxy:
    """A TCP proxy to one redis-server, in a thread of its own, for one host of a test.

    ``url`` is what the host is given as its Redis URL. :meth:`hold` arms a
    :class:`Hold`; :attr:`counts` counts the commands that went through, by
    name, and script calls as ``<command>:<op>`` (a test can tell how many
    round trips a step made, and that a held one did go out).
    """

    def __init__(self, upstream_port: int, name: str = "proxy", host: str = "127.0.0.1") -> None:
        self.name, self.host, self.upstream_port = name, host, upstream_port
        self.port = 0
        self.counts: Counter[str] = Counter()
        self._lock = threading.Lock()
        self._armed: list[Hold] = []
        self._serving = LoopThread(f"redisproxy-{name}")
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._waiting: set[Hold] = set()

    @property
    def url(self) -> str:
        return f"redis://{self.host}:{self.port}/0"

    # -- lifecycle

    def start(self) -> RedisProxy:
        self._serving.start(self._listen, self._hang_up)
        return self

    async def _listen(self) -> None:
        self._server = await asyncio.start_server(self._serve, self.host, 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _hang_up(self) -> None:
        assert self._server is not None
        self._server.close()
        for writer in list(self._writers):
            writer.close()
        await asyncio.sleep(0)

    def close(self) -> None:
        """Release every hold, drop every connection, stop the thread."""
        with self._lock:
            holds, self._armed = [*self._armed, *self._waiting], []
        for hold in holds:
            hold.release()
        self._serving.stop()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- holds

    def hold(self, ops: Iterable[str], where: Callable[[ScriptCall], bool] | None = None) -> Hold:
        """Arm a hold on the next matching script call of this host."""
        hold = Hold(frozenset(ops), where)
        with self._lock:
            self._armed.append(hold)
        return hold

    def disarm(self, hold: Hold) -> None:
        """Forget a hold that caught nothing (its step ended without the call), and release it."""
        with self._lock:
            if hold in self._armed:
                self._armed.remove(hold)
        hold.release()

    def _claim(self, args: list[bytes]) -> Hold | None:
        call = ScriptCall.parse(args)
        with self._lock:
            self.counts[args[0].decode("ascii", "replace").upper() if args else "?"] += 1
            if call is None:
                return None
            self.counts[f"{args[0].decode('ascii', 'replace').upper()}:{call.op}"] += 1
            for hold in self._armed:
                if hold.matches(call):
                    self._armed.remove(hold)
                    self._waiting.add(hold)
                    hold._catch(call)
                    return hold
        return None

    # -- forwarding

    async def _serve(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        try:
            server_reader, server_writer = await asyncio.open_connection(self.host, self.upstream_port)
        except OSError:
            client_writer.close()
            return
        self._writers |= {client_writer, server_writer}
        try:
            replies = asyncio.ensure_future(self._copy(server_reader, client_writer))
            try:
                await self._forward(client_reader, server_writer)
            finally:
                replies.cancel()
                with contextlib.suppress(asyncio.CancelledError, OSError):
                    await replies
        finally:
            for writer in (client_writer, server_writer):
                self._writers.discard(writer)
                writer.close()

    async def _forward(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Client to server, command by command; a held command stops this connection until released."""
        commands = CommandReader()
        while True:
            try:
                data = await reader.read(1 << 16)
            except OSError:
                return
            if not data:
                return
            commands.feed(data)
            for raw, args in commands.commands():
                hold = self._claim(args)
                if hold is not None:
                    try:
                        await writer.drain()  # what came before the held command goes out first
                    except OSError:
                        return
                    await asyncio.to_thread(hold._released.wait)
                    with self._lock:
                        self._waiting.discard(hold)
                writer.write(raw)
            try:
                await writer.drain()
            except OSError:
                return

    @staticmethod
    async def _copy(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Server to client, byte for byte."""
        while True:
            data = await reader.read(1 << 16)
            if not data:
                writer.close()
                return
            writer.write(data)
            await writer.drain()
