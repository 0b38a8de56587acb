"""Figures for issue #16's fair sharing, kernel-free (the handlers of fusefs.operations on SQLite).

    .venv/bin/python scripts/measure_fair.py [--entries 100000] [--flooders 32]

1. memory: what one open directory holds after its first readdir of an N-entry directory
   (tracemalloc, the peak above the baseline while the handle is open);
2. freeze: the longest the trio loop went without running another task while that readdir ran
   (a ticker task that wakes every millisecond);
3. stall: the latency of uid B's getattr while uid A runs ``--flooders`` tasks creating,
   writing and closing files as fast as they can (median and max).

Run it from another checkout (PYTHONPATH=that checkout) to get the figures before a change:
it only uses what both have.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

import trio

REPO = Path.cwd()
sys.path[:0] = [str(REPO / "tests" / "ops"), str(REPO / "tests")]

from opskit import ROOT, SIGNER, Caller, ctx, kernel  # noqa: E402

from core.backends.meta.sqlite import SQLiteMetaStore  # noqa: E402
from core.nodes import Artifact, NodeKind, new_node  # noqa: E402
from core.tree.base import EMPTY_SHA256  # noqa: E402

MiB = 1 << 20
ALICE, BOB = Caller(uid=1001, gid=1001), Caller(uid=1002, gid=1002)


async def fill(meta: SQLiteMetaStore, parent, count: int) -> None:
    for i in range(count):
        node = new_node(parent=parent.ino, name=f"f{i:06d}", kind=NodeKind.FILE, mode=0o644, now_ns=1,
                        space=parent.space)
        node.artifact = Artifact(artifact_id=f"a{i}", sha256=EMPTY_SHA256, blob_key=f"none-{i}")
        await meta.insert(node)


async def listing(root: Path, entries: int) -> None:
    meta = SQLiteMetaStore(root / "meta.sqlite3", SIGNER)
    async with kernel(root, meta=meta) as k:
        await k.mkdir("users/alice")
        await k.mkdir("users/alice/big")
        big = await k.ns.get(await k.ino("users/alice/big"))
        await fill(meta, big, entries)
        longest = 0.0
        done = False

        async def ticker() -> None:
            nonlocal longest
            last = time.perf_counter()
            while not done:
                await trio.sleep(0.001)
                now = time.perf_counter()
                longest = max(longest, now - last)
                last = now

        async with trio.open_nursery() as nursery:
            nursery.start_soon(ticker)
            await trio.sleep(0.05)
            fh = await k.ops.opendir(big.ino, ctx(ROOT))
            got = await k.readdir(fh, 0, room=200)  # what one getdents asks of a fresh listing
            await k.ops.releasedir(fh)
            await trio.sleep(0.05)
            done = True
        tracemalloc.start()  # apart from the freeze: tracing slows everything down
        base = tracemalloc.get_traced_memory()[0]
        fh = await k.ops.opendir(big.ino, ctx(ROOT))
        await k.readdir(fh, 0, room=200)
        held = tracemalloc.get_traced_memory()[0] - base
        tracemalloc.stop()
        await k.ops.releasedir(fh)
        print(f"entries={entries} first readdir answered {len(got)}; "
              f"memory held by the open directory: {held / MiB:.1f} MiB; "
              f"longest loop freeze meanwhile: {longest * 1000:.0f} ms")


async def stall(root: Path, flooders: int, seconds: float, per_uid: int | None) -> None:
    async with kernel(root) as k:
        if hasattr(k.ops, "fair"):  # a checkout with fair sharing: its bound, as the mount would set it
            k.ops.fair.per_uid = per_uid
        await k.mkdir("users/alice")
        await k.write_file("users/alice/probe", b"x")
        probe = await k.ino("users/alice/probe")
        home = await k.ino("users/alice")
        made = 0
        stop = trio.current_time() + seconds

        async def flood(worker: int) -> None:
            nonlocal made
            i = 0
            while trio.current_time() < stop:
                info, _ = await k.ops.create(home, f"w{worker}-{i}".encode(), 0o100644, 0o1 | 0o100, ctx(ALICE))
                await k.ops.write(info.fh, 0, b"y" * 4096)
                await k.ops.flush(info.fh)
                await k.ops.release(info.fh)
                i += 1
                made += 1

        lat: list[float] = []
        async with trio.open_nursery() as nursery:
            for w in range(flooders):
                nursery.start_soon(flood, w)
            while trio.current_time() < stop:
                t0 = time.perf_counter()
                await trio.lowlevel.checkpoint()  # a request from the kernel arrives through a wake-up of the loop
                await k.ops.getattr(probe, ctx(BOB))
                lat.append(time.perf_counter() - t0)
                await trio.sleep(0.005)
        print(f"per-uid bound {per_uid if hasattr(k.ops, 'fair') else 'none (before)'}; uid A: {flooders} tasks made {made} files in {seconds:.0f} s; uid B getattr: "
              f"median {statistics.median(lat) * 1000:.1f} ms, max {max(lat) * 1000:.1f} ms over {len(lat)}")


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--entries", type=int, default=100_000)
    parser.add_argument("--flooders", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--per-uid", type=int, default=8, help="ARTIFACT_MOUNT_UID_REQUESTS (0: no bound)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "a").mkdir()
        (Path(tmp) / "b").mkdir()
        await listing(Path(tmp) / "a", args.entries)
        await stall(Path(tmp) / "b", args.flooders, args.seconds, args.per_uid or None)


if __name__ == "__main__":
    trio.run(main)
