"""Metadata in Redis: one store shared by every mount and library user on every host.

The layout and the atomic ops live in :mod:`core.backends.meta.redis.lua`; this module
signs and verifies records, turns script answers into the store's errors, and
runs every call through the asyncio bridge with bounded retries.

Reads that touch many inodes cost round trips per page, not per inode
(issue #9). A directory listing or a search answers up to
:data:`_LIST_INLINE` records in one script; a larger one is answered with
its inos, whose records then come in one pipelined round trip, so no script
holds the server for a 100,000-entry listing (a record moved or removed
between the two steps is simply left out). A walk of a subtree (a session's
files) is one script per page of :data:`_LIST_INLINE` entries, however many
directories it spans; the directories above a set of nodes (their
filenames) and the nodes along a path come in one script each. Every record
is verified here, whatever script answered it.
"""

from __future__ import annotations

import random
import secrets
import threading
from collections import deque
from collections.abc import Awaitable, Callable, Collection, Iterator, Sequence
from typing import TypeVar

import anyio
import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ReadOnlyError, ResponseError, TryAgainError
from redis.exceptions import TimeoutError as RedisTimeoutError

from core.backends.meta import changes, checks
from core.backends.meta.base import (
    ChildrenPage,
    Cover,
    Deferred,
    SearchPage,
    SearchQuery,
    Settle,
    decode_record,
    search_matches,
    search_position,
)
from core.backends.meta.redis.lua import NO_SUCCESSOR, NO_TOUCH, SCRIPT, SETTLE
from core.errors import (
    AlreadyExistsError,
    ArtifactCorruptedError,
    ArtifactNotFoundError,
    ConfigurationError,
    DirectoryNotEmptyError,
    IsADirectoryError_,
    NotADirectoryError_,
    ProviderError,
    StaleRecordError,
    StoreClosedError,
)
from core.infra import aio_bridge, tally
from core.infra.retry import RetryPolicy, retrying
from core.infra.signing import RecordSigner
from core.models import Scope, Usage
from core.nodes import ROOT_INO, Node, NodeKind, NodeRole, account_of, new_node
from core.settings import Settings

T = TypeVar("T")

_KIND_CODE = {
    NodeKind.DIR: "d", NodeKind.FILE: "f", NodeKind.SYMLINK: "l",
    NodeKind.FIFO: "p", NodeKind.CHAR_DEVICE: "c", NodeKind.BLOCK_DEVICE: "b", NodeKind.SOCKET: "s",
}  # the scripts tell only 'd' from the rest
_INO_BATCH = 64  # inode numbers reserved per INCRBY; unused ones are simply skipped
_MAX_CONFLICTS = 100  # replace attempts that meet a new occupant each time (heavy contention on one name)
_READ = ("rec", "sig", "mt", "mts", "sd")  # what a reader fetches of an inode
_WIDTH = 1 + len(_READ)  # a record as the scripts answer it: its ino, then those
SEARCH_SCAN = 1000  # members a search page with MIME or meta tests reads at most (they are not indexed)
SEARCH_SCAN_MIME = 10_000  # the same with a MIME prefix alone: the script tests it, so only matches travel
_LIST_INLINE = 1024  # a listing of up to this many entries comes in one round trip, records and all (1,000: ~4 ms of server time)

_ERRORS: dict[bytes, Callable[[str], Exception]] = {
    b"noparent": lambda what: ArtifactNotFoundError(f"{what}: the parent directory does not exist"),
    b"notdir": lambda what: NotADirectoryError_(f"{what}: not a directory"),
    b"exists": lambda what: AlreadyExistsError(f"{what} exists"),
    b"isdir": lambda what: IsADirectoryError_(f"{what} is a directory"),
    b"notempty": lambda what: DirectoryNotEmptyError(f"{what} is not empty"),
    b"vanished": lambda what: ArtifactNotFoundError(f"{what}: the inode was removed"),
    b"taken": lambda what: ProviderError(f"{what}: the target name was taken meanwhile"),
    b"dupid": lambda what: ProviderError(f"{what}: the artifact id is held by another inode"),
}


def _transient(exc: BaseException) -> bool:
    """Faults worth another try: the server is away, restarting, or failing over."""
    return isinstance(exc, (RedisConnectionError, RedisTimeoutError, ReadOnlyError, TryAgainError)) or (
        isinstance(exc, ResponseError) and str(exc).startswith("LOADING")
    )


def _name(name: str) -> bytes:
    return name.encode("utf-8", "surrogateescape")


def _text(name: bytes) -> str:
    return name.decode("utf-8", "surrogateescape")


