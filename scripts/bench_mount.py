"""Section "mount": the FUSE mount against libfuse's C passthrough and the native disk, in one run.

Three targets on the same disk (``--work-dir``): an artifactfs mount of a
fresh data dir (embedded default: filesystem blobs + SQLite), libfuse's own
low-level passthrough example (``passthrough_ll.c`` from libfuse3-dev's
examples, compiled into a temporary directory at bench time) over a plain
directory, and that plain directory itself. Each runs the same workload
(:func:`run_workload`): a 1 GiB file written with dd in 1 MiB blocks with
``conv=fsync`` (so the store is measured, not the page cache) and read back
cold (page cache dropped, the mount remounted) and warm; 10,000 files of 4 KiB
created, stat'ed and read, cold; ``ls -l`` of their directory, cold and warm;
5,000 empty files created, listed cold (``os.listdir``) and deleted; 4 KiB
``pwrite`` + ``fsync`` at random offsets of a 64 MiB file, then 4 KiB
``pread`` there, cold, one at a time; the peak RSS of the mount process during
the write, and its RSS after the whole pass. Targets are interleaved per
round so the machine's noise falls on all of them alike, and each ratio is
taken within a round.

The peers section (``bench_peers.py``) reuses the targets and the workload
on Redis + S3.

Standalone: ``.venv/bin/python scripts/bench_mount.py`` (``--help``).
"""

from __future__ import annotations

import gzip
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from enum import Enum
from pathlib import Path

from pydantic import BaseModel

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(REPO))

from bench_common import MB, Context, KiB, MiB, Section, Table, filesystem_of, load_line, median, paired_ratio

EXAMPLES = Path("/usr/share/doc/libfuse3-dev/examples")
PASSTHROUGH = "passthrough_ll"  # low-level API like pyfuse3; passthrough.c sets every cache timeout to 0
MOUNT_TIMEOUT = 30.0
REPEAT_BUDGET = 45.0  # seconds: a part of the workload that took longer on a target is not repeated there


class Part(str, Enum):
    SEQUENTIAL = "sequential"
    SMALL_FILES = "small-file"
    METADATA = "metadata"  # empty files: create, list cold, delete
    RANDOM = "random-io"  # 4 KiB pwrite + fsync, then 4 KiB pread cold


class Workload(BaseModel):
    seq_bytes: int = 1024 * MiB
    block: int = MiB
    files: int = 10_000
    file_size: int = 4 * KiB
    empty_files: int = 5_000
    random_bytes: int = 64 * MiB  # the file random I/O runs in, written whole first
    random_block: int = 4 * KiB
    random_ops: int = 2_000  # per random run, or as many as fit in random_seconds
    random_seconds: float = 5.0
    parts: frozenset[Part] = frozenset(Part)

    @property
    def seq_label(self) -> str:
        size = self.seq_bytes // MiB
        return f"{size // 1024} GiB" if size % 1024 == 0 else f"{size} MiB"


class Figure(str, Enum):
    SEQ_WRITE = "seq_write"
    SEQ_READ_COLD = "seq_read_cold"
    SEQ_READ_WARM = "seq_read_warm"
    SEQ_READ_COLD_RANGED = "seq_read_cold_ranged"  # peers only: moto serving ranges without a copy
    SEQ_READ_WARM_RANGED = "seq_read_warm_ranged"
    CREATE = "create"
    STAT = "stat"
    READ = "read"
    LS_COLD = "ls_cold"
    LS_WARM = "ls_warm"
    CREATE_EMPTY = "create_empty"
    LISTDIR_COLD = "listdir_cold"
    DELETE = "delete"
    RAND_WRITE = "rand_write_fsync"
    RAND_READ_COLD = "rand_read_cold"
    RSS = "rss"
    RSS_AFTER = "rss_after"


class FigureSpec(BaseModel):
    label: str
    unit: str
    higher_is_better: bool = True


