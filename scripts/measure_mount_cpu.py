"""The mount's own CPU per file operation, without FUSE: handlers called as the kernel calls them.

The mount section of ``scripts/bench`` measures through the kernel, on a
machine others share: its figures move by 2x between runs. This drives the
request handlers (``fusefs.operations``) over the embedded default (SQLite
file + filesystem blobs in a temporary data dir) with the requests the
kernel sends for each operation (counted on a ``--debug`` mount):

- create 4 KiB: getattr(dir), lookup (absent), create, getxattr
  security.capability, write, flush, release
- create empty: the same without the write
- stat, cold: lookup
- listdir, cold: opendir, readdir until empty, releasedir
- unlink: getattr(dir), lookup, unlink

and reports µs per operation (min and median of ``--rounds`` batches): the
event loop's thread (where every handler runs), and all threads (worker
threads too, and whatever background work, such as the 5-second sync of
published blobs, happened to fall in the batch). Run
it once per tree with ``PYTHONPATH=<tree>`` to compare two trees; pass
``--label`` to tell the lines apart.
"""

from __future__ import annotations

import argparse
import errno
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import pyfuse3
import trio

sys.path.insert(0, str(Path(os.environ.get("PYTHONPATH", ".").split(":")[0]) / "tests" / "ops"))

from opskit import ROOT, SIGNER, Kernel, ctx, kernel  # noqa: E402

from core.backends.blobs.filesystem import FilesystemBlobStore  # noqa: E402
from core.backends.meta.sqlite import SQLiteMetaStore  # noqa: E402

CAPABILITY = b"security.capability"


async def _no_attr(request: object) -> None:
    try:
        await request  # type: ignore[misc]
    except pyfuse3.FUSEError as exc:
        if exc.errno not in (errno.ENOENT, errno.ENODATA, errno.EOPNOTSUPP):
            raise


async def create(k: Kernel, parent: int, names: list[bytes], data: bytes | None) -> None:
    c = ctx(ROOT)
    for name in names:
        await k.ops.getattr(parent, c)
        await _no_attr(k.ops.lookup(parent, name, c))
        info, attr = await k.ops.create(parent, name, 0o644, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, c)
        await _no_attr(k.ops.getxattr(attr.st_ino, CAPABILITY, c))
        if data is not None:
            await k.ops.write(info.fh, 0, data)
        await k.ops.flush(info.fh)
        await k.ops.release(info.fh)


async def stat(k: Kernel, parent: int, names: list[bytes]) -> None:
    c = ctx(ROOT)
    for name in names:
        await k.ops.lookup(parent, name, c)


async def listdir(k: Kernel, parent: int, n: int) -> None:
    fh = await k.ops.opendir(parent, ctx(ROOT))
    seen, offset = 0, 0
    while batch := await k.readdir(fh, offset):
        seen += len(batch)
        offset = batch[-1][2]
    await k.ops.releasedir(fh)
    assert seen == n + 2, seen


async def unlink(k: Kernel, parent: int, names: list[bytes]) -> None:
    c = ctx(ROOT)
    for name in names:
        await k.ops.getattr(parent, c)
        await k.ops.lookup(parent, name, c)
        await k.ops.unlink(parent, name, c)


async def main(args: argparse.Namespace) -> None:
    samples: dict[str, list[float]] = {}
    with tempfile.TemporaryDirectory(dir=args.work_dir) as tmp:
        data_dir = Path(tmp)
        blobs = FilesystemBlobStore(data_dir)
        meta = SQLiteMetaStore(data_dir / "meta.sqlite3", SIGNER, in_data_dir=True)
        async with kernel(data_dir, blobs=blobs, meta=meta) as k:
            payload = os.urandom(4096)
            for r in range(args.rounds):
                parent = await k.directory(f"users/bench/r{r}")
                names = [f"f{i:05d}".encode() for i in range(args.files)]
                empties = [f"e{i:05d}".encode() for i in range(args.files)]

                async def timed(what: str, work: object, per: int) -> None:
                    started, loop_started = time.process_time(), time.thread_time()
                    await work  # type: ignore[misc]
                    samples.setdefault(what, []).append((time.thread_time() - loop_started) / per * 1e6)
                    samples.setdefault(f"{what}, all threads", []).append((time.process_time() - started) / per * 1e6)

                await timed("create 4 KiB", create(k, parent, names, payload), args.files)
                await timed("create empty", create(k, parent, empties, None), args.files)
                await timed("stat (lookup)", stat(k, parent, names), args.files)
                await timed(f"listdir of {2 * args.files} (per entry)", listdir(k, parent, 2 * args.files),
                            2 * args.files)
                await timed("unlink", unlink(k, parent, names + empties), 2 * args.files)
                await k.ops.sync_blobs() if hasattr(k.ops, "sync_blobs") else await k.ns.sync_blobs()
    for what, values in samples.items():
        print(f"{args.label:>8} {what:<28} CPU µs/op min {min(values):7.1f} median {statistics.median(values):7.1f} "
              f"max {max(values):7.1f}  samples {' '.join(f'{v:.0f}' for v in values)}", flush=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--files", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--label", default="")
    parser.add_argument("--work-dir", type=Path, default=None)
    trio.run(main, parser.parse_args())