def _links(node: Node) -> bytes:
    """A node's hard links as the scripts read them: ``<parent>/<name>`` each, joined by ``/``."""
    return b"/".join(b"%d/%s" % (link.parent, _name(link.name)) for link in node.links)


def index_tags(node: Node) -> list[str]:
    """The search sets an artifact belongs to; '/' cannot occur in an id."""
    space = node.space
    if node.artifact is None or space is None:
        return []
    box = space.sandbox_id
    tags = [f"sb:{box}", f"sc:{box}/{space.scope.value}"]
    if space.session_id is not None:
        tags.append(f"se:{box}/{space.session_id}")
    if space.user_id is not None:
        tags.append(f"us:{box}/{space.user_id}")
    if node.artifact.blob_of is not None:
        tags.append(f"bo:{node.artifact.blob_of}")  # the holders of another artifact's blob (sharers)
    tags.append(f"={order_member(node.crtime_ns, node.artifact.artifact_id)}")  # each tag's order (not a tag)
    return tags


def _search_tag(sandbox_id: str, scope: Scope | None, session_id: str | None, user_id: str | None) -> str:
    """The narrowest search set that holds every artifact of a space."""
    if session_id is not None:
        return f"se:{sandbox_id}/{session_id}"
    if user_id is not None:
        return f"us:{sandbox_id}/{user_id}"
    if scope is not None:
        return f"sc:{sandbox_id}/{scope.value}"
    return f"sb:{sandbox_id}"


def _mime_needle(prefix: str | None) -> str:
    """What a record's JSON holds if its MIME type starts with ``prefix`` (the script skips the others
    unread), or '' when the prefix has characters JSON may spell otherwise."""
    if not prefix or not all(" " < c < "\x7f" and c not in '"\\' for c in prefix):
        return ""
    return f'"mime":"{prefix}'


def order_member(stored_at_ns: int, artifact_id: str) -> str:
    """An artifact's member in its search sets' order: zero-padded, so byte order is (stored_at, id) order."""
    return f"{stored_at_ns:020d}/{artifact_id}"