def figure_specs(w: Workload) -> dict[Figure, FigureSpec]:
    seq, n, size = w.seq_label, f"{w.files:,}", f"{w.file_size // KiB} KiB"
    m, block, rand = f"{w.empty_files:,}", f"{w.random_block // KiB} KiB", f"{w.random_bytes // MiB} MiB"
    return {
        Figure.SEQ_WRITE: FigureSpec(label=f"write {seq}, dd bs=1M conv=fsync", unit="MB/s"),
        Figure.SEQ_READ_COLD: FigureSpec(label=f"read {seq}, dd bs=1M, cold", unit="MB/s"),
        Figure.SEQ_READ_WARM: FigureSpec(label=f"read {seq}, dd bs=1M, warm", unit="MB/s"),
        Figure.SEQ_READ_COLD_RANGED: FigureSpec(label=f"read {seq}, cold, moto ranges w/o copy", unit="MB/s"),
        Figure.SEQ_READ_WARM_RANGED: FigureSpec(label=f"read {seq}, warm, moto ranges w/o copy", unit="MB/s"),
        Figure.CREATE: FigureSpec(label=f"create {n} files of {size}", unit="files/s"),
        Figure.STAT: FigureSpec(label=f"stat {n} files, cold", unit="files/s"),
        Figure.READ: FigureSpec(label=f"read {n} files of {size}, cold", unit="files/s"),
        Figure.LS_COLD: FigureSpec(label=f"ls -l of {n} entries, cold", unit="s", higher_is_better=False),
        Figure.LS_WARM: FigureSpec(label=f"ls -l of {n} entries, warm", unit="s", higher_is_better=False),
        Figure.CREATE_EMPTY: FigureSpec(label=f"create {m} empty files", unit="files/s"),
        Figure.LISTDIR_COLD: FigureSpec(label=f"os.listdir of {m} entries, cold", unit="ms", higher_is_better=False),
        Figure.DELETE: FigureSpec(label=f"delete {m} empty files (unlink)", unit="files/s"),
        Figure.RAND_WRITE: FigureSpec(label=f"random {block} pwrite + fsync, {rand} file", unit="IOPS"),
        Figure.RAND_READ_COLD: FigureSpec(label=f"random {block} pread, cold, QD1, {rand} file", unit="IOPS"),
        Figure.RSS: FigureSpec(label=f"peak RSS of the mount process, {seq} write", unit="MiB",
                               higher_is_better=False),
        Figure.RSS_AFTER: FigureSpec(label="RSS of the mount process after the workload", unit="MiB",
                                     higher_is_better=False),
    }


Samples = dict[Figure, list[float]]


# -- the machine


def drop_caches() -> None:
    """Write back and forget the page cache, dentries and inodes (needs root: cold figures depend on it)."""
    os.sync()
    Path("/proc/sys/vm/drop_caches").write_text("3\n")


def reset_peak_rss(pid: int | None) -> None:
    if pid is not None:
        Path(f"/proc/{pid}/clear_refs").write_text("5\n")  # VmHWM starts again from the current RSS


def peak_rss_mib(pid: int | None, field: str = "VmHWM") -> float | None:
    """The peak RSS of ``pid`` since the last reset (``field="VmRSS"``: the RSS now)."""
    if pid is None:
        return None
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) * KiB / MiB
    return None


def is_mounted(path: Path) -> bool:
    with open("/proc/self/mountinfo", encoding="utf-8") as table:
        return any(line.split()[4] == str(path) for line in table)


def wait_for(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.02)


# -- targets: where the workload runs


