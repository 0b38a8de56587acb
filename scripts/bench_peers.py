"""Section "peers": artifactfs on Redis + S3 next to s3fs and rclone mount on the same moto, in one run.

A private redis-server and one moto server on 127.0.0.1 (the test fixtures'
launchers from ``tests/servers.py``; moto through ``scripts/moto_ranged.py``,
see below). Three mounts of the one bucket, each under its own prefix:
artifactfs (metadata in Redis, blobs in S3), s3fs-fuse and ``rclone mount``
(path-style, dummy credentials; both Debian packages, installed here if
missing). Each runs the mount section's workload, scaled down because moto
is slow (DESIGN §9): a 256 MiB file instead of 1 GiB, 1,000 small files
instead of 10,000. After every sequential write the bench checks that an
object of that size is in the bucket, so a write is counted only once the
store has it.

Stock moto answers a ranged GET by copying the whole object, so the plain
read rows measure moto. The same reads are then run again while
``moto_ranged.py`` serves ranges without that copy (one server, the same
objects, a switch file): those rows are closer to what the clients cost.

Then the library API (the core section's store / retrieve / metadata /
update_file and 256 MiB streams) on Redis + S3 next to the embedded default.

Standalone: ``.venv/bin/python scripts/bench_peers.py`` (``--help``).
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
REPO = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))  # the test fixtures' redis-server and moto

from bench_common import Context, MiB, Section, Table, load_line, paired_ratio
from bench_core import PUBLISHED, STREAM_ROWS, DriverTarget, full_plan, measure_rounds, start_all
from bench_mount import (
    ArtifactfsTarget,
    Part,
    ProcessMount,
    Samples,
    Target,
    Workload,
    build_table,
    figure_specs,
    measure,
    remove_work_dir,
    stop_all,
)
from servers import AWS_ENV, BUCKET, SIGNING_KEY, MotoServer, RedisServer
from store_driver import Impl, Loop, Op, Provider

# moto is slow: the old parts only, scaled down (an fsync of a random 4 KiB write uploads the whole file there)
WORKLOAD = Workload(seq_bytes=256 * MiB, files=1_000, parts=frozenset({Part.SEQUENTIAL, Part.SMALL_FILES}))
PEERS = ("s3fs", "rclone")
APT_PACKAGES = {"s3fs": "s3fs", "rclone": "rclone"}
RANGED_FLAG_ENV = "MOTO_RANGED_FLAG"  # read by moto_ranged.py
# Variables a child must not inherit: they would point it at another store (or, for rclone's AWS SDK,
# make an http:// endpoint fail on a CA bundle it cannot load).
_CHILD_DROP = ("ARTIFACT_PROVIDER", "SESSION_PROVIDER", "SESSION_REDIS_URL", "S3_ENDPOINT_URL", "ARTIFACT_BUCKET",
               "ARTIFACT_S3_PREFIX", "ARTIFACT_REDIS_PREFIX", "S3_SSE_ALGORITHM", "S3_SSE_KMS_KEY_ID",
               "AWS_CA_BUNDLE", "AWS_PROFILE", "AWS_SESSION_TOKEN")


def ensure_tools() -> None:
    """apt-get install the peers if they are missing (the bench installs its own tools; tests need neither)."""
    missing = [pkg for tool, pkg in APT_PACKAGES.items() if shutil.which(tool) is None]
    if not missing:
        return
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = ["apt-get", "install", "-y", "-qq", *missing]
    if subprocess.run(install, capture_output=True, env=env, check=False).returncode != 0:
        subprocess.run(["apt-get", "update", "-qq"], capture_output=True, env=env, check=True)
        subprocess.run(install, capture_output=True, env=env, check=True)


class BenchMoto(MotoServer):
    """The fixtures' moto, run through ``moto_ranged.py`` so ranged GETs can be switched to cheap."""

    def __init__(self, workdir: Path) -> None:
        super().__init__(workdir)
        self.flag = workdir / "ranges-without-copy"

    def command(self) -> list[str]:
        return [sys.executable, str(HERE / "moto_ranged.py"), "-H", "127.0.0.1", "-p", str(self.port)]

    def start(self) -> None:
        previous = os.environ.get(RANGED_FLAG_ENV)
        os.environ[RANGED_FLAG_ENV] = str(self.flag)  # the server inherits our environment
        try:
            super().start()
        finally:
            if previous is None:
                os.environ.pop(RANGED_FLAG_ENV, None)
            else:
                os.environ[RANGED_FLAG_ENV] = previous

    def ranges_without_copy(self, on: bool) -> None:
        if on:
            self.flag.touch()
        else:
            self.flag.unlink(missing_ok=True)