class RedisMetaStore:
    """A :class:`~core.backends.meta.base.MetaStore` on one Redis server (or Sentinel/Cluster URL).

    ``prefix`` names this store's keys, so several stores can share a server;
    give it a hash tag (``{artifactfs}``) on Redis Cluster so one script's keys
    share a slot. With ``notify`` every change is announced on ``<prefix>:events``,
    stamped with ``origin`` (unique per instance) so a process can tell its own
    changes from others' (:mod:`core.backends.meta.redis.events`).
    """

    def __init__(
        self,
        url: str,
        signer: RecordSigner,
        *,
        prefix: str = "artifactfs",
        retry: RetryPolicy | None = None,
        notify: bool = False,
        max_connections: int = 64,
        socket_timeout: float = 5.0,
    ) -> None:
        self.url, self.prefix, self.notify = url, prefix, notify
        self.origin = secrets.token_hex(6)
        self._signer = signer
        self._retry = retry or RetryPolicy()
        self._max_connections, self._socket_timeout = max_connections, socket_timeout
        self._clients: aio_bridge.LoopLocal[tuple[aioredis.Redis, object]] = aio_bridge.LoopLocal(
            self._connect, self._disconnect
        )
        self._inos: deque[int] = deque()
        self._ino_lock = threading.Lock()  # the store may be used from two loops (caller's and bridge's)
        self._open = False

    # -- keys

    def key(self, *parts: object) -> str:
        return ":".join([self.prefix, *map(str, parts)])

    # -- connections

    async def _connect(self) -> tuple[aioredis.Redis, object]:
        pool = aioredis.BlockingConnectionPool.from_url(
            self.url,
            max_connections=self._max_connections,
            timeout=self._socket_timeout * 2,
            socket_timeout=self._socket_timeout,
            socket_connect_timeout=self._socket_timeout,
            retry=Retry(NoBackoff(), 0),  # retries are ours: bounded, and counted per operation
        )
        client = aioredis.Redis(connection_pool=pool, retry=Retry(NoBackoff(), 0))
        return client, client.register_script(SCRIPT)

    async def _disconnect(self, value: tuple[aioredis.Redis, object]) -> None:
        client, _ = value
        await client.aclose()
        await client.connection_pool.disconnect()

    async def _call(self, what: str, fn: Callable[[aioredis.Redis, object], Awaitable[T]]) -> T:
        """Run ``fn(client, script)`` on an asyncio loop, retrying transient faults.

        The one door to the server: each attempt is one round trip, counted
        in the caller's open :func:`core.infra.tally.tally` (if any).
        """
        if not self._open:
            raise StoreClosedError("the metadata store is closed")
        counted = tally.current()  # read here: the attempts run in the bridge's context, not the caller's

        async def attempt() -> T:
            client, script = await self._clients.get()
            if counted is not None:
                counted.round_trips += 1
            return await fn(client, script)

        async def in_loop() -> T:
            return await retrying(attempt, policy=self._retry, transient=_transient, what=f"redis {what}")

        try:
            return await aio_bridge.run(in_loop)
        except ResponseError as exc:
            raise ProviderError(f"redis {what}: {exc}") from exc

    async def _script(self, what: str, op: str, *args: object) -> list:
        keys = [self.prefix]
        argv = [op, "1" + changes.stamp(self.origin) if self.notify else "0", *args]
        return await self._call(what, lambda client, script: script(keys=keys, args=argv, client=client))

    # -- lifecycle

    async def open(self) -> None:
        self._open = True
        try:
            if await self.get(ROOT_INO) is None:
                root = new_node(parent=0, name="", kind=NodeKind.DIR, mode=0o755, role=NodeRole.ROOT, now_ns=0)
                root.ino = ROOT_INO
                await self._script("init", "init", *self._args(root))
        except BaseException:
            await self.close()
            raise

    async def close(self) -> None:
        self._open = False
        await self._clients.dispose_all()

    async def unannounced(self) -> int:
        """How many changes were made without a notice lately (``P:quiet``; 0: none for ``QUIET_TTL``).

        Changes by a store made without ``notify`` reach no follower: a mount
        that sees this move stops trusting notices alone (:mod:`fusefs.handed`).
        """
        raw = await self._call("quiet", lambda client, _s: client.get(self.key("quiet")))
        return int(raw) if raw is not None else 0

    # -- records

    def _args(self, node: Node) -> list[object]:
        record = node.model_dump_json().encode()
        art = node.artifact
        return [
            node.ino,
            record,
            self._signer.sign(record),
            node.parent,
            _name(node.name),
            _KIND_CODE[node.kind],
            art.artifact_id if art else "",
            "\n".join(index_tags(node)),
            account_of(node) or "",
            node.size,
            "" if node.expires_at_ns is None else node.expires_at_ns,
            art.version if art else "",
            node.rev,
            _links(node),
        ]

    @staticmethod
    def touch_payload(ino: int, time_ns: int) -> bytes:
        """What the signature of a directory's new mtime/ctime (``mt``) covers: that ino, that time.

        Never a JSON object, so it cannot pass for a record, nor a record for it.
        """
        return b"mtime %d %d" % (ino, time_ns)

    def _touch(self, ino: int, time_ns: int | None) -> list[object]:
        """The script's ``touch`` arguments: directory ``ino`` gets mtime/ctime ``time_ns`` (None: no touch)."""
        if time_ns is None:
            return list(NO_TOUCH)
        return [ino, time_ns, self._signer.sign(self.touch_payload(ino, time_ns))]

    def _load(
        self, ino: int | bytes, record: bytes | None, sig: bytes | None, mt: bytes | None = None,
        mts: bytes | None = None, sd: bytes | None = None,
    ) -> Node | None:
        ino = int(ino)
        if record is None and sig is None:
            return None
        node = decode_record(self._signer, ino, record, sig.decode("ascii", "replace") if sig is not None else None)
        if mt:  # a directory's times, set by a change of its entries after the record was written
            if not mts or not self._signer.verify(self.touch_payload(ino, int(mt)), mts.decode("ascii", "replace")):
                raise ArtifactCorruptedError(f"the directory times of inode {ino} fail their signature")
            node.mtime_ns = node.ctime_ns = int(mt)
        if sd and node.is_dir:
            node.subdirs = max(0, int(sd))  # a store older than the count may have gone below 0
        return node

    def _load_reply(self, reply: list) -> Node | None:
        return self._load(*reply) if reply else None

    async def _load_many(self, what: str, inos: Sequence[int | bytes]) -> list[Node]:
        """Records of ``inos`` in one pipelined round trip; vanished ones are left out."""
        if not inos:
            return []
        record_key = self.key

        async def fetch(client: aioredis.Redis, _script: object) -> list:
            async with client.pipeline(transaction=False) as pipe:
                for ino in inos:
                    pipe.hmget(record_key("i", int(ino)), *_READ)
                return await pipe.execute()

        rows = await self._call(what, fetch)
        return [n for n in (self._load(ino, *row) for ino, row in zip(inos, rows)) if n is not None]

    async def _new_ino(self) -> int:
        with self._ino_lock:
            if self._inos:
                return self._inos.popleft()
        high = await self._call("allocate inode", lambda client, _s: client.incrby(self.key("ino"), _INO_BATCH))
        with self._ino_lock:
            self._inos.extend(range(high - _INO_BATCH + 2, high + 1))
        return high - _INO_BATCH + 1

    @staticmethod
    def _check(reply: list, what: str) -> list:
        if reply and reply[0] == b"ERR":
            raise _ERRORS.get(reply[1], lambda w: ProviderError(f"{w}: {reply[1]!r}"))(what)
        return reply

    # -- reads

    async def get(self, ino: int) -> Node | None:
        row = await self._call("get", lambda client, _s: client.hmget(self.key("i", ino), *_READ))
        return self._load(ino, *row)

    async def lookup(self, parent: int, name: str) -> Node | None:
        return checks.is_entry(self._load_reply(await self._script("lookup", "lookup", parent, _name(name), "0")), parent, name)

    async def entry(self, parent: int, name: str) -> tuple[Node | None, Node | None]:
        reply = await self._script("lookup", "lookup", parent, _name(name), "1")
        return self._load(*reply[:_WIDTH]), checks.is_entry(self._load_reply(reply[_WIDTH:]), parent, name)

    async def children(self, parent: int) -> list[Node]:
        reply = await self._script("list", "list", parent, _LIST_INLINE)
        if reply[0] == b"RECORDS":
            nodes = checks.of_parent(self._entries(reply[1:]), parent)
        else:
            names, inos = reply[1::2], reply[2::2]
            by_ino = {node.ino: node for node in await self._load_many("list", inos)}
            entries = ((_text(name), by_ino[int(ino)]) for name, ino in zip(names, inos) if int(ino) in by_ino)
            nodes = checks.of_parent(entries, parent)
        return sorted(nodes, key=lambda n: _name(n.name))

    async def children_page(self, parent: int, after: str | None, limit: int) -> ChildrenPage:
        reply = await self._script("list", "page", parent, _name(after) if after else b"", limit)
        covered = int(reply[0])
        nodes = checks.of_parent(self._entries(reply[2:]), parent)
        last = _text(reply[1]) if covered else None
        return ChildrenPage(nodes, last, covered >= limit)

    def _entries(self, reply: Sequence[object]) -> Iterator[tuple[str, Node]]:
        """The entries of a script's answer of names and whole records (name, ino, rec, sig, mt, mts, sd each)."""
        width = 1 + _WIDTH
        for at in range(0, len(reply) - len(reply) % width, width):
            node = self._load(*reply[at + 1 : at + width])  # type: ignore[arg-type]
            if node is not None:
                yield _text(reply[at]), node  # type: ignore[arg-type]

    async def find_artifact(self, artifact_id: str) -> Node | None:
        return checks.has_artifact(self._load_reply(await self._script("find", "find", artifact_id)), artifact_id)

    def _records(self, reply: Sequence[object]) -> Iterator[Node]:
        """The nodes of a script's answer of whole records (ino, rec, sig, mt, mts, sd each), verified."""
        for at in range(0, len(reply) - len(reply) % _WIDTH, _WIDTH):
            node = self._load(*reply[at : at + _WIDTH])  # type: ignore[arg-type]
            if node is not None:
                yield node

    async def search(
        self, sandbox_id: str, *, scope: Scope | None, session_id: str | None, user_id: str | None
    ) -> list[Node]:
        tag = _search_tag(sandbox_id, scope, session_id, user_id)
        reply = await self._script("search", "search", tag, _LIST_INLINE)
        if reply[0] == b"RECORDS":
            found = sorted(self._records(reply[1:]), key=lambda n: n.ino)
        else:
            found = await self._load_many("search", sorted(int(m) for m in reply[1:]))
        return checks.in_space(found, sandbox_id, scope, session_id, user_id)

    async def search_page(
        self, query: SearchQuery, *, after: tuple[int, str] | None, now_ns: int, limit: int
    ) -> SearchPage:
        # One script: a range of the space's ordered set. MIME (in the script) and meta (here) are tested on
        # a bounded stretch (they are not indexed): such a page may come back short with a cursor further on.
        tag = _search_tag(query.sandbox_id, query.scope, query.session_id, query.user_id)
        needle = _mime_needle(query.mime_prefix)
        if not (query.mime_prefix or query.meta):
            most = limit
        else:
            most = max(limit, SEARCH_SCAN_MIME if needle and not query.meta else SEARCH_SCAN)
        start = "" if after is None else order_member(*after)
        for _ in range(2):
            # Meta fields are tested here, not in the script: every record read travels (a bounded stretch).
            want = most if query.meta else limit
            reply = await self._script("search page", "spage", tag, start, most, want, needle)
            if reply[0] == b"PAGE":
                break
            await self._rebuild_order(tag)
        else:
            raise ProviderError(f"the search order of {tag} keeps changing under its rebuild")
        last, more = _text(reply[1]), reply[2] == 1
        nodes = checks.in_space(self._records(reply[3:]), query.sandbox_id, query.scope, query.session_id,
                                query.user_id)
        kept = [node for node in nodes if search_matches(node, query, now_ns)
                and (after is None or search_position(node) > after)]  # a stale member: its record moved on
        if len(kept) > limit:
            # Meta fields were tested here on up to ``most`` records: the page ends at the limit-th match,
            # and the next starts after it (not after the last record read, which would skip the rest).
            kept = kept[:limit]
            return SearchPage(kept, search_position(kept[-1]), True)
        stored_at, _, artifact_id = last.partition("/")
        more = more and bool(last)
        return SearchPage(kept, (int(stored_at), artifact_id) if more else None, more)

    async def _rebuild_order(self, tag: str) -> None:
        """The ordered set of ``tag`` made again from its set's records (a store written before it).

        One script reads the set and rewrites the order, so a write cannot land between them (an
        insert after the read and a delete before the rewrite would leave equal counts and the
        insert out of every page for good). A member is only a position: a stale one is skipped.
        """
        await self._script("rebuild search order", "reorder", tag)

    async def sharers(self, artifact_id: str) -> list[Node]:
        reply = await self._script("sharers", "search", f"bo:{artifact_id}", _LIST_INLINE)
        if reply[0] == b"RECORDS":
            found = list(self._records(reply[1:]))
        else:
            found = await self._load_many("sharers", sorted(int(m) for m in reply[1:]))
        return checks.sharing(found, artifact_id)

    async def resolve(self, parent: int, names: Sequence[str]) -> list[Node]:
        if not names:
            return []
        reply = await self._script("resolve", "resolve", parent, *map(_name, names))
        return checks.along(self._records(reply), parent, names)

    async def subtree(self, root: int) -> list[Node]:
        nodes: dict[int, Node] = {}
        found_before: set[bytes] = {str(root).encode()}  # directories some page found: each is walked once
        queue: list[bytes | int] = [root]
        while queue:
            reply = await self._script("walk", "subtree", _LIST_INLINE, *queue)
            count = int(reply[0])
            end = 1 + _WIDTH * count
            for node in self._records(reply[1:end]):
                nodes[node.ino] = node
            left = int(reply[end])
            found = [d for d in reply[end + 1 + left :] if d not in found_before]
            found_before.update(found)
            queue = [*reply[end + 1 : end + 1 + left], *found]
        return checks.below(nodes.values(), root)

    async def lineage(self, inos: Collection[int]) -> dict[int, Node]:
        asked = sorted(set(inos))
        known: dict[int, Node] = {}
        for at in range(0, len(asked), _LIST_INLINE):
            chunk = [ino for ino in asked[at : at + _LIST_INLINE] if ino not in known]
            if chunk:
                known.update((n.ino, n) for n in self._records(await self._script("lineage", "lineage", *chunk)))
        return checks.up_from(known.values(), asked)

    async def expired(self, now_ns: int, limit: int = 1000) -> list[Node]:
        inos = await self._call(
            "expired", lambda client, _s: client.zrangebyscore(self.key("exp"), "-inf", now_ns, start=0, num=limit)
        )
        # Scores are doubles, and the zset is not signed: the test that counts is on the record.
        return checks.is_expired(await self._load_many("expired", inos), now_ns)

    async def usage(self, usage_key: str) -> Usage:
        async def read(client: aioredis.Redis, _s: object) -> tuple:
            async with client.pipeline(transaction=False) as pipe:
                pipe.hget(self.key("ub"), usage_key)
                pipe.hget(self.key("uf"), usage_key)
                return await pipe.execute()

        size, files = await self._call("usage", read)
        return Usage(bytes=int(size or 0), files=int(files or 0))

    async def usages(self) -> dict[str, Usage]:
        async def read(client: aioredis.Redis, _s: object) -> tuple:
            async with client.pipeline(transaction=False) as pipe:
                pipe.hgetall(self.key("ub"))
                pipe.hgetall(self.key("uf"))
                return await pipe.execute()

        sizes, files = await self._call("usages", read)
        keys = sorted({*sizes, *files})
        return {k.decode(): Usage(bytes=int(sizes.get(k, 0)), files=int(files.get(k, 0))) for k in keys}

    async def totals(self) -> Usage:
        size, files = await self._call("totals", lambda client, _s: client.hmget(self.key("tot"), "bytes", "files"))
        return Usage(bytes=int(size or 0), files=int(files or 0))

    # -- repair

    async def usage_generation(self, usage_key: str) -> int:
        gen = await self._call("usage generation", lambda client, _s: client.hget(self.key("ug"), usage_key))
        return int(gen or 0)

    async def reset_usage(self, usage_key: str, usage: Usage, *, generation: int) -> bool:
        reply = await self._script("reset usage", "reset_usage", usage_key, generation, usage.bytes, usage.files)
        return reply[0] == b"OK"

    async def recount_subdirs(self, ino: int) -> int:
        reply = self._check(await self._script("recount subdirectories", "recount_subdirs", ino), "recount")
        return int(reply[1])

    async def orphans(self) -> list[Node]:
        found: dict[int, Node] = {}
        cursor = 0
        pattern = _glob_escape(self.key("i", "")) + "*"
        while True:
            cursor, keys = await self._call(
                "scan records", lambda client, _s, at=cursor: client.scan(at, match=pattern, count=1000)
            )
            inos = [ino for ino in (int(key.rsplit(b":", 1)[1]) for key in keys) if ino != ROOT_INO]
            if inos:  # SCAN may answer a key twice: the last answer wins
                found.update((node.ino, node) for node in self._records(await self._script("orphans", "unreached", *inos)))
            if cursor == 0:
                return [found[ino] for ino in sorted(found)]

    # -- changes

    async def _replacing(
        self, what: str, op: str, flag: bool, node: Node, extra: list[object], cover: Node | None = None,
        ctime_ns: int | None = None, drop_at_ns: int | None = None,
    ) -> Node | None:
        """Run an op that may replace an entry, verifying the record it replaces first.

        An entry whose inode has other names loses this one and lives on, its ctime ``ctime_ns``;
        else the inode goes, its blob queued at ``drop_at_ns`` (if given).

        ``extra`` follows the node (a rename's revision, the touches). ``cover`` is the session root as
        read, to be moved out to cover ``node`` (inserts only).
        """
        expect: bytes = b""
        successor: list[object] = list(NO_SUCCESSOR)
        for attempt in range(_MAX_CONFLICTS):
            args = ["1" if flag else "0", expect, _drop_at(drop_at_ns), *successor, *self._args(node), *extra,
                    *self._cover_args(cover, node)]
            reply = self._check(await self._script(what, op, *args), what)
            if reply[0] == b"CONFLICT":
                loaded = self._load(*reply[1:])  # refuses a corrupted record before it is touched
                occupant = checks.is_entry(loaded, node.parent, node.name)
                if loaded is not None and occupant is None:
                    raise ArtifactCorruptedError(f"{what}: the entry holds inode {loaded.ino}, recorded elsewhere")
                if expect:  # raced by another replacer: back off a little so one of us gets through
                    await self._back_off(attempt)
                expect = reply[1]
                successor = self._successor(occupant, ctime_ns) if occupant is not None else list(NO_SUCCESSOR)
                continue
            if reply[0] == b"STALE" and op == "rename":  # the node changed since its caller read it
                raise StaleRecordError(f"{what}: inode {node.ino} changed since it was read", self._load(*reply[1:]))
            if reply[0] == b"STALE":  # the session root changed meanwhile: cover it as it is now
                cover = self._load(*reply[1:])
                continue
            return self._load(*reply[1:]) if len(reply) > 1 else None
        raise ProviderError(f"{what}: the entry kept changing under {_MAX_CONFLICTS} attempts")

    def _successor(self, view: Node, ctime_ns: int | None) -> list[object]:
        """The scripts' successor of ``view``: its record without the name it was reached by, if it
        has others (its ctime then ``ctime_ns``, if given: its link count changed)."""
        if len(view.names) == 1:
            return list(NO_SUCCESSOR)
        left = view.without_name()
        left.rev += 1
        if ctime_ns is not None:
            left.ctime_ns = ctime_ns
        return [view.rev, *self._args(left)]

    @staticmethod
    async def _back_off(attempt: int) -> None:
        await anyio.sleep(random.uniform(0, min(0.02, 0.0005 * 2**attempt)))

    def _cover_args(self, root: Node | None, node: Node) -> list[object]:
        """The insert's cover: ``root`` (as read) made to expire no sooner than ``node``.

        Sent even when the root as read lives long enough: the script decides
        on the root as it is then, which another host may have moved since.
        """
        if root is None or root.expires_at_ns is None:
            return []
        moved = root.model_copy(update={"expires_at_ns": node.expires_at_ns, "rev": root.rev + 1})
        return [root.rev, *self._args(moved)]

    @staticmethod
    def _touches(node: Node) -> bool:
        """Whether a change of ``node``'s entry sets its directory's times: only entries' directories
        (a scope root or a directory in one) keep times that follow their entries."""
        return node.role is NodeRole.ENTRY

    async def insert(
        self, node: Node, *, replace: bool = False, touch_ns: int | None = None, cover: Cover | None = None,
        drop_at_ns: int | None = None,
    ) -> tuple[Node, Node | None]:
        node.ino = await self._new_ino()
        touch = self._touch(node.parent, touch_ns if self._touches(node) else None)
        root = cover.root if cover is not None else None
        old = await self._replacing(repr(node.name), "insert", replace, node, touch, root, touch_ns, drop_at_ns)
        return node, old

    async def update(self, node: Node) -> None:
        current = await self.commit(node, base_version=None)
        if current is not None:
            raise StaleRecordError(f"inode {node.ino} changed since it was read", current)

    async def commit(self, node: Node, *, base_version: int | None, settle: Settle | None = None) -> Node | None:
        what = f"inode {node.ino}"
        written = node.model_copy(update={"rev": node.rev + 1})
        expect = "" if base_version is None else base_version
        queue = _settle_args(settle.forget, _micros(settle.not_before_ns), settle.keys) if settle is not None else []
        reply = self._check(await self._script(what, "update", *self._args(written), node.rev, expect, *queue), what)
        if reply[0] == b"CONFLICT":
            return self._load(*reply[1:])
        node.rev = written.rev
        return None

    async def rename(
        self, node: Node, new_parent: int, new_name: str, *, replace: bool, touch_ns: int | None = None,
        drop_at_ns: int | None = None,
    ) -> Node | None:
        moved = node.model_copy(update={"parent": new_parent, "name": new_name, "rev": node.rev + 1})
        time_ns = touch_ns if self._touches(node) else None
        touches = [*self._touch(node.parent, time_ns), *self._touch(new_parent, time_ns)]
        extra = [node.rev, node.parent, _name(node.name), *touches]
        old = await self._replacing(repr(new_name), "rename", replace, moved, extra, ctime_ns=touch_ns,
                                    drop_at_ns=drop_at_ns)
        node.parent, node.name, node.rev = new_parent, new_name, moved.rev
        return old

    async def exchange(self, a: Node, b: Node, *, touch_ns: int | None = None) -> None:
        a2 = a.model_copy(update={"parent": b.parent, "name": b.name, "rev": a.rev + 1})
        b2 = b.model_copy(update={"parent": a.parent, "name": a.name, "rev": b.rev + 1})
        touches = [
            *self._touch(a.parent, touch_ns if self._touches(a) else None),
            *self._touch(b.parent, touch_ns if self._touches(b) else None),
        ]
        args = [*self._args(a2), *self._args(b2), a.rev, b.rev, *touches]
        reply = self._check(await self._script("exchange", "exchange", *args), "exchange")
        if reply[0] == b"STALE":
            raise StaleRecordError("exchange: an entry changed since it was read", self._load(*reply[1:]))
        for node, done in ((a, a2), (b, b2)):
            node.parent, node.name, node.rev = done.parent, done.name, done.rev

    async def remove(self, node: Node, *, touch_ns: int | None = None, drop_at_ns: int | None = None) -> Node | None:
        touch = self._touch(node.parent, touch_ns if self._touches(node) else None)
        what = repr(node.name)
        parent, name = node.parent, node.name
        for _ in range(_MAX_CONFLICTS):
            args = [node.ino, parent, _name(name), *touch, _drop_at(drop_at_ns), *self._successor(node, touch_ns)]
            reply = self._check(await self._script(what, "remove", *args), what)
            stored = self._load(*reply[1:]) if len(reply) > 1 else None
            if reply[0] != b"STALE":
                return stored.seen_as(parent, name) if stored is not None and stored.has_name(parent, name) else stored
            if stored is None or not stored.has_name(parent, name):
                return None
            node = stored.seen_as(parent, name)  # it changed meanwhile (another name came or went): again
        raise ProviderError(f"{what}: the inode kept changing under {_MAX_CONFLICTS} attempts")

    async def link(self, node: Node, new_parent: int, new_name: str, *, touch_ns: int | None = None) -> None:
        what = repr(new_name)
        linked = node.with_names([*node.names, (new_parent, new_name)])
        linked.rev += 1
        touch = self._touch(new_parent, touch_ns if self._touches(node) else None)
        args = [*self._args(linked), node.rev, new_parent, _name(new_name), *touch]
        reply = self._check(await self._script(what, "link", *args), what)
        if reply[0] == b"STALE":
            raise StaleRecordError(f"{what}: inode {node.ino} changed since it was read", self._load(*reply[1:]))
        node.links, node.rev = linked.links, linked.rev


    # -- the deletion queue: one sorted set, key -> not_before in microseconds (exact in a double)

    async def defer_delete(
        self, keys: Collection[str], not_before_ns: int, *, forget: Collection[Deferred] = ()
    ) -> None:
        if keys or forget:
            await self._queue("defer delete", forget, _micros(not_before_ns), keys)

    async def _queue(self, what: str, forget: Collection[Deferred], score: int, keys: Collection[str]) -> None:
        """One script: drop the entries of ``forget`` still at their score, then queue ``keys`` at ``score``.

        Atomic, and a retry after a lost reply ends in the same state.
        """
        argv = _settle_args(forget, score, keys)
        # Plain EVAL: one command each time (a Script's first EVALSHA would cost a NOSCRIPT and a LOAD
        # inside some caller's request); the text is ~400 bytes, and the server caches its compilation.
        await self._call(what, lambda client, _s: client.eval(_QUEUE, 1, self.key("gc"), *argv))

    async def due_deletions(self, now_ns: int, limit: int = 1000) -> list[Deferred]:
        pairs = await self._call(
            "due deletions",
            lambda client, _s: client.zrangebyscore(
                self.key("gc"), "-inf", now_ns // 1000, start=0, num=limit, withscores=True
            ),
        )
        return [Deferred(k.decode(), int(score) * 1000) for k, score in pairs]

    async def forget_deletions(self, entries: Collection[Deferred]) -> None:
        if entries:
            await self._queue("forget deletions", entries, 0, ())

    async def queue_if_absent(self, keys: Collection[str], not_before_ns: int) -> None:
        if keys:
            score = _micros(not_before_ns)
            mapping = {key: score for key in keys}
            await self._call("queue orphans", lambda client, _s: client.zadd(self.key("gc"), mapping, nx=True))

    async def pending_deletions(self) -> list[str]:
        keys = await self._call("pending deletions", lambda client, _s: client.zrange(self.key("gc"), 0, -1))
        return sorted(k.decode() for k in keys)

    def read_token(self) -> None:
        """None: another host's change shows only through a round trip, so nothing read is kept."""
        return None

    async def sync(self) -> None:
        """Nothing to do: what Redis acknowledged is as durable as its own persistence makes it."""


