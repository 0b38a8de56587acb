"""scripts/conformance: fsx and pjdfstest in a real artifactfs mount, on each world.

Run through ``scripts/conformance``, which sets up, builds the tools from
``../shared/tools`` and exports ``FSX_BIN``, ``PJDFSTEST_DIR`` and
``CONFORMANCE_TOOLS`` (the folder holding ``run_fsx.sh`` and
``run_pjdfstest.sh``). For each world and each tool:

- a fresh data dir and mountpoint (under ``$CONFORMANCE_WORK_DIR``, default
  ``/var/tmp``, a real disk); on ``redis-s3`` a redis-server and moto in
  server mode on free 127.0.0.1 ports (the test fixtures' launchers from
  ``tests/servers.py``, the mount's environment from ``tests/fuse/worlds.py``),
  started once for the world and stopped after it;
- ``artifactfs mount MNT --data-dir D --foreground --sandbox conformance
  -o allow_other --admin-uid 65531 ... --admin-uid 65534`` (pjdfstest's uids
  must reach the user space), then ``mkdir MNT/users/conformance``;
- the runner in that directory, its output shown and kept in the log dir;
- ``artifactfs umount``; the mount process must exit 0 and its log must hold
  no alarm (``Traceback``, ``ERROR``, ``CRITICAL``, ``unexpected``, ``no answer
  after``), as the tests require of every mount. ``mount.log`` is kept.

Whatever happens (a failure, Ctrl-C, SIGTERM), the runners' processes are
killed, every mount is unmounted (``artifactfs umount --force``, else
``fusermount3 -uz`` and SIGKILL), the servers are stopped and the temporary
directories removed. The runners' own knobs (``FSX_OPS``, ``FSX_SEED``,
``FSX_TIMEOUT``, ``FSX_NO_MMAP``, ``FSX_PARALLEL``, ``FSX_DIRECT``,
``PJDFSTEST_TESTS``, ``PROVE_JOBS``, ...) pass through the environment;
``FSX_LOGDIR`` and ``PJDFSTEST_LOG`` are set here, into the log dir.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))  # the test fixtures' redis-server and moto
sys.path.insert(0, str(REPO / "tests" / "fuse"))  # ... and the mount environment of each world

from servers import AWS_ENV, MotoServer, RedisServer
from worlds import StoreWorld, WorldKind

WORLDS = ("embedded", "redis-s3")
TOOLS = ("fsx", "pjdfstest")
SANDBOX = "conformance"
USER = "conformance"
PJDFSTEST_UIDS = (65531, 65532, 65533, 65534)  # the uids and gids pjdfstest switches to
ARTIFACTFS = REPO / ".venv" / "bin" / "artifactfs"
MOUNT_READY_TIMEOUT = 60.0
UMOUNT_TIMEOUT = 180.0  # publishing what is still staged, on a slow moto
KILL_WAIT = 30.0
# Lines in the mount's log that mean something went wrong inside it (tests/fuse/mounting.py's, and the watchdog's).
LOG_ALARMS = ("Traceback", "unexpected", " ERROR ", " CRITICAL ", "no answer after")


class Interrupted(Exception):
    """SIGINT, SIGTERM or SIGHUP: stop, clean up, exit 130."""


def say(line: str = "") -> None:
    print(line, flush=True)


def is_mounted(path: Path) -> bool:
    with open("/proc/self/mountinfo", encoding="utf-8") as table:
        return any(line.split()[4] == str(path) for line in table)


def wait_for(condition, timeout: float, interval: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(interval)
    return True


def elapsed(seconds: float) -> str:
    return f"{seconds:.0f}s" if seconds < 120 else f"{seconds / 60:.1f}min"


# -- the mount


@dataclass
class Mount:
    """``artifactfs mount --foreground`` in a session of its own (Ctrl-C reaches us, we unmount it)."""

    mountpoint: Path
    data_dir: Path
    logs: Path
    env: dict[str, str]
    extra_args: list[str]
    process: subprocess.Popen | None = None
    problems: list[str] = field(default_factory=list)

    @property
    def log_path(self) -> Path:
        return self.data_dir / "mount.log"

    def start(self) -> None:
        for path in (self.mountpoint, self.data_dir):
            path.mkdir(parents=True, exist_ok=True)
        self.mountpoint.chmod(0o755)
        command = [str(ARTIFACTFS), "mount", str(self.mountpoint), "--data-dir", str(self.data_dir), "--foreground",
                   "--sandbox", SANDBOX, "-o", "allow_other"]
        for uid in PJDFSTEST_UIDS:
            command += ["--admin-uid", str(uid)]
        command += self.extra_args
        (self.logs / "mount.command").write_text(" ".join(command) + "\n")
        with open(self.logs / "mount.stderr", "wb") as stderr:
            self.process = subprocess.Popen(command, cwd=REPO, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                            stderr=stderr, env=self.env, start_new_session=True)
        process = self.process
        if not wait_for(lambda: process.poll() is not None or (is_mounted(self.mountpoint)
                                                                and self.mountpoint.is_dir()), MOUNT_READY_TIMEOUT):
            self.kill()
            raise RuntimeError(f"the mount at {self.mountpoint} did not answer within {MOUNT_READY_TIMEOUT:.0f} s")
        if process.poll() is not None:
            raise RuntimeError(f"`artifactfs mount` exited {process.returncode}:\n{self.stderr_tail()}")

    def stderr_tail(self, lines: int = 20) -> str:
        text = (self.logs / "mount.stderr").read_text(errors="replace")
        return "\n".join(text.splitlines()[-lines:])

    def alive(self) -> bool:
        """The mount answers (a connection aborted by run_fsx.sh's timeout does not)."""
        try:
            os.stat(self.mountpoint / "users")
            return True
        except OSError:
            return False

    def stop(self, *, force: bool = False) -> None:
        """Unmount with the CLI (``--force`` after an interrupt); record what was not clean."""
        process = self.process
        if process is None:
            return
        try:
            if process.poll() is None:
                argv = [str(ARTIFACTFS), "umount", *(["--force"] if force else []), str(self.mountpoint)]
                try:
                    done = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=UMOUNT_TIMEOUT,
                                          check=False, start_new_session=True)
                    if done.returncode != 0:
                        self.problems.append(f"`{' '.join(argv[1:])}` exited {done.returncode}: "
                                             f"{(done.stderr or done.stdout).strip()[-500:]}")
                except subprocess.TimeoutExpired:
                    self.problems.append(f"`artifactfs umount` did not finish within {UMOUNT_TIMEOUT:.0f} s")
                try:
                    process.wait(timeout=KILL_WAIT)
                except subprocess.TimeoutExpired:
                    self.problems.append(f"the mount process did not exit within {KILL_WAIT:.0f} s of the unmount")
            if process.poll() is None or is_mounted(self.mountpoint):
                self.kill()
                self.problems.append("killed: fusermount3 -uz and SIGKILL")
            elif process.returncode != 0:
                self.problems.append(f"the mount process exited {process.returncode}")
        finally:
            self.keep_log()

    def kill(self) -> None:
        """Last resort: detach the mount and kill its process (requests stuck on it fail)."""
        subprocess.run(["fusermount3", "-uz", str(self.mountpoint)], capture_output=True, check=False)
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            try:
                self.process.wait(timeout=KILL_WAIT)
            except subprocess.TimeoutExpired:
                pass

    def keep_log(self) -> None:
        if self.log_path.exists():
            shutil.copyfile(self.log_path, self.logs / "mount.log")

    def alarms(self) -> list[str]:
        lines = []
        for name in ("mount.log", "mount.stderr"):
            path = self.logs / name
            if path.exists():
                lines += [f"{name}: {line}" for line in path.read_text(errors="replace").splitlines()
                          if any(alarm in line for alarm in LOG_ALARMS)]
        return lines


