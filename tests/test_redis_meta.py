"""RedisMetaStore on a real redis-server: atomicity, indexes instead of scans, faults.

The core suite already runs the whole API on Redis + S3 (backend "redis-s3");
these tests look at what only this backend has: races between clients, the
key layout staying consistent, command counts, outages of the server.
"""

from __future__ import annotations

import hashlib
import random
import uuid
import zlib
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import anyio
import pytest
import redis
from servers import MotoServer, RedisServer, redis_s3_settings
from storekit import minted_id, racing_inserts
from storeprobe import redis_entry, redis_inode, rewrite_redis_inode

from core import ArtifactStore
from core.backends.blobs.memory import MemoryBlobStore
from core.backends.meta import changes
from core.backends.meta.redis import packing
from core.backends.meta.redis import store as store_module
from core.backends.meta.redis.lua import INODE_SLOTS, ORDER_BUCKET
from core.backends.meta.redis.store import (
    _LIST_INLINE, SIGNATURE_BYTES, RedisMetaStore, ino_of_key, inode_fields, inode_string, order_member,
    order_position, sealed, unsealed,
)
from core.backends.meta.redis.stamps import order_time
from core.backends.meta.sqlite import SQLiteMetaStore
from core.errors import (
    AlreadyExistsError,
    ArtifactCorruptedError,
    ArtifactStoreError,
    ProviderError,
)
from core.infra.clock import ManualClock
from core.infra.retry import RetryPolicy
from core.infra.signing import RecordSigner
from core.models import Scope, Usage
from core import shards
from core.nodes import ROOT_INO, Artifact, Node, NodeKind, NodeRole, Space, grid_key, new_node

SIGNER = RecordSigner(b"redis-meta-test-key-0123456789")
ALICE = Space(sandbox_id="box", scope=Scope.USER, user_id="alice")
BOB = Space(sandbox_id="box", scope=Scope.USER, user_id="bob")
FAST_RETRY = RetryPolicy(attempts=3, first_delay=0.01, max_delay=0.05)


def a_file(parent: int, name: str, *, size: int = 0, space: Space | None = None, expires: int | None = None) -> Node:
    """A file; one with a space goes below that space's scope root (a scope's nodes live in its shard)."""
    node = new_node(parent=parent, name=name, kind=NodeKind.FILE, mode=0o644, now_ns=1, space=space)
    node.artifact = Artifact(artifact_id=minted_id(space), sha256="0" * 64)
    node.size, node.expires_at_ns = size, expires
    return node


def a_dir(parent: int, name: str, space: Space = ALICE) -> Node:
    return new_node(parent=parent, name=name, kind=NodeKind.DIR, mode=0o755, now_ns=1, space=space)


def alice_root() -> Node:
    """ALICE's scope root, below the root: her files' directory (a scope's nodes live in its shard)."""
    return new_node(parent=ROOT_INO, name="alice", kind=NodeKind.DIR, mode=0o755, now_ns=1, role=NodeRole.SCOPE_ROOT,
                    space=ALICE)


def redis_store(server: RedisServer, prefix: str | None = None, **kw) -> RedisMetaStore:
    return RedisMetaStore(server.url, SIGNER, prefix=prefix or f"rm-{uuid.uuid4().hex[:12]}", **kw)


@pytest.fixture
async def meta(redis_server: RedisServer) -> AsyncIterator[RedisMetaStore]:
    store = redis_store(redis_server)
    await store.open()
    yield store
    await store.close()


def plain_fields(stored: bytes | None, ino: int) -> dict[bytes, bytes]:
    """An inode's string as its fields, named in bytes."""
    return {name.encode(): value for name, value in inode_fields(stored, ino).items()}


def _space(record: dict[bytes, bytes]) -> Space:
    """The space an inode's ``sp:`` index line names, as the store's nodes spell it."""
    line = next(line for line in record[b"ix"].split(b"\n") if line.startswith(b"sp:"))
    sandbox, scope, session, user = line[3:].decode().split("/")
    return Space(sandbox_id=sandbox, scope=Scope(scope), session_id=session or None, user_id=user or None)


def _account(record: dict[bytes, bytes]) -> bytes:
    """The usage account an inode is charged to: ``uk``, or (``=``) its space's."""
    return _space(record).usage_key.encode() if record[b"uk"] == b"=" else record[b"uk"]


def _orders(r: redis.Redis, heads: dict[tuple[int, bytes], bytes],
            buckets: dict[tuple[int, bytes], bytes]) -> dict[tuple[int, bytes], set[bytes]]:
    """Every order cut in buckets of one kind (a space's artifacts, a directory's names), by (shard, what it
    orders), its members, checked: each bucket is small, compact and holds the members from its head up to
    the next; an order of one bucket has no heads (its bucket is ''), one of more has a head for each.
    ``heads``, ``buckets``: (shard, what follows the kind) -> key, for every key of the two kinds."""
    found: dict[tuple[int, bytes], dict[bytes, bytes]] = {}
    for (shard, rest), key in buckets.items():
        what, _, head = rest.partition(b"\n")
        found.setdefault((shard, what), {})[head] = key
    assert set(heads) <= set(found)  # no heads without buckets
    orders = {}
    for place, keys in found.items():
        names = r.zrange(heads[place], 0, -1) if place in heads else [b""]
        assert set(names) == set(keys) and (len(names) > 1 or place not in heads)
        members: set[bytes] = set()
        for head, after in zip(names, [*names[1:], None]):
            held = r.zrange(keys[head], 0, -1)
            assert 0 < len(held) < ORDER_BUCKET and r.object("encoding", keys[head]) == b"listpack"
            assert all(head <= m and (after is None or m < after) for m in held)
            members |= set(held)
        orders[place] = members
    return orders