# The deletion queue's changes alone (ARGV as SETTLE reads them from 1).
_QUEUE = SETTLE + "settle(KEYS[1], 1)\nreturn 0\n"


def _settle_args(forget: Collection[Deferred], score: int, keys: Collection[str]) -> list[object]:
    """The deletion queue's changes as :data:`~core.backends.meta.redis.lua.SETTLE` reads them."""
    argv: list[object] = [len(forget)]
    for key, not_before_ns in forget:
        argv += [key, _micros(not_before_ns)]
    return [*argv, score, *keys]


def _micros(ns: int) -> int:
    """A queue time as Redis keeps it: microseconds, rounded up (never due early; exact in a double)."""
    return -(-ns // 1000)


def _drop_at(ns: int | None) -> int | str:
    """A script's time to queue the blob of an inode it drops: as the queue keeps it, or '' for none."""
    return "" if ns is None else _micros(ns)


def from_settings(settings: Settings, signer: RecordSigner) -> RedisMetaStore:
    """``SESSION_PROVIDER=redis``: the server ``SESSION_REDIS_URL`` names, below ``ARTIFACT_REDIS_PREFIX``."""
    if not settings.redis_url:
        raise ConfigurationError("SESSION_PROVIDER=redis needs SESSION_REDIS_URL")
    return RedisMetaStore(settings.redis_url, signer, prefix=settings.redis_prefix, notify=settings.redis_notify)


def _glob_escape(text: str) -> str:
    """``text`` matched literally by SCAN's glob pattern (a prefix may hold ``[`` or ``*``)."""
    return "".join("\\" + c if c in "*?[]\\" else c for c in text)
