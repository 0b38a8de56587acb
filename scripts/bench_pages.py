"""Pages among many artifacts (issue #12 "Scale"): limit=10 listings and searches, this tree against another.

Fills one SQLite metadata store with ``--count`` artifacts in one session
(blobs in memory: only the metadata is measured), copies it for the other
tree, then runs interleaved rounds: in each, one process per tree opens its
copy and times every call ``--calls`` times. Prints every sample (ms, the
median of a process's calls) and the paired ratio per round, so noise on a
shared machine shows instead of hiding in one figure.

    python scripts/bench_pages.py --count 100000 --other /work/main --rounds 3
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
KEY = b"bench-pages-key-0123456789abcdef"
SESSION_USER = "bench-user"
CALLS = {
    "list_by_session(limit=10)": lambda s, sid: s.list_by_session(sid, limit=10),
    "list_files(prefix, limit=10)": lambda s, sid: s.list_files(sid, prefix="f05", limit=10),
    "search(session, limit=10)": lambda s, sid: s.search(session_id=sid, limit=10),
    "search(user, limit=10)": lambda s, sid: s.search(user_id=SESSION_USER, limit=10),
    "search(mime, no hit, limit=10)": lambda s, sid: s.search(mime_prefix="video/", limit=10),
    "search(mime image/, limit=10)": lambda s, sid: s.search(mime_prefix="image/", limit=10),
    "search(meta k=3, limit=10)": lambda s, sid: s.search(session_id=sid, meta_filter={"k": 3}, limit=10),
}


def _store(db: Path):  # noqa: ANN202 (imported from whichever tree runs this)
    from core import ArtifactStore
    from core.backends.blobs.memory import MemoryBlobStore
    from core.backends.meta.sqlite import SQLiteMetaStore
    from core.infra.signing import RecordSigner

    meta = SQLiteMetaStore(db, RecordSigner(KEY))
    return ArtifactStore(storage_provider="memory", session_provider="memory", sandbox_id="bench",
                         meta_store=meta, blob_store=MemoryBlobStore())


async def _fill(db: Path, count: int) -> None:
    async with _store(db) as store:
        session = await store.create_session(user_id=SESSION_USER, ttl_hours=24)
        mimes = ["text/plain", "text/csv", "image/png", "application/json"]
        for at in range(0, count, 500):
            items = [{"data": b"x", "filename": f"f{i:07d}.txt", "mime": mimes[i % 4], "meta": {"k": i % 10}}
                     for i in range(at, min(at + 500, count))]
            await store.store_batch(items, session_id=session, user_id=SESSION_USER, ttl=86_400)
        Path(f"{db}.session").write_text(session)


async def _bulk_fill(db: Path, count: int) -> None:
    """``count`` artifacts written straight into the metadata store, cloned from one stored the usual way.

    For a million: ``store()`` runs at ~1,500/s here. Each clone is a real signed record with its own
    ino, name, id and time (the usage counters are not kept: nothing here reads them).
    """
    from core.backends.meta.sqlite import SQLiteMetaStore

    async with _store(db) as store:
        session = await store.create_session(user_id=SESSION_USER, ttl_hours=24)
        first = await store.store(b"x", filename="f0000000.txt", mime="text/plain", meta={"k": 0},
                                  session_id=session, user_id=SESSION_USER, ttl=86_400)
        template = await store.ns.artifact_node(first)
        meta = store.ns.meta
        assert isinstance(meta, SQLiteMetaStore)
        base = int(meta.db.execute("SELECT max(ino) FROM node").fetchone()[0]) + 1000
        mimes = ["text/plain", "text/csv", "image/png", "application/json"]
        for at in range(1, count, 10_000):
            meta.db.execute("BEGIN IMMEDIATE")
            for i in range(at, min(at + 10_000, count)):
                art = template.artifact.model_copy(update={"artifact_id": f"bulk{i:08d}", "mime": mimes[i % 4],
                                                           "meta": {"k": i % 10}})
                node = template.model_copy(update={"ino": base + i, "name": f"f{i:07d}.txt", "artifact": art,
                                                   "crtime_ns": template.crtime_ns + i})
                meta._write(meta.db, node, insert=True)
            meta.db.execute("COMMIT")
        meta.db.execute("UPDATE counter SET value=? WHERE name='ino'", (base + count + 1,))
        Path(f"{db}.session").write_text(session)


async def _measure(db: Path, calls: int) -> dict[str, float]:
    session = Path(f"{db}.session").read_text()
    out: dict[str, float] = {}
    async with _store(db) as store:
        await store.list_by_session(session, limit=1)  # warm the page cache alike for both trees
        for name, call in CALLS.items():
            times = []
            for _ in range(calls):
                start = time.perf_counter()
                await call(store, session)
                times.append((time.perf_counter() - start) * 1000)
            out[name] = statistics.median(times)
    return out


def _run(tree: Path, db: Path, calls: int) -> dict[str, float]:
    env = {**os.environ, "PYTHONPATH": str(tree)}
    done = subprocess.run([sys.executable, __file__, "--measure", str(db), "--calls", str(calls)],
                          env=env, cwd=tree, capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--calls", type=int, default=3)
    parser.add_argument("--other", type=Path, help="another tree (e.g. main's worktree) to pair against")
    parser.add_argument("--bulk", action="store_true", help="fill by writing records straight into SQLite")
    parser.add_argument("--measure", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure:
        print(json.dumps(asyncio.run(_measure(args.measure, args.calls))))
        return
    this = HERE.parent
    with tempfile.TemporaryDirectory(prefix="bench-pages-") as tmp:
        ours = Path(tmp) / "ours.db"
        start = time.perf_counter()
        subprocess.run([sys.executable, "-c", f"import sys, asyncio; sys.path.insert(0, {str(HERE)!r}); "
                        f"import bench_pages; asyncio.run(bench_pages.{'_bulk_fill' if args.bulk else '_fill'}"
                        f"(__import__('pathlib').Path({str(ours)!r}), "
                        f"{args.count}))"], env={**os.environ, "PYTHONPATH": str(this)}, cwd=this, check=True)
        print(f"filled {args.count:,} artifacts in {time.perf_counter() - start:.0f} s")
        targets = {"this": (this, ours)}
        if args.other:
            theirs = Path(tmp) / "other.db"
            shutil.copy(ours, theirs)
            shutil.copy(f"{ours}.session", f"{theirs}.session")
            targets["other"] = (args.other, theirs)
        samples: dict[str, dict[str, list[float]]] = {t: {c: [] for c in CALLS} for t in targets}
        for round_no in range(args.rounds):
            for target, (tree, db) in targets.items():
                for call, ms in _run(tree, db, args.calls).items():
                    samples[target][call].append(ms)
            print(f"round {round_no + 1} done", flush=True)
        for call in CALLS:
            line = f"{call:32s} this ms {['%.2f' % v for v in samples['this'][call]]}"
            if "other" in samples:
                ratios = [o / t for o, t in zip(samples["other"][call], samples["this"][call])]
                line += f"  other ms {['%.1f' % v for v in samples['other'][call]]}"
                line += f"  other/this {['%.0f' % r for r in ratios]} (median {statistics.median(ratios):.0f}x)"
            print(line)


if __name__ == "__main__":
    main()
