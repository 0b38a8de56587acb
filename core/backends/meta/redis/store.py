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

import base64
import contextlib
import hashlib
import logging
import random
import secrets
import threading
import time
from collections import deque
from collections.abc import Awaitable, Callable, Collection, Iterable, Iterator, Sequence
from typing import Any, TypeVar

import anyio
import redis.asyncio as aioredis
from redis.asyncio.cluster import PipelineCommand, RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import (
    AskError,
    MovedError,
    NoScriptError,
    ReadOnlyError,
    RedisError,
    ResponseError,
    TryAgainError,
)
from redis.exceptions import TimeoutError as RedisTimeoutError

from core import shards
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
from core.backends.meta.redis import packing, stamps
from core.backends.meta.redis.lua import (
    FIELDS, INODE_SLOTS, LAYOUT, NO_SUCCESSOR, NO_TOUCH, READ_SLOTS, SCRIPT, SETTLE,
)
from core.errors import (
    AlreadyExistsError,
    ArtifactStoreError,
    ArtifactCorruptedError,
    ArtifactNotFoundError,
    ConfigurationError,
    CrossScopeError,
    DirectoryNotEmptyError,
    InvalidArgumentError,
    IsADirectoryError_,
    NotADirectoryError_,
    ProviderError,
    StaleRecordError,
    StoreClosedError,
    StoreFullError,
)
from core.infra import aio_bridge, tally
from core.infra.retry import RetryPolicy, retrying
from core.infra.signing import SHORT_HEX, RecordSigner
from core.models import Scope, Usage
from core.nodes import (
    DEFAULT_MIME, ROOT_INO, Node, NodeKind, NodeRole, Space, account_of, grid_key, new_node,
)
from core.settings import Settings

T = TypeVar("T")
log = logging.getLogger("artifactfs.redis")

_KIND_CODE = {
    NodeKind.DIR: "d", NodeKind.FILE: "f", NodeKind.SYMLINK: "l",
    NodeKind.FIFO: "p", NodeKind.CHAR_DEVICE: "c", NodeKind.BLOCK_DEVICE: "b", NodeKind.SOCKET: "s",
}  # the scripts tell only 'd' from the rest
_INO_BATCH = 64  # inode numbers reserved per INCRBY; unused ones are simply skipped
_MAX_CONFLICTS = 100  # replace attempts that meet a new occupant each time (heavy contention on one name)
_READ = READ_SLOTS  # what a reader takes of an inode
_WIDTH = 1 + len(_READ)  # a record as the scripts answer it: its ino, then those
SEARCH_SCAN = 1000  # members a search page with MIME or meta tests reads at most (they are not indexed)
SEARCH_SCAN_MIME = 10_000  # the same with a MIME prefix alone: the script tests it, so only matches travel
_INODE_KEYS = ("i", "o", "ob")  # keys named by an inode, whose number tells their shard
_ROOTS_KEPT = 65_536  # scope roots whose inode a resolve remembers (a path's first step, skipped)
_SHARD_CALLS = 16  # scripts in flight at once for a read that spans every shard
_LIST_INLINE = 1024  # a listing of up to this many entries comes in one round trip, records and all (1,000: ~4 ms of server time)

_SCRIPT_SHA = hashlib.sha1(SCRIPT.encode()).hexdigest()
# A cluster's failover takes a few node timeouts (2-5 s at --cluster-node-timeout 2000), and a slot's
# move as long as its keys take: a call keeps trying for about 16 s, waiting either out.
FAILOVER_RETRY = RetryPolicy(attempts=20, first_delay=0.1, max_delay=1.0)
# Ops of the script that change nothing: never waited on (WAIT, below).
_READ_OPS = frozenset({
    "lookup", "list", "page", "search", "spage", "holders", "resolve", "subtree", "lineage", "unreached", "entries"})
_WAIT_MS = 2000  # how long a change waits for its replica (under the socket timeout) before it asks why
_ALONE_FOR = 5.0  # seconds a master found without replicas acknowledges alone before it is asked again
_ERRORS: dict[bytes, Callable[[str], Exception]] = {
    b"noparent": lambda what: ArtifactNotFoundError(f"{what}: the parent directory does not exist"),
    b"notdir": lambda what: NotADirectoryError_(f"{what}: not a directory"),
    b"exists": lambda what: AlreadyExistsError(f"{what} exists"),
    b"isdir": lambda what: IsADirectoryError_(f"{what} is a directory"),
    b"notempty": lambda what: DirectoryNotEmptyError(f"{what} is not empty"),
    b"vanished": lambda what: ArtifactNotFoundError(f"{what}: the inode was removed"),
    b"taken": lambda what: ProviderError(f"{what}: the target name was taken meanwhile"),
    b"dupid": lambda what: ProviderError(f"{what}: the artifact id names another inode, or one already made"),
    b"forged": lambda what: ArtifactCorruptedError(f"{what}: the entry names an inode of another scope"),
    b"sealed": lambda what: ArtifactNotFoundError(f"{what}: its scope is being removed"),
}


class _SlotMoving(Exception):
    """A cluster slot is migrating or has moved: the script is sent again once it has settled."""


def _transient(exc: BaseException) -> bool:
    """Faults worth another try: the server is away, restarting, failing over, or its slot moving."""
    transient = (RedisConnectionError, RedisTimeoutError, ReadOnlyError, TryAgainError, _SlotMoving)
    return isinstance(exc, transient) or (
        isinstance(exc, ResponseError) and str(exc).startswith("LOADING")
    )


def _name(name: str) -> bytes:
    return name.encode("utf-8", "surrogateescape")


def _text(name: bytes) -> str:
    return name.decode("utf-8", "surrogateescape")


def _links(node: Node) -> bytes:
    """A node's hard links as the scripts read them: ``<parent>/<name>`` each, joined by ``/``."""
    return b"/".join(b"%d/%s" % (link.parent, _name(link.name)) for link in node.links)


def inode_fields(stored: bytes | None, ino: int) -> dict[str, bytes]:
    """The string of inode ``ino`` (``P:i:<n>``) as its fields by name; {} if there is none. A parent
    in the inode's own shard is kept as ``+<n>``, its number there, and an artifact id that names the
    inode as its tail (``unpacked`` in the script): both are given back whole."""
    if stored is None:
        return {}
    fields = dict(zip(INODE_SLOTS, stored.split(b"\0", len(INODE_SLOTS) - 1)))
    parent = fields.get("p", b"")
    if parent[:1] == b"+" and parent[1:].isdigit():
        fields["p"] = b"%d" % shards.ino(shards.of_ino(ino), int(parent[1:]))
    if len(fields.get("a", b"")) == shards.ID_TAIL:  # the id names this inode: the script keeps only its tail
        fields["a"] = shards.artifact_id_head(ino).encode() + fields["a"]
    return fields


def inode_string(fields: dict[str, bytes], ino: int) -> bytes:
    """The string of inode ``ino`` of these fields (the others empty), as the scripts write it."""
    parent, artifact_id = fields.get("p", b""), fields.get("a", b"")
    if parent.isdigit() and shards.of_ino(int(parent)) == shards.of_ino(ino):
        fields = {**fields, "p": b"+%d" % shards.number(int(parent))}
    if artifact_id and shards.ino_of_artifact(artifact_id.decode("ascii", "replace")) == ino:
        fields = {**fields, "a": artifact_id[-shards.ID_TAIL :]}
    return b"\0".join(fields.get(name, b"") for name in INODE_SLOTS)


