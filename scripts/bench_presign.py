"""Presigned URLs: MB/s through ``artifactfs serve`` (embedded default) and through S3's own URLs (moto), vs the disk.

A 256 MiB artifact on filesystem blobs + SQLite in a data dir under
``--work-dir``. The service runs as its own process (as in production) and
curl is the client, so the figures are the service's, not a Python client's.
References: the same bytes read straight from the blob file (dd, 1 MiB
blocks), and a write of the same size with fsync (the service fsyncs every
blob before it answers). "cold" drops the page cache first (needs root).

The second table does the same on Redis + S3: a private redis-server and
moto in server mode on 127.0.0.1 (the test fixtures' servers), S3's own
presigned URLs, curl talking to moto directly. It measures moto more than
artifactfs (DESIGN §9): moto keeps every object in memory, answers a
ranged GET by copying the object, and joins multipart uploads in memory.

Standalone: ``.venv/bin/python scripts/bench_presign.py`` prints the tables;
``scripts/bench --only presign`` runs it as a section.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE.parent / "tests"))  # the test fixtures' redis-server and moto

import trio
from bench_common import MB, Context, MiB, Section, Table, filesystem_of, median
from servers import AWS_ENV, SIGNING_KEY, MotoServer, RedisServer, redis_s3_settings

from core import (
    ArtifactStore,
    MultipartUploadCompleteRequest,
    MultipartUploadInitRequest,
    MultipartUploadPart,
)
from core.config import Settings

SIZE = 256 * MiB
PART = 32 * MiB
PART_STREAMS = 2


def drop_caches() -> bool:
    try:
        os.sync()
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
        return True
    except OSError:
        return False


def dd_read(path: Path) -> float:
    started = time.perf_counter()
    subprocess.run(["dd", f"if={path}", "of=/dev/null", "bs=1M"], check=True, capture_output=True)
    return time.perf_counter() - started


def dd_write(path: Path) -> float:
    started = time.perf_counter()
    subprocess.run(["dd", "if=/dev/zero", f"of={path}", "bs=1M", f"count={SIZE // MiB}", "conv=fsync"],
                   check=True, capture_output=True)
    elapsed = time.perf_counter() - started
    path.unlink()
    return elapsed


async def curl(*args: str) -> str:
    done = await trio.run_process(["curl", "-sSf", *args], capture_stdout=True)
    return done.stdout.decode()


class Bench:
    def __init__(self, store: ArtifactStore, work: Path, source: Path) -> None:
        self.store, self.work, self.source = store, work, source

    async def upload(self) -> tuple[float, str]:
        """One presigned PUT of the source file, then register: seconds, artifact id."""
        started = time.perf_counter()
        url, artifact_id = await self.store.presign_upload(filename=f"put-{artifact_id_hint()}.bin", user_id="bench",
                                                            scope="user")
        await curl("-T", str(self.source), "-o", "/dev/null", url)
        await self.store.register_uploaded_artifact(artifact_id)
        return time.perf_counter() - started, artifact_id

    async def multipart(self) -> tuple[float, str]:
        """The source in 32 MiB parts, two PUTs at a time, then complete (which joins and hashes)."""
        started = time.perf_counter()
        info = await self.store.initiate_multipart_upload(MultipartUploadInitRequest(
            filename=f"mp-{artifact_id_hint()}.bin", user_id="bench", scope="user"))
        count = SIZE // PART
        etags: dict[int, str] = {}
        limiter = trio.Semaphore(PART_STREAMS)

        async def one(n: int) -> None:
            async with limiter:
                url = await self.store.get_part_upload_url(info["upload_id"], n)
                headers = await curl("-T", str(self.part_file(n)), "-D", "-", "-o", "/dev/null", url)
                etags[n] = next(line.split(":", 1)[1].strip() for line in headers.splitlines()
                                if line.lower().startswith("etag:"))

        async with trio.open_nursery() as nursery:
            for n in range(1, count + 1):
                nursery.start_soon(one, n)
        artifact_id = await self.store.complete_multipart_upload(MultipartUploadCompleteRequest(
            upload_id=info["upload_id"], parts=[MultipartUploadPart(PartNumber=n, ETag=etags[n]) for n in sorted(etags)]))
        return time.perf_counter() - started, artifact_id

    def part_file(self, n: int) -> Path:
        """Bytes [(n-1) * PART, n * PART) of the source, cut once before the timed runs."""
        part = self.work / f"part-{n}.bin"
        if not part.exists():
            with open(self.source, "rb") as src, open(part, "wb") as dst:
                src.seek((n - 1) * PART)
                dst.write(src.read(PART))
        return part

    async def put_then_register(self) -> tuple[float, float]:
        """A presigned PUT, then register, timed apart: (seconds of the PUT, seconds of the register)."""
        url, artifact_id = await self.store.presign_upload(filename=f"put-{artifact_id_hint()}.bin", user_id="bench",
                                                            scope="user")
        started = time.perf_counter()
        await curl("-T", str(self.source), "-o", "/dev/null", url)
        put_done = time.perf_counter()
        await self.store.register_uploaded_artifact(artifact_id)
        return put_done - started, time.perf_counter() - put_done

    async def download(self, artifact_id: str, byte_range: str | None = None) -> float:
        url = await self.store.presign(artifact_id)
        ranged = ["-H", f"Range: {byte_range}"] if byte_range else []
        started = time.perf_counter()
        await curl(*ranged, "-o", "/dev/null", url)
        return time.perf_counter() - started


_hint = 0


def artifact_id_hint() -> int:
    global _hint
    _hint += 1
    return _hint


def blob_path(store: ArtifactStore, blob_key: str) -> Path:
    return store.ns.blobs.path_of(blob_key)  # type: ignore[attr-defined]


def make_source(work: Path) -> Path:
    source = work / "source.bin"
    if not source.exists():
        with open(source, "wb") as f:
            f.writelines(os.urandom(MiB) for _ in range(SIZE // MiB))
    return source


async def measure(ctx: Context, work: Path, url: str, data_dir: Path) -> Table:
    source = make_source(work)
    settings = Settings(storage_provider="filesystem", session_provider="sqlite", fs_root=data_dir)
    settings.presign.base_url = url
    rate = lambda seconds: SIZE / MB / seconds
    table = Table(title=f"presigned URLs, {SIZE // MiB} MiB artifact, embedded default ({filesystem_of(work)})",
                  key_columns=["operation"], ref_columns=["disk"])
    async with ArtifactStore(settings=settings) as store:
        bench = Bench(store, work, source)
        ups, ids = [], []
        for _ in range(ctx.repeat):
            seconds, artifact_id = await bench.upload()
            ups.append(rate(seconds))
            ids.append(artifact_id)
        disk_writes = [rate(dd_write(work / "dd.bin")) for _ in range(ctx.repeat)]
        table.add(["upload: presigned PUT + register"], ups, "MB/s", disk=median(disk_writes))

        for n in range(1, SIZE // PART + 1):
            bench.part_file(n)  # cut the parts beforehand: not part of the timing
        mps = [rate((await bench.multipart())[0]) for _ in range(ctx.repeat)]
        table.add([f"upload: multipart {SIZE // PART} x {PART // MiB} MiB, {PART_STREAMS} streams + complete"],
                  mps, "MB/s", disk=median(disk_writes))

        node = await store.ns.artifact_node(ids[0])
        blob = blob_path(store, node.artifact.blob_key)  # type: ignore[union-attr]
        warm_get = [rate(await bench.download(ids[0])) for _ in range(ctx.repeat)]
        warm_disk = [rate(dd_read(blob)) for _ in range(ctx.repeat)]
        table.add(["download: presigned GET, warm cache"], warm_get, "MB/s", disk=median(warm_disk))
        ranged = [rate(await bench.download(ids[0], "bytes=0-")) for _ in range(ctx.repeat)]
        table.add(["download: GET Range bytes=0- (no whole-file SHA-256), warm"], ranged, "MB/s", disk=median(warm_disk))
        if drop_caches():
            cold_get, cold_disk = [], []
            for _ in range(ctx.repeat):
                drop_caches()
                cold_get.append(rate(await bench.download(ids[0])))
                drop_caches()
                cold_disk.append(rate(dd_read(blob)))
            table.add(["download: presigned GET, cold cache"], cold_get, "MB/s", disk=median(cold_disk))
        else:
            table.notes.append("cold-cache rows skipped: dropping the page cache needs root")
    table.notes += [
        "service: `artifactfs serve` (hypercorn on trio, one process); client: curl; median of "
        f"{ctx.repeat} runs; disk: dd bs=1M of the blob file (read) / of a new file with conv=fsync (write)",
        "a full GET verifies the SHA-256 as it streams; the PUT hashes and fsyncs before it answers; "
        "complete joins the parts into a new blob, checking each part's SHA-256",
    ]
    return table


async def measure_moto(ctx: Context, work: Path) -> Table:
    """The same transfers through S3's own presigned URLs on moto, metadata in Redis."""
    source = make_source(work)
    rate = lambda seconds: SIZE / MB / seconds
    table = Table(title=f"presigned URLs, {SIZE // MiB} MiB artifact, Redis + S3 on moto (S3's own URLs)",
                  key_columns=["operation"], ref_columns=["disk"])
    redis_server, moto = RedisServer(work / "redis"), MotoServer(work / "moto")
    old_env = {k: os.environ.get(k) for k in AWS_ENV}
    os.environ.update(AWS_ENV)
    redis_server.start()
    moto.start()
    try:
        settings = redis_s3_settings(work / "s3store", redis_url=redis_server.url, s3_endpoint_url=moto.endpoint,
                                     signing_key=SIGNING_KEY)
        async with ArtifactStore(settings=settings) as store:
            bench = Bench(store, work, source)
            puts, registers, ups, ids = [], [], [], []
            for _ in range(ctx.repeat):
                put_s, register_s = await bench.put_then_register()
                puts.append(rate(put_s))
                registers.append(rate(register_s))
                ups.append(rate(put_s + register_s))
            ids = [m.artifact_id for m in await store.search(user_id="bench")]
            disk_writes = [rate(dd_write(work / "dd.bin")) for _ in range(ctx.repeat)]
            table.add(["upload: presigned PUT + register"], ups, "MB/s", disk=median(disk_writes))
            table.add(["  of which the PUT (curl -> moto)"], puts, "MB/s", disk=median(disk_writes))
            table.add(["  of which register (S3 complete + read back for SHA-256)"], registers, "MB/s")
            for n in range(1, SIZE // PART + 1):
                bench.part_file(n)
            mps = [rate((await bench.multipart())[0]) for _ in range(ctx.repeat)]
            table.add([f"upload: multipart {SIZE // PART} x {PART // MiB} MiB, {PART_STREAMS} streams + complete"],
                      mps, "MB/s", disk=median(disk_writes))
            warm_disk = [rate(dd_read(source)) for _ in range(ctx.repeat)]
            gets = [rate(await bench.download(ids[0])) for _ in range(ctx.repeat)]
            table.add(["download: presigned GET"], gets, "MB/s", disk=median(warm_disk))
            ranged = [rate(await bench.download(ids[0], "bytes=0-")) for _ in range(ctx.repeat)]
            table.add(["download: GET Range bytes=0-"], ranged, "MB/s", disk=median(warm_disk))
    finally:
        moto.stop()
        redis_server.stop()
        for k, v in old_env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    table.notes += [
        (f"moto {_moto_version()} in server mode and redis-server on 127.0.0.1; client: curl straight to moto; "
         f"median of {ctx.repeat} runs; disk: dd bs=1M of the same bytes from a warm file (read) / a new file "
         "with conv=fsync (write)"),
        ("moto keeps objects in Python memory and serves one request at a time per connection: these rows "
         "measure moto (DESIGN §9), not S3; a GET is S3's own, so no SHA-256 is checked on the way out"),
        ("register = S3 CompleteMultipartUpload (moto joins the parts in memory) + one streaming GET hashed "
         "for the SHA-256; every upload goes to the final blob key, so nothing is copied"),
    ]
    return table


def _moto_version() -> str:
    from importlib.metadata import version

    return version("moto")


def run(ctx: Context) -> Iterator[Table]:
    work = Path(tempfile.mkdtemp(prefix="artifactfs-bench-presign-", dir=ctx.work_dir))
    data_dir = work / "data"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ARTIFACT_", "SESSION_"))}
    proc = subprocess.Popen(
        [sys.executable, "-m", "fusefs", "serve", "--data-dir", str(data_dir), "--port", "0"],
        cwd=HERE.parent, env=env, stdout=subprocess.PIPE, text=True,
    )
    try:
        line = proc.stdout.readline() if proc.stdout else ""
        if not line.startswith("artifactfs serve: "):
            raise RuntimeError(f"artifactfs serve did not start: {line!r}")
        yield trio.run(measure, ctx, work, line.split()[2], data_dir)
        yield trio.run(measure_moto, ctx, work)
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        if not ctx.keep:
            shutil.rmtree(work, ignore_errors=True)


SECTION = Section("presign", "MB/s through presigned URLs (artifactfs serve; S3's own on moto) vs the disk, 256 MiB", run)

if __name__ == "__main__":
    for table in run(Context()):
        print(table.render())