class InBucket:
    """The check that a write reached S3: a new object of the written size under the target's prefix."""

    def __init__(self, moto: MotoServer, prefix: str) -> None:
        self.client, self.prefix = moto.client(), prefix
        self.seen: set[str] = set()

    def check(self, path: Path, size: int) -> None:
        keys: set[str] = set()
        for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=self.prefix):
            keys |= {o["Key"] for o in page.get("Contents", []) if o["Size"] == size}
        if not keys - self.seen:
            raise RuntimeError(f"{path} was written ({size} bytes) but no new object of that size is under "
                               f"s3://{BUCKET}/{self.prefix}")
        self.seen |= keys


def child_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in _CHILD_DROP}
    env.update(AWS_ENV)
    env.update(extra)
    return env


class ArtifactfsS3Target(ArtifactfsTarget):
    def __init__(self, base: Path, redis: RedisServer, moto: MotoServer) -> None:
        env = child_env(
            ARTIFACT_PROVIDER="s3", SESSION_PROVIDER="redis", SESSION_REDIS_URL=redis.url,
            S3_ENDPOINT_URL=moto.endpoint, ARTIFACT_BUCKET=BUCKET, ARTIFACT_S3_PREFIX="artifactfs/",
            ARTIFACT_REDIS_PREFIX="bench-mount", ARTIFACT_SIGNING_KEY=SIGNING_KEY,
        )
        super().__init__(base / "af-mnt", base / "af-data", base / "artifactfs.log", env)
        self.bucket = InBucket(moto, "artifactfs/")

    def check_stored(self, path: Path, size: int) -> None:
        self.bucket.check(path, size)


class S3fsTarget(ProcessMount):
    name = "s3fs"

    def __init__(self, base: Path, moto: MotoServer) -> None:
        super().__init__(base / "s3fs-mnt", base / "s3fs.log", child_env())
        self.endpoint = moto.endpoint
        self.passwd = base / "s3fs.passwd"
        self.passwd.write_text(f"{AWS_ENV['AWS_ACCESS_KEY_ID']}:{AWS_ENV['AWS_SECRET_ACCESS_KEY']}\n")
        self.passwd.chmod(0o600)
        self.bucket = InBucket(moto, "s3fs/")

    def command(self) -> list[str]:
        return ["s3fs", f"{BUCKET}:/s3fs", str(self.mountpoint), "-f", "-o", f"url={self.endpoint}",
                "-o", "use_path_request_style", "-o", f"passwd_file={self.passwd}"]

    def check_stored(self, path: Path, size: int) -> None:
        self.bucket.check(path, size)


class RcloneTarget(ProcessMount):
    """``rclone mount`` with its default ``--vfs-cache-mode off``: close returns once the upload is done.

    (The ``writes`` mode would upload after close, in the background, so a
    write figure would measure the local disk.)
    """

    name = "rclone"

    def __init__(self, base: Path, moto: MotoServer) -> None:
        super().__init__(base / "rclone-mnt", base / "rclone.log", child_env())
        self.config = base / "rclone.conf"
        self.config.write_text(
            "[moto]\ntype = s3\nprovider = Other\nenv_auth = false\n"
            f"access_key_id = {AWS_ENV['AWS_ACCESS_KEY_ID']}\nsecret_access_key = {AWS_ENV['AWS_SECRET_ACCESS_KEY']}\n"
            f"endpoint = {moto.endpoint}\nregion = us-east-1\nforce_path_style = true\n"
        )
        self.bucket = InBucket(moto, "rclone/")

    def command(self) -> list[str]:
        return ["rclone", "mount", f"moto:{BUCKET}/rclone", str(self.mountpoint), "--config", str(self.config),
                "--vfs-cache-mode", "off"]

    def check_stored(self, path: Path, size: int) -> None:
        self.bucket.check(path, size)