class Target:
    """A directory the workload runs in; mounts can be remounted for cold figures."""

    name = "target"

    def __init__(self, root: Path) -> None:
        self.root = root  # the directory the workload writes into

    @property
    def pid(self) -> int | None:
        """The process serving the mount (None for a plain directory)."""
        return None

    def start(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)

    def stop(self) -> None:
        pass

    def cold(self) -> None:
        """Forget everything cached: stop, drop the page cache, start again."""
        self.stop()
        drop_caches()
        self.start()

    def kill(self) -> None:
        """Last resort after a failure: detach and end whatever serves the target."""

    def check_stored(self, path: Path, size: int) -> None:
        """Raise unless ``size`` bytes written at ``path`` are in the store (peers look at S3)."""

    def notes(self) -> list[str]:
        return []


class NativeTarget(Target):
    name = "native"


class ProcessMount(Target):
    """A FUSE filesystem served by a foreground process we start: the passthrough, s3fs, rclone."""

    def __init__(self, mountpoint: Path, log: Path, env: dict[str, str] | None = None) -> None:
        super().__init__(mountpoint)
        self.mountpoint, self.log, self.env = mountpoint, log, env
        self.process: subprocess.Popen[bytes] | None = None

    def command(self) -> list[str]:
        raise NotImplementedError

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process else None

    def start(self) -> None:
        self.mountpoint.mkdir(parents=True, exist_ok=True)
        with open(self.log, "ab") as log:
            self.process = subprocess.Popen(self.command(), stdout=log, stderr=subprocess.STDOUT, env=self.env)
        process = self.process

        def mounted() -> bool:
            if process.poll() is not None:
                raise RuntimeError(f"{self.name} exited {process.returncode}; see {self.log}")
            return is_mounted(self.mountpoint)

        try:
            wait_for(mounted, MOUNT_TIMEOUT, f"{self.name} at {self.mountpoint}")
        except BaseException:
            self.kill()
            raise

    def stop(self) -> None:
        process, self.process = self.process, None
        if process is None:
            return
        try:
            self.unmount()
            process.wait(timeout=MOUNT_TIMEOUT)
        except (subprocess.TimeoutExpired, RuntimeError) as exc:
            self.process = process
            self.kill()
            raise RuntimeError(f"{self.name} did not unmount cleanly ({exc}); see {self.log}") from None

    def unmount(self) -> None:
        done = subprocess.run(["fusermount3", "-u", str(self.mountpoint)], capture_output=True, text=True,
                              check=False)
        if done.returncode != 0:
            raise RuntimeError(f"fusermount3 -u: {done.stderr.strip()}")

    def kill(self) -> None:
        subprocess.run(["fusermount3", "-uz", str(self.mountpoint)], capture_output=True, check=False)
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(timeout=MOUNT_TIMEOUT)
        self.process = None


class PassthroughTarget(ProcessMount):
    """libfuse's passthrough_ll over ``source``, keeping the page cache across opens as artifactfs does."""

    name = "passthrough"

    def __init__(self, binary: Path, source: Path, mountpoint: Path, log: Path) -> None:
        super().__init__(mountpoint, log)
        self.binary, self.source = binary, source
        source.mkdir(parents=True, exist_ok=True)

    def command(self) -> list[str]:
        return [str(self.binary), "-f", "-o", f"source={self.source}", "-o", "cache=always", str(self.mountpoint)]


def build_passthrough(into: Path) -> Path:
    """Compile libfuse's example (shipped by libfuse3-dev) into ``into``; never kept beyond the run."""
    source = EXAMPLES / f"{PASSTHROUGH}.c"
    if not source.exists() and source.with_suffix(".c.gz").exists():
        source = into / f"{PASSTHROUGH}.c"
        source.write_bytes(gzip.decompress((EXAMPLES / f"{PASSTHROUGH}.c.gz").read_bytes()))
    if not source.exists():
        raise RuntimeError(f"{EXAMPLES}/{PASSTHROUGH}.c not found: apt-get install libfuse3-dev")
    flags = subprocess.run(["pkg-config", "fuse3", "--cflags", "--libs"], capture_output=True, text=True,
                           check=True).stdout.split()
    binary = into / PASSTHROUGH
    subprocess.run(["cc", "-O2", f"-I{EXAMPLES}", str(source), *flags, "-o", str(binary)], check=True,
                   capture_output=True)
    return binary