# -- a world


class World:
    """Where a mount's store lives; the redis-s3 world owns its servers while it runs."""

    def __init__(self, name: str, work: Path, logs: Path) -> None:
        self.name, self.work, self.logs = name, work, logs
        self.redis: RedisServer | None = None
        self.moto: MotoServer | None = None
        self.world = StoreWorld(WorldKind.EMBEDDED)

    def start(self) -> None:
        if self.name != "redis-s3":
            return
        self.redis = RedisServer(self.logs / "redis")
        self.moto = MotoServer(self.logs / "moto")
        saved = {name: os.environ.get(name) for name in AWS_ENV}
        os.environ.update(AWS_ENV)  # moto_server inherits them, as with the fixtures
        try:
            self.redis.start()
            self.moto.start()  # and makes the bucket
        finally:
            for name, value in saved.items():
                if value is None:
                    os.environ.pop(name, None)
                else:
                    os.environ[name] = value
        self.world = StoreWorld(WorldKind.REDIS_S3, redis=self.redis, moto=self.moto)
        say(f"conformance[{self.name}]: redis-server at {self.redis.url}, moto at {self.moto.endpoint} "
            f"(logs in {self.logs})")

    def mount_env(self, data_dir: Path) -> dict[str, str]:
        return self.world.mount_env(data_dir, os.environ)

    def stop(self) -> None:
        for server in (self.moto, self.redis):
            if server is not None:
                try:
                    server.stop()
                except Exception as exc:  # noqa: BLE001 (cleanup goes on)
                    say(f"conformance[{self.name}]: stopping {server.name}: {exc}")
        self.moto = self.redis = None


