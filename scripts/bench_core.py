"""Section "core": the library API on the embedded backends, against the published figures and the disk.

Per backend (memory; filesystem blobs + SQLite metadata in a data dir on a
real disk) it times store / retrieve / metadata / update_file of 1 KiB items
at concurrency 1 and 64, and stream_upload / stream_download of a 256 MiB
artifact. Beside each figure: the published reference figure, and a native
figure measured in the same run on the same disk with plain Python (what the
same job costs without the store: the floor set by the disk and fsync).
"""

from __future__ import annotations

import itertools
import os
import shutil
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import anyio
from bench_common import MB, Context, KiB, MiB, Section, Table, filesystem_of, median, repeat

from core import ArtifactStore, StreamDownloadRequest, StreamUploadRequest

ITEM = KiB
STREAM = 256 * MiB
BLOCK = MiB
CONCURRENCY = (1, 64)
WARM_ITEMS = 64  # stored before timing; at least the highest concurrency, so workers never share an item

# The published figures (S3 + Redis at concurrency 128; streams on the memory provider).
PUBLISHED = {"store": 3083.0, "retrieve": 4693.0, "metadata": None, "update_file": 2156.0,
             "stream_upload": 380.0, "stream_download": 2124.0}

Samples = dict[tuple[str, int], list[float]]


# -- the native reference: the same jobs in plain Python on the same disk


def _native_rate(op: Callable[[int, int], None], concurrency: int, seconds: float) -> float:
    """Operations per second of ``op(worker, n)`` run by ``concurrency`` threads."""
    deadline = time.perf_counter() + seconds
    counts = [0] * concurrency

    def worker(w: int) -> None:
        n = 0
        while time.perf_counter() < deadline:
            op(w, n)
            n += 1
        counts[w] = n

    start = time.perf_counter()
    if concurrency == 1:
        worker(0)
    else:
        with ThreadPoolExecutor(concurrency) as pool:
            list(pool.map(worker, range(concurrency)))
    return sum(counts) / (time.perf_counter() - start)


def _write_file(path: str, data: bytes, flags: int) -> None:
    fd = os.open(path, os.O_WRONLY | flags, 0o600)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)