def assert_consistent(url: str, prefix: str) -> None:
    """Every key of the layout agrees with every other, in each shard and across (read with SCAN: tests only)."""
    r = redis.Redis.from_url(url)

    def keyed(kind: str) -> dict[tuple[int, bytes], bytes]:
        """(shard, what follows ``:<kind>:``) -> key, for every key of that kind in every shard."""
        found = {}
        for key in r.scan_iter(f"{prefix}:{{*}}:{kind}:*"):
            shard = int(key[len(prefix) + 2 : key.index(b"}")])
            found[(shard, key.split(f"}}:{kind}:".encode(), 1)[1])] = key
        return found

    for _, rest in keyed("i"):
        assert 0 <= int(rest) < 1 << shards.INO_BITS  # named by its number in the shard its key is of
    assert not keyed("d")  # no entry hashes: a directory's entries are its name order's members
    inodes = {shards.ino(shard, int(rest)): plain_fields(r.get(key), shards.ino(shard, int(rest)))
              for (shard, rest), key in keyed("i").items()}
    dirs: dict[int, dict[bytes, int]] = {}
    for (shard, n), members in _orders(r, keyed("o"), keyed("ob")).items():
        entries = dirs[shards.ino(shard, int(n))] = {}
        for member in members:  # <name>\0<child>: its number here, or a whole ino of another shard
            name, _, child = member.partition(b"\0")
            assert name not in entries and child.isdigit()  # one member a name
            entries[name] = shards.ino(shard, int(child)) if int(child) < 1 << shards.INO_BITS else int(child)
    for parent, entries in dirs.items():
        assert inodes[parent][b"k"] == b"d"
        for name, ino in entries.items():
            record = inodes[ino]
            assert (record[b"p"], record[b"n"]) == (str(parent).encode(), name)
    for ino, record in inodes.items():
        if ino != ROOT_INO:
            assert dirs[int(record[b"p"])][record[b"n"]] == ino
    homes = {shards.of_ino(ino) for ino in inodes}
    in_shard = {home: {i: h for i, h in inodes.items() if shards.of_ino(i) == home} for home in homes}
    for home, mine in in_shard.items():
        base = f"{prefix}:{{{home}}}"
        assert all(shards.ino_of_artifact(h[b"a"].decode()) == i for i, h in mine.items() if h[b"a"])  # no map
        assert {m: s for m, s in r.zrange(f"{base}:exp", 0, -1, withscores=True)} == {
            str(i).encode(): float(h[b"ex"]) for i, h in mine.items() if h[b"ex"]
        }
        files: Counter[bytes] = Counter()
        size: Counter[bytes] = Counter()
        for record in mine.values():
            if account := _account(record):
                files[account] += 1
                size[account] += int(record[b"sz"])
        assert {k: int(v) for k, v in r.hgetall(f"{base}:uf").items() if int(v)} == dict(files)
        assert {k: int(v) for k, v in r.hgetall(f"{base}:ub").items() if int(v)} == {k: v for k, v in size.items() if v}
        totals = r.hgetall(f"{base}:tot")
        assert int(totals.get(b"files", 0)) == sum(files.values()) and int(totals.get(b"bytes", 0)) == sum(size.values())
    holders: dict[tuple[int, bytes], set[bytes]] = {}  # bo:<id>: the holders of another artifact's blob
    orders: dict[tuple[int, bytes], set[bytes]] = {}  # each space's (stored_at, artifact id) order
    for ino, record in inodes.items():
        lines = list(filter(None, record[b"ix"].split(b"\n")))
        member = next((line[1:] + bytes.fromhex(record[b"a"].decode()) for line in lines if line[:1] == b"="), None)
        for tag in lines:
            if tag.startswith(b"bo:"):
                holders.setdefault((shards.of_ino(ino), tag), set()).add(str(ino).encode())
            elif tag.startswith(b"sp:"):
                assert member is not None
                orders.setdefault((shards.of_ino(ino), tag[3:]), set()).add(member)
    for place, key in keyed("x").items():
        assert r.smembers(key) == holders.pop(place, set())
    assert not holders
    spaces = _orders(r, keyed("y"), keyed("yb"))  # each space's order
    assert spaces == orders
    for home in homes:  # each shard's spaces are those with an ordered set there
        assert set(r.hkeys(f"{prefix}:{{{home}}}:tags")) == {space for shard, space in spaces if shard == home}


async def test_a_record_of_large_metadata_is_kept_unsqueezed_and_read_back_whole(meta: RedisMetaStore) -> None:
    """Past 64 KiB a record is kept in stored blocks (deflating megabytes would hold the event loop)."""
    node = a_file(ROOT_INO, "big.json", size=1)
    node.artifact.meta = {f"k{i}": uuid.uuid4().hex for i in range(4000)}
    stored, _ = await meta.insert(node)
    with redis.Redis.from_url(meta.url) as r:
        raw = _raw_inode(r, meta.key("i", stored.ino))
    text = stored.model_dump_json().encode()
    assert len(text) > 64 * 1024 and len(text) < len(raw["rec"]) - SIGNATURE_BYTES < len(text) + 64
    again = await meta.get(stored.ino)
    assert again is not None and again.artifact is not None and again.artifact.meta == node.artifact.meta


@pytest.mark.semantics("S-list-pages")
async def test_a_large_space_is_kept_in_small_buckets_and_read_in_order(redis_server: RedisServer) -> None:
    """A space's search order is cut in buckets small enough for Redis's compact encoding (issue #17):
    through splits, a bucket emptied, and artifacts older than every head, pages keep the exact order."""
    clock = ManualClock()
    meta = redis_store(redis_server)
    async with ArtifactStore(storage_provider="memory", session_provider="memory", sandbox_id="box",
                             meta_store=meta, blob_store=MemoryBlobStore(), clock=clock) as store:

        async def stored(count: int) -> list[str]:
            ids = []
            for i in range(count):
                ids.append(await store.store(b"x", filename=f"f{clock.now_ns()}", scope="user", user_id="alice"))
                clock.advance(0.001)
            return ids

        async def in_pages(limit: int) -> list[str]:
            seen, cursor = [], None
            while True:
                page = await store.search_page(scope="user", user_id="alice", limit=limit, cursor=cursor)
                seen += [m.artifact_id for m in page.items]
                if (cursor := page.next_cursor) is None:
                    return seen

        async def read_in_order(ids: list[str]) -> None:
            for limit in (1, 7, 100, 1000):
                assert await in_pages(limit) == ids
            assert {m.artifact_id for m in await store.search(scope="user", user_id="alice")} == set(ids)
            assert_consistent(meta.url, meta.prefix)

        ids = await stored(600)
        await read_in_order(ids)
        with redis.Redis.from_url(meta.url) as r:  # the heads of its buckets
            assert r.zcard(meta.key("y", "box/user//alice", shard=shards.of_space(ALICE))) >= 600 // ORDER_BUCKET
        for gone in ids[:150] + ids[300:400]:  # the first bucket and one in the middle, emptied
            assert await store.delete(gone, user_id="alice")
        ids = ids[150:300] + ids[400:]
        await read_in_order(ids)
        clock.advance(-3600)  # stored before every head there is
        ids = await stored(5) + ids
        await read_in_order(ids)
        clock.advance(7200)  # 300 at one stored_at: in id order, so most land inside a bucket, not last
        batch = await store.store_batch([{"data": b"y", "filename": f"b{i}"} for i in range(300)],
                                        scope="user", user_id="alice")
        await read_in_order(ids + sorted(batch))


