"""The Redis proxy that forces interleavings (tests/redisproxy.py) does what the torture test relies on.

A held script call must not reach the server until it is released, while
the same host's other connections go on; commands split anywhere across
reads must come out whole and in order.
"""

from __future__ import annotations

import concurrent.futures

import redis
from redisproxy import CommandReader, RedisProxy, ScriptCall
from servers import RedisServer

SCRIPT = "redis.call('SET', KEYS[1] .. ':' .. ARGV[1], ARGV[2]); return ARGV[1]"


def test_commands_come_out_whole_however_the_bytes_are_split() -> None:
    stream = (b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$5\r\nv\r\nxy\r\n"  # a value holding CRLF
              b"*5\r\n$7\r\nEVALSHA\r\n$2\r\nab\r\n$1\r\n1\r\n$1\r\nP\r\n$6\r\nrename\r\n"
              b"PING\r\n")
    for size in (1, 2, 7, len(stream)):
        reader, seen = CommandReader(), []
        for at in range(0, len(stream), size):
            reader.feed(stream[at : at + size])
            seen += [args for _, args in reader.commands()]
        assert seen == [[b"SET", b"k", b"v\r\nxy"], [b"EVALSHA", b"ab", b"1", b"P", b"rename"], [b"PING"]]
    call = ScriptCall.parse(seen[1])
    assert call is not None and (call.op, call.keys) == ("rename", (b"P",))


def test_a_held_call_reaches_the_server_only_when_released(redis_server: RedisServer) -> None:
    with RedisProxy(redis_server.port, "t") as proxy, redis.Redis.from_url(proxy.url, socket_timeout=30) as held_client, \
            redis.Redis.from_url(proxy.url, socket_timeout=30) as other_client, redis_server.client() as direct:
        script = held_client.register_script(SCRIPT)
        script(keys=["proxytest"], args=["warm", "1"])  # loaded, so the held call is one EVALSHA
        hold = proxy.hold({"update"}, where=lambda call: call.argv[1] == b"2")
        script(keys=["proxytest"], args=["update", "1"])  # not matched by ``where``: goes through
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            pending = pool.submit(script, keys=["proxytest"], args=["update", "2"])
            assert hold.wait_caught(30)
            assert other_client.set("proxytest:other", "x")  # the host's other connections go on
            assert direct.get("proxytest:update") == b"1"  # the held call has not run
            assert not pending.done()
            hold.release()
            assert pending.result(timeout=30) == b"update"
        assert direct.get("proxytest:update") == b"2"
        assert proxy.counts["EVALSHA:update"] == 2 and hold.call is not None and hold.call.op == "update"
        direct.delete("proxytest:warm", "proxytest:update", "proxytest:other")


def test_a_hold_that_catches_nothing_can_be_disarmed(redis_server: RedisServer) -> None:
    with RedisProxy(redis_server.port, "t") as proxy, redis.Redis.from_url(proxy.url, socket_timeout=30) as client:
        hold = proxy.hold({"remove"})
        proxy.disarm(hold)
        script = client.register_script(SCRIPT)
        assert script(keys=["proxytest"], args=["remove", "1"]) == b"remove"
        assert not hold.caught
        client.delete("proxytest:remove")
