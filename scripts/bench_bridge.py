"""What the asyncio bridge costs per call (core/aio_bridge.py).

Starts a private redis-server on 127.0.0.1, then times, per call:
an empty coroutine and a Redis GET, awaited directly under asyncio and
through the bridge from trio, plus RedisMetaStore.get() both ways.

    .venv/bin/python scripts/bench_bridge.py [--calls N]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import redis.asyncio as aioredis
import trio

sys.path[:0] = [str(Path(__file__).resolve().parents[1]), str(Path(__file__).resolve().parents[1] / "tests")]

from servers import RedisServer  # noqa: E402

from core.infra import aio_bridge  # noqa: E402
from core.backends.meta.redis.store import RedisMetaStore  # noqa: E402
from core.infra.signing import RecordSigner  # noqa: E402
from core.nodes import ROOT_INO  # noqa: E402


async def timed(calls: int, fn: Callable[[], Awaitable[object]]) -> float:
    for _ in range(min(200, calls)):
        await fn()
    start = time.perf_counter()
    for _ in range(calls):
        await fn()
    return (time.perf_counter() - start) / calls * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=3000)
    calls = parser.parse_args().calls
    with tempfile.TemporaryDirectory() as tmp:
        server = RedisServer(Path(tmp))
        server.start()
        try:
            rows: dict[str, dict[str, float]] = {}
            clients: dict[asyncio.AbstractEventLoop, aioredis.Redis] = {}

            async def noop() -> None:
                pass

            async def get() -> object:
                loop = asyncio.get_running_loop()
                if loop not in clients:
                    clients[loop] = aioredis.Redis.from_url(server.url)
                return await clients[loop].get("absent")

            async def measure(label: str) -> None:
                meta = RedisMetaStore(server.url, RecordSigner(b"bench-key-0123456789"), prefix="bench")
                await meta.open()
                rows[label] = {
                    "empty call": await timed(calls, lambda: aio_bridge.run(noop)),
                    "redis GET": await timed(calls, lambda: aio_bridge.run(get)),
                    "MetaStore.get": await timed(calls, lambda: meta.get(ROOT_INO)),
                }
                await meta.close()

            asyncio.run(measure("asyncio (direct)"))
            trio.run(measure, "trio (bridged)")
        finally:
            server.stop()
    names = list(next(iter(rows.values())))
    print(f"{'µs per call':<20}" + "".join(f"{n:>16}" for n in names))
    for label, row in rows.items():
        print(f"{label:<20}" + "".join(f"{row[n]:>16.1f}" for n in names))
    direct, bridged = rows["asyncio (direct)"], rows["trio (bridged)"]
    print(f"{'bridge adds':<20}" + "".join(f"{bridged[n] - direct[n]:>16.1f}" for n in names))


if __name__ == "__main__":
    main()