def measure_native(ctx: Context, root: Path) -> Samples:
    """1 KiB files written + fsynced, read, stat'ed, rewritten + fsynced; a 256 MiB file written and read."""
    payload = os.urandom(ITEM)
    made: list[str] = []
    fresh = itertools.count()
    samples: Samples = {}

    def store(w: int, n: int) -> None:
        path = str(root / f"n{next(fresh)}")
        _write_file(path, payload, os.O_CREAT | os.O_EXCL)
        made.append(path)

    def pick(w: int, n: int, concurrency: int) -> str:
        return made[(w + n * concurrency) % len(made)]

    staging, published = root / "staging", root / "published"
    staging.mkdir()
    published.mkdir()

    def publish(w: int, n: int) -> None:
        """What the store's blob publish costs on the disk: write, fsync, rename, fsync the directory."""
        name = f"p{next(fresh)}"
        _write_file(str(staging / name), payload, os.O_CREAT | os.O_EXCL)
        os.rename(staging / name, published / name)
        fd = os.open(published, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    for conc in CONCURRENCY:
        samples["store", conc] = repeat(ctx.repeat, lambda: _native_rate(store, conc, ctx.seconds))
        samples["publish", conc] = repeat(ctx.repeat, lambda: _native_rate(publish, conc, ctx.seconds))
    for conc in CONCURRENCY:
        def retrieve(w: int, n: int, c: int = conc) -> None:
            with open(pick(w, n, c), "rb") as f:
                f.read()

        def metadata(w: int, n: int, c: int = conc) -> None:
            os.stat(pick(w, n, c))

        shares = [made[w::conc] for w in range(conc)]

        def update(w: int, n: int, shares: list[list[str]] = shares) -> None:
            _write_file(shares[w][n % len(shares[w])], payload, os.O_TRUNC)

        samples["retrieve", conc] = repeat(ctx.repeat, lambda: _native_rate(retrieve, conc, ctx.seconds))
        samples["metadata", conc] = repeat(ctx.repeat, lambda: _native_rate(metadata, conc, ctx.seconds))
        samples["update_file", conc] = repeat(ctx.repeat, lambda: _native_rate(update, conc, ctx.seconds))

    block = os.urandom(BLOCK)
    big = root / "big"

    def write_big() -> float:
        start = time.perf_counter()
        fd = os.open(big, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            for _ in range(STREAM // BLOCK):
                os.write(fd, block)
            os.fsync(fd)
        finally:
            os.close(fd)
        return STREAM / MB / (time.perf_counter() - start)

    def read_big() -> float:
        start = time.perf_counter()
        with open(big, "rb", buffering=0) as f:
            while f.read(BLOCK):
                pass
        return STREAM / MB / (time.perf_counter() - start)

    samples["stream_upload", 1] = repeat(ctx.repeat, write_big)
    samples["stream_download", 1] = repeat(ctx.repeat, read_big)
    return samples


# -- the store


async def _rate(op: Callable[[int, int], Awaitable[object]], concurrency: int, seconds: float) -> float:
    """Operations per second of ``await op(worker, n)`` run by ``concurrency`` tasks."""
    deadline = time.perf_counter() + seconds
    total = 0

    async def worker(w: int) -> None:
        nonlocal total
        n = 0
        while time.perf_counter() < deadline:
            await op(w, n)
            n += 1
        total += n

    start = time.perf_counter()
    async with anyio.create_task_group() as tg:
        for w in range(concurrency):
            tg.start_soon(worker, w)
    return total / (time.perf_counter() - start)


async def _blocks(count: int, block: bytes) -> AsyncIterator[bytes]:
    for _ in range(count):
        yield block


async def measure_store(
    store: ArtifactStore, ctx: Context, ops: tuple[str, ...], streams: bool
) -> Samples:
    samples: Samples = {}
    payload, payload2 = os.urandom(ITEM), os.urandom(ITEM)
    session = await store.create_session(user_id="bench")
    names = itertools.count()
    ids: list[str] = []

    async def store_one(w: int, n: int) -> None:
        ids.append(await store.store(payload, mime="application/octet-stream", summary="bench",
                                     filename=f"item-{next(names)}.bin", session_id=session))

    for i in range(WARM_ITEMS):
        await store_one(0, i)

    async def run(op_name: str, conc: int) -> None:
        shares = [ids[w::conc] for w in range(conc)]  # no two workers ever touch the same item

        def mine(w: int, n: int, concurrency: int) -> str:
            share = shares[w]
            return share[n % len(share)]

        if op_name == "store":
            op = store_one
        elif op_name == "retrieve":
            async def op(w: int, n: int) -> None:
                await store.retrieve(mine(w, n, conc))
        elif op_name == "metadata":
            async def op(w: int, n: int) -> None:
                await store.metadata(mine(w, n, conc))
        else:
            async def op(w: int, n: int) -> None:
                await store.update_file(mine(w, n, conc), data=payload2)
        samples[op_name, conc] = [await _rate(op, conc, ctx.seconds) for _ in range(ctx.repeat)]

    for op_name in ops:
        for conc in CONCURRENCY:
            await run(op_name, conc)

    if streams:
        block = os.urandom(BLOCK)
        up, down, raw = [], [], []
        for i in range(ctx.repeat):
            start = time.perf_counter()
            artifact_id = await store.stream_upload(StreamUploadRequest(
                data_stream=_blocks(STREAM // BLOCK, block), filename=f"big-{i}.bin", session_id=session,
                content_length=STREAM))
            up.append(STREAM / MB / (time.perf_counter() - start))
            for verify, into in ((True, down), (False, raw)):
                start, got = time.perf_counter(), 0
                request = StreamDownloadRequest(artifact_id=artifact_id, chunk_size=BLOCK, verify=verify)
                async for chunk in store.stream_download(request):
                    got += len(chunk)
                into.append(got / MB / (time.perf_counter() - start))
                assert got == STREAM
            await store.delete(artifact_id)
        samples["stream_upload", 1], samples["stream_download", 1] = up, down
        samples["stream_download verify=False", 1] = raw
    return samples


def open_store(backend: str, data_dir: Path) -> ArtifactStore:
    if backend == "memory":
        return ArtifactStore(storage_provider="memory", session_provider="memory")
    return ArtifactStore(storage_provider="filesystem", session_provider="sqlite", fs_root=data_dir)


def run_store(backend: str, loop: str, data_dir: Path, ctx: Context, ops: tuple[str, ...], streams: bool) -> Samples:
    async def main() -> Samples:
        async with open_store(backend, data_dir) as store:
            return await measure_store(store, ctx, ops, streams)

    return anyio.run(main, backend=loop)


# -- the section


OPS = ("store", "retrieve", "metadata", "update_file")
BACKENDS = ("memory", "fs+sqlite")
ASYNCIO_OPS = ("store", "retrieve")  # a representative part, under asyncio on the embedded default


def run(ctx: Context) -> Iterator[Table]:
    ctx.work_dir.mkdir(parents=True, exist_ok=True)
    base = Path(tempfile.mkdtemp(prefix="artifactfs-bench-", dir=ctx.work_dir))
    try:
        native_dir = base / "native"
        native_dir.mkdir()
        native = measure_native(ctx, native_dir)
        shutil.rmtree(native_dir)
        results: dict[tuple[str, str], Samples] = {}
        for backend in BACKENDS:
            results[backend, "trio"] = run_store(backend, "trio", base / f"{backend}-trio", ctx, OPS, streams=True)
        results["fs+sqlite", "asyncio"] = run_store("fs+sqlite", "asyncio", base / "fs-asyncio", ctx, ASYNCIO_OPS,
                                                    streams=False)

        ops = Table(title="core: 1 KiB items, operations per second", key_columns=["op", "backend", "loop", "conc"],
                    ref_columns=["published", "native", "publish"])
        for op in OPS:
            for conc in CONCURRENCY:
                for (backend, loop), samples in results.items():
                    if (op, conc) in samples:
                        publish = median(native["publish", conc]) if op == "store" else None
                        ops.add([op, backend, loop, conc], samples[op, conc], "ops/s",
                                published=PUBLISHED[op], native=median(native[op, conc]), publish=publish)
        where = f"{filesystem_of(base)} ({base})"
        ops.notes += [
            f"fs+sqlite data dir on {where}; memory = memory blobs + SQLite :memory:",
            "native: plain Python on the same disk, same concurrency (threads): create+write+fsync of a new file"
            " (store), open+read (retrieve), stat (metadata), truncate+write+fsync (update_file)",
            "publish: the disk's floor for a store's durable atomic publish (write+fsync to staging, rename,"
            " fsync of the directory), plain Python, same concurrency",
            "published: S3 + Redis, 128 concurrent tasks; it gives no metadata throughput",
            f"median of {ctx.repeat} runs of {ctx.seconds:g} s each",
        ]
        yield ops

        streams = Table(title="core: one 256 MiB artifact, MB/s", key_columns=["op", "backend", "loop"],
                        ref_columns=["published", "native"])
        for op in ("stream_upload", "stream_download", "stream_download verify=False"):
            for (backend, loop), samples in results.items():
                if (op, 1) in samples:
                    kind = op.split()[0]
                    streams.add([op, backend, loop], samples[op, 1], "MB/s", published=PUBLISHED[kind],
                                native=median(native[kind, 1]))
        streams.notes += [
            "1 MiB chunks; upload includes the SHA-256 and the fsync + publish; download verifies the SHA-256"
            " (the default) unless verify=False",
            "native: 1 MiB writes + fsync, then 1 MiB reads of the same file (page cache warm, as for the store)",
            "published: 10 MB file on the memory provider; MB = 10^6 bytes",
        ]
        yield streams
    finally:
        if not ctx.keep:
            shutil.rmtree(base, ignore_errors=True)


SECTION = Section("core", "the library API on memory and filesystem+SQLite, vs published figures and the disk", run)
