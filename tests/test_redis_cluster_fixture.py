"""The Redis Cluster fixture, and the redis-py async cluster features a cluster backend relies on.

Each test shows one feature on a real cluster (``tests/redis_cluster.py``) and fails if it does not
work: keys spread over every master by hash tag, a Lua script routed by its first key that reaches
the other keys of that hash tag, a non-transactional pipeline over several slots, plain and sharded
pub/sub across nodes, ``scan_iter`` over every master, and a client that rides out a failover.

``redis.asyncio`` needs an asyncio loop and these tests run under trio (``trio_mode``), so each
async check is a sync test running it with :func:`asyncio.run`. The session cluster is shared:
every test keeps to keys and channels under a prefix of its own.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
import redis
from redis.asyncio.cluster import ClusterPipeline
from redis.asyncio.cluster import RedisCluster as AsyncRedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialWithJitterBackoff
from redis.cluster import key_slot
from redis.exceptions import MovedError, NoScriptError, RedisClusterException
from redis_cluster import HOST, RedisCluster, own_redis_cluster, redis_cluster  # noqa: F401 (fixtures)

TAGS = [f"{{s{i}}}" for i in range(1, 31)]
DEADLINE = 10.0  # for a message to arrive: polled, so it only bounds a failure

# The other keys of KEYS[1]'s hash tag, named inside the script: everything up to the closing
# brace of the tag, then a suffix. They are not declared, yet share the slot of KEYS[1].
TOUCH_SIBLINGS = """
local base = string.match(KEYS[1], '^[^{]*{[^}]*}')
local n = redis.call('HINCRBY', KEYS[1], 'n', 1)
redis.call('SET', base .. ':last', ARGV[1])
redis.call('RPUSH', base .. ':log', ARGV[1])
return {n, redis.call('GET', base .. ':last'), redis.call('LLEN', base .. ':log')}
"""


def prefix() -> str:
    return f"fx{uuid.uuid4().hex[:10]}"


def run(cluster: RedisCluster, check: Callable[[AsyncRedisCluster], Awaitable[Any]], **options: Any) -> Any:
    """``check(client)`` on an asyncio loop, with a cluster client from the fixture's URL."""
    async def main() -> Any:
        client = AsyncRedisCluster.from_url(cluster.url, socket_timeout=5, socket_connect_timeout=5, **options)
        try:
            return await check(client)
        finally:
            await client.aclose()

    return asyncio.run(main())


def one_tag_per_master(cluster: RedisCluster, name: str) -> dict[int, str]:
    """A key per master (port -> key), each of another hash tag."""
    keys: dict[int, str] = {}
    for tag in TAGS:
        key = f"{name}{tag}"
        keys.setdefault(cluster.node_of_key(key), key)
    assert len(keys) == 3, keys
    return keys


def test_hash_tags_spread_over_every_master(redis_cluster: RedisCluster) -> None:
    run_id = prefix()
    masters = {port for _, port in redis_cluster.masters()}
    assert len(masters) == 3
    owners: dict[str, int] = {}
    for tag in TAGS:
        key = f"{run_id}{tag}k"
        assert redis_cluster.slot_of(key) == key_slot(key.encode())  # the server hashes as redis-py does
        owners[key] = redis_cluster.node_of_key(key)
    assert set(owners.values()) == masters

    # The fixture names the right node: it takes the key; any other master redirects it.
    for key, port in owners.items():
        with redis.Redis(host=HOST, port=port, socket_timeout=5) as node:
            assert node.set(key, "x")
        other = next(p for p in masters if p != port)
        with redis.Redis(host=HOST, port=other, socket_timeout=5) as node, pytest.raises(MovedError) as moved:
            node.get(key)
        assert (moved.value.slot_id, moved.value.port) == (redis_cluster.slot_of(key), port)