def peers_goals(samples: dict[str, Samples], w: Workload) -> Table:
    table = Table(title="peers: target (issue 4): ahead of both peers on every row", key_columns=["figure", "verdict"],
                  ref_columns=[])
    for figure, spec in figure_specs(w).items():
        mine = samples["artifactfs"].get(figure)
        if not mine:
            continue
        ratios = {}
        for peer in PEERS:
            ratio = paired_ratio(mine, samples[peer].get(figure) or [], spec.higher_is_better)
            if ratio is not None:
                ratios[peer] = ratio
        if not ratios:
            continue
        behind = [peer for peer, r in ratios.items() if r < 1.0]
        verdict = "ahead" if not behind else f"BEHIND {', '.join(behind)}"
        table.add([spec.label, verdict], [min(ratios.values())], "x worst peer")
    return table


# -- the library on Redis + S3


def library_env(base: Path, redis: RedisServer, moto: MotoServer) -> dict[str, str]:
    """The environment a store driver reads its Redis + S3 settings from (as the mount's are given)."""
    return child_env(
        ARTIFACT_PROVIDER="s3", SESSION_PROVIDER="redis", SESSION_REDIS_URL=redis.url, S3_ENDPOINT_URL=moto.endpoint,
        ARTIFACT_BUCKET=BUCKET, ARTIFACT_S3_PREFIX="library/", ARTIFACT_REDIS_PREFIX="bench-lib",
        ARTIFACT_SIGNING_KEY=SIGNING_KEY, ARTIFACT_FS_ROOT=str(base / "lib-s3"),
    )


def library_table(ctx: Context, base: Path, env: dict[str, str]) -> Table:
    """The core section's operations on Redis + S3 and on the embedded default, interleaved round by round."""
    python = Path(sys.executable)
    targets = [
        DriverTarget("redis+s3", python, Impl.ARTIFACTFS, Provider.ENV, Loop.TRIO, base / "lib-s3", ctx.seconds,
                     base / "lib-s3.log", env),
        DriverTarget("embedded", python, Impl.ARTIFACTFS, Provider.FILESYSTEM, Loop.TRIO, base / "lib-embedded",
                     ctx.seconds, base / "lib-embedded.log"),
    ]
    started = time.perf_counter()
    try:
        start_all(targets)
        samples, failures = measure_rounds(targets, ctx.repeat, full_plan())
    finally:
        for target in targets:
            target.stop()
    elapsed = time.perf_counter() - started
    s3, embedded = samples["redis+s3"], samples["embedded"]
    table = Table(title="peers: the library API on Redis + S3 (moto) vs the embedded default (fs + SQLite)",
                  key_columns=["op", "conc"], ref_columns=["embedded", "published"])
    for op, conc in full_plan().rates:
        key = (op.value, conc)
        if key in s3:
            table.add([op.value, conc], s3[key], "ops/s", embedded=embedded.get(key), published=PUBLISHED.get(op))
    for op, unit, higher in STREAM_ROWS:
        key = (op.value, 1)
        if key in s3:
            published = PUBLISHED.get(Op.STREAM_DOWNLOAD if op is Op.STREAM_DOWNLOAD_RAW else op)
            table.add([f"{op.value} 256 MiB", 1], s3[key], unit, higher_is_better=higher,
                      embedded=embedded.get(key), published=published)
    table.notes += [
        (f"1 KiB items; {ctx.repeat} interleaved rounds of {ctx.seconds:g} s per op ({elapsed:.0f} s in all, with "
         f"setup); {load_line()}"),
        ("Redis + S3: redis-server and stock-behaving moto on 127.0.0.1 (every ranged GET copies the whole object: "
        "the stream_download rows measure moto); embedded: filesystem blobs + SQLite on the same disk"),
        "each store in a driver process of its own (scripts/store_driver.py), as in the core section",
        "published: S3 + Redis at 128 concurrent tasks (streams: 10 MB on the memory provider)",
        *failures,
    ]
    return table