class ArtifactfsTarget(ProcessMount):
    """``artifactfs mount --foreground`` as a user runs it; the workload runs in ``users/bench``."""

    name = "artifactfs"
    LOG_ALARMS = ("Traceback", "unexpected", " ERROR ", " CRITICAL ")  # as the mount tests judge its log

    def __init__(self, mountpoint: Path, data_dir: Path, log: Path, env: dict[str, str] | None = None) -> None:
        super().__init__(mountpoint, log, env)
        self.root = mountpoint / "users" / "bench"
        self.data_dir = data_dir
        self.log_alarms: list[str] = []

    def command(self) -> list[str]:
        return [sys.executable, "-m", "fusefs", "mount", str(self.mountpoint), "--data-dir", str(self.data_dir),
                "--foreground", "--sandbox", "bench"]

    def start(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        super().start()
        self.root.mkdir(exist_ok=True)  # a user space: mkdir users/<id>

    def unmount(self) -> None:
        done = subprocess.run([sys.executable, "-m", "fusefs", "umount", str(self.mountpoint)], cwd=REPO,
                              capture_output=True, text=True, check=False, env=self.env)
        if done.returncode != 0:
            raise RuntimeError(f"artifactfs umount failed: {done.stderr.strip()}")

    def stop(self) -> None:
        process = self.process
        super().stop()
        if process is not None and process.returncode != 0:
            raise RuntimeError(f"the artifactfs mount exited {process.returncode}; see {self.log}")
        mount_log = self.data_dir / "mount.log"
        if mount_log.exists():
            self.log_alarms += [line for line in mount_log.read_text(errors="replace").splitlines()
                                if any(alarm in line for alarm in self.LOG_ALARMS)]
            mount_log.unlink()  # the next mount's log starts empty

    def notes(self) -> list[str]:
        if not self.log_alarms:
            return []
        return [f"artifactfs logged {len(self.log_alarms)} error line(s), first: {self.log_alarms[0][:200]}"]


def stop_all(targets: Sequence[Target]) -> None:
    """Stop every target; a failed stop must not hide the error that got us here, so it is forced."""
    for target in targets:
        try:
            target.stop()
        except Exception:  # noqa: BLE001
            target.kill()


def remove_work_dir(base: Path) -> None:
    """Delete the bench's directory, unless something is still mounted under it."""
    with open("/proc/self/mountinfo", encoding="utf-8") as table:
        if any(line.split()[4].startswith(f"{base}/") for line in table):
            print(f"bench: left {base} in place: something is still mounted under it", file=sys.stderr)
            return
    shutil.rmtree(base, ignore_errors=True)


# -- the workload


def _timed(argv: Sequence[str]) -> tuple[float, str]:
    started = time.perf_counter()
    done = subprocess.run(argv, capture_output=True, text=True, check=False, env={**os.environ, "LC_ALL": "C"})
    elapsed = time.perf_counter() - started
    if done.returncode != 0:
        raise RuntimeError(f"`{' '.join(argv)}` exited {done.returncode}: {done.stderr.strip()}")
    return elapsed, done.stdout + done.stderr


def _dd_bytes(output: str) -> int:
    for line in output.splitlines():
        if " bytes" in line and "copied" in line:
            return int(line.split()[0])
    raise RuntimeError(f"no byte count in dd's output: {output!r}")


def dd_write(path: Path, w: Workload) -> float:
    seconds, out = _timed(["dd", "if=/dev/zero", f"of={path}", f"bs={w.block}", f"count={w.seq_bytes // w.block}",
                           "conv=fsync"])
    if _dd_bytes(out) != w.seq_bytes:
        raise RuntimeError(f"dd wrote {_dd_bytes(out)} bytes to {path}, not {w.seq_bytes}")
    return w.seq_bytes / MB / seconds


def dd_read(path: Path, w: Workload) -> float:
    seconds, out = _timed(["dd", f"if={path}", "of=/dev/null", f"bs={w.block}"])
    if _dd_bytes(out) != w.seq_bytes:
        raise RuntimeError(f"dd read {_dd_bytes(out)} bytes from {path}, not {w.seq_bytes}")
    return w.seq_bytes / MB / seconds


def _per_file(paths: list[Path], op: Callable[[Path], None]) -> float:
    started = time.perf_counter()
    for path in paths:
        op(path)
    return len(paths) / (time.perf_counter() - started)


def create_files(paths: list[Path], data: bytes) -> float:
    def create(path: Path) -> None:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            os.write(fd, data)
        finally:
            os.close(fd)

    return _per_file(paths, create)


def stat_files(paths: list[Path], size: int) -> float:
    def stat(path: Path) -> None:
        if os.stat(path).st_size != size:
            raise RuntimeError(f"{path}: size {os.stat(path).st_size}, not {size}")

    return _per_file(paths, stat)


def read_files(paths: list[Path], size: int) -> float:
    def read(path: Path) -> None:
        fd = os.open(path, os.O_RDONLY)
        try:
            got = len(os.read(fd, size + 1))
        finally:
            os.close(fd)
        if got != size:
            raise RuntimeError(f"{path}: read {got} bytes, not {size}")

    return _per_file(paths, read)


def ls_l(directory: Path, entries: int) -> float:
    seconds, out = _timed(["ls", "-l", str(directory)])
    listed = len(out.splitlines()) - 1  # less the "total" line
    if listed != entries:
        raise RuntimeError(f"ls -l {directory} listed {listed} entries, not {entries}")
    return seconds


class Pass(BaseModel):
    """What one repeat runs on a target: later repeats skip a part that was too slow to repeat."""

    tag: str
    parts: frozenset[Part] = frozenset(Part)
    ranged_variant: Callable[[bool], None] | None = None  # peers: switch moto's cheap ranges on/off


def run_workload(target: Target, w: Workload, run: Pass, into: Samples) -> dict[Part, float]:
    """One pass of the workload on ``target``; returns the seconds each part took.

    The mount's RSS is read last, after every part of the pass: what the
    process keeps once it has seen many files and a big write.
    """
    took: dict[Part, float] = {}
    steps = {Part.SEQUENTIAL: _sequential, Part.SMALL_FILES: _small_files, Part.METADATA: _metadata,
             Part.RANDOM: _random_io}
    for part, step in steps.items():
        if part in run.parts and part in w.parts:
            started = time.perf_counter()
            step(target, w, run, into)
            took[part] = time.perf_counter() - started
    rss = peak_rss_mib(target.pid, "VmRSS")
    if rss is not None:
        into.setdefault(Figure.RSS_AFTER, []).append(rss)
    return took


def _sequential(target: Target, w: Workload, run: Pass, into: Samples) -> None:
    big = target.root / f"big-{run.tag}"
    reset_peak_rss(target.pid)
    into.setdefault(Figure.SEQ_WRITE, []).append(dd_write(big, w))
    rss = peak_rss_mib(target.pid)
    if rss is not None:
        into.setdefault(Figure.RSS, []).append(rss)
    target.check_stored(big, w.seq_bytes)
    reads = [(Figure.SEQ_READ_COLD, Figure.SEQ_READ_WARM, False)]
    if run.ranged_variant is not None:
        reads.append((Figure.SEQ_READ_COLD_RANGED, Figure.SEQ_READ_WARM_RANGED, True))
    try:
        for cold, warm, ranged in reads:
            if run.ranged_variant is not None:
                run.ranged_variant(ranged)
            target.cold()
            into.setdefault(cold, []).append(dd_read(big, w))
            into.setdefault(warm, []).append(dd_read(big, w))
    finally:
        if run.ranged_variant is not None:
            run.ranged_variant(False)
    big.unlink()


def _small_files(target: Target, w: Workload, run: Pass, into: Samples) -> None:
    directory = target.root / f"files-{run.tag}"
    directory.mkdir()
    paths = [directory / f"f{i:05d}" for i in range(w.files)]
    into.setdefault(Figure.CREATE, []).append(create_files(paths, os.urandom(w.file_size)))
    target.cold()
    into.setdefault(Figure.LS_COLD, []).append(ls_l(directory, w.files))
    into.setdefault(Figure.LS_WARM, []).append(ls_l(directory, w.files))
    target.cold()
    into.setdefault(Figure.STAT, []).append(stat_files(paths, w.file_size))
    target.cold()
    into.setdefault(Figure.READ, []).append(read_files(paths, w.file_size))


def create_empty(paths: list[Path]) -> float:
    def create(path: Path) -> None:
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644))

    return _per_file(paths, create)