def test_script_routed_by_first_key_reaches_its_hash_tag(redis_cluster: RedisCluster) -> None:
    keys = one_tag_per_master(redis_cluster, prefix())

    async def check(client: AsyncRedisCluster) -> None:
        script = client.register_script(TOUCH_SIBLINGS)
        for port, key in keys.items():
            assert await script(keys=[key], args=["a"]) == [1, b"a", 1]
            assert await script(keys=[key], args=["b"]) == [2, b"b", 2]
            # The undeclared keys were written where their slot lives, next to KEYS[1]
            assert await client.get(f"{key}:last") == b"b"
            assert await client.lrange(f"{key}:log", 0, -1) == [b"a", b"b"]
            with redis.Redis(host=HOST, port=port, socket_timeout=5) as node:
                assert node.get(f"{key}:last") == b"b"

        # A node that lost its scripts (restart, failover to a replica: SCRIPT LOAD only reaches
        # primaries) answers NOSCRIPT; Script.__call__ loads the script again and retries.
        port, key = next(iter(keys.items()))
        node = client.get_node(host=HOST, port=port)
        await client.execute_command("SCRIPT FLUSH", target_nodes=node)
        assert await client.execute_command("SCRIPT EXISTS", script.sha, target_nodes=node) == [0]
        assert await script(keys=[key], args=["c"]) == [3, b"c", 3]

        # Keys of two slots: refused by the client before anything is sent
        two_slots = [keys[p] for p in list(keys)[:2]]
        with pytest.raises(RedisClusterException, match="same key slot"):
            await script(keys=two_slots, args=["d"])

    run(redis_cluster, check)


def test_non_transactional_pipeline_over_several_slots(redis_cluster: RedisCluster) -> None:
    run_id = prefix()
    keys = [f"{run_id}{tag}h" for tag in TAGS[:12]]
    assert len({redis_cluster.node_of_key(key) for key in keys}) == 3

    async def check(client: AsyncRedisCluster) -> None:
        for i, key in enumerate(keys):
            await client.hset(key, mapping={"a": f"a{i}", "b": f"b{i}"})
        pipe = client.pipeline(transaction=False)
        assert isinstance(pipe, ClusterPipeline)
        expected: list[Any] = []
        for i, key in enumerate(keys):
            pipe.hget(key, "a")
            pipe.hmget(key, ["b", "missing", "a"])
            expected += [f"a{i}".encode(), [f"b{i}".encode(), None, f"a{i}".encode()]]
        pipe.hget(f"{run_id}{{none}}", "a")
        expected.append(None)
        assert await pipe.execute() == expected

        # A script in a cluster pipeline is queued as a bare EVALSHA: the pipeline does not load
        # it, so a node without it answers NOSCRIPT. SCRIPT LOAD (sent to every primary) first.
        script = client.register_script(TOUCH_SIBLINGS)
        await client.script_flush()
        pipe = client.pipeline(transaction=False)
        await script(keys=[keys[0]], args=["x"], client=pipe)
        pipe.get(f"{keys[0]}:last")
        replies = await pipe.execute(raise_on_error=False)
        assert isinstance(replies[0], NoScriptError) and replies[1] is None
        assert await client.script_load(TOUCH_SIBLINGS) == script.sha
        pipe = client.pipeline(transaction=False)
        for key in keys:
            await script(keys=[key], args=["y"], client=pipe)
        assert await pipe.execute() == [[1, b"y", 1]] * len(keys)

    run(redis_cluster, check)


async def _next(read: Callable[[], Awaitable[dict | None]], kind: str) -> dict:
    """The next message of type ``kind``; fails after DEADLINE seconds."""
    deadline = time.monotonic() + DEADLINE
    while time.monotonic() < deadline:
        message = await read()
        if message is not None and message["type"] == kind:
            return message
    raise AssertionError(f"no {kind} message within {DEADLINE} s")