def ino_of_key(key: str | bytes) -> int:
    """The inode a key of ``_INODE_KEYS`` names (``<prefix>:{<shard>}:<kind>:<n>...``; a prefix holds
    no brace)."""
    text = key.decode("utf-8", "surrogateescape") if isinstance(key, bytes) else key
    shard, _, rest = text.partition("{")[2].partition("}:")
    return shards.ino(int(shard), int(rest.split(":", 1)[1].split("\n", 1)[0]))


def _stored_sig(signature: str) -> bytes:
    """A signature (hex) as the store keeps it beside a record: its first 128 bits (``SHORT_HEX``) in
    base 64 unpadded, 22 bytes instead of 64 (issue #17)."""
    return base64.b64encode(bytes.fromhex(signature[:SHORT_HEX])).rstrip(b"=")


SIGNATURE_BYTES = SHORT_HEX // 2  # an HMAC-SHA256's first 128 bits, raw at the head of an inode's ``rec``


def sealed(signature: str, packed: bytes) -> bytes:
    """A record's signature (hex) and packed JSON as its inode's last field keeps them: the signature's
    first 128 bits raw first (they may hold NUL, like the packing), 48 bytes less than whole in hex
    (issue #17)."""
    return bytes.fromhex(signature[:SHORT_HEX]) + packed


def unsealed(rec: bytes) -> tuple[str, bytes]:
    """The signature (hex; '' if it is cut short, which no record verifies against) and the packed JSON
    of an inode's ``rec``."""
    if len(rec) < SIGNATURE_BYTES:
        return "", b""
    return rec[:SIGNATURE_BYTES].hex(), rec[SIGNATURE_BYTES:]


def _read_sig(stored: bytes | None) -> str | None:
    """A stored signature back in hex for the signer; '' (never valid) if it is not base64."""
    if stored is None:
        return None
    try:
        return base64.b64decode(stored + b"=" * (-len(stored) % 4), validate=True).hex()
    except ValueError:
        return ""


def _stored_blob_key(node: Node) -> bytes:
    """A file's blob key as its inode keeps it (``bk``): what follows its own grid key (``.v<n>-<tag>``)
    where it starts with it, as a blob it wrote does (the script puts the grid key back: ``blob_key``),
    else whole (a blob it shares with a copy's source); 50 bytes less a file (issue #17)."""
    art = node.artifact
    if art is None or not art.blob_key:
        return b""
    space = node.space
    own = grid_key(space.sandbox_id, space.scope, space.owner, art.artifact_id) if space is not None else None
    if own is not None and art.blob_key.startswith(own + "."):
        return art.blob_key[len(own) :].encode()
    if art.blob_key.startswith("."):  # would read as one of the above
        raise InvalidArgumentError(f"a blob key must not start with '.': {art.blob_key!r:.100}")
    return art.blob_key.encode()


def _stored_account(node: Node, indexed: bool) -> bytes:
    """The usage account a node is charged to as its inode keeps it (``uk``): '' for none, ``=`` for its
    space's where it has an ``sp:`` index line naming it (``indexed``: the script spells it out,
    ``account``), else whole."""
    account = account_of(node)
    if account is None:
        return b""
    return b"=" if indexed else account.encode()


def _beside(node: Node) -> dict[str, bytes]:
    """The fields of a node's inode that the scripts act on alone, as its writer stores them: a walk stops
    at a role (``ro``), gc takes the blob key (``bk`` with ``a`` and ``ix``'s space), usage goes to
    ``uk``, a search's MIME filter reads ``mi`` ('' for ``DEFAULT_MIME``). They are unsigned, so a
    reader holds them against the record (``_load``); the parent, name and artifact id are held by the
    packing's context."""
    art, tags = node.artifact, index_tags(node)
    return {
        "mi": art.mime.encode() if art and art.mime != DEFAULT_MIME else b"",  # the mount's files: 24 bytes less
        "bk": _stored_blob_key(node),
        "ro": b"" if node.role is NodeRole.ENTRY else node.role.value.encode(),
        "ix": "\n".join(tags).encode(),
        "uk": _stored_account(node, bool(tags)),
    }


def _read(stored: bytes | None, ino: int) -> list[bytes | None]:
    """What a reader takes of inode ``ino``'s string: ``_READ``, None where absent."""
    fields = inode_fields(stored, ino)
    return [fields.get(name) or None for name in _READ]


def index_tags(node: Node) -> list[str]:
    """The indexes an artifact belongs to: its space's ordered set (``sp:``), and the holders of the
    blob it shares (``bo:``); the ``=`` line is its place in that order."""
    space = node.space
    if node.artifact is None or space is None:
        return []
    tags = [f"sp:{space_tag(space.sandbox_id, space.scope, space.session_id, space.user_id)}"]
    if node.artifact.blob_of is not None:
        tags.append(f"bo:{node.artifact.blob_of}")  # the holders of another artifact's blob (sharers)
    tags.append(f"={stamps.order_time(node.crtime_ns)}")  # stored_at: the script makes its member (order_member) of it
    return tags


def space_parts(sandbox_id: str, scope: Scope | None, session_id: str | None, user_id: str | None) -> tuple[str, ...]:
    """A space as the scripts' search indexes name it, '' where absent; as a search's ask, '' matches any
    (see ``spaces`` in the script)."""
    return sandbox_id, scope.value if scope is not None else "", session_id or "", user_id or ""


def space_tag(sandbox_id: str, scope: Scope | None, session_id: str | None, user_id: str | None) -> str:
    """A space's index: ``<sandbox>/<scope>/<session>/<user>`` ('/' cannot occur in an id)."""
    return "/".join(space_parts(sandbox_id, scope, session_id, user_id))


_ID_BYTES = 16  # an artifact id (32 hex digits) as a search order member keeps it


def order_position(member: bytes) -> tuple[int, str]:
    """The (stored_at ns, artifact id) an order member spells (``order_member``); ValueError if it spells none."""
    if len(member) != stamps.WIDTH + _ID_BYTES:
        raise ValueError(f"not a search order member: {member!r:.80}")
    return stamps.time_of(member[: stamps.WIDTH]), member[stamps.WIDTH :].hex()


def order_member(stored_at_ns: int, artifact_id: str) -> bytes:
    """An artifact's member in its space's search order: its stored_at (11 bytes), then its id raw (16,
    not 32 in hex: issue #17), so that byte order is (stored_at, id) order. For an id no store made (a
    forged cursor's) the stored_at alone: it sorts before every member of that time, the reader keeps
    only what follows the cursor (``_search_page_of``)."""
    spelled = stamps.order_time(stored_at_ns).encode()
    return spelled + bytes.fromhex(artifact_id) if shards.of_artifact(artifact_id) is not None else spelled