# -- the same semantics as the SQLite reference


async def scenario(meta) -> list[str]:
    """A run of tree changes, legal and not; returns what each step did."""
    log: list[str] = []

    async def step(what: str, call: Callable[[], Awaitable[object]]) -> object:
        try:
            result = await call()
        except ArtifactStoreError as exc:
            log.append(f"{what}: {type(exc).__name__}")
            return None
        log.append(f"{what}: ok")
        return result

    top = (await meta.insert(alice_root()))[0].ino
    d, _ = await meta.insert(a_dir(top, "d"))
    e, _ = await meta.insert(a_dir(top, "e"))
    f, _ = await meta.insert(a_file(top, "f", space=ALICE, size=10))
    await step("insert f again", lambda: meta.insert(a_file(top, "f", space=ALICE)))
    replaced = await step("insert f replacing", lambda: meta.insert(a_file(top, "f", space=ALICE, size=7), replace=True))
    log.append(f"replaced {replaced[1].ino == f.ino}")  # type: ignore[index]
    f = replaced[0]  # type: ignore[index]
    await step("file over dir", lambda: meta.insert(a_file(top, "d", space=ALICE), replace=True))
    await step("insert below a file", lambda: meta.insert(a_file(f.ino, "x", space=ALICE)))
    await step("insert below nothing", lambda: meta.insert(a_file(999_999, "x", space=ALICE)))
    inner, _ = await meta.insert(a_file(d.ino, "inner", space=ALICE, size=3))
    await step("rename file onto dir", lambda: meta.rename(f, top, "d", replace=True))
    await step("rename dir onto file", lambda: meta.rename(e, top, "f", replace=True))
    await step("rename dir onto non-empty dir", lambda: meta.rename(e, top, "d", replace=True))
    await step("rename f to g", lambda: meta.rename(f, top, "g", replace=False))
    log.append(f"rename onto itself returns {await meta.rename(f, top, 'g', replace=True)}")
    h, _ = await meta.insert(a_file(top, "h", space=ALICE, size=5))
    await step("rename h onto g, no replace", lambda: meta.rename(h, top, "g", replace=False))
    gone = await meta.rename(h, top, "g", replace=True)
    log.append(f"rename h onto g replaced f: {gone is not None and gone.ino == f.ino}")
    await step("exchange", lambda: meta.exchange(h, inner))
    await step("remove non-empty dir", lambda: meta.remove(d))
    await step("remove a file", lambda: meta.remove(inner))
    await step("remove it again", lambda: meta.remove(inner))
    await step("remove the emptied dir", lambda: meta.remove(d))
    await step("rename dir e into place of removed d", lambda: meta.rename(e, top, "d", replace=False))
    h.size, h.name = 50, "g"
    await step("update h", lambda: meta.update(h))
    log.append(f"usage {await meta.usage(ALICE.usage_key)} totals {await meta.totals()}")
    return log


async def tree(meta) -> list[tuple[str, str, int]]:
    out: list[tuple[str, str, int]] = []

    async def walk(ino: int, path: str) -> None:
        for child in await meta.children(ino):
            out.append((f"{path}/{child.name}", child.kind.value, child.size))
            if child.is_dir:
                await walk(child.ino, f"{path}/{child.name}")

    await walk(ROOT_INO, "")
    return out


async def test_same_answers_as_sqlite(meta: RedisMetaStore) -> None:
    reference = SQLiteMetaStore(":memory:", SIGNER)
    await reference.open()
    try:
        expected = await scenario(reference)
        assert await scenario(meta) == expected
        assert await tree(meta) == await tree(reference)
    finally:
        await reference.close()
    assert "insert f again: AlreadyExistsError" in expected and "remove non-empty dir: DirectoryNotEmptyError" in expected
    assert_consistent(meta.url, meta.prefix)


# -- races between clients


async def test_concurrent_creates_of_one_name_one_wins(redis_server: RedisServer) -> None:
    prefix = f"race-{uuid.uuid4().hex[:8]}"
    stores = [redis_store(redis_server, prefix) for _ in range(4)]  # four "hosts"
    for store in stores:
        await store.open()
    try:
        top = (await stores[0].insert(alice_root()))[0].ino
        outcomes = await racing_inserts(stores, lambda: a_file(top, "contested", size=1, space=ALICE), 40)
        assert outcomes == {"won": 1, "lost": 39}
        assert [n.name for n in await stores[0].children(top)] == ["contested"]
        assert await stores[1].usage(ALICE.usage_key) == Usage(bytes=1, files=1)
        assert_consistent(redis_server.url, prefix)
    finally:
        for store in stores:
            await store.close()


async def test_rename_racing_an_insert(meta: RedisMetaStore, redis_server: RedisServer) -> None:
    other = redis_store(redis_server, meta.prefix)
    await other.open()
    try:
        async def rename(src: Node, target: str, results: list[str]) -> None:
            try:
                await meta.rename(src, ROOT_INO, target, replace=False)
                results.append("rename")
            except AlreadyExistsError:
                results.append("-")

        async def insert(target: str, results: list[str]) -> None:
            try:
                await other.insert(a_file(ROOT_INO, target, size=3))
                results.append("insert")
            except AlreadyExistsError:
                results.append("-")

        for round_ in range(25):
            src, _ = await meta.insert(a_file(ROOT_INO, f"src{round_}", size=2))
            results: list[str] = []
            async with anyio.create_task_group() as tg:
                tg.start_soon(rename, src, f"dst{round_}", results)
                tg.start_soon(insert, f"dst{round_}", results)
            assert sorted(results) in (["-", "rename"], ["-", "insert"])
        assert_consistent(meta.url, meta.prefix)
    finally:
        await other.close()