def test_publish_from_a_script_reaches_a_subscriber_on_another_node(redis_cluster: RedisCluster) -> None:
    run_id = prefix()
    key = f"{run_id}{{s1}}k"
    publisher = redis_cluster.node_of_key(key)
    listener = next(port for _, port in redis_cluster.masters() if port != publisher)
    channel = f"{run_id}:events"

    async def check(client: AsyncRedisCluster) -> None:
        await client.initialize()
        pubsub = client.pubsub(node=client.get_node(host=HOST, port=listener))
        try:
            await pubsub.subscribe(channel)
            await _next(lambda: pubsub.get_message(timeout=1), "subscribe")
            publish = client.register_script("return redis.call('PUBLISH', ARGV[1], KEYS[1])")
            # PUBLISH counts the receivers on its own node only: the one on the other node is not counted
            assert await publish(keys=[key], args=[channel]) == 0
            message = await _next(lambda: pubsub.get_message(timeout=1), "message")
            assert message["channel"] == channel.encode() and message["data"] == key.encode()
        finally:
            await pubsub.aclose()

    run(redis_cluster, check)


def test_sharded_pubsub_across_masters(redis_cluster: RedisCluster) -> None:
    run_id = prefix()
    keys = one_tag_per_master(redis_cluster, run_id)
    channels = {key: f"{key}:chan" for key in keys.values()}  # each in the slot of its key

    async def check(client: AsyncRedisCluster) -> None:
        pubsub = client.pubsub()  # one ClusterPubSub: a connection per node it has channels on
        try:
            await pubsub.ssubscribe(*channels.values())
            confirmed = set()
            for _ in channels:
                confirmed.add((await _next(lambda: pubsub.get_sharded_message(timeout=1), "ssubscribe"))["channel"])
            assert confirmed == {c.encode() for c in channels.values()}
            assert {node.port for node in map(client.get_node_from_key, channels.values())} == set(keys)

            spublish = client.register_script(
                "return redis.call('SPUBLISH', string.match(KEYS[1], '^[^{]*{[^}]*}') .. ':chan', ARGV[1])"
            )
            expected = set()
            for key, channel in channels.items():
                assert await client.spublish(channel, "direct") == 1  # the shard's own count: exact
                assert await spublish(keys=[key], args=["scripted"]) == 1
                expected |= {(channel.encode(), b"direct"), (channel.encode(), b"scripted")}
            received = set()
            for _ in expected:
                message = await _next(lambda: pubsub.get_sharded_message(timeout=1), "smessage")
                received.add((message["channel"], message["data"]))
            assert received == expected
        finally:
            await pubsub.aclose()

    run(redis_cluster, check)


def test_scan_iter_covers_every_master(redis_cluster: RedisCluster) -> None:
    run_id = prefix()
    keys = {f"{run_id}:scan:{tag}" for tag in TAGS}
    assert len({redis_cluster.node_of_key(key) for key in keys}) == 3

    async def check(client: AsyncRedisCluster) -> None:
        for key in keys:
            await client.set(key, "1")
        await client.set(f"{run_id}:other:{{s1}}", "1")
        found = [key async for key in client.scan_iter(match=f"{run_id}:scan:*", count=5)]
        assert len(found) == len(keys)
        assert {key.decode() for key in found} == keys

    run(redis_cluster, check)


def test_client_rides_out_a_failover(own_redis_cluster: RedisCluster) -> None:
    """With enough retries a command sent when its master dies waits for the replica to take over.

    The default retry (10 attempts, backoff from 10 ms capped at 1 s) gives up after about 2 s
    with a ConnectionError: less than a failover takes with a 2 s node timeout (~4-5 s).
    """
    cluster = own_redis_cluster
    key = f"{prefix()}{{s5}}n"
    master = cluster.node_of_key(key)
    retry = Retry(ExponentialWithJitterBackoff(base=0.05, cap=0.5), retries=60)

    async def check(client: AsyncRedisCluster) -> None:
        counter = client.register_script("return redis.call('INCR', KEYS[1])")
        assert await counter(keys=[key]) == 1
        node = client.get_node_from_key(key)
        assert node.port == master
        assert await client.execute_command("WAIT", 1, 5000, target_nodes=node) == 1  # the replica has it
        cluster.kill(master)
        assert await client.incr(key) == 2  # retried until the replica took over
        heir = cluster.wait_failover(master)
        assert client.get_node_from_key(key).port == heir
        # The heir never saw SCRIPT LOAD (primaries only); the script is loaded again on NOSCRIPT
        assert await counter(keys=[key]) == 3

    run(cluster, check, retry=retry)