# -- the section


def run(ctx: Context, workload: Workload | None = None) -> Iterator[Table]:
    w = workload or WORKLOAD
    ensure_tools()
    ctx.work_dir.mkdir(parents=True, exist_ok=True)
    base = Path(tempfile.mkdtemp(prefix="artifactfs-bench-peers-", dir=ctx.work_dir))
    saved_env = {k: os.environ.get(k) for k in AWS_ENV}
    os.environ.update(AWS_ENV)  # the bucket checks and the library's aioboto3 use them
    redis, moto = RedisServer(base / "redis"), BenchMoto(base / "moto")
    targets: list[Target] = []
    load_before = load_line()
    try:
        redis.start()
        moto.start()
        targets = [ArtifactfsS3Target(base, redis, moto), S3fsTarget(base, moto), RcloneTarget(base, moto)]
        for target in targets:
            target.start()
        started = time.perf_counter()
        samples, notes = measure(targets, w, ctx.repeat, ranged_variant=moto.ranges_without_copy)
        elapsed = time.perf_counter() - started
        stop_all(targets)
        table = build_table(f"peers: the mount workload on Redis + S3 (moto): artifactfs vs {' and '.join(PEERS)}",
                            w, "artifactfs", PEERS, samples)
        table.notes += [
            f"median of {ctx.repeat} interleaved rounds ({elapsed:.0f} s); before: {load_before}; after: {load_line()}",
            (f"scaled down from the mount section (moto is slow): {w.seq_label} instead of 1 GiB, "
            f"{w.files:,} small files instead of 10,000, and without the empty-file and random I/O parts"),
            ("all three on one moto server and one bucket (own prefixes), path-style, dummy credentials; "
            "artifactfs: metadata in a redis-server on 127.0.0.1, no SSE; s3fs and rclone with their defaults "
            "(rclone: --vfs-cache-mode off, so close waits for the upload)"),
            "every write is checked to be an object in the bucket before the next step",
            ("read rows measure moto: stock moto copies the whole object for every ranged GET (DESIGN §9); "
            "the 'moto ranges w/o copy' rows are the same reads while moto reads only the range "
            "(scripts/moto_ranged.py)"),
            ("cold: page cache dropped and the mount remounted; s3fs and rclone (cache mode off) do not keep the "
            "page cache across opens, so their warm reads go to S3 again"),
            *notes,
            *(n for t in targets for n in t.notes()),
        ]
        yield table
        yield peers_goals(samples, w)
        yield library_table(ctx, base, library_env(base, redis, moto))
    finally:
        stop_all(targets)
        moto.stop()
        redis.stop()
        for k, v in saved_env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        if not ctx.keep:
            remove_work_dir(base)


SECTION = Section("peers", "artifactfs on Redis + S3 vs s3fs and rclone mount on one moto; the library on Redis + S3",
                  run)


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeat", type=int, default=Context().repeat)
    parser.add_argument("--seconds", type=float, default=Context().seconds)
    parser.add_argument("--work-dir", type=Path, default=Context().work_dir)
    parser.add_argument("--keep", action="store_true")
    parser.add_argument("--seq-mib", type=int, default=WORKLOAD.seq_bytes // MiB, help="size of the big file")
    parser.add_argument("--files", type=int, default=WORKLOAD.files, help="number of small files")
    args = parser.parse_args()
    ctx = Context(repeat=args.repeat, seconds=args.seconds, work_dir=args.work_dir, keep=args.keep)
    for result in run(ctx, Workload(seq_bytes=args.seq_mib * MiB, files=args.files)):
        print(result.render(), flush=True)
