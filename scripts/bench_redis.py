"""Redis metadata (issue #17): memory per file, and metadata operations per second on one Redis
against a Redis Cluster of three masters.

The servers are started here, on free ports (``redis-server`` and ``redis-cli --cluster create``,
as the tests do). Memory: ``used_memory`` (summed over the masters on the cluster) before and after
``--files`` small artifacts stored through the library into 10 users x 100 directories, blobs in
memory, so only the metadata is counted. Speed: ``--clients`` processes, each storing, reading
(``metadata``) and updating artifacts of a user of its own for ``--seconds``, counted together;
the two deployments alternate round by round and each round's ratio is reported.

    .venv/bin/python scripts/bench_redis.py --files 10000 --rounds 3
    scripts/bench --only redis
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE.parent / "tests"))  # the servers the tests start, started the same way here

from bench_common import Context, Section, Table, median  # noqa: E402

KEY = b"bench-redis-key-0123456789abcdef"
SANDBOX = "bench"
# Bytes per file before shards, measured the same way on this machine at 987820a (the issue, on an
# older tree: 6,195): the fixed reference of the memory table.
BEFORE_SHARDS = 2862
GOAL = 400


def _store(url: str, prefix: str, cluster: bool):  # noqa: ANN202
    from core import ArtifactStore
    from core.backends.blobs.memory import MemoryBlobStore
    from core.backends.meta.redis.store import RedisMetaStore
    from core.infra.signing import RecordSigner

    meta = RedisMetaStore(url, RecordSigner(KEY), prefix=prefix, cluster=cluster, replicas=0)
    return ArtifactStore(storage_provider="memory", session_provider="memory", sandbox_id=SANDBOX,
                         meta_store=meta, blob_store=MemoryBlobStore(), signing_key=KEY.decode())


def _used_memory(ports: list[int]) -> int:
    import redis

    total = 0
    for port in ports:
        with redis.Redis(port=port) as client:
            total += int(client.info("memory")["used_memory"])
    return total


async def _fill(url: str, prefix: str, cluster: bool, files: int) -> None:
    async with _store(url, prefix, cluster) as store:
        per_user = files // 10
        for user in range(10):
            items = [{"data": b"x" * 100, "filename": f"d{i % 100:03d}/f{i:06d}.txt", "meta": {"n": i}}
                     for i in range(per_user)]
            for at in range(0, per_user, 500):
                await store.store_batch(items[at : at + 500], scope="user", user_id=f"user{user}")


def memory_per_file(url: str, ports: list[int], cluster: bool, files: int) -> float:
    prefix = f"mem{time.monotonic_ns()}"
    asyncio.run(_fill(url, prefix, cluster, 10))  # the fixed upper tree and the users' roots first
    before = _used_memory(ports)
    asyncio.run(_fill(url, prefix + "b", cluster, files))
    # The second store has its own roots too: 10 of them among ``files`` files, a rounding error.
    return (_used_memory(ports) - before) / files


def _client(url: str, prefix: str, cluster: bool, me: int, seconds: float, out: multiprocessing.Queue) -> None:
    async def run() -> int:
        async with _store(url, prefix, cluster) as store:
            ops, ids = 0, []
            deadline = time.monotonic() + seconds
            while time.monotonic() < deadline:
                ids.append(await store.store(b"x" * 100, filename=f"f{ops}.txt", scope="user", user_id=f"c{me}"))
                await store.metadata(ids[-1], user_id=f"c{me}")
                await store.update_metadata(ids[-1], summary=f"s{ops}", user_id=f"c{me}")
                ops += 3
            return ops

    out.put(asyncio.run(run()))


def ops_per_second(url: str, cluster: bool, clients: int, seconds: float) -> float:
    prefix = f"ops{time.monotonic_ns()}"
    out: multiprocessing.Queue = multiprocessing.Queue()
    procs = [multiprocessing.Process(target=_client, args=(url, prefix, cluster, i, seconds, out)) for i in range(clients)]
    started = time.monotonic()
    for proc in procs:
        proc.start()
    total = sum(out.get(timeout=seconds + 120) for _ in procs)
    for proc in procs:
        proc.join()
    return total / (time.monotonic() - started)


@contextmanager
def servers(work: Path) -> Iterator[tuple[object, object]]:
    from redis_cluster import RedisCluster
    from servers import RedisServer

    single = RedisServer(work / "single")
    single.start()
    cluster = RedisCluster(work / "cluster")
    try:
        cluster.start()
        yield single, cluster
    finally:
        cluster.stop()
        single.stop()


def run(ctx: Context, files: int = 10_000, clients: int = 4) -> Iterator[Table]:
    with tempfile.TemporaryDirectory(dir=ctx.work_dir) as tmp, servers(Path(tmp)) as (single, cluster):
        masters = [port for _, port in cluster.masters()]  # type: ignore[attr-defined]
        memory = Table(title=f"Redis memory per small file ({files:,} stored through the library, 10 users x 100 dirs)",
                       key_columns=["deployment"], ref_columns=["before #17", "goal"])
        one = [memory_per_file(single.url, [single.port], False, files) for _ in range(1)]  # type: ignore[attr-defined]
        three = [memory_per_file(cluster.url, masters, True, files) for _ in range(1)]  # type: ignore[attr-defined]
        memory.add(["one redis-server"], one, "B", higher_is_better=False, **{"before #17": BEFORE_SHARDS, "goal": GOAL})
        memory.add(["cluster, 3 masters"], three, "B", higher_is_better=False,
                   **{"before #17": BEFORE_SHARDS, "goal": GOAL})
        yield memory
        speed = Table(title=f"metadata operations/s, {clients} client processes (store, metadata, update_metadata)",
                      key_columns=["deployment"], ref_columns=["one redis-server"])
        singles, clusters = [], []
        for _ in range(ctx.repeat):  # interleaved: a slow moment of the machine falls on both
            singles.append(ops_per_second(single.url, False, clients, max(ctx.seconds, 3.0)))  # type: ignore[attr-defined]
            clusters.append(ops_per_second(cluster.url, True, clients, max(ctx.seconds, 3.0)))  # type: ignore[attr-defined]
        speed.add(["cluster, 3 masters"], clusters, "ops/s", **{"one redis-server": singles})
        speed.notes.append(f"one redis-server alone: {median(singles):,.0f} ops/s; on this 2-core machine the "
                           "clients and every server share two cores, so a cluster cannot show more throughput here")
        yield speed


SECTION = Section("redis", "Redis: memory per file, ops/s on one server vs a 3-master cluster (issue #17)", run)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=10_000)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=5.0)
    args = parser.parse_args()
    ctx = Context(repeat=args.rounds, seconds=args.seconds)
    for table in run(ctx, files=args.files, clients=args.clients):
        print(table.render(), flush=True)


if __name__ == "__main__":
    main()
