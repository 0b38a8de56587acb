"""Section "core": the library API on the embedded backends, against chuk-artifacts 0.11.4, the disk and the
published figures, round by round.

Targets, each measured once per round and in this order every round, so the
machine's noise falls on all of them alike: the native disk (plain Python on
the same disk: the floor set by the disk and fsync), our store on memory and
on filesystem blobs + SQLite (under trio, and under asyncio), and
chuk-artifacts 0.11.4 on its memory and filesystem providers. Operations:
store / retrieve / metadata / update_file (with data, and meta-only) of 1 KiB
items at concurrency 1 and 64, list_by_session of 1,000 items among 10,000,
and a 256 MiB artifact streamed up (with the process's peak RSS), streamed
down and retrieved whole.

Every store runs in a driver process of its own (``store_driver.py``), opened
once and kept open across the rounds; chuk-artifacts' driver runs from a side
venv (``.venv-chuk``) that this section makes on first use, so its packages
never mix with ours. If that install fails the section says why and goes on
without the chuk columns.
"""

from __future__ import annotations

import itertools
import json
import os
import select
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from enum import Enum
from pathlib import Path

from bench_common import MB, Context, MiB, Sample, Section, Table, filesystem_of, load_line
from pydantic import BaseModel
from store_driver import (
    BLOCK,
    ITEM,
    LIST_ITEMS,
    LIST_SESSIONS,
    RATE_OPS,
    STREAM,
    WARM_ITEMS,
    Impl,
    Loop,
    Op,
    Provider,
)

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
DRIVER = HERE / "store_driver.py"
CONCURRENCY = (1, 64)
CHUK = "chuk-artifacts"
CHUK_VERSION = "0.11.4"
CHUK_VENV = REPO / ".venv-chuk"
PIP_TIMEOUT = 900.0
READY_TIMEOUT = 900.0  # setup stores 10,000 items; a slow provider may take minutes
ROUND_TIMEOUT = 900.0  # one round of one target; past it the target is given up, not waited for

# The published figures (S3 + Redis at concurrency 128; streams on the memory provider).
PUBLISHED: dict[Op, float | None] = {Op.STORE: 3083.0, Op.RETRIEVE: 4693.0, Op.METADATA: None, Op.UPDATE: 2156.0,
                                     Op.STREAM_UPLOAD: 380.0, Op.STREAM_DOWNLOAD: 2124.0}
PUBLISH = "publish"  # the native floor of a durable atomic publish, a reference for store

Key = tuple[str, int]  # (operation, concurrency)
Figures = dict[Key, float | None]  # one round of one target
Samples = dict[Key, list[Sample]]  # every round of one target, indexed by round


class Plan(BaseModel):
    """What each target runs in a round."""

    rates: list[tuple[Op, int]]
    streams: bool = True


def full_plan() -> Plan:
    return Plan(rates=[(op, conc) for op in RATE_OPS for conc in (CONCURRENCY if op is not Op.LIST else (1,))])


class Target:
    """Something measured once per round; ``round`` gives its figures and the errors of ops that failed."""

    name = "target"
    alive = True

    def start(self) -> None:
        pass

    def wait_ready(self) -> None:
        pass

    def round(self, n: int, plan: Plan) -> tuple[Figures, dict[Key, str]]:
        raise NotImplementedError

    def stop(self) -> None:
        pass


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


