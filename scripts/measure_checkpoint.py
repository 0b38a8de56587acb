"""Figures for issue #10's checkpoints: what one costs, in time and in bytes written to the blob store.

    .venv/bin/python scripts/measure_checkpoint.py [--files 10000] [--total-mib 1024] [--rounds 3]

On the embedded default (blobs on disk, metadata in SQLite) in a scratch directory: a workspace of
``--files`` files holding ``--total-mib`` MiB in all, then per round a checkpoint, a change of one
file, a restore, and the checkpoint's deletion. Printed per round: seconds for each step, metadata
records written (nodes in the store after less before), and bytes the blob store holds after less
before (what a checkpoint copied: 0 is the promise). The reference implementation (chuk-artifacts'
snapshot manager) copies every file, so its cost is the bytes themselves; not run here.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import trio

sys.path[:0] = [str(Path.cwd())]

from core import ArtifactStore, NamespaceType, Scope


def disk_bytes(root: Path) -> int:
    return sum(path.stat().st_size for path in (root / "blobs").rglob("*") if path.is_file())


def nodes(store: ArtifactStore) -> int:
    return store.ns.meta.db.execute("SELECT COUNT(*) FROM node").fetchone()[0]  # type: ignore[attr-defined]


async def main(files: int, total_mib: int, rounds: int) -> None:
    with tempfile.TemporaryDirectory(prefix="measure-checkpoint-") as scratch:
        root = Path(scratch)
        async with ArtifactStore(storage_provider="filesystem", session_provider="sqlite", fs_root=root) as store:
            info = await store.create_namespace(NamespaceType.WORKSPACE, scope=Scope.USER, user_id="alice")
            size = total_mib * (1 << 20) // files
            start = time.perf_counter()
            block = bytes(range(256)) * (size // 256 + 1)
            for i in range(files):
                await store.write_namespace(info.namespace_id, block[i % 256: i % 256 + size],
                                            path=f"/d{i // 1000:03d}/f{i:05d}.bin")
            print(f"workspace: {files} files of {size} B ({files * size / (1 << 20):.0f} MiB) "
                  f"written in {time.perf_counter() - start:.1f} s")
            figures: dict[str, list[float]] = {}
            for round_ in range(1, rounds + 1):
                before_bytes, before_nodes = disk_bytes(root), nodes(store)
                start = time.perf_counter()
                await store.checkpoint_namespace(info.namespace_id, name=f"r{round_}")
                made = time.perf_counter() - start
                copied, written = disk_bytes(root) - before_bytes, nodes(store) - before_nodes
                await store.write_namespace(info.namespace_id, b"changed", path="/d000/f00000.bin")
                start = time.perf_counter()
                await store.restore_namespace(info.namespace_id, f"r{round_}")
                restored = time.perf_counter() - start
                start = time.perf_counter()
                await store.delete_checkpoint(info.namespace_id, f"r{round_}")
                deleted = time.perf_counter() - start
                print(f"round {round_}: checkpoint {made:.2f} s ({written} records, {copied} blob bytes), "
                      f"restore {restored:.2f} s, delete {deleted:.2f} s")
                for name, value in (("checkpoint s", made), ("restore s", restored), ("delete s", deleted),
                                    ("blob bytes copied", copied), ("records written", written)):
                    figures.setdefault(name, []).append(value)
            for name, values in figures.items():
                print(f"median {name}: {statistics.median(values):g}   samples {values}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--files", type=int, default=10_000)
    parser.add_argument("--total-mib", type=int, default=1024)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    trio.run(main, args.files, args.total_mib, args.rounds)