# -- the runners


@dataclass
class Result:
    tool: str
    rc: int | None = None
    figure: str = "not run"
    seconds: float = 0.0
    mount_problems: list[str] = field(default_factory=list)
    alarms: list[str] = field(default_factory=list)
    error: str = ""

    @property
    def ok(self) -> bool:
        return self.rc == 0 and not self.mount_problems and not self.alarms and not self.error

    def line(self) -> str:
        text = f"{self.tool} {self.figure}"
        notes = []
        if self.error:
            notes.append(self.error)
        if self.mount_problems:
            notes.append("unmount not clean")
        if self.alarms:
            notes.append(f"{len(self.alarms)} alarm line(s) in mount log")
        return text + f" ({elapsed(self.seconds)}" + "".join(f"; {n}" for n in notes) + ")"


class ToolRun:
    """A runner script in a process group of its own, its output shown and kept."""

    def __init__(self) -> None:
        self.process: subprocess.Popen | None = None

    def run(self, argv: list[str], env: dict[str, str], out_path: Path, timeout: float | None,
            on_timeout) -> tuple[int, str]:
        lines: list[str] = []

        def pump(stream, out) -> None:
            for line in stream:
                out.write(line)
                out.flush()
                lines.append(line.rstrip("\n"))
                print("  " + line, end="", flush=True)

        with open(out_path, "w", encoding="utf-8") as out:
            self.process = subprocess.Popen(argv, cwd=REPO, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                            stderr=subprocess.STDOUT, text=True, errors="replace",
                                            start_new_session=True)
            reader = threading.Thread(target=pump, args=(self.process.stdout, out), daemon=True)
            reader.start()
            deadline = time.monotonic() + timeout if timeout else None
            while self.process.poll() is None:
                if deadline is not None and time.monotonic() > deadline:
                    say(f"conformance: {Path(argv[0]).name} is past {timeout:.0f} s; stopping it and the mount")
                    out.write(f"conformance: stopped after {timeout:.0f} s\n")
                    on_timeout()
                    self.kill()
                    break
                time.sleep(0.2)
            rc = self.wait()
            reader.join(timeout=KILL_WAIT)
        self.process = None
        return rc, "\n".join(lines)

    def wait(self) -> int:
        assert self.process is not None
        try:
            return self.process.wait(timeout=KILL_WAIT)
        except subprocess.TimeoutExpired:
            self.kill()
            try:
                return self.process.wait(timeout=KILL_WAIT)
            except subprocess.TimeoutExpired:
                return -9

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            try:
                os.killpg(self.process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def run_tool(tool: str, world: World, base: Path, logs: Path, args: argparse.Namespace, state: dict) -> Result:
    result = Result(tool)
    tools_dir = Path(os.environ["CONFORMANCE_TOOLS"])
    logs.mkdir(parents=True, exist_ok=True)
    root = base / f"{world.name}-{tool}"
    root.mkdir()
    root.chmod(0o755)
    data_dir = root / "data"
    mount = Mount(root / "mnt", data_dir, logs, world.mount_env(data_dir), args.mount_arg)
    state["mount"] = mount
    started = time.monotonic()
    interrupted = False
    try:
        say(f"== conformance[{world.name}]: {tool}: mounting at {mount.mountpoint} (data dir {data_dir})")
        mount.start()
        user_dir = mount.mountpoint / "users" / USER
        user_dir.mkdir(exist_ok=True)
        env = dict(os.environ)
        if tool == "fsx":
            env["FSX_LOGDIR"] = str(logs / "runs")
            argv = [str(tools_dir / "run_fsx.sh"), str(user_dir)]
            timeout = None  # run_fsx.sh bounds every run (FSX_TIMEOUT)
        else:
            env["PJDFSTEST_LOG"] = str(logs / "prove.log")
            argv = [str(tools_dir / "run_pjdfstest.sh"), str(user_dir)]
            timeout = args.pjdfstest_timeout
        runner = ToolRun()
        state["runner"] = runner
        rc, text = runner.run(argv, env, logs / f"{tool}.out", timeout, on_timeout=mount.kill)
        state["runner"] = None
        result.rc = rc
        if tool == "fsx":
            found = re.search(r"^fsx: (\d+)/(\d+) runs passed", text, re.MULTILINE)
            failed = re.findall(r"^fsx\[([^\]]+)\]: FAIL", text, re.MULTILINE)
            result.figure = f"{found.group(1)}/{found.group(2)}" if found else f"no summary (rc={rc})"
            if failed:
                result.figure += f" (failed: {', '.join(failed)})"
        else:
            found = re.search(r"^pjdfstest: (\S+) files, (\S+) tests, (\d+) failed \((\d+) failing files", text, re.MULTILINE)
            result.figure = (f"{found.group(3)}/{found.group(2)} failed in {found.group(4)}/{found.group(1)} files"
                             if found else f"no summary (rc={rc})")
        if not mount.alive():
            result.error = "the mount stopped answering during the run"
    except Interrupted:
        interrupted = True  # main() stops the runner, then the mount (state), then the servers
        raise
    except Exception as exc:  # noqa: BLE001 (reported, the other runs go on)
        result.error = f"{type(exc).__name__}: {exc}"
    finally:
        if not interrupted:
            finish_tool(world, tool, mount, result, started, root, logs, args, state)
    return result


def finish_tool(world: World, tool: str, mount: Mount, result: Result, started: float, root: Path, logs: Path,
                args: argparse.Namespace, state: dict) -> None:
    """Unmount, keep the mount's log, look for alarms in it, say how it went."""
    mount.stop(force=bool(result.error))
    state["mount"] = None
    result.seconds = time.monotonic() - started
    result.mount_problems = mount.problems
    result.alarms = mount.alarms()
    for problem in mount.problems:
        say(f"conformance[{world.name}]: {tool}: mount: {problem}")
    if result.alarms:
        say(f"conformance[{world.name}]: {tool}: {len(result.alarms)} alarm line(s) in the mount's log, e.g.:")
        for line in result.alarms[:8]:
            say(f"    {line[:300]}")
    say(f"conformance[{world.name}]: {result.line()}; logs in {logs}")
    if not args.keep and not is_mounted(mount.mountpoint):
        shutil.rmtree(root, ignore_errors=True)


# -- main


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="scripts/conformance",
        description="Run fsx and pjdfstest (../shared/tools) in a real artifactfs mount, on the embedded world "
                    "and on Redis + S3 (redis-server and moto started here). Needs root.",
        epilog="The runners' knobs pass through the environment: FSX_OPS, FSX_SEED, FSX_TIMEOUT (default 600 s a "
               "run), FSX_NO_MMAP, FSX_PARALLEL, FSX_DIRECT, PJDFSTEST_TESTS, PROVE_JOBS. Also: "
               "CONFORMANCE_BUILD_DIR (tools, default .venv/conformance), CONFORMANCE_WORK_DIR (data dirs and "
               "mountpoints, default /var/tmp), CONFORMANCE_LOG_DIR (default: a new /tmp/artifactfs-conformance.*).",
    )
    parser.add_argument("--only", choices=TOOLS, action="append", help="run only this tool (repeatable)")
    parser.add_argument("--world", choices=WORLDS, action="append", help="run only on this world (repeatable)")
    parser.add_argument("--log-dir", type=Path, default=os.environ.get("CONFORMANCE_LOG_DIR"),
                        help="where every output and mount log is kept")
    parser.add_argument("--mount-arg", action="append", default=[], metavar="ARG",
                        help="one more argument to `artifactfs mount`, e.g. --mount-arg=--debug (repeatable)")
    parser.add_argument("--pjdfstest-timeout", type=float, default=float(os.environ.get("PJDFSTEST_TIMEOUT", "5400")),
                        metavar="SECONDS", help="stop pjdfstest after this long (default 5400, or $PJDFSTEST_TIMEOUT)")
    parser.add_argument("--keep", action="store_true", help="keep the data dirs (mount.log is kept in any case)")
    return parser.parse_args()