async def test_concurrent_replaces_hand_back_every_replaced_node_once(meta: RedisMetaStore) -> None:
    """Each replace verifies the record it removes; racing replacers never lose or double one."""
    made: list[int] = []
    replaced: list[int] = []
    top = (await meta.insert(alice_root()))[0].ino

    async def replace(size: int) -> None:
        node, old = await meta.insert(a_file(top, "hot", size=size, space=ALICE), replace=True)
        made.append(node.ino)
        if old is not None:
            replaced.append(old.ino)

    async with anyio.create_task_group() as tg:
        for size in range(1, 61):
            tg.start_soon(replace, size)
    (survivor,) = await meta.children(top)
    assert sorted(replaced + [survivor.ino]) == sorted(made)
    assert await meta.usage(ALICE.usage_key) == Usage(bytes=survivor.size, files=1)
    assert_consistent(meta.url, meta.prefix)


async def test_inode_numbers_are_never_handed_out_twice(meta: RedisMetaStore, redis_server: RedisServer) -> None:
    first, _ = await meta.insert(a_file(ROOT_INO, "a"))
    await meta.remove(first)
    second, _ = await meta.insert(a_file(ROOT_INO, "a"))
    assert second.ino > first.ino
    other = redis_store(redis_server, meta.prefix)  # another host on the same store
    await other.open()
    try:
        inos: list[int] = []

        async def make(store: RedisMetaStore, name: str) -> None:
            inos.append((await store.insert(a_file(ROOT_INO, name)))[0].ino)

        async with anyio.create_task_group() as tg:
            for i in range(150):
                tg.start_soon(make, (meta, other)[i % 2], f"n{i}")
        assert len(set(inos)) == 150 and first.ino not in inos and second.ino not in inos
    finally:
        await other.close()


# -- records are verified before anything acts on them


async def test_a_forged_record_is_not_replaced_or_trusted(meta: RedisMetaStore) -> None:
    victim, _ = await meta.insert(a_file(ROOT_INO, "victim", size=4))
    with redis.Redis.from_url(meta.url) as r:
        record = redis_inode(r, meta.key("i", victim.ino))["rec"]
        rewrite_redis_inode(r, meta.key("i", victim.ino), rec=record.replace(b'"size":4', b'"size":5'))
    with pytest.raises(ArtifactCorruptedError):
        await meta.get(victim.ino)
    with pytest.raises(ArtifactCorruptedError):
        await meta.insert(a_file(ROOT_INO, "victim"), replace=True)
    mover, _ = await meta.insert(a_file(ROOT_INO, "mover"))
    with pytest.raises(ArtifactCorruptedError):
        await meta.rename(mover, ROOT_INO, "victim", replace=True)
    with redis.Redis.from_url(meta.url) as r:  # refused before any change: the entry still names the victim
        assert redis_entry(r, meta, ROOT_INO, "victim") == victim.ino
        assert redis_entry(r, meta, ROOT_INO, "mover") == mover.ino


def _raw_inode(r: redis.Redis, key: str) -> dict[str, bytes]:
    fields = inode_fields(r.get(key), ino_of_key(key))
    assert fields, f"no inode at {key}"
    return fields


def _deflated(text: bytes, context: bytes) -> bytes:
    """``text`` deflated as hard as zlib can, against ``context``: a few KiB for megabytes of one byte."""
    deflate = zlib.compressobj(9, zlib.DEFLATED, -11, 9, zlib.Z_DEFAULT_STRATEGY, context)
    return deflate.compress(text) + deflate.flush()


@pytest.mark.parametrize("damage", ["garbage", "cut short", "bytes after its end", "another blob key", "a bomb",
                                    "another role", "another MIME type", "another index line",
                                    "another account"])