def delete_files(paths: list[Path]) -> float:
    return _per_file(paths, os.unlink)


def listdir_ms(directory: Path, entries: int) -> float:
    started = time.perf_counter()
    listed = len(os.listdir(directory))
    elapsed = time.perf_counter() - started
    if listed != entries:
        raise RuntimeError(f"os.listdir({directory}) gave {listed} entries, not {entries}")
    return elapsed * 1000


def _metadata(target: Target, w: Workload, run: Pass, into: Samples) -> None:
    directory = target.root / f"empty-{run.tag}"
    directory.mkdir()
    paths = [directory / f"e{i:05d}" for i in range(w.empty_files)]
    into.setdefault(Figure.CREATE_EMPTY, []).append(create_empty(paths))
    target.cold()
    into.setdefault(Figure.LISTDIR_COLD, []).append(listdir_ms(directory, w.empty_files))
    into.setdefault(Figure.DELETE, []).append(delete_files(paths))
    directory.rmdir()


def _offsets(w: Workload, seed: str) -> list[int]:
    """The same block-aligned random offsets on every target of a round (seeded by the round)."""
    chooser = random.Random(seed)
    return [chooser.randrange(w.random_bytes // w.random_block) * w.random_block for _ in range(w.random_ops)]


def _bounded_iops(fd: int, offsets: list[int], seconds: float, op: Callable[[int, int], None]) -> float:
    """``op(fd, offset)`` for each offset, one at a time, until the offsets or ``seconds`` run out."""
    started = time.perf_counter()
    deadline, done = started + seconds, 0
    for offset in offsets:
        op(fd, offset)
        done += 1
        if time.perf_counter() > deadline:
            break
    return done / (time.perf_counter() - started)


def _random_io(target: Target, w: Workload, run: Pass, into: Samples) -> None:
    """4 KiB pwrite + fsync at random offsets of a file written whole first; then 4 KiB preads there, cold."""
    path = target.root / f"random-{run.tag}"
    block = os.urandom(w.block)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        for _ in range(w.random_bytes // w.block):
            os.write(fd, block)
        os.fsync(fd)
    finally:
        os.close(fd)
    small = os.urandom(w.random_block)

    def write(fd: int, offset: int) -> None:
        if os.pwrite(fd, small, offset) != len(small):
            raise RuntimeError(f"{path}: short write at {offset}")
        os.fsync(fd)

    def read(fd: int, offset: int) -> None:
        if len(os.pread(fd, w.random_block, offset)) != w.random_block:
            raise RuntimeError(f"{path}: short read at {offset}")

    def timed(figure: Figure, flags: int, what: str, op: Callable[[int, int], None]) -> None:
        fd = os.open(path, flags)
        try:
            offsets = _offsets(w, f"{what} {run.tag}")
            into.setdefault(figure, []).append(_bounded_iops(fd, offsets, w.random_seconds, op))
        finally:
            os.close(fd)

    timed(Figure.RAND_WRITE, os.O_WRONLY, "write", write)
    target.cold()
    timed(Figure.RAND_READ_COLD, os.O_RDONLY, "read", read)
    path.unlink()


def measure(targets: Sequence[Target], w: Workload, repeat: int,
            ranged_variant: Callable[[bool], None] | None = None) -> tuple[dict[str, Samples], list[str]]:
    """Every target through ``repeat`` passes of the workload, interleaved; samples per target, and notes.

    A part that took longer than ``REPEAT_BUDGET`` on a target is not repeated
    there (its rows are of one run, and a note says so): the section stays
    within minutes when one target is very slow.
    """
    samples: dict[str, Samples] = {t.name: {} for t in targets}
    once: dict[tuple[str, Part], float] = {}  # (target, part) -> seconds, for parts over budget
    for n in range(repeat):
        for target in targets:
            parts = frozenset(p for p in Part if (target.name, p) not in once)
            if not parts:
                continue
            took = run_workload(target, w, Pass(tag=str(n), parts=parts, ranged_variant=ranged_variant),
                                samples[target.name])
            for part, seconds in took.items():
                if seconds > REPEAT_BUDGET and n + 1 < repeat:
                    once[target.name, part] = seconds
    notes = [f"{name}: the {part.value} rows are of 1 run (that part took {seconds:.0f} s, over the "
             f"{REPEAT_BUDGET:.0f} s budget for repeats)" for (name, part), seconds in once.items()]
    return samples, notes


def build_table(title: str, w: Workload, subject: str, refs: Sequence[str], samples: dict[str, Samples]) -> Table:
    """Rows per figure: ``subject``'s samples beside each reference's from the same rounds."""
    table = Table(title=title, key_columns=["figure"], ref_columns=list(refs))
    for figure, spec in figure_specs(w).items():
        mine = samples[subject].get(figure)
        if not mine:
            continue
        theirs = {ref: samples[ref].get(figure) for ref in refs}
        table.add([spec.label], mine, spec.unit, higher_is_better=spec.higher_is_better, **theirs)
    return table


# -- the section


class Goal(BaseModel):
    text: str
    figure: Figure
    versus: str | None = None  # a reference column: the goal is a ratio to it
    at_least: float | None = None
    at_most: float | None = None


GOALS = [
    Goal(text="sequential write >= 60% of the C passthrough", figure=Figure.SEQ_WRITE, versus="passthrough",
         at_least=0.6),
    Goal(text="sequential read, cold >= 60% of the C passthrough", figure=Figure.SEQ_READ_COLD,
         versus="passthrough", at_least=0.6),
    Goal(text="sequential read, warm >= 60% of the C passthrough", figure=Figure.SEQ_READ_WARM,
         versus="passthrough", at_least=0.6),
    Goal(text="warm reads >= 1 GB/s", figure=Figure.SEQ_READ_WARM, at_least=1000.0),
    Goal(text="small-file creates >= 2,000 files/s", figure=Figure.CREATE, at_least=2000.0),
    Goal(text="ls -l of {files} entries < 1 s, cold", figure=Figure.LS_COLD, at_most=1.0),
    Goal(text="ls -l of {files} entries < 1 s, warm", figure=Figure.LS_WARM, at_most=1.0),
]


def goals_table(samples: dict[str, Samples], w: Workload) -> Table:
    table = Table(title="mount: targets (issue 3)", key_columns=["target", "verdict"], ref_columns=[])
    mine = samples["artifactfs"]
    for goal in GOALS:
        if not mine.get(goal.figure):
            continue
        value: float | None = median(mine[goal.figure])
        unit = figure_specs(w)[goal.figure].unit
        if goal.versus is not None:
            # the figure over the reference's of the same round, median over the rounds
            value = paired_ratio(mine[goal.figure], samples[goal.versus].get(goal.figure) or [])
            if value is None:
                continue
            unit = f"x {goal.versus}"
        met = (goal.at_least is None or value >= goal.at_least) and (goal.at_most is None or value <= goal.at_most)
        table.add([goal.text.format(files=f"{w.files:,}"), "met" if met else "MISSED"], [value], unit)
    return table


def run(ctx: Context, workload: Workload | None = None) -> Iterator[Table]:
    w = workload or Workload()
    ctx.work_dir.mkdir(parents=True, exist_ok=True)
    base = Path(tempfile.mkdtemp(prefix="artifactfs-bench-mount-", dir=ctx.work_dir))
    load_before = load_line()
    targets: list[Target] = []
    try:
        binary = build_passthrough(base)
        targets = [
            ArtifactfsTarget(base / "af-mnt", base / "af-data", base / "artifactfs.log"),
            PassthroughTarget(binary, base / "pt-src", base / "pt-mnt", base / "passthrough.log"),
            NativeTarget(base / "native"),
        ]
        for target in targets:
            target.start()
        started = time.perf_counter()
        samples, notes = measure(targets, w, ctx.repeat)
        elapsed = time.perf_counter() - started
        for target in targets:
            target.stop()
        table = build_table(f"mount: artifactfs (embedded default) vs libfuse {PASSTHROUGH} vs native, "
                            f"{filesystem_of(base)}", w, "artifactfs", ["passthrough", "native"], samples)
        table.notes += [
            f"median of {ctx.repeat} interleaved rounds ({elapsed:.0f} s); before: {load_before}; after: {load_line()}",
            (f"passthrough: libfuse's {PASSTHROUGH}.c example built with cc -O2 at bench time, -o cache=always "
            "(keeps the page cache across opens, as artifactfs does); native: the directory under it"),
            "cold: page cache dropped (echo 3 > drop_caches) and the mount remounted; warm: read again at once",
            ("create: open(O_CREAT|O_TRUNC) + one 4 KiB write + close per file, no fsync, as cp or tar do "
            "(artifactfs publishes at close and makes it durable in the background); stat / read / ls -l run "
            "after a remount + drop_caches"),
            (f"empty files: open(O_CREAT|O_EXCL) + close, then os.listdir after a remount + drop_caches, then "
             "unlink of each; random I/O: the file is written whole (1 MiB writes + fsync, not timed), then "
             f"pwrite + fsync of {w.random_block // KiB} KiB at random aligned offsets, then (remount + drop_caches) "
             f"pread of {w.random_block // KiB} KiB at others, one at a time; each random run stops at "
             f"{w.random_ops:,} ops or {w.random_seconds:g} s; the offsets are the same on every target of a round"),
            ("RSS after the workload: VmRSS of the mount process at the end of each round's pass, after 10,000 "
             "small files and the big write (files from earlier rounds stay)"),
            *notes,
            *(n for t in targets for n in t.notes()),
        ]
        yield table
        yield goals_table(samples, w)
    finally:
        stop_all(targets)
        if not ctx.keep:
            remove_work_dir(base)


SECTION = Section("mount", "the FUSE mount vs libfuse's C passthrough and the native disk (1 GiB, 10,000 files, "
                  "5,000 empty files, random 4 KiB I/O)", run)


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeat", type=int, default=Context().repeat)
    parser.add_argument("--work-dir", type=Path, default=Context().work_dir)
    parser.add_argument("--keep", action="store_true")
    parser.add_argument("--seq-mib", type=int, default=Workload().seq_bytes // MiB, help="size of the big file")
    parser.add_argument("--files", type=int, default=Workload().files, help="number of small files")
    args = parser.parse_args()
    for result in run(Context(repeat=args.repeat, work_dir=args.work_dir, keep=args.keep),
                      Workload(seq_bytes=args.seq_mib * MiB, files=args.files)):
        print(result.render(), flush=True)