def main() -> int:
    args = parse_args()
    tools = [t for t in TOOLS if t in (args.only or TOOLS)]
    worlds = [w for w in WORLDS if w in (args.world or WORLDS)]
    if os.geteuid() != 0:
        say("conformance: must run as root (pjdfstest switches uids, fsx drops the page cache)")
        return 2
    for name in ("FSX_BIN", "PJDFSTEST_DIR", "CONFORMANCE_TOOLS"):
        if not os.environ.get(name):
            say(f"conformance: {name} is not set; run scripts/conformance, which builds the tools")
            return 2

    stamp = time.strftime("%Y%m%d-%H%M%S")
    log_root = args.log_dir or Path(tempfile.mkdtemp(prefix=f"artifactfs-conformance.{stamp}.", dir="/tmp"))
    log_root = Path(log_root).resolve()
    log_root.mkdir(parents=True, exist_ok=True)
    work_parent = Path(os.environ.get("CONFORMANCE_WORK_DIR", "/var/tmp"))
    base = Path(tempfile.mkdtemp(prefix="artifactfs-conformance.", dir=work_parent))
    base.chmod(0o755)  # pjdfstest's uids must be able to reach the mount
    say(f"conformance: tools {', '.join(tools)} on {', '.join(worlds)}; logs in {log_root}; work in {base}")

    def interrupted(signum, _frame) -> None:
        raise Interrupted(signal.Signals(signum).name)

    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, interrupted)

    results: dict[str, list[Result]] = {w: [] for w in worlds}
    world_seconds: dict[str, float] = {}
    state: dict = {"runner": None, "mount": None, "world": None}
    stopped_by = None
    try:
        for name in worlds:
            world = World(name, base, log_root / name)
            world.logs.mkdir(parents=True, exist_ok=True)
            state["world"] = world
            started = time.monotonic()
            try:
                world.start()
                for tool in tools:
                    results[name].append(run_tool(tool, world, base, world.logs / tool, args, state))
            except Interrupted:
                raise  # the cleanup below stops the runner and the mount before the servers
            except Exception as exc:  # noqa: BLE001 (servers failed to start)
                failed = Result("world", error=f"{type(exc).__name__}: {exc}")
                results[name].append(failed)
                say(f"conformance[{name}]: {failed.error}")
            world.stop()
            state["world"] = None
            world_seconds[name] = time.monotonic() - started
    except Interrupted as exc:
        stopped_by = str(exc)
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, signal.SIG_IGN)  # cleaning up: a second Ctrl-C must not leave a mount behind
        if stopped_by:
            say(f"conformance: {stopped_by}: stopping the runners, unmounting, stopping the servers")
        runner, mount, world = state["runner"], state["mount"], state["world"]
        if runner is not None:
            runner.kill()
        if mount is not None:
            mount.stop(force=True)
            for problem in mount.problems:
                say(f"conformance: mount: {problem}")
        if runner is not None and runner.process is not None:
            runner.wait()
        if world is not None:
            world.stop()
        if not args.keep:
            leftovers = [p for p in base.glob("*/mnt") if is_mounted(p)]
            if leftovers:
                say(f"conformance: still mounted, not removing {base}: {', '.join(map(str, leftovers))}")
            else:
                shutil.rmtree(base, ignore_errors=True)

    say("")
    ok = not stopped_by
    for name in worlds:
        if not results[name]:
            continue
        ok = ok and all(r.ok for r in results[name])
        say(f"conformance[{name}]: " + ", ".join(r.line() for r in results[name])
            + f"  [{elapsed(world_seconds.get(name, 0.0))}]")
    if stopped_by:
        say(f"conformance: stopped by {stopped_by}")
    say(f"conformance: {'PASS' if ok else 'FAIL'} (logs: {log_root})")
    return 130 if stopped_by else (0 if ok else 1)


if __name__ == "__main__":
    sys.exit(main())