async def test_a_damaged_packing_reads_as_a_damaged_record(meta: RedisMetaStore, damage: str) -> None:
    victim, _ = await meta.insert(a_file(ROOT_INO, "victim", size=4))
    key = meta.key("i", victim.ino)
    with redis.Redis.from_url(meta.url) as r:
        fields = _raw_inode(r, key)
        packed, kept = fields["rec"], dict(fields)
        fields.update({
            "garbage": {"rec": b"\xff" * 40},
            "cut short": {"rec": packed[: len(packed) // 2]},
            "bytes after its end": {"rec": packed + b"{}"},
            "another blob key": {"bk": b"grid/box/users/mallory/elsewhere"},
            "a bomb": {"rec": packed[:SIGNATURE_BYTES] + packing.PLAIN + _deflated(b"{" * (8 << 20),
                                                                   packing.context(victim.ino, fields))},
            "another role": {"ro": b"scope_root"},
            "another MIME type": {"mi": b"text/html"},
            "another index line": {"ix": b"sp:box/user//mallory\n=0000000000A"},  # where gc would spell its blob
            "another account": {"uk": b"box/user/mallory"},
        }[damage])
        if damage == "another MIME type":  # packed again against it: only the field beside the record differs
            sig, body = unsealed(packed)
            text = packing.unpacked(body, victim.ino, kept)
            fields["rec"] = sealed(sig, packing.packed(text, victim.ino, fields))
        r.set(key, inode_string(fields, victim.ino))
    with pytest.raises(ArtifactCorruptedError):
        await meta.get(victim.ino)
    with pytest.raises(ArtifactCorruptedError):
        await meta.lookup(ROOT_INO, "victim")


def test_a_packing_that_would_inflate_past_any_record_is_refused_before_it_does() -> None:
    fields = {"mi": b"text/plain", "bk": b".v1-0123abcd", "a": b"0" * 32, "p": b"1", "n": b"x"}
    bomb = packing.PLAIN + _deflated(b"{" * (8 << 20), packing.context(2, fields))
    assert len(bomb) < 16 * 1024
    with pytest.raises(ValueError, match="cut short, too long"):
        packing.unpacked(bomb, 2, fields)
    honest = b'{"k":"' + b"v" * (200 * 1024) + b'"}'  # past 64 KiB: kept in stored blocks, read back whole
    assert packing.unpacked(packing.packed(honest, 2, fields), 2, fields) == honest


_HEX = "09ecb6ebc8bcefc733f6f2ec44f791abeed6a99edf0cc31519637898aebd52d8"


@pytest.mark.parametrize(("record", "raw"), [
    ('{"artifact":{"meta":{},"sha256":"%s","blob_key":"k"}}' % _HEX, _HEX),
    ('{"kind":"dir"}', None),
    ('{"meta":{"sha256":"%s"},"sha256":"%s"}' % (_HEX[::-1], _HEX), _HEX[::-1]),  # the first one is kept raw
    ('{"meta":{"sha256":""},"sha256":"%s"}' % _HEX, None),  # the first is no digest: none is taken
    ('{"sha256":"%s"}' % _HEX.upper(), None),
    ('{"sha256":"%s"}' % _HEX[:63], None),
    ('{"sha256":"%s0"}' % _HEX, None),
    ('{"summary":"\\"sha256\\":\\"%s\\"","sha256":"%s"}' % (_HEX, _HEX[::-1]), _HEX[::-1]),  # quoted
    ('{"sha256":"%s' % _HEX, None),
], ids=["file", "no digest", "one in metadata first", "an empty one first", "upper case", "short", "long",
        "quoted in a summary", "no closing quote"])
def test_a_packing_gives_back_its_record_byte_for_byte(record: str, raw: str | None) -> None:
    """A SHA-256 is kept raw before the deflated text (issue #17) only where the text can take it back
    at the same place."""
    fields = {"mi": b"", "bk": b".v1-0123abcd", "a": b"0" * 32, "p": b"1", "n": b"x", "ix": b"=5DwZPl9nGho"}
    text = record.encode()
    kept = packing.packed(text, 2, fields)
    head = packing.PLAIN if raw is None else packing.HASHED + bytes.fromhex(raw)
    assert kept[: len(head)] == head
    assert packing.unpacked(kept, 2, fields) == text


@pytest.mark.parametrize("damage", ["no mark", "another mark", "a digest cut short", "a digest with no place"])
def test_a_damaged_digest_packing_is_refused(damage: str) -> None:
    fields = {"mi": b"", "bk": b"", "a": b"", "p": b"1", "n": b"x"}
    kept = packing.packed(b'{"sha256":"%s"}' % _HEX.encode(), 2, fields)
    plain = packing.packed(b'{"kind":"dir"}', 2, fields)
    forged = {"no mark": b"", "another mark": b"\x02" + kept[1:], "a digest cut short": kept[:20],
              "a digest with no place": packing.HASHED + bytes(32) + plain[1:]}[damage]
    with pytest.raises(ValueError):
        packing.unpacked(forged, 2, fields)


async def test_records_are_kept_packed_and_read_back_whole(meta: RedisMetaStore) -> None:
    """A record is kept deflated against what records share (issue #17: memory per file); the bytes
    signed are still its JSON, which reads back whole."""
    node = a_file(ROOT_INO, "report.txt", size=100, space=None)
    node.artifact.mime, node.artifact.meta = "text/plain", {"n": 1}
    node.artifact.blob_key = f"grid/box/users/alice/{node.artifact.artifact_id}.v1-0123abcd"
    stored, _ = await meta.insert(node)
    with redis.Redis.from_url(meta.url) as r:
        raw = _raw_inode(r, meta.key("i", stored.ino))
    text = stored.model_dump_json().encode()
    assert b'"sha256"' not in raw["rec"] and len(raw["rec"]) < len(text) / 2
    assert (raw["mi"], raw["bk"], raw["ro"]) == (b"text/plain", node.artifact.blob_key.encode(), b"")
    assert packing.unpacked(unsealed(raw["rec"])[1], stored.ino, raw) == text
    again = await meta.get(stored.ino)
    assert again is not None and again.model_dump_json() == stored.model_dump_json()


@pytest.mark.parametrize("space", [
    Space(sandbox_id="box", scope=Scope.SESSION, session_id="s1", user_id="alice"),
    Space(sandbox_id="box", scope=Scope.USER, user_id="alice"),
    Space(sandbox_id="box", scope=Scope.SANDBOX),
], ids=["session", "user", "shared"])
@pytest.mark.parametrize("own_blob", [True, False], ids=["own blob", "a source's blob"])
async def test_an_inode_keeps_its_blob_account_and_parent_short_and_the_script_spells_them_out(
    meta: RedisMetaStore, space: Space, own_blob: bool
) -> None:
    """An inode keeps a blob key after its grid key, its space's account as ``=`` and a parent in its shard
    as its number there (issue #17); the script spells them out as the nodes do: usage is charged to the
    space's key, a dropped inode's blob is queued whole. A blob shared with another artifact is kept whole."""
    root, _ = await meta.insert(new_node(parent=ROOT_INO, name=space.scope.value, kind=NodeKind.DIR, mode=0o755,
                                         now_ns=1, role=NodeRole.SCOPE_ROOT, space=space))
    node = a_file(root.ino, "f", size=5, space=space)
    art = node.artifact
    own = f"{grid_key(space.sandbox_id, space.scope, space.owner, art.artifact_id)}.v1-0123abcd"
    art.blob_key = own if own_blob else f"grid/other/users/bob/{uuid.uuid4().hex}.v3-89abcdef"
    stored, _ = await meta.insert(node)
    with redis.Redis.from_url(meta.url) as r:
        raw = _raw_inode(r, meta.key("i", stored.ino))
        kept = r.get(meta.key("i", stored.ino)).split(b"\0")
    kept_parent, kept_id = kept[INODE_SLOTS.index("p")], kept[INODE_SLOTS.index("a")]
    assert raw["bk"] == (b".v1-0123abcd" if own_blob else art.blob_key.encode()) and raw["uk"] == b"="
    assert kept_parent == b"+%d" % (root.ino - shards.ino(shards.of_ino(root.ino), 0))  # its number in the shard
    assert kept_id == art.artifact_id[-19:].encode() and raw["a"] == art.artifact_id.encode()  # the rest: the ino
    assert await meta.usage(space.usage_key) == Usage(bytes=5, files=1)
    again = await meta.get(stored.ino)
    assert again is not None and again.artifact is not None and again.artifact.blob_key == art.blob_key
    assert await meta.remove(again, drop_at_ns=10**18) is not None
    assert art.blob_key in await meta.pending_deletions()
    assert await meta.usage(space.usage_key) == Usage(bytes=0, files=0)


async def test_an_artifact_id_names_its_inode_and_no_map_is_kept(meta: RedisMetaStore) -> None:
    """The store makes ids that name the inode their file gets (issue #17: no id -> ino map, ~70 B a file
    less); two files can never hold one id, and an id that names an inode holding another finds nothing."""
    root, _ = await meta.insert(new_node(parent=ROOT_INO, name="alice", kind=NodeKind.DIR, mode=0o755, now_ns=1,
                                         role=NodeRole.SCOPE_ROOT, space=ALICE))
    ids = [await meta.new_artifact_id(ALICE) for _ in range(3)]
    assert len(set(ids)) == 3 and {shards.of_artifact(i) for i in ids} == {shards.of_space(ALICE)}
    node = a_file(root.ino, "f", space=ALICE)
    node.artifact.artifact_id = ids[0]
    stored, _ = await meta.insert(node)
    assert stored.ino == shards.ino_of_artifact(ids[0])
    found = await meta.find_artifact(ids[0])
    assert found is not None and found.ino == stored.ino
    assert await meta.find_artifact(ids[0][:13] + ids[1][13:]) is None  # its inode, another id
    assert await meta.find_artifact(ids[1]) is None  # made, never stored
    again = a_file(root.ino, "g", space=ALICE)
    again.artifact.artifact_id = ids[0]  # an id made into a file twice (an upload published twice)
    with redis.Redis.from_url(meta.url) as r:
        before = {k: r.dump(k) for k in r.scan_iter(f"{meta.prefix}:*")}
        with pytest.raises(ProviderError, match="artifact id"):
            await meta.insert(again)
        assert {k: r.dump(k) for k in r.scan_iter(f"{meta.prefix}:*")} == before
        assert not list(r.scan_iter(f"{meta.prefix}:*:art:*"))
    assert await meta.lookup(root.ino, "g") is None
    assert_consistent(meta.url, meta.prefix)


async def test_a_script_reads_an_inode_of_another_shard_as_absent_never_as_its_own(meta: RedisMetaStore) -> None:
    """An inode's keys name it by its number in its shard (issue #17), so the number of an inode of another
    shard is also the number of one here: the script must read the foreign one as absent, not as the local
    one of that number (here: the root, inode 1 of shard 0, against this scope's first inode)."""
    root, _ = await meta.insert(new_node(parent=ROOT_INO, name="alice", kind=NodeKind.DIR, mode=0o755, now_ns=1,
                                         role=NodeRole.SCOPE_ROOT, space=ALICE))
    home = shards.of_ino(root.ino)
    assert shards.number(root.ino) == shards.number(ROOT_INO)  # the scope's first inode: the same number
    reply = await meta._script(home, "orphans", "unreached", ROOT_INO)
    assert reply == [0]  # neither a record nor a remote place: nothing here has inode 1's number


def test_a_search_member_is_short_and_in_its_order() -> None:
    """Search order members spell stored_at in 11 bytes whose byte order is the time's, then the id raw
    (issue #17): byte order is (stored_at, id) order."""
    rng = random.Random(17)
    times = [0, 1, 63, 64, 1 << 63, (1 << 64) - 1, *(rng.getrandbits(rng.randint(1, 64)) for _ in range(5000))]
    ids = sorted(f"{rng.getrandbits(128):032x}" for _ in range(50))
    assert all(order_position(order_member(ns, ids[ns % 50])) == (ns, ids[ns % 50]) for ns in times)
    assert sorted(times, key=order_time) == sorted(times) and {len(order_time(ns)) for ns in times} == {11}
    pairs = [(ns, i) for ns in times[:200] for i in ids[:5]]
    assert sorted(pairs, key=lambda p: order_member(*p)) == sorted(pairs)
    assert {len(order_member(ns, i)) for ns, i in pairs} == {27}
    for bad in (b"", b"0000000000", b"0000000000!" + bytes(16), b"00000000000" + bytes(15), b"00000000000" + bytes(17)):
        with pytest.raises(ValueError):
            order_position(bad)
    # A forged cursor's id (no id a store makes) starts the page at its time: the reader drops the rest.
    assert order_member(5, "not-an-id") == order_time(5).encode() < order_member(5, ids[0])


# -- indexes, never scans


def command_counts(server: RedisServer) -> dict[str, int]:
    with server.client() as r:
        return {name.removeprefix("cmdstat_"): int(v["calls"]) for name, v in r.info("commandstats").items()}


def assert_no_scans(counts: dict[str, int]) -> None:
    assert not {"scan", "keys", "hscan", "sscan", "zscan"} & set(counts), counts


async def test_listing_thousands_of_entries_reads_their_order_then_the_records(own_redis: RedisServer) -> None:
    count = 3 * _LIST_INLINE  # past what one reply carries inline: the names, then the records
    meta = redis_store(own_redis)
    await meta.open()
    try:
        big, _ = await meta.insert(a_dir(ROOT_INO, "big"))
        limiter = anyio.Semaphore(48)

        async def make(i: int) -> None:
            async with limiter:
                await meta.insert(a_file(big.ino, f"f{i:05d}", size=i))

        async with anyio.create_task_group() as tg:
            for i in range(count):
                tg.start_soon(make, i)
        with own_redis.client() as r:
            r.config_resetstat()
        listing = await meta.children(big.ino)
        counts = command_counts(own_redis)
    finally:
        await meta.close()
    assert [n.name for n in listing] == [f"f{i:05d}" for i in range(count)]
    assert_no_scans(counts)
    # one script reads the name order (its heads, then each bucket: half full at least), then the
    # records come pipelined
    assert counts.get("evalsha") == 1 and counts.get("get") == count
    assert counts.get("zrange", 0) <= 2 + count // (ORDER_BUCKET // 2)


async def test_a_large_directory_keeps_its_names_in_small_buckets_and_pages_in_order(meta: RedisMetaStore) -> None:
    """A directory's name order is cut in buckets like a space's (issue #17: a skiplist past 128 names
    cost ~110 B a file through the mount); pages still come in byte order, from any name on."""
    box, _ = await meta.insert(a_dir(ROOT_INO, "box"))
    names = [f"f{i:04d}" for i in range(0, 600, 2)]
    names += random.Random(5).sample([f"f{i:04d}" for i in range(1, 600, 2)], 300)  # inside, out of order
    for name in names:
        await meta.insert(a_file(box.ino, name))
    assert_consistent(meta.url, meta.prefix)  # small, compact buckets, each from its head to the next

    async def listed(step: int) -> list[str]:
        seen, after = [], None
        while True:
            page = await meta.children_page(box.ino, after, step)
            seen += [n.name for n in page.nodes]
            if not page.more:
                return seen
            after = page.last

    assert await listed(97) == sorted(names)
    with redis.Redis.from_url(meta.url) as r:
        assert r.zcard(meta.key("o", box.ino)) >= 600 // ORDER_BUCKET
    for name in sorted(names)[100:400]:  # whole buckets emptied and gone
        await meta.remove(await meta.lookup(box.ino, name))
    assert await listed(33) == sorted(names)[:100] + sorted(names)[400:]
    assert_consistent(meta.url, meta.prefix)
    for name in sorted(names)[3:100] + sorted(names)[400:]:  # down to one bucket: its heads go
        await meta.remove(await meta.lookup(box.ino, name))
    with redis.Redis.from_url(meta.url) as r:
        assert not r.exists(meta.key("o", box.ino))
    assert await listed(2) == sorted(names)[:3]
    for name in names[100:300]:  # and come back with a second
        await meta.insert(a_file(box.ino, name))
    assert await listed(50) == sorted(sorted(names)[:3] + names[100:300])
    assert_consistent(meta.url, meta.prefix)


@pytest.mark.parametrize("bucket_size", [128, 4], ids=["one bucket", "many buckets"])
async def test_names_that_share_a_start_are_found_and_paged_as_names(
    redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch, bucket_size: int
) -> None:
    """A directory's entries are ``<name>\\0<child>`` members of its name order (issue #17): a name that
    starts another, or holds a byte near NUL, is still found alone and paged in byte order, in one
    bucket or across many (whose heads are such members)."""
    if bucket_size != 128:  # small buckets, so that a few names make many
        script = store_module.SCRIPT.replace("local ORDER_BUCKET = 128", f"local ORDER_BUCKET = {bucket_size}")
        assert script != store_module.SCRIPT
        monkeypatch.setattr(store_module, "SCRIPT", script)
        monkeypatch.setattr(store_module, "_SCRIPT_SHA", hashlib.sha1(script.encode()).hexdigest())
    meta = redis_store(redis_server)
    await meta.open()
    try:
        box, _ = await meta.insert(a_dir(ROOT_INO, "box"))
        names = ["a", "a\x01", "a\n", "a b", "a\x7f", "a\u00ff", "ab", "a\U0001f600", "b", "a\x01\x01", "\x01"]
        made = {name: (await meta.insert(a_file(box.ino, name)))[0] for name in names}
        by_bytes = sorted(names, key=lambda n: n.encode())
        with redis.Redis.from_url(meta.url) as r:
            assert (r.zcard(meta.key("o", box.ino)) > 2) == (bucket_size == 4)  # heads: buckets of their own
        for name in names:
            found = await meta.lookup(box.ino, name)
            assert found is not None and found.ino == made[name].ino
        assert await meta.lookup(box.ino, "a\x02") is None and await meta.lookup(box.ino, "") is None
        for step in (1, 2, 5):
            seen, after = [], None
            while True:
                page = await meta.children_page(box.ino, after, step)
                seen += [n.name for n in page.nodes]
                if not page.more:
                    break
                after = page.last
            assert seen == by_bytes
        assert [n.name for n in await meta.children(box.ino)] == by_bytes
        for name in by_bytes[::2]:
            await meta.remove(await meta.lookup(box.ino, name))
        assert [n.name for n in await meta.children(box.ino)] == by_bytes[1::2]
        assert_consistent(meta.url, meta.prefix)
    finally:
        await meta.close()


async def test_search_and_expiry_read_indexes(own_redis: RedisServer) -> None:
    meta = redis_store(own_redis)
    await meta.open()
    try:
        alices = (await meta.insert(alice_root()))[0].ino
        bobs = (await meta.insert(a_dir(ROOT_INO, "bob", space=BOB).model_copy(update={"role": NodeRole.SCOPE_ROOT})))[0].ino
        for i in range(30):
            await meta.insert(a_file(alices, f"a{i}", space=ALICE, expires=1000 + i))
            await meta.insert(a_file(bobs, f"b{i}", space=BOB))
        with own_redis.client() as r:
            r.config_resetstat()
        alice = await meta.search("box", scope=None, session_id=None, user_id="alice")
        users = await meta.search("box", scope=Scope.USER, session_id=None, user_id=None)
        nobody = await meta.search("other-box", scope=None, session_id=None, user_id="alice")
        due = await meta.expired(1009, limit=1000)
        first = await meta.expired(1009, limit=3)
        counts = command_counts(own_redis)
    finally:
        await meta.close()
    assert sorted(n.name for n in alice) == sorted(f"a{i}" for i in range(30))
    assert len(users) == 60 and nobody == []
    assert [n.name for n in due] == [f"a{i}" for i in range(10)]  # in expiry order, none due later
    assert [n.name for n in first] == ["a0", "a1", "a2"]
    assert_no_scans(counts)


async def test_expiry_index_follows_every_change(meta: RedisMetaStore) -> None:
    soon, _ = await meta.insert(a_file(ROOT_INO, "soon", expires=100))
    later, _ = await meta.insert(a_file(ROOT_INO, "later", expires=200))
    await meta.insert(a_file(ROOT_INO, "never"))
    assert [n.name for n in await meta.expired(150)] == ["soon"]
    soon.expires_at_ns = 300  # a TTL extended
    await meta.update(soon)
    assert [n.name for n in await meta.expired(250)] == ["later"]
    await meta.remove(later)
    assert [n.name for n in await meta.expired(10**19)] == ["soon"]
    soon.expires_at_ns = None  # made permanent
    await meta.update(soon)
    assert await meta.expired(10**19) == []
    assert_consistent(meta.url, meta.prefix)


def listening(server: RedisServer, meta: RedisMetaStore) -> redis.client.PubSub:
    """A subscriber to the notices of ``meta``'s upper tree (shard 0), subscribed before the test writes."""
    listener = server.client().pubsub()
    listener.ssubscribe(meta.key("events", shard=shards.UPPER))
    assert listener.get_sharded_message(timeout=5)["type"] == "ssubscribe"
    return listener


async def test_changes_are_announced_when_asked(redis_server: RedisServer) -> None:
    meta = redis_store(redis_server, notify=True)
    listener = listening(redis_server, meta)
    await meta.open()
    try:
        node, _ = await meta.insert(a_file(ROOT_INO, "news"))
        await meta.rename(node, ROOT_INO, "renamed", replace=False)
        await meta.remove(node)
    finally:
        await meta.close()
    notices = [listener.get_sharded_message(timeout=5)["data"].split(b"\0") for _ in range(3)]
    listener.close()
    ino, origin = str(node.ino).encode(), b"o" + meta.origin.encode()  # origin: which store instance asked
    assert notices[0] == [b"insert", b"e1/news", b"i1", origin, b"s1"]  # s: the shard's count of notices
    assert notices[1] == [b"rename", b"e1/news", b"e1/renamed", b"i" + ino, origin, b"s2"]
    assert notices[2] == [b"remove", b"e1/renamed", b"i" + ino, origin, b"s3"]


@pytest.mark.semantics("S-multimount-notices")
async def test_changes_made_while_replying_carry_the_replying_origin(redis_server: RedisServer) -> None:
    """A mount's FUSE requests stamp their own origin; its other writers (--serve) the store's."""
    meta = redis_store(redis_server, notify=True)
    listener = listening(redis_server, meta)
    await meta.open()
    try:
        with changes.replying("fuse0"):
            await meta.insert(a_file(ROOT_INO, "by-a-request"))
        await meta.insert(a_file(ROOT_INO, "by-the-service"))
    finally:
        await meta.close()
    notices = [listener.get_sharded_message(timeout=5)["data"].split(b"\0") for _ in range(2)]
    listener.close()
    assert notices[0][-2] == b"ofuse0"
    assert notices[1][-2] == b"o" + meta.origin.encode()


# -- faults: bounded retries, a clear error, and the same store working again


async def test_server_gone_then_back(own_redis: RedisServer) -> None:
    meta = redis_store(own_redis, retry=FAST_RETRY, socket_timeout=1.0)
    await meta.open()
    try:
        kept, _ = await meta.insert(a_file(ROOT_INO, "kept", size=9))
        own_redis.shutdown_saving()
        with pytest.raises(ProviderError, match="after 3 attempts"):
            await meta.get(kept.ino)
        with pytest.raises(ProviderError):
            await meta.insert(a_file(ROOT_INO, "during"))
        own_redis.start()
        assert await meta.get(kept.ino) == kept  # the same store object, no reopen
        await meta.insert(a_file(ROOT_INO, "after"))
        assert [n.name for n in await meta.children(ROOT_INO)] == ["after", "kept"]
    finally:
        await meta.close()
    assert_consistent(own_redis.url, meta.prefix)


async def test_server_hung_then_thawed(own_redis: RedisServer) -> None:
    meta = redis_store(own_redis, retry=FAST_RETRY, socket_timeout=0.3)
    await meta.open()
    try:
        kept, _ = await meta.insert(a_file(ROOT_INO, "kept"))
        own_redis.freeze()
        try:
            with pytest.raises(ProviderError):
                await meta.lookup(ROOT_INO, "kept")
        finally:
            own_redis.thaw()
        assert await meta.lookup(ROOT_INO, "kept") == kept
    finally:
        await meta.close()


async def test_restarts_during_writes_lose_nothing_acknowledged(own_redis: RedisServer, moto_server: MotoServer,
                                                                tmp_path: Path) -> None:
    """Writers keep storing while Redis restarts twice: each call succeeds or says ProviderError;
    every acknowledged artifact is there afterwards, and nothing listed fails its SHA-256."""
    settings = redis_s3_settings(tmp_path / "data", redis_url=own_redis.url)
    assert settings.signing_key is not None
    meta = RedisMetaStore(own_redis.url, RecordSigner(settings.signing_key.get_secret_value().encode()),
                          prefix=settings.redis_prefix, retry=RetryPolicy(attempts=4, first_delay=0.05),
                          socket_timeout=2.0)
    stored: dict[str, bytes] = {}
    failures: list[ProviderError] = []
    attempts = 0
    progress, restarted = anyio.Event(), anyio.Event()

    async def writer(store: ArtifactStore, who: int) -> None:
        nonlocal attempts
        i = late = 0
        while late < 5:  # before and through both restarts, then five once Redis is back for good
            back = restarted.is_set()
            data = f"writer {who} artifact {i} ".encode() * 50
            attempts += 1
            try:
                stored[await store.store(data, filename=f"w{who}/a{i}", user_id="u", scope="user")] = data
            except ProviderError as exc:
                if back:
                    raise  # a store that failed with Redis up
                failures.append(exc)  # how many depends on how long a restart takes: not counted
            i, late = i + 1, late + back
            if len(stored) >= 6:
                progress.set()

    async with ArtifactStore(settings=settings, meta_store=meta) as store:
        async with anyio.create_task_group() as tg:
            for who in range(3):
                tg.start_soon(writer, store, who)
            await progress.wait()
            await anyio.to_thread.run_sync(own_redis.restart)
            await anyio.to_thread.run_sync(own_redis.restart)
            restarted.set()
        for file_id, data in stored.items():
            assert await store.retrieve(file_id, user_id="u") == data
        for found in await store.search(user_id="u"):  # acknowledged or not, whatever is listed is whole
            await store.retrieve(found.artifact_id, user_id="u")
    assert len(stored) + len(failures) == attempts and len(stored) >= 6 + 15
    assert_consistent(own_redis.url, settings.redis_prefix)