class RedisMetaStore:
    """A :class:`~core.backends.meta.base.MetaStore` on one Redis server or a Redis Cluster (``cluster``).

    ``prefix`` names this store's keys, so several stores can share a server.
    Every key lies in a shard (:mod:`core.shards`): ``<prefix>:{<shard>}:...``,
    so on a cluster a scope's keys share one hash slot and the scopes spread
    over the masters (a prefix holding a hash tag of its own would put them
    all back in one slot). With ``notify`` every change is announced on
    its shard's channel ``<prefix>:{<shard>}:events``, stamped with ``origin``
    (unique per instance) so a process can tell its own changes from others'
    (:mod:`core.backends.meta.redis.events`).
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
        cluster: bool = False,
        replicas: int | None = None,
    ) -> None:
        self.url, self.prefix, self.notify, self.cluster = url, prefix, notify, cluster
        self._replicas_asked = replicas  # None: as many as every master has (at most 1), found at open
        self.origin = secrets.token_hex(6)
        self._signer = signer
        self._retry = retry or (FAILOVER_RETRY if cluster else RetryPolicy())
        self._max_connections, self._socket_timeout = max_connections, socket_timeout
        self._clients: aio_bridge.LoopLocal[tuple[aioredis.Redis, object]] = aio_bridge.LoopLocal(
            self._connect, self._disconnect
        )
        self._inos: dict[int, deque[int]] = {}  # per shard: numbers reserved and not yet handed out
        self._ino_lock = threading.Lock()  # the store may be used from two loops (caller's and bridge's)
        self._registered: set[int] = {shards.UPPER}  # shards known to be in the registry (P:{0}:shards)
        self._roots: dict[tuple[int, str], int] = {}  # (upper directory, name) -> scope root ino, as last seen
        self._gc_homes: dict[str, int] = {}  # queued blob key -> the shard due_deletions found it in
        self._replicas = 0  # replicas a change waits for before it is acknowledged
        self._alone_until: dict[str, float] = {}  # master -> until when it acknowledges without a replica
        self._open = False

    # -- keys

    def base(self, shard: int) -> str:
        """What every key of ``shard`` starts with; ``{<shard>}`` is its hash tag."""
        return f"{self.prefix}:{{{shard}}}"

    def key(self, kind: str, *parts: object, shard: int | None = None) -> str:
        """Key ``kind`` (``i``, ``o``, ``ob``: of the inode ``parts[0]``, in its shard, named by its
        number there, as the script's ``ikey``; others name ``shard``)."""
        if shard is None:
            if kind not in _INODE_KEYS:
                raise TypeError(f"key {kind!r} needs its shard")
            ino = int(parts[0])  # type: ignore[call-overload]
            shard, parts = shards.of_ino(ino), (shards.number(ino), *parts[1:])
        return ":".join([self.base(shard), kind, *map(str, parts)])

    # -- connections

    async def _connect(self) -> tuple[aioredis.Redis, object]:
        if self.cluster:
            return await self._connect_cluster()
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

    async def _connect_cluster(self) -> tuple[aioredis.Redis, object]:
        """A cluster client: it learns the slots from the node the URL names (then from all of them).

        Plain commands follow MOVED and ASK; scripts go through :meth:`_owned`,
        which waits a moving slot out instead.
        """
        client = RedisCluster.from_url(
            self.url,
            max_connections=self._max_connections,
            socket_timeout=self._socket_timeout,
            socket_connect_timeout=self._socket_timeout,
            retry=Retry(NoBackoff(), 0),  # retries are ours: bounded, and counted per operation
        )
        await client.initialize()  # the map of the slots, before a script asks it where to go
        return client, client.register_script(SCRIPT)  # type: ignore[return-value]

    async def _disconnect(self, value: tuple[aioredis.Redis, object]) -> None:
        client, _ = value
        await client.aclose()
        if not isinstance(client, RedisCluster):
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

    async def _script(self, shard: int, what: str, op: str, *args: object) -> list:
        """One op of the script, run in ``shard`` (it touches no key of another)."""
        base = self.base(shard)
        argv = [op, "1" + changes.stamp(self.origin) if self.notify else "0", *args]
        wait = self._replicas > 0 and op not in _READ_OPS
        if not (self.cluster or wait):
            return await self._call(what, lambda client, script: script(keys=[base], args=argv, client=client))
        command = ("EVALSHA", _SCRIPT_SHA, 1, base, *argv)
        return await self._call(what, lambda client, _s: self._owned(client, base, command, wait=wait))

    async def _owned(self, client: Any, key: str, command: tuple, *, wait: bool) -> Any:
        """``command`` (its keys in ``key``'s slot) where that slot lives, then, with ``wait``,
        acknowledged once a replica has it.

        ``WAIT`` on the connection that sent the write: a failover after this
        answer cannot lose it (the replica that takes over holds it). Its cost
        is the replica's round trip, on every change (docs/OPERATIONS.md). A
        master left without replicas (its own failed over to it) acknowledges
        alone, as a single server does, until a replica is back.

        On a cluster the command goes to the slot's master and is never
        redirected: a script run while its slot migrates would find some of
        its keys on one node and the rest on the other. ``key`` (a shard's
        base) never exists, so a migrating slot answers ASK before the script
        runs, and a moved one MOVED: both are waited out like a failover.
        """
        node = client.get_node_from_key(key) if self.cluster else None
        where = node.name if node is not None else ""
        wait = wait and time.monotonic() >= self._alone_until.get(where, 0.0)
        batch = [command, *([("WAIT", self._replicas, _WAIT_MS)] if wait else [])]
        replies = await _script_loaded(
            lambda: self._on_node(client, node, batch) if node is not None else _on_server(client, batch),
            lambda: node.execute_command("SCRIPT", "LOAD", SCRIPT) if node is not None else client.script_load(SCRIPT),
        )
        if isinstance(replies[0], MovedError):
            await client.nodes_manager.move_slot(replies[0])
            raise _SlotMoving(f"slot of {key} moved to {replies[0].host}:{replies[0].port}")
        if isinstance(replies[0], AskError):
            raise _SlotMoving(f"slot of {key} is migrating to {replies[0].host}:{replies[0].port}")
        _raise_any(replies)
        if wait and int(replies[1]) < self._replicas and not await self._left_alone(client, node, where):
            raise ProviderError(f"redis: {replies[1]} of {self._replicas} replicas took a change within {_WAIT_MS} ms")
        return replies[0]

    @staticmethod
    async def _on_node(client: Any, node: Any, batch: list[tuple]) -> list:
        """``batch`` on one connection to cluster node ``node``, each reply (or error) as it came."""
        commands = [PipelineCommand(at, *args) for at, args in enumerate(batch)]
        try:
            await node.execute_pipeline(commands)
        except (RedisConnectionError, RedisTimeoutError):
            client._request_refresh(last_failed_node_name=node.name)  # the map may name a master that died
            with contextlib.suppress(RedisError):
                await client.initialize()
            raise
        return [command.result for command in commands]

    async def _left_alone(self, client: Any, node: Any, where: str) -> bool:
        """Whether a master whose replicas did not answer has none connected (then it acknowledges alone
        for a while, logged); one with a replica that is only slow does not."""
        info = await (client.info("replication", target_nodes=node) if node is not None else client.info("replication"))
        if int(info.get("connected_slaves", 0)) >= self._replicas:
            return False
        if time.monotonic() >= self._alone_until.get(where, 0.0) + _ALONE_FOR:
            log.warning("redis master %s has no replica connected: its changes are acknowledged without one", where or self.url)
        self._alone_until[where] = time.monotonic() + _ALONE_FOR
        return True

    async def _fanout(self, what: str, homes: Collection[int], add: Callable[[Any, int], object]) -> dict[int, list]:
        """``add(pipe, shard)`` queues commands of each shard of ``homes``; all go in one pipeline.

        One round trip on a single server (a cluster client sends each node
        its share at once). Answers each shard's replies, in shard order.
        """
        order = sorted(set(homes))

        counts: list[int] = []  # commands queued per shard

        async def send(client: aioredis.Redis) -> list:
            async with client.pipeline(transaction=False) as pipe:
                counts.clear()
                for shard in order:
                    before = len(pipe)
                    add(pipe, shard)
                    counts.append(len(pipe) - before)
                return await pipe.execute(raise_on_error=False)

        async def run(client: aioredis.Redis, _s: object) -> dict[int, list]:
            replies = _raise_any(await _script_loaded(lambda: send(client), lambda: client.script_load(SCRIPT)))
            out, at = {}, 0
            for shard, count in zip(order, counts):
                out[shard] = replies[at : at + count]
                at += count
            return out

        return await self._call(what, run)

    def _queue_script(self, pipe: Any, shard: int, op: str, *args: object) -> None:
        """The script's ``op`` in ``shard``, queued in a pipeline (as its sha: see :meth:`_fanout`)."""
        pipe.evalsha(_SCRIPT_SHA, 1, self.base(shard), op, "0", *args)

    async def _shards(self) -> set[int]:
        """Every shard that may hold keys: the upper tree's and those a scope was ever made in."""
        members = await self._call(
            "shards", lambda client, _s: client.smembers(self.key("shards", shard=shards.UPPER))
        )
        found = {shards.UPPER, *(int(m) for m in members)}
        self._registered |= found
        return found

    async def _register(self, shard: int) -> None:
        """Put ``shard`` in the registry that store-wide reads walk, before anything is written in it."""
        if shard not in self._registered:
            registry = self.key("shards", shard=shards.UPPER)  # waited on: a shard it lost, no sweep would read
            await self._call("register shard", lambda client, _s: self._owned(
                client, registry, ("SADD", registry, shard), wait=self._replicas > 0))
            self._registered.add(shard)

    # -- lifecycle

    async def open(self) -> None:
        self._open = True
        try:
            await self._check_layout()
            self._replicas = self._replicas_asked if self._replicas_asked is not None else await self._fewest_replicas()
            if await self.get(ROOT_INO) is None:
                root = new_node(parent=0, name="", kind=NodeKind.DIR, mode=0o755, role=NodeRole.ROOT, now_ns=0)
                root.ino = ROOT_INO
                await self._script(shards.UPPER, "init", "init", *self._args(root))
        except BaseException:
            await self.close()
            raise

    async def _check_layout(self) -> None:
        """Refuse a store written in another layout of keys (there is no migration), and mark a new one."""
        marker, root = self.key("layout", shard=shards.UPPER), self.key("i", ROOT_INO)

        async def read(client: Any, _s: object) -> tuple[Any, ...]:
            return (await client.exists(f"{self.prefix}:ino"), await client.get(marker), await client.exists(root))

        before_shards, layout, used = await self._call("layout", read)
        if before_shards:
            written = "before shards (issue #17)"
        elif layout is None and used:
            written = "before one search index per artifact (issue #17)"
        elif layout is not None and layout.decode("ascii", "replace") != LAYOUT:
            written = f"{layout.decode('ascii', 'replace')!r}, not {LAYOUT!r}"
        else:
            if layout is None:
                await self._call("layout", lambda client, _s: client.set(marker, LAYOUT, nx=True))
            return
        raise ConfigurationError(
            f"the Redis store {self.prefix!r} was written in the layout {written}; this version cannot read "
            "it: copy its artifacts out with the version that wrote it"
        )

    async def _fewest_replicas(self) -> int:
        """1 if every master has a replica (0 otherwise): what a change then waits for."""
        async def count(client: Any, _s: object) -> int:
            if self.cluster:
                infos = await client.info("replication", target_nodes=RedisCluster.PRIMARIES)
                found = [int(info.get("connected_slaves", 0)) for info in infos.values()]
            else:
                found = [int((await client.info("replication")).get("connected_slaves", 0))]
            return min(1, *found) if found else 0

        return await self._call("replicas", count)

    async def close(self) -> None:
        self._open = False
        await self._clients.dispose_all()

    async def counters(self, homes: Collection[int], *names: str) -> dict[int, list]:
        """The plain counters ``names`` of each shard of ``homes``, in one round trip: ``quiet``, the
        changes made without a notice lately (``QUIET_TTL``; a store made without ``notify``), and
        ``seq``, the notices sent (:mod:`core.backends.meta.redis.events` follows both)."""
        return await self._fanout("counters", homes, lambda pipe, shard: [
            pipe.get(self.key(name, shard=shard)) for name in names])

    # -- records

    def _args(self, node: Node) -> list[object]:
        record = node.model_dump_json().encode()
        art = node.artifact
        plain = {**_beside(node), "n": _name(node.name), "a": art.artifact_id.encode() if art else b"",
                 "p": b"%d" % node.parent}
        if b"\0" in plain["mi"] or b"\0" in plain["bk"]:  # would shift the inode string's later fields
            raise InvalidArgumentError("a MIME type or blob key must not hold NUL")
        fields: dict[str, object] = {
            **plain,
            "rec": sealed(self._signer.sign(record), packing.packed(record, node.ino, plain)),
            "k": _KIND_CODE[node.kind],
            "sz": node.size,
            "ex": "" if node.expires_at_ns is None else node.expires_at_ns,
            "v": art.version if art else "",
            "r": node.rev or "",  # '' reads as 0
            "ln": _links(node),
        }
        return [node.ino, *(fields[name] for name in FIELDS)]

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
        return [ino, time_ns, _stored_sig(self._signer.sign(self.touch_payload(ino, time_ns)))]

    def _load(self, ino: int | bytes, *read: bytes | None) -> Node | None:
        """The node of an inode's ``READ_SLOTS`` (``read``, None where empty), verified; None if it has none."""
        ino = int(ino)
        fields = dict(zip(_READ, read))
        if fields["rec"] is None:
            return None
        sig, packed = unsealed(fields["rec"])
        try:
            record = packing.unpacked(packed, ino, fields)
        except ValueError as error:
            raise ArtifactCorruptedError(f"the metadata record of inode {ino} is damaged: {error}") from None
        node = decode_record(self._signer, ino, record, sig)
        if any((fields[name] or b"") != value for name, value in _beside(node).items()):
            # The scripts act on these (a walk stops at a role, gc takes the blob key): unsigned, so held
            # against the record, like every index a script answers.
            raise ArtifactCorruptedError(f"the fields the scripts read beside inode {ino}'s record differ from it")
        mt, mts, sd = fields["mt"], fields["mts"], fields["sd"]
        if mt:  # a directory's times, set by a change of its entries after the record was written
            if not mts or not self._signer.verify(self.touch_payload(ino, int(mt)), _read_sig(mts) or ""):
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
                    pipe.get(record_key("i", int(ino)))
                return await pipe.execute()

        rows = await self._call(what, fetch)
        return [n for n in (self._load(ino, *_read(row, int(ino))) for ino, row in zip(inos, rows)) if n is not None]

    async def _new_ino(self, shard: int) -> int:
        with self._ino_lock:
            pool = self._inos.get(shard)
            if pool:
                return pool.popleft()
        counter = self.key("ino", shard=shard)
        # Waited on: a counter a failover moved back would hand out numbers twice.
        high = int(await self._call("allocate inode", lambda client, _s: self._owned(
            client, counter, ("INCRBY", counter, _INO_BATCH), wait=self._replicas > 0)))
        if high >= 1 << shards.INO_BITS:
            raise StoreFullError(f"shard {shard} has handed out all its inode numbers")
        with self._ino_lock:
            self._inos.setdefault(shard, deque()).extend(
                shards.ino(shard, n) for n in range(high - _INO_BATCH + 2, high + 1)
            )
        return shards.ino(shard, high - _INO_BATCH + 1)

    async def _ino_for(self, node: Node, home: int) -> int:
        """The inode a new node gets in shard ``home``: the one its artifact id names (``new_artifact_id``),
        else a fresh one. The script refuses an id that names another, or an inode that exists (``dupid``),
        after what it checks first (the parent)."""
        ino = shards.ino_of_artifact(node.artifact.artifact_id) if node.artifact is not None else None
        return ino if ino is not None and shards.of_ino(ino) == home else await self._new_ino(home)

    @staticmethod
    def _check(reply: list, what: str) -> list:
        if reply and reply[0] == b"ERR":
            raise _ERRORS.get(reply[1], lambda w: ProviderError(f"{w}: {reply[1]!r}"))(what)
        return reply

    # -- reads

    async def get(self, ino: int) -> Node | None:
        return self._load(ino, *_read(await self._call("get", lambda client, _s: client.get(self.key("i", ino))), ino))

    async def _rows(self, what: str, home: int, rows: Sequence[Sequence]) -> list[Node | None]:
        """Records as a script in shard ``home`` answered them (ino, then ``READ_SLOTS`` each), verified.

        One it could not read, an inode of another shard (a scope root below
        the upper tree), is read there: all such in one pipelined round trip.
        """
        away = [int(row[0]) for row in rows if _unread(row, home)]
        there = {node.ino: node for node in await self._load_many(what, away)} if away else {}
        return [there.get(int(row[0])) if _unread(row, home) else self._load(*row) for row in rows]

    async def lookup(self, parent: int, name: str) -> Node | None:
        home = shards.of_ino(parent)
        known = self._roots.get((parent, name))
        if known is not None:  # a scope root seen before: its entry and its record in one round trip
            def read(pipe: Any, shard: int) -> None:
                if shard == home:
                    self._queue_script(pipe, shard, "entries", parent, _name(name))
                else:
                    pipe.get(self.key("i", known))

            both = await self._fanout("lookup", {home, shards.of_ino(known)}, read)
            ((entry,),), (row,) = both[home], both[shards.of_ino(known)]
            if entry and int(entry) == known:
                return checks.is_entry(self._load(known, *_read(row, known)), parent, name)
            self._roots.pop((parent, name), None)
        reply = await self._script(home, "lookup", "lookup", parent, _name(name), "0")
        child = (await self._rows("lookup", home, [reply]))[0] if reply else None
        if child is not None and shards.of_ino(child.ino) != home:
            self._remember_root(parent, name, child.ino)
        return checks.is_entry(child, parent, name)

    async def entry(self, parent: int, name: str) -> tuple[Node | None, Node | None]:
        home = shards.of_ino(parent)
        reply = await self._script(home, "lookup", "lookup", parent, _name(name), "1")
        rows = [reply[:_WIDTH], *([reply[_WIDTH:]] if len(reply) > _WIDTH else [])]
        found = await self._rows("lookup", home, rows)
        return found[0], checks.is_entry(found[1] if len(found) > 1 else None, parent, name)

    async def children(self, parent: int) -> list[Node]:
        home = shards.of_ino(parent)
        reply = await self._script(home, "list", "list", parent, _LIST_INLINE)
        if reply[0] == b"RECORDS":
            nodes = checks.of_parent(await self._entries(home, reply[1:]), parent)
        else:
            names, inos = reply[1::2], reply[2::2]
            by_ino = {node.ino: node for node in await self._load_many("list", inos)}
            entries = ((_text(name), by_ino[int(ino)]) for name, ino in zip(names, inos) if int(ino) in by_ino)
            nodes = checks.of_parent(entries, parent)
        return sorted(nodes, key=lambda n: _name(n.name))

    async def children_page(self, parent: int, after: str | None, limit: int) -> ChildrenPage:
        home = shards.of_ino(parent)
        reply = await self._script(home, "list", "page", parent, _name(after) if after else b"", limit)
        covered = int(reply[0])
        nodes = checks.of_parent(await self._entries(home, reply[2:]), parent)
        last = _text(reply[1]) if covered else None
        return ChildrenPage(nodes, last, covered >= limit)

    async def _entries(self, home: int, reply: Sequence[object]) -> list[tuple[str, Node]]:
        """The entries of a script's answer of names and whole records (name, then a record each)."""
        width = 1 + _WIDTH
        cut = len(reply) - len(reply) % width
        names = [_text(reply[at]) for at in range(0, cut, width)]  # type: ignore[arg-type]
        rows = [reply[at + 1 : at + width] for at in range(0, cut, width)]
        return [(name, node) for name, node in zip(names, await self._rows("list", home, rows)) if node is not None]

    async def find_artifact(self, artifact_id: str) -> Node | None:
        ino = shards.ino_of_artifact(artifact_id)
        if ino is None:
            return None  # no store made this id
        node = await self.get(ino)  # the inode it names, if it holds it (a guessed id may name another)
        held = node is not None and node.artifact is not None and node.artifact.artifact_id == artifact_id
        return node if held else None

    def _records(self, reply: Sequence[object]) -> Iterator[Node]:
        """The nodes of a script's answer of whole records (ino, then ``READ_SLOTS`` each), verified."""
        for at in range(0, len(reply) - len(reply) % _WIDTH, _WIDTH):
            node = self._load(*reply[at : at + _WIDTH])  # type: ignore[arg-type]
            if node is not None:
                yield node

    async def _search_homes(self, sandbox_id: str, session_id: str | None) -> set[int]:
        """The shards a search of a space reads: a session's own, else every one (a user's artifacts
        include those of the sessions the user owns, each in its session's shard)."""
        if session_id is not None:
            return {shards.of_space(Space(sandbox_id=sandbox_id, scope=Scope.SESSION, session_id=session_id))}
        return await self._shards() - {shards.UPPER}  # the upper tree holds no artifact

    async def _gathered(self, what: str, args: Sequence[object], homes: Collection[int]) -> list[Node]:
        """The records a script (``search`` or ``holders``, with ``args``) answers in every shard of ``homes``."""
        found: list[Node] = []
        inos: list[int] = []
        each = await self._fanout(what, homes, lambda pipe, shard: self._queue_script(pipe, shard, *args))
        for reply, in each.values():
            if reply[0] == b"RECORDS":
                found += self._records(reply[1:])
            else:
                inos += (int(m) for m in reply[1:])
        return found + await self._load_many(what, sorted(inos))

    async def search(
        self, sandbox_id: str, *, scope: Scope | None, session_id: str | None, user_id: str | None
    ) -> list[Node]:
        args = ("search", _LIST_INLINE, *space_parts(sandbox_id, scope, session_id, user_id))
        found = await self._gathered("search", args, await self._search_homes(sandbox_id, session_id))
        return checks.in_space(sorted(found, key=lambda n: n.ino), sandbox_id, scope, session_id, user_id)

    async def search_page(
        self, query: SearchQuery, *, after: tuple[int, str] | None, now_ns: int, limit: int
    ) -> SearchPage:
        # One script per shard the space spans, all in one pipeline: a range of the space's ordered sets.
        # MIME (in the script) and meta (here) are tested on a bounded stretch (they are not indexed):
        # such a page may come back short with a cursor further on.
        homes = await self._search_homes(query.sandbox_id, query.session_id)
        needle = query.mime_prefix or ""
        if not (query.mime_prefix or query.meta):
            most = limit
        else:
            most = max(limit, SEARCH_SCAN_MIME if needle and not query.meta else SEARCH_SCAN)
        start = "" if after is None else order_member(*after)
        want = most if query.meta else limit  # meta is tested here: every record read travels (a bounded stretch)
        args = ("spage", start, most, want, needle,
                *space_parts(query.sandbox_id, query.scope, query.session_id, query.user_id))
        each = await self._fanout("search page", homes, lambda pipe, shard: self._queue_script(pipe, shard, *args))
        return _merged([self._search_page_of(reply, query, after, now_ns, limit) for reply, in each.values()], limit)

    def _search_page_of(
        self, reply: list, query: SearchQuery, after: tuple[int, str] | None, now_ns: int, limit: int
    ) -> SearchPage:
        """One shard's page of a search, from its ``spage`` answer."""
        last, more = reply[1], reply[2] == 1
        nodes = checks.in_space(self._records(reply[3:]), query.sandbox_id, query.scope, query.session_id,
                                query.user_id)
        kept = [node for node in nodes if search_matches(node, query, now_ns)
                and (after is None or search_position(node) > after)]  # a stale member: its record moved on
        if len(kept) > limit:
            # Meta fields were tested here on up to ``most`` records: the page ends at the limit-th match,
            # and the next starts after it (not after the last record read, which would skip the rest).
            kept = kept[:limit]
            return SearchPage(kept, search_position(kept[-1]), True)
        more = more and bool(last)
        return SearchPage(kept, order_position(last) if more else None, more)

    async def sharers(self, artifact_id: str) -> list[Node]:
        # Every shard: a blob's holders are checked, not trusted to lie where its first holder does.
        return checks.sharing(
            await self._gathered("sharers", ("holders", artifact_id, _LIST_INLINE), await self._shards()), artifact_id)

    async def resolve(self, parent: int, names: Sequence[str]) -> list[Node]:
        """The nodes along ``names`` below ``parent``: one script per shard the path enters.

        A path from the upper tree enters a scope root in another shard; the
        roots met are remembered, so the next walk through one starts in its
        shard (one round trip), checked like any other step.
        """
        if not names:
            return []
        path: list[Node] = []
        remembered = self._roots.get((parent, names[0]))
        # Walk names[at:] below ``here``; with ``own`` the script answers here's record first (a root).
        here, at, own = (remembered, 1, True) if remembered is not None else (parent, 0, False)
        while True:
            home = shards.of_ino(here)
            args = ("resolve", here, "1" if own else "0", *map(_name, names[at:]))
            if remembered is not None and not path:  # the root's entry up there too, in the same round trip
                def read(pipe: Any, shard: int) -> None:
                    if shard != home:
                        self._queue_script(pipe, shard, "entries", parent, _name(names[0]))
                    else:
                        self._queue_script(pipe, shard, *args)

                both = await self._fanout("resolve", {shards.of_ino(parent), home}, read)
                ((entry,),), (reply,) = both[shards.of_ino(parent)], both[home]
                entered = bool(entry) and int(entry) == remembered
            else:
                reply, entered = await self._script(home, "resolve", *args), True
            cut = len(reply) - len(reply) % _WIDTH
            found = list(self._records(reply[:cut]))
            if remembered is not None and not path and not (entered and found and found[0].has_name(parent, names[0])):
                self._roots.pop((parent, names[0]), None)  # that root went (or never was): walk from the top
                remembered, here, at, own = None, parent, 0, False
                continue
            path += found
            at += len(found) - (1 if own else 0)
            if cut == len(reply) or at >= len(names):
                break
            holder = found[-1].ino if found else here
            here, own = int(reply[-1]), True
            self._remember_root(holder, names[at], here)
            at += 1
        return checks.along(path, parent, names)

    def _remember_root(self, parent: int, name: str, ino: int) -> None:
        if len(self._roots) >= _ROOTS_KEPT:
            self._roots.clear()
        self._roots[(parent, name)] = ino

    async def subtree(self, root: int) -> list[Node]:
        nodes: dict[int, Node] = {}
        found_before: set[bytes] = {str(root).encode()}  # directories some page found: each is walked once
        walks: dict[int, list[bytes | int]] = {shards.of_ino(root): [root]}  # per shard: what is left to walk
        while walks:
            home, queue = walks.popitem()
            while queue:
                reply = await self._script(home, "walk", "subtree", _LIST_INLINE, *queue)
                away = int(reply[0])
                if away:  # scope roots below the upper tree: read, and walked in their shards
                    for node in await self._load_many("walk", reply[1 : 1 + away]):
                        nodes[node.ino] = node
                        if node.is_dir and str(node.ino).encode() not in found_before:
                            found_before.add(str(node.ino).encode())
                            walks.setdefault(shards.of_ino(node.ino), []).append(node.ino)
                reply = reply[1 + away :]
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
        by_shard: dict[int, list[int]] = {}
        for ino in asked:  # a node's lineage ends at its scope root: in its own shard
            by_shard.setdefault(shards.of_ino(ino), []).append(ino)
        for shard, group in by_shard.items():
            for at in range(0, len(group), _LIST_INLINE):
                chunk = [ino for ino in group[at : at + _LIST_INLINE] if ino not in known]
                if chunk:
                    reply = await self._script(shard, "lineage", "lineage", *chunk)
                    known.update((n.ino, n) for n in self._records(reply))
        return checks.up_from(known.values(), asked)

    async def expired(self, now_ns: int, limit: int = 1000) -> list[Node]:
        def due(pipe: Any, shard: int) -> None:
            pipe.zrangebyscore(self.key("exp", shard=shard), "-inf", now_ns, start=0, num=limit, withscores=True)

        each = await self._fanout("expired", await self._shards(), due)
        inos = [ino for ino, _ in sorted((row for found, in each.values() for row in found), key=lambda r: r[1])][:limit]
        # Scores are doubles, and the zset is not signed: the test that counts is on the record.
        return checks.is_expired(await self._load_many("expired", inos), now_ns)

    def _counters(self, *fields: str, usage_key: str | None = None) -> Callable[[Any, int], None]:
        """Queues hashes ``fields`` of a shard whole, or (``usage_key``) that key's value in each."""
        def add(pipe: Any, shard: int) -> None:
            for field in fields:
                key = self.key(field, shard=shard)
                pipe.hgetall(key) if usage_key is None else pipe.hget(key, usage_key)

        return add

    async def usage(self, usage_key: str) -> Usage:
        home = {shards.of_usage_key(usage_key)}
        (size, files), = (await self._fanout("usage", home, self._counters("ub", "uf", usage_key=usage_key))).values()
        return Usage(bytes=int(size or 0), files=int(files or 0))

    async def usages(self) -> dict[str, Usage]:
        found: dict[str, Usage] = {}
        for sizes, files in (await self._fanout("usages", await self._shards(), self._counters("ub", "uf"))).values():
            for k in {*sizes, *files}:
                found[k.decode()] = Usage(bytes=int(sizes.get(k, 0)), files=int(files.get(k, 0)))
        return dict(sorted(found.items()))

    async def totals(self) -> Usage:
        each = (await self._fanout("totals", await self._shards(), self._counters("tot"))).values()
        return Usage(
            bytes=sum(int(tot.get(b"bytes", 0)) for tot, in each), files=sum(int(tot.get(b"files", 0)) for tot, in each)
        )

    # -- repair

    async def usage_generation(self, usage_key: str) -> int:
        (gen,), = (await self._fanout("usage generation", {shards.of_usage_key(usage_key)},
                                      self._counters("ug", usage_key=usage_key))).values()
        return int(gen or 0)

    async def reset_usage(self, usage_key: str, usage: Usage, *, generation: int) -> bool:
        shard = shards.of_usage_key(usage_key)
        reply = await self._script(shard, "reset usage", "reset_usage", usage_key, generation, usage.bytes, usage.files)
        return reply[0] == b"OK"

    async def recount_subdirs(self, ino: int) -> int:
        home = shards.of_ino(ino)
        reply = self._check(await self._script(home, "recount subdirectories", "recount_subdirs", ino), "recount")
        return int(reply[1])

    async def orphans(self) -> list[Node]:
        pattern = _glob_escape(f"{self.prefix}:{{") + "*" + _glob_escape("}:i:") + "*"

        async def scan(client: aioredis.Redis, _s: object) -> set[int]:
            return {ino_of_key(key) async for key in client.scan_iter(match=pattern, count=1000)}

        by_shard: dict[int, list[int]] = {}
        for ino in sorted(await self._call("scan records", scan)):  # SCAN may answer a key twice: a set
            if ino != ROOT_INO:
                by_shard.setdefault(shards.of_ino(ino), []).append(ino)
        found: dict[int, Node] = {}
        away: list[tuple[int, int, bytes]] = []  # (ino, parent, name): entered, if at all, in another shard
        for shard, inos in by_shard.items():
            for at in range(0, len(inos), 1000):
                reply = await self._script(shard, "orphans", "unreached", *inos[at : at + 1000])
                count = int(reply[0])
                away += [(int(reply[j]), int(reply[j + 1]), reply[j + 2]) for j in range(1, 1 + 3 * count, 3)]
                found.update((node.ino, node) for node in self._records(reply[1 + 3 * count :]))
        if away:
            by_home: dict[int, list[tuple[int, int, bytes]]] = {}  # scope roots: all in the upper tree, as made
            for place in away:
                by_home.setdefault(shards.of_ino(place[1]), []).append(place)
            unnamed = []
            for home, places in by_home.items():
                for at in range(0, len(places), 1000):
                    chunk = places[at : at + 1000]
                    named = await self._script(home, "orphans", "entries", *(x for _i, p, n in chunk for x in (p, n)))
                    unnamed += [ino for (ino, _p, _n), entry in zip(chunk, named) if not entry or int(entry) != ino]
            found.update((node.ino, node) for node in await self._load_many("orphans", unnamed))
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
        home = shards.of_ino(node.ino)
        for attempt in range(_MAX_CONFLICTS):
            args = ["1" if flag else "0", expect, _drop_at(drop_at_ns), *successor, *self._args(node), *extra,
                    *self._cover_args(cover, node)]
            reply = await self._script(home, what, op, *args)
            if reply[:2] == [b"ERR", b"sealed"]:
                await self._finish_removal(node.parent)
            reply = self._check(reply, what)
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

    async def new_artifact_id(self, space: Space | None) -> str:
        """An id naming a fresh inode of the space's shard (``shards.artifact_id_of``): the file inserted
        with it gets that inode, so an id leads to its record with no map (issue #17: ~70 B a file)."""
        return shards.artifact_id_of(await self._new_ino(shards.UPPER if space is None else shards.of_space(space)))

    async def insert(
        self, node: Node, *, replace: bool = False, touch_ns: int | None = None, cover: Cover | None = None,
        drop_at_ns: int | None = None,
    ) -> tuple[Node, Node | None]:
        home = shards.of_space(node.space) if node.role is NodeRole.SCOPE_ROOT and node.space else shards.of_ino(node.parent)
        node.ino = await self._ino_for(node, home)
        if home != shards.of_ino(node.parent):
            if replace or cover is not None:
                raise ProviderError(f"{node.name!r}: a scope root is neither replaced nor covered")
            await self._make(node)
            return node, None
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
        home = shards.of_ino(node.ino)
        if home != shards.UPPER and node.space is not None and shards.of_space(node.space) != home:
            raise CrossScopeError(f"{what}: a record does not move to another scope")
        written = node.model_copy(update={"rev": node.rev + 1})
        expect = "" if base_version is None else base_version
        inside, after = self._split(settle, home) if settle is not None else (None, None)
        queue = _settle_args(inside.forget, _micros(inside.not_before_ns), inside.keys) if inside is not None else []
        reply = self._check(await self._script(home, what, "update", *self._args(written), node.rev, expect, *queue), what)
        if reply[0] == b"CONFLICT":
            return self._load(*reply[1:])
        node.rev = written.rev
        if after is not None and (after.keys or after.forget):
            await self.defer_delete(after.keys, after.not_before_ns, forget=after.forget)
        return None

    def _split(self, settle: Settle, home: int) -> tuple[Settle, Settle]:
        """``settle``'s changes to the queue of shard ``home`` (made in a commit's own step there), and
        the rest (made after it)."""
        keys: dict[bool, list[str]] = {True: [], False: []}
        forget: dict[bool, list[Deferred]] = {True: [], False: []}
        for key in settle.keys:
            keys[self._gc_home(key) == home].append(key)
        for entry in settle.forget:
            forget[self._gc_home(entry.key) == home].append(entry)
        return (Settle(keys[True], settle.not_before_ns, forget[True]),
                Settle(keys[False], settle.not_before_ns, forget[False]))

    async def rename(
        self, node: Node, new_parent: int, new_name: str, *, replace: bool, touch_ns: int | None = None,
        drop_at_ns: int | None = None,
    ) -> Node | None:
        _one_shard(node.ino, node.parent, new_parent)
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
        home = _one_shard(a.ino, b.ino, a.parent, b.parent)
        reply = self._check(await self._script(home, "exchange", "exchange", *args), "exchange")
        if reply[0] == b"STALE":
            raise StaleRecordError("exchange: an entry changed since it was read", self._load(*reply[1:]))
        for node, done in ((a, a2), (b, b2)):
            node.parent, node.name, node.rev = done.parent, done.name, done.rev

    async def remove(self, node: Node, *, touch_ns: int | None = None, drop_at_ns: int | None = None) -> Node | None:
        home = shards.of_ino(node.ino)
        if home != shards.of_ino(node.parent):
            return await self._unmake(node, drop_at_ns)
        touch = self._touch(node.parent, touch_ns if self._touches(node) else None)
        what = repr(node.name)
        parent, name = node.parent, node.name
        for _ in range(_MAX_CONFLICTS):
            args = [node.ino, parent, _name(name), *touch, _drop_at(drop_at_ns), *self._successor(node, touch_ns)]
            reply = self._check(await self._script(home, what, "remove", *args), what)
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
        reply = self._check(await self._script(_one_shard(node.ino, new_parent), what, "link", *args), what)
        if reply[0] == b"STALE":
            raise StaleRecordError(f"{what}: inode {node.ino} changed since it was read", self._load(*reply[1:]))
        node.links, node.rev = linked.links, linked.rev

    # -- scope roots: made in their shard, entered in the upper tree's (see ``make`` in the script)

    async def _make(self, node: Node) -> None:
        what, home, upper = repr(node.name), shards.of_ino(node.ino), shards.of_ino(node.parent)
        await self._register(home)
        args = self._args(node)
        self._check(await self._script(home, what, "make", *args), what)
        try:
            entering = [node.parent, _name(node.name), node.ino, _KIND_CODE[node.kind]]
            self._check(await self._script(upper, what, "enter", *entering), what)
        except BaseException:
            with anyio.CancelScope(shield=True):
                try:  # the made record, named by nothing: gone again (else fsck finds it)
                    await self._script(home, what, "discard", node.ino, args[1], "")
                except ArtifactStoreError:
                    pass
            raise
        self._remember_root(node.parent, node.name, node.ino)

    async def _unmake(self, node: Node, drop_at_ns: int | None = None) -> Node | None:
        """Remove a scope root: sealed (empty, closed to entries), its entry taken away, then dropped.

        Each step may be repeated: a removal cut short is finished by the
        next (:meth:`_finish_removal`, from an insert the seal refused).
        """
        what, home, upper = repr(node.name), shards.of_ino(node.ino), shards.of_ino(node.parent)
        reply = self._check(await self._script(home, what, "seal", node.ino, node.parent, _name(node.name)), what)
        if len(reply) == 1:
            return None  # gone from there already
        sealed = self._load(*reply[1:])
        unentering = [node.parent, _name(node.name), node.ino, _KIND_CODE[node.kind]]
        self._check(await self._script(upper, what, "unenter", *unentering), what)
        self._roots.pop((node.parent, node.name), None)
        self._check(await self._script(home, what, "discard", node.ino, "", _drop_at(drop_at_ns)), what)
        return sealed.seen_as(node.parent, node.name) if sealed is not None else None

    async def _finish_removal(self, ino: int) -> None:
        """Finish removing scope root ``ino``, whose seal refused an entry (its remover may have died)."""
        sealed = await self.get(ino)
        if sealed is not None and shards.of_ino(sealed.parent) != shards.of_ino(ino):
            await self._unmake(sealed)


    # -- the deletion queue: a sorted set per shard, key -> not_before in microseconds (exact in a double).
    # A blob key is queued in its artifact's shard (the script that drops an inode queues its blob in
    # the same step); one found elsewhere by due_deletions is forgotten where it was found.

    def _gc_home(self, key: str) -> int:
        home = self._gc_homes.get(key)
        return home if home is not None else shards.of_blob_key(key) or shards.UPPER

    def _by_home(self, keys: Iterable[str]) -> dict[int, list[str]]:
        homes: dict[int, list[str]] = {}
        for key in keys:
            homes.setdefault(self._gc_home(key), []).append(key)
        return homes

    async def defer_delete(
        self, keys: Collection[str], not_before_ns: int, *, forget: Collection[Deferred] = ()
    ) -> None:
        if keys or forget:
            await self._queue("defer delete", forget, _micros(not_before_ns), keys)

    async def _queue(self, what: str, forget: Collection[Deferred], score: int, keys: Collection[str]) -> None:
        """Per shard, one script: drop the entries of ``forget`` still at their score, then queue ``keys`` at
        ``score``. Atomic in each shard, and a retry after a lost reply ends in the same state."""
        queued, forgotten = self._by_home(keys), self._by_home(entry.key for entry in forget)
        old = {entry.key: entry for entry in forget}

        def settle(pipe: Any, shard: int) -> None:
            argv = _settle_args([old[key] for key in forgotten.get(shard, ())], score, queued.get(shard, ()))
            # Plain EVAL: one command each time (a Script's first EVALSHA would cost a NOSCRIPT and a LOAD
            # inside some caller's request); the text is ~400 bytes, and the server caches its compilation.
            pipe.eval(_QUEUE, 1, self.key("gc", shard=shard), *argv)

        for shard in queued:
            await self._register(shard)
        await self._fanout(what, {*queued, *forgotten}, settle)
        for key in old:
            self._gc_homes.pop(key, None)

    async def due_deletions(self, now_ns: int, limit: int = 1000) -> list[Deferred]:
        def due(pipe: Any, shard: int) -> None:
            pipe.zrangebyscore(self.key("gc", shard=shard), "-inf", now_ns // 1000, start=0, num=limit, withscores=True)

        each = await self._fanout("due deletions", await self._shards(), due)
        found = [(shard, key, score) for shard, (pairs,) in each.items() for key, score in pairs][:limit]
        if len(self._gc_homes) > 4 * limit:
            self._gc_homes.clear()
        self._gc_homes.update((key.decode(), shard) for shard, key, _ in found)
        return [Deferred(key.decode(), int(score) * 1000) for _, key, score in found]

    async def forget_deletions(self, entries: Collection[Deferred]) -> None:
        if entries:
            await self._queue("forget deletions", entries, 0, ())

    async def queue_if_absent(self, keys: Collection[str], not_before_ns: int) -> None:
        score = _micros(not_before_ns)

        homes = self._by_home(keys)
        for shard in homes:
            await self._register(shard)
        if homes:
            await self._fanout("queue orphans", homes, lambda pipe, shard: pipe.zadd(
                self.key("gc", shard=shard), {key: score for key in homes[shard]}, nx=True))

    async def pending_deletions(self) -> list[str]:
        each = await self._fanout("pending deletions", await self._shards(),
                                  lambda pipe, shard: pipe.zrange(self.key("gc", shard=shard), 0, -1))
        return sorted(k.decode() for keys, in each.values() for k in keys)

    def read_token(self) -> None:
        """None: another host's change shows only through a round trip, so nothing read is kept."""
        return None

    async def sync(self) -> None:
        """Nothing to do: what Redis acknowledged is as durable as its own persistence makes it."""


# The deletion queue's changes alone (ARGV as SETTLE reads them from 1).
_QUEUE = SETTLE + "settle(KEYS[1], 1)\nreturn 0\n"


def _one_shard(*inos: int) -> int:
    """The shard of all of ``inos``; an op that would span two is between scopes (EXDEV)."""
    homes = {shards.of_ino(ino) for ino in inos}
    if len(homes) > 1:
        raise CrossScopeError("the names are in different scopes")
    return homes.pop()


async def _script_loaded(send: Callable[[], Awaitable[list]], load: Callable[[], Awaitable[object]]) -> list:
    """The replies of ``send()``; sent again once after ``load()`` if a server answered NOSCRIPT (one
    restarted, or a replica just made master: it has no script yet)."""
    replies = await send()
    if any(isinstance(reply, NoScriptError) for reply in replies):
        await load()
        replies = await send()
    return replies


def _raise_any(replies: list) -> list:
    """``replies``, unless one is an error (a pipeline's replies, read without raising): then that."""
    for reply in replies:
        if isinstance(reply, Exception):
            raise reply
    return replies


async def _on_server(client: aioredis.Redis, batch: list[tuple]) -> list:
    """``batch`` on one connection to a single server, each reply (or error) as it came."""
    async with client.pipeline(transaction=False) as pipe:
        for args in batch:
            pipe.execute_command(*args)
        return await pipe.execute(raise_on_error=False)


def _unread(row: Sequence[object], home: int) -> bool:
    """Whether a script in ``home`` answered this record empty because it lives in another shard."""
    return row[1] is None and row[2] is None and shards.of_ino(int(row[0])) != home  # type: ignore[call-overload]


def _merged(pages: Sequence[SearchPage], limit: int) -> SearchPage:
    """One search's pages of several shards as one: the first ``limit`` in (stored_at, id) order, among
    the positions every shard has answered up to (where the first page that stopped short ends)."""
    if len(pages) <= 1:
        return pages[0] if pages else SearchPage([], None, False)
    ends = [page.last for page in pages if page.more and page.last is not None]
    bound = min(ends) if ends else None
    found = sorted(
        (node for page in pages for node in page.nodes if bound is None or search_position(node) <= bound),
        key=search_position,
    )
    if len(found) > limit:
        return SearchPage(found[:limit], search_position(found[limit - 1]), True)
    return SearchPage(found, bound, bound is not None)


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
    return RedisMetaStore(
        settings.redis_url, signer, prefix=settings.redis_prefix, notify=settings.redis_notify,
        cluster=settings.redis_cluster, replicas=settings.redis_wait_replicas,
    )


def _glob_escape(text: str) -> str:
    """``text`` matched literally by SCAN's glob pattern (a prefix may hold ``[`` or ``*``)."""
    return "".join("\\" + c if c in "*?[]\\" else c for c in text)
