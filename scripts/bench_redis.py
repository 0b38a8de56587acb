"""Redis metadata (issue #17): memory per file, and metadata operations per second on one Redis
against a Redis Cluster of three masters.

The servers are started here, on free ports (``redis-server`` and ``redis-cli --cluster create``,
as the tests do). Memory: ``used_memory`` (summed over the masters on the cluster) before and after
``--files`` small artifacts stored through the library into 10 users x 100 directories, blobs in
memory, so only the metadata is counted. Speed: ``--clients`` processes, each storing, reading
(``metadata``) and updating artifacts of a user of its own for ``--seconds``, counted together;
the two deployments alternate round by round and each round's ratio is reported. Through the mount:
``artifactfs mount`` on the single server (blobs on disk), 2,000 files of 100 B written by a loop
into 10 directories, then into one.

    .venv/bin/python scripts/bench_redis.py --files 10000 --rounds 3
    scripts/bench --only redis
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
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
# older tree: 6,195): the fixed reference of the memory table; through the mount, the figure.
BEFORE_SHARDS = 2862
BEFORE_MOUNT = 2070
MOUNT_FILES = 2000
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


def mount_memory_per_file(url: str, port: int, work: Path, dirs: int, files: int = MOUNT_FILES) -> float:
    """``used_memory`` per file of ``files`` small files written through a mount into ``dirs`` directories
    (metadata on the server at ``url``, blobs on disk)."""
    from bench_mount import ArtifactfsTarget

    env = {**os.environ, "SESSION_PROVIDER": "redis", "SESSION_REDIS_URL": url, "ARTIFACT_SIGNING_KEY": KEY.decode(),
           "ARTIFACT_REDIS_PREFIX": f"mnt{time.monotonic_ns()}"}
    target = ArtifactfsTarget(work / "mnt", work / "data", work / "mount.log", env)
    target.start()
    try:
        for d in range(dirs):  # the upper tree, the user's root and each directory first
            (target.root / f"d{d:03d}").mkdir()
            (target.root / f"d{d:03d}" / "first").write_bytes(b"y" * 100)
        before = _used_memory([port])
        for i in range(files):
            (target.root / f"d{i % dirs:03d}" / f"f{i:06d}.dat").write_bytes(b"y" * 100)
        return (_used_memory([port]) - before) / files
    finally:
        target.stop()


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


def _followers(url: str, prefix: str, watched: list[int], ready: object, stop: object, out: object) -> None:
    """One process of simulated mounts: a change feed each, following the upper tree and one shard."""
    async def run() -> None:
        from core.backends.meta.redis.events import RedisChangeFeed
        from core.backends.meta.redis.store import RedisMetaStore
        from core.infra.signing import RecordSigner

        stores = [RedisMetaStore(url, RecordSigner(KEY), prefix=prefix) for _ in watched]
        feeds = [RedisChangeFeed(store) for store in stores]
        for store, feed, shard in zip(stores, feeds, watched):
            await store.open()
            await feed.open()
            await feed.watch({shard})
        delays: list[float] = []

        async def read(feed: RedisChangeFeed) -> None:
            while True:
                for change in await feed.next_batch():
                    now = time.time_ns()
                    delays.extend((now - int(name[1:])) / 1e6 for _, name in change.entries if name[:1] == b"t")

        readers = [asyncio.create_task(read(feed)) for feed in feeds]
        while any(feed.following(shard) is None for feed, shard in zip(feeds, watched)):
            await asyncio.sleep(0.01)
        ready.set()  # type: ignore[attr-defined]
        started = time.process_time()
        while not stop.is_set():  # type: ignore[attr-defined]
            await asyncio.sleep(0.05)
        cpu = time.process_time() - started
        for task in readers:
            task.cancel()
        out.put((cpu, len(watched), delays))  # type: ignore[attr-defined]
        for store, feed in zip(stores, feeds):
            await feed.close()
            await store.close()

    asyncio.run(run())


async def _busy_writer(url: str, prefix: str, space: object, seconds: float) -> int:
    """Files named by their commit time (ns) into one scope, as fast as one writer goes."""
    from core.backends.meta.redis.store import RedisMetaStore
    from core.infra.signing import RecordSigner
    from core.nodes import ROOT_INO, Artifact, NodeKind, NodeRole, new_node

    meta = RedisMetaStore(url, RecordSigner(KEY), prefix=prefix, notify=True)
    await meta.open()
    try:
        root, _ = await meta.insert(new_node(parent=ROOT_INO, name="writer", kind=NodeKind.DIR, mode=0o755, now_ns=1,
                                             role=NodeRole.SCOPE_ROOT, space=space))  # type: ignore[arg-type]
        made, deadline = 0, time.monotonic() + seconds
        while time.monotonic() < deadline:
            node = new_node(parent=root.ino, name=f"t{time.time_ns()}", kind=NodeKind.FILE, mode=0o644, now_ns=1,
                            space=space)  # type: ignore[arg-type]
            artifact_id = await meta.new_artifact_id(space)  # type: ignore[arg-type]
            node.artifact = Artifact(artifact_id=artifact_id, sha256="0" * 64)
            await meta.insert(node)
            made += 1
        return made
    finally:
        await meta.close()


def notices(url: str, followers: int, involved: int, seconds: float, processes: int = 4) -> dict[str, float]:
    """``followers`` simulated mounts, ``involved`` of them following the busy writer's scope; CPU per
    follower of each kind while it writes, and how late the involved ones heard of each change."""
    from core import shards
    from core.models import Scope
    from core.nodes import Space

    prefix = f"ntc{time.monotonic_ns()}"
    hot = Space(sandbox_id=SANDBOX, scope=Scope.USER, user_id="writer")
    others = [shards.of_space(Space(sandbox_id=SANDBOX, scope=Scope.USER, user_id=f"idle{i}")) for i in range(4 * followers)]
    cold = [shard for shard in others if shard != shards.of_space(hot)][: followers - involved]
    groups = [[shards.of_space(hot)] * involved] + [cold[i::processes - 1] for i in range(processes - 1)]
    ctx = multiprocessing.get_context("spawn")
    ready, stop, out = [ctx.Event() for _ in groups], ctx.Event(), ctx.Queue()
    procs = [ctx.Process(target=_followers, args=(url, prefix, group, ready[i], stop, out)) for i, group in enumerate(groups)]
    for proc in procs:
        proc.start()
    for event in ready:
        event.wait(120)
    made = asyncio.run(_busy_writer(url, prefix, hot, seconds))
    time.sleep(0.5)  # the last notices in flight
    stop.set()
    results = [out.get(timeout=60) for _ in procs]
    for proc in procs:
        proc.join(30)
    hot_cpu = [cpu / n for cpu, n, delays in results if delays]
    cold_cpu = [cpu / n for cpu, n, delays in results if not delays]
    delays = sorted(d for _, _, ds in results for d in ds)
    return {
        "changes/s": made / seconds,
        "involved CPU ms/s": 1000 * median(hot_cpu) / seconds,
        "uninvolved CPU ms/s": 1000 * median(cold_cpu) / seconds if cold_cpu else 0.0,
        "p50 ms": delays[len(delays) // 2] if delays else 0.0,
        "p99 ms": delays[int(len(delays) * 0.99)] if delays else 0.0,
    }


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
        url, port = single.url, single.port  # type: ignore[attr-defined]
        for dirs in (10, 1):  # a mount a sample: the keyspace's table may double during one, ~20 B a file
            mounted = [mount_memory_per_file(url, port, Path(tmp) / f"mount{dirs}-{r}", dirs)
                       for r in range(ctx.repeat)]
            memory.add([f"through the mount, {MOUNT_FILES:,} files in {dirs} dir{'s' if dirs > 1 else ''}"], mounted,
                       "B", higher_is_better=False, **{"before #17": BEFORE_MOUNT, "goal": GOAL})
        memory.notes.append(f"through the mount: one redis-server, blobs on disk, {MOUNT_FILES:,} files of 100 B "
                            "written by a Python loop; its 'before #17' is the issue's figure for such files")
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
        follow = Table(title="change notices: 200 simulated mounts, one busy writer in one scope (one redis-server)",
                       key_columns=["figure"], ref_columns=["goal"])
        rounds = [notices(single.url, 200, 10, max(ctx.seconds, 3.0)) for _ in range(ctx.repeat)]  # type: ignore[attr-defined]
        follow.add(["changes/s written"], [r["changes/s"] for r in rounds], "/s")
        follow.add(["CPU per involved mount"], [r["involved CPU ms/s"] for r in rounds], "ms/s", higher_is_better=False)
        follow.add(["CPU per uninvolved mount"], [r["uninvolved CPU ms/s"] for r in rounds], "ms/s",
                   higher_is_better=False)
        follow.add(["visibility p50"], [r["p50 ms"] for r in rounds], "ms", higher_is_better=False)
        follow.add(["visibility p99"], [r["p99 ms"] for r in rounds], "ms", higher_is_better=False, goal=50)
        follow.notes.append("10 mounts follow the writer's scope, 190 others one scope each (and the upper tree); CPU "
                            "of a process of mounts over the write, per mount; visibility: commit to notice read")
        yield follow


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