def _write_file(path: str | Path, data: bytes, flags: int) -> None:
    fd = os.open(path, os.O_WRONLY | flags, 0o600)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class NativeDisk(Target):
    """1 KiB files written + fsynced, read, stat'ed, rewritten; a directory listed; a 256 MiB file written and read.

    It runs in the bench's own process, with threads for concurrency: there
    is no store to keep apart.
    """

    name = "native"

    def __init__(self, root: Path, seconds: float) -> None:
        self.root, self.seconds = root, seconds
        self.payload = os.urandom(ITEM)
        self.made: list[str] = []
        self.fresh = itertools.count()

    def start(self) -> None:
        for sub in ("items", "staging", "published"):
            (self.root / sub).mkdir(parents=True)
        for _ in range(WARM_ITEMS):
            self._store(0, 0)
        for s in range(LIST_SESSIONS):  # the listing corpus, as the stores get theirs: 10 dirs of 1,000
            folder = self.root / f"session-{s}"
            folder.mkdir()
            for i in range(LIST_ITEMS):
                (folder / f"listed-{i}.bin").write_bytes(self.payload)

    def _store(self, w: int, n: int) -> None:
        path = str(self.root / "items" / f"n{next(self.fresh)}")
        _write_file(path, self.payload, os.O_CREAT | os.O_EXCL)
        self.made.append(path)

    def _publish(self, w: int, n: int) -> None:
        """What a store's blob publish costs on the disk: write, fsync, rename, fsync the directory."""
        name = f"p{next(self.fresh)}"
        staged, published = self.root / "staging" / name, self.root / "published" / name
        _write_file(staged, self.payload, os.O_CREAT | os.O_EXCL)
        os.rename(staged, published)
        _fsync_dir(published.parent)

    def _list(self, w: int, n: int) -> None:
        folder = self.root / "session-0"
        for entry in os.listdir(folder):
            os.stat(folder / entry)

    def _op(self, op: Op, conc: int) -> Callable[[int, int], None] | None:
        shares = [self.made[w::conc] for w in range(conc)]

        def mine(w: int, n: int) -> str:
            return shares[w][n % len(shares[w])]

        def retrieve(w: int, n: int) -> None:
            with open(mine(w, n), "rb") as f:
                f.read()

        def metadata(w: int, n: int) -> None:
            os.stat(mine(w, n))

        calls: dict[Op, Callable[[int, int], None]] = {
            Op.STORE: self._store,
            Op.RETRIEVE: retrieve,
            Op.METADATA: metadata,
            Op.UPDATE: lambda w, n: _write_file(mine(w, n), self.payload, os.O_TRUNC),
            Op.LIST: self._list,
        }
        return calls.get(op)

    def round(self, n: int, plan: Plan) -> tuple[Figures, dict[Key, str]]:
        figures: Figures = {}
        for op, conc in plan.rates:
            call = self._op(op, conc)
            if call is not None:
                figures[op.value, conc] = _native_rate(call, conc, self.seconds)
            if op is Op.STORE:
                figures[PUBLISH, conc] = _native_rate(self._publish, conc, self.seconds)
        if plan.streams:
            figures.update(self._streams())
        return figures, {}

    def _streams(self) -> Figures:
        """1 MiB writes + fsync, then the file read back in 1 MiB reads and whole (page cache warm, as for a store)."""
        block, big = os.urandom(BLOCK), self.root / "big"
        start = time.perf_counter()
        fd = os.open(big, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            for _ in range(STREAM // BLOCK):
                os.write(fd, block)
            os.fsync(fd)
        finally:
            os.close(fd)
        figures: Figures = {(Op.STREAM_UPLOAD.value, 1): STREAM / MB / (time.perf_counter() - start)}
        start = time.perf_counter()
        with open(big, "rb", buffering=0) as f:
            while f.read(BLOCK):
                pass
        figures[Op.STREAM_DOWNLOAD.value, 1] = STREAM / MB / (time.perf_counter() - start)
        start = time.perf_counter()
        if len(big.read_bytes()) != STREAM:
            raise RuntimeError(f"{big} is not {STREAM} bytes")
        figures[Op.RETRIEVE_BIG.value, 1] = STREAM / MB / (time.perf_counter() - start)
        big.unlink()
        return figures


# -- a store in a driver process


class DriverFigure(BaseModel):
    op: Op
    conc: int
    value: float | None = None
    error: str | None = None


class DriverTarget(Target):
    """A store opened once in its own ``store_driver.py`` process and measured there round by round."""

    def __init__(self, name: str, python: Path, impl: Impl, provider: Provider, loop: Loop, root: Path,
                 seconds: float, log: Path, env: dict[str, str] | None = None) -> None:
        self.name, self.python, self.impl, self.provider, self.loop = name, python, impl, provider, loop
        self.root, self.seconds, self.log, self.env = root, seconds, log, env
        self.process: subprocess.Popen[str] | None = None
        self.version = ""
        self.failure: str | None = None

    @property
    def alive(self) -> bool:  # type: ignore[override]
        return self.failure is None

    def start(self) -> None:
        argv = [str(self.python), str(DRIVER), "--impl", self.impl.value, "--provider", self.provider.value,
                "--loop", self.loop.value, "--root", str(self.root), "--seconds", str(self.seconds)]
        with open(self.log, "ab") as log:
            self.process = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log,
                                            text=True, env=self.env, cwd=self.root.parent)

    def _answer(self, timeout: float) -> dict:
        """The driver's next line (it writes exactly one per request, so nothing waits in a buffer)."""
        assert self.process is not None and self.process.stdout is not None
        if not select.select([self.process.stdout], [], [], timeout)[0]:
            raise TimeoutError(f"no answer in {timeout:.0f} s")
        line = self.process.stdout.readline()
        if not line:
            raise RuntimeError(f"the driver exited {self.process.wait()}: {self._log_tail()}")
        return json.loads(line)

    def _log_tail(self) -> str:
        try:
            lines = [line for line in self.log.read_text(errors="replace").splitlines() if line.strip()]
        except OSError:
            return "no log"
        return lines[-1][:300] if lines else "no log"

    def wait_ready(self) -> None:
        try:
            ready = self._answer(READY_TIMEOUT)
            if not ready.get("ready"):
                raise RuntimeError(ready.get("error", "not ready"))
            self.version = ready.get("version", "")
        except Exception as exc:  # noqa: BLE001 - a target that cannot start leaves its columns empty
            self.fail(f"setup failed: {exc}")

    def round(self, n: int, plan: Plan) -> tuple[Figures, dict[Key, str]]:
        if self.process is None or self.process.stdin is None:
            return {}, {}
        try:
            self.process.stdin.write(json.dumps({"round": n, **plan.model_dump(mode="json")}) + "\n")
            self.process.stdin.flush()
            answer = self._answer(ROUND_TIMEOUT)
            if "figures" not in answer:
                raise RuntimeError(answer.get("error", f"unexpected answer {answer}"))
        except Exception as exc:  # noqa: BLE001
            self.fail(f"round {n + 1} failed: {exc}")
            return {}, {}
        figures: Figures = {}
        errors: dict[Key, str] = {}
        for raw in answer["figures"]:
            got = DriverFigure.model_validate(raw)
            figures[got.op.value, got.conc] = got.value
            if got.error:
                errors[got.op.value, got.conc] = got.error
        return figures, errors

    def fail(self, why: str) -> None:
        self.failure = why
        self.stop()

    def stop(self) -> None:
        process, self.process = self.process, None
        if process is None:
            return
        try:
            if process.stdin is not None:
                process.stdin.close()  # EOF: the driver closes its store and exits
            process.wait(timeout=60)
        except (OSError, subprocess.TimeoutExpired):
            process.kill()
            process.wait()


# -- chuk-artifacts in a side venv


def chuk_python(venv: Path = CHUK_VENV) -> tuple[Path | None, str]:
    """The side venv's python with chuk-artifacts 0.11.4 (made or fixed on first use), or None and why not."""
    python = venv / "bin" / "python"
    if _installed_version(python) == CHUK_VERSION:
        return python, f"reused {venv}"
    print(f"bench: installing {CHUK}=={CHUK_VERSION} into {venv} ...", file=sys.stderr, flush=True)
    steps = [[sys.executable, "-m", "venv", "--clear", str(venv)],
             [str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check", f"{CHUK}=={CHUK_VERSION}"]]
    for step in steps:
        try:
            done = subprocess.run(step, capture_output=True, text=True, timeout=PIP_TIMEOUT, check=False)
        except (OSError, subprocess.TimeoutExpired) as exc:
            return None, f"`{' '.join(step[-3:])}` failed: {exc}"
        if done.returncode != 0:
            said = (done.stderr.strip().splitlines() or ["no message"])[-1]
            return None, f"`{' '.join(step[-3:])}` exited {done.returncode}: {said[:300]}"
    got = _installed_version(python)
    if got != CHUK_VERSION:
        return None, f"{CHUK} {got or 'is missing'} in {venv} after pip install"
    return python, f"installed into {venv}"


def _installed_version(python: Path) -> str | None:
    if not python.exists():
        return None
    done = subprocess.run([str(python), "-c", f"import importlib.metadata as m; print(m.version('{CHUK}'))"],
                          capture_output=True, text=True, check=False)
    return done.stdout.strip() if done.returncode == 0 else None


# -- rounds


def measure_rounds(targets: Sequence[Target], repeat: int, plan: Plan) -> tuple[dict[str, Samples], list[str]]:
    """Every target once per round, in order; samples per target indexed by round, and notes of failures."""
    samples: dict[str, Samples] = {t.name: {} for t in targets}
    errors: dict[tuple[str, Key], str] = {}
    for n in range(repeat):
        for target in targets:
            if not target.alive:
                continue
            figures, failed = target.round(n, plan)
            for key, value in figures.items():
                samples[target.name].setdefault(key, [None] * repeat)[n] = value
            for key, why in failed.items():
                errors.setdefault((target.name, key), f"round {n + 1}: {why}")
    notes = [f"{name}: {op} c={conc} failed ({why})" for (name, (op, conc)), why in errors.items()]
    notes += [f"{t.name}: {t.failure}" for t in targets if isinstance(t, DriverTarget) and t.failure]
    return samples, notes


def start_all(targets: Sequence[Target]) -> None:
    """Start every target, then wait for all: their setups overlap, and none of it is timed."""
    for target in targets:
        target.start()
    for target in targets:
        target.wait_ready()


def stop_all(targets: Sequence[Target]) -> None:
    for target in targets:
        target.stop()


# -- the section


class Backend(str, Enum):
    MEMORY = "memory"
    FS_SQLITE = "fs+sqlite"


class Ours(BaseModel):
    backend: Backend
    loop: Loop

    @property
    def name(self) -> str:
        return f"{self.backend.value} {self.loop.value}"

    @property
    def provider(self) -> Provider:
        return Provider.MEMORY if self.backend is Backend.MEMORY else Provider.FILESYSTEM

    @property
    def chuk(self) -> str:
        """The chuk-artifacts target it is compared to: the same kind of provider."""
        return "chuk memory" if self.backend is Backend.MEMORY else "chuk filesystem"


OURS = [Ours(backend=Backend.MEMORY, loop=Loop.TRIO), Ours(backend=Backend.FS_SQLITE, loop=Loop.TRIO),
        Ours(backend=Backend.FS_SQLITE, loop=Loop.ASYNCIO)]
CHUK_TARGETS = {"chuk memory": Provider.MEMORY, "chuk filesystem": Provider.FILESYSTEM}


def make_targets(base: Path, ctx: Context, chuk: Path | None) -> list[Target]:
    targets: list[Target] = [NativeDisk(base / "native", ctx.seconds)]
    for ours in OURS:
        slug = ours.name.replace(" ", "-").replace("+", "")
        targets.append(DriverTarget(ours.name, Path(sys.executable), Impl.ARTIFACTFS, ours.provider, ours.loop,
                                    base / slug, ctx.seconds, base / f"{slug}.log"))
    if chuk is not None:
        for name, provider in CHUK_TARGETS.items():
            slug = name.replace(" ", "-")
            targets.append(DriverTarget(name, chuk, Impl.CHUK, provider, Loop.ASYNCIO, base / slug, ctx.seconds,
                                        base / f"{slug}.log"))
    return targets


def _of(samples: dict[str, Samples], target: str, key: Key) -> list[Sample] | None:
    return samples.get(target, {}).get(key)


def ops_table(samples: dict[str, Samples]) -> Table:
    table = Table(title=f"core: 1 KiB items, operations per second, vs {CHUK} {CHUK_VERSION}",
                  key_columns=["op", "backend", "loop", "conc"], ref_columns=["chuk", "native", PUBLISH, "published"])
    for op, conc in full_plan().rates:
        key = (op.value, conc)
        for ours in OURS:
            mine = _of(samples, ours.name, key)
            if mine is None:
                continue
            label = f"{op.value} ({LIST_ITEMS:,} of {LIST_ITEMS * LIST_SESSIONS:,})" if op is Op.LIST else op.value
            table.add([label, ours.backend.value, ours.loop.value, conc], mine, "ops/s",
                      chuk=_of(samples, ours.chuk, key), native=_of(samples, "native", key),
                      publish=_of(samples, "native", (PUBLISH, conc)) if op is Op.STORE else None,
                      published=PUBLISHED.get(op))
    return table


STREAM_ROWS: list[tuple[Op, str, bool]] = [  # op, unit, higher is better
    (Op.STREAM_UPLOAD, "MB/s", True), (Op.STREAM_DOWNLOAD, "MB/s", True), (Op.STREAM_DOWNLOAD_RAW, "MB/s", True),
    (Op.RETRIEVE_BIG, "MB/s", True), (Op.UPLOAD_PEAK_RSS, "MiB", False), (Op.UPLOAD_START_RSS, "MiB", False),
]


def streams_table(samples: dict[str, Samples]) -> Table:
    table = Table(title=f"core: one {STREAM // MiB} MiB artifact, vs {CHUK} {CHUK_VERSION}",
                  key_columns=["op", "backend", "loop"], ref_columns=["chuk", "native", "published"])
    for op, unit, higher in STREAM_ROWS:
        key = (op.value, 1)
        # chuk has no verify switch: its one stream_download stands beside both of ours
        theirs = (Op.STREAM_DOWNLOAD.value, 1) if op is Op.STREAM_DOWNLOAD_RAW else key
        for ours in OURS:
            mine = _of(samples, ours.name, key)
            if mine is None:
                continue
            table.add([op.value, ours.backend.value, ours.loop.value], mine, unit, higher_is_better=higher,
                      chuk=_of(samples, ours.chuk, theirs), native=_of(samples, "native", key),
                      published=PUBLISHED.get(Op.STREAM_DOWNLOAD if op is Op.STREAM_DOWNLOAD_RAW else op))
    return table


def run(ctx: Context) -> Iterator[Table]:
    ctx.work_dir.mkdir(parents=True, exist_ok=True)
    chuk, chuk_said = chuk_python()
    base = Path(tempfile.mkdtemp(prefix="artifactfs-bench-", dir=ctx.work_dir))
    targets = make_targets(base, ctx, chuk)
    load_before = load_line()
    try:
        setup_started = time.perf_counter()
        start_all(targets)
        setup = time.perf_counter() - setup_started
        started = time.perf_counter()
        samples, failures = measure_rounds(targets, ctx.repeat, full_plan())
        elapsed = time.perf_counter() - started
        versions = [f"{t.name}: {t.version}" for t in targets if isinstance(t, DriverTarget) and t.impl is Impl.CHUK]
        where = f"{filesystem_of(base)} ({base})"
        common = [
            (f"{ctx.repeat} rounds of {ctx.seconds:g} s per op ({elapsed:.0f} s, after {setup:.0f} s of setup); "
             f"each round runs, in this order: {', '.join(t.name for t in targets)}; before: {load_before}; "
             f"after: {load_line()}"),
            ("every store runs in a driver process of its own (scripts/store_driver.py), opened once and kept "
             f"open across the rounds; setup (not timed): {WARM_ITEMS} warm items, and "
             f"{LIST_SESSIONS} sessions of {LIST_ITEMS:,} items to list one of"),
            (f"chuk: {CHUK} {CHUK_VERSION} ({chuk_said}) on the same kind of provider, asyncio, same sizes, "
             "same concurrency, same driver code" if chuk else f"chuk: no {CHUK} columns: {chuk_said}"),
            *versions,
            *failures,
        ]
        ops = ops_table(samples)
        ops.notes += [
            (f"fs+sqlite and chuk filesystem data dirs on {where}; memory = memory blobs + SQLite :memory:; "
             "chuk memory = its memory storage + memory sessions; chuk filesystem = its filesystem storage + "
             "memory sessions"),
            ("c=64: 64 tasks (asyncio.gather / a trio nursery), each on its own items; one untimed call per task "
             "before each timed run"),
            ("native: plain Python on the same disk, same concurrency (threads): create+write+fsync of a new file "
             "(store), open+read (retrieve), stat (metadata), truncate+write+fsync (update_file), listdir + stat "
             f"of a {LIST_ITEMS:,}-file dir (list_by_session); none for meta-only updates"),
            ("publish: the disk's floor for a store's durable atomic publish (write+fsync to staging, rename, "
             "fsync of the directory), plain Python, same concurrency"),
            "published: S3 + Redis, 128 concurrent tasks; it gives no metadata throughput",
            ("durability differs: ours makes each store durable before it is visible (blob fsynced, renamed, "
             "directory fsynced, metadata committed); chuk's filesystem provider writes the object, a second copy "
             "under its filename and a .meta.json, with no fsync, and keeps its metadata in memory sessions"),
            *common,
        ]
        yield ops
        streams = streams_table(samples)
        streams.notes += [
            ("1 MiB chunks, content_length given; upload includes the SHA-256 and the fsync + publish; our "
             "download verifies the SHA-256 (the default) unless verify=False; chuk has no such switch, so its one "
             "stream_download figure stands beside both"),
            ("retrieve whole: the 256 MiB as one bytes object; peak RSS: the driver process's VmHWM over the upload "
             "(reset just before it through /proc/self/clear_refs); RSS before: VmRSS then, after gc"),
            ("native: 1 MiB writes + fsync, then 1 MiB reads of the same file and one read of it whole "
             "(page cache warm, as for the store)"),
            "published: 10 MB file on the memory provider; MB = 10^6 bytes",
            ("our memory backend keeps each deleted blob for the blob grace (1 h by default, for readers of an old "
             "version), so its RSS grows by one 256 MiB upload per round"),
            *common,
        ]
        yield streams
    finally:
        stop_all(targets)
        if not ctx.keep:
            shutil.rmtree(base, ignore_errors=True)


SECTION = Section("core", f"the library API on memory and filesystem+SQLite, vs {CHUK} {CHUK_VERSION}, the disk "
                  "and published figures", run)
