"""Real artifactfs mounts for tests: the CLI in a subprocess, on temporary directories.

``start_mount`` runs ``artifactfs mount ... --foreground`` exactly as a user
would, waits (bounded) until the mount answers, and returns a :class:`Mount`.
``Mount.stop`` unmounts with ``artifactfs umount`` and checks that the mount
process exited 0 and logged no unexpected error. Fixtures in ``conftest.py``
wrap these; other test files reuse them directly for mounts of their own
(several at once, other options, a data dir shared with a library store).
"""

from __future__ import annotations

import os
import re
import shlex
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families
from worlds import EMBEDDED, StoreWorld

from core import ArtifactStore

REPO = Path(__file__).resolve().parents[2]
READY_TIMEOUT = 30.0
EXIT_TIMEOUT = 60.0

# Lines in the mount's log that mean something went wrong inside it.
LOG_ALARMS = ("Traceback", "unexpected", " ERROR ", " CRITICAL ")


def artifactfs(*args: str | os.PathLike[str], env: dict[str, str] | None = None, **kwargs) -> subprocess.CompletedProcess:
    """Run the ``artifactfs`` command (as ``python -m fusefs``) and capture its output."""
    return subprocess.run(
        [sys.executable, *ARTIFACTFS, *map(str, args)], capture_output=True, text=True, cwd=REPO,
        env=env, check=False, **kwargs,
    )


def wait_for(condition, timeout: float, what: str, interval: float = 0.02) -> None:
    """Poll ``condition`` until it holds; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)


def is_mounted(path: Path) -> bool:
    with open("/proc/self/mountinfo", encoding="utf-8") as table:
        return any(line.split()[4] == str(path) for line in table)


def abort_connection(connection: int) -> None:
    """Fail every request of a FUSE connection (fusectl's ``abort``): frees processes stuck on it."""
    connections = Path("/sys/fs/fuse/connections")
    if not (connections / str(connection)).exists():
        subprocess.run(["mount", "-t", "fusectl", "none", str(connections)], capture_output=True, check=False)
    (connections / str(connection) / "abort").write_text("1")


@dataclass
class Mount:
    mountpoint: Path
    data_dir: Path
    sandbox: str | None
    process: subprocess.Popen
    stderr_path: Path
    check_log: bool = True
    world: StoreWorld = EMBEDDED  # where its store lives (tests/fuse/worlds.py)
    stopped: bool = field(default=False, init=False)

    def __truediv__(self, relative: str) -> Path:
        return self.mountpoint / relative

    @property
    def log_path(self) -> Path:
        return self.data_dir / "mount.log"

    def log_text(self) -> str:
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        return text + self.stderr_path.read_text(errors="replace")

    def store(self, **kwargs) -> ArtifactStore:
        """The library face of the same store (usable while the mount runs)."""
        return self.world.store(self.data_dir, self.sandbox or "default", **kwargs)

    def sh(self, script: str, *, check: bool = True, **kwargs) -> subprocess.CompletedProcess:
        """Run a shell command line with the mount as working directory."""
        done = subprocess.run(
            ["bash", "-c", script], cwd=self.mountpoint, capture_output=True, text=True, check=False, **kwargs
        )
        if check and done.returncode != 0:
            raise AssertionError(f"`{script}` exited {done.returncode}\nstdout: {done.stdout}\nstderr: {done.stderr}")
        return done

    def run_bounded(self, argv: Sequence[str | os.PathLike[str]], timeout: float, **kwargs) -> subprocess.CompletedProcess:
        """Run a command that must finish within ``timeout`` seconds.

        A process waiting on a FUSE request that is never answered cannot be killed: past the
        bound, the mount's connection is aborted (the mount is dead then) and the test fails,
        instead of the suite hanging.
        """
        connection = os.minor(os.stat(self.mountpoint).st_dev)
        process = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, **kwargs)
        try:
            out, err = process.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            try:
                process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                abort_connection(connection)
                process.wait(timeout=EXIT_TIMEOUT)
            raise AssertionError(f"{shlex.join(map(str, argv))} did not finish within {timeout:.0f} s") from None
        return subprocess.CompletedProcess(process.args, process.returncode, out, err)

    def metrics_url(self) -> str:
        """Where a mount started with ``--metrics 127.0.0.1:0`` serves them (its log says)."""
        found = re.search(r"metrics at (http://127\.0\.0\.1:\d+)/metrics", self.log_text())
        assert found, self.log_text()
        return found.group(1)

    def user_dir(self, user: str) -> Path:
        path = self.mountpoint / "users" / user
        path.mkdir(exist_ok=True)
        return path

    def stop(self) -> None:
        """Unmount with the CLI; the mount process must exit 0 with a clean log."""
        if self.stopped:
            return
        self.stopped = True
        if self.process.poll() is None:
            done = artifactfs("umount", self.mountpoint)
            if done.returncode != 0:
                self.kill()
                raise AssertionError(f"artifactfs umount failed: {done.stderr}\n{self.log_text()}")
        try:
            code = self.process.wait(timeout=EXIT_TIMEOUT)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(f"the mount process did not exit after unmount\n{self.log_text()}") from None
        assert code == 0, f"the mount process exited {code}\n{self.log_text()}"
        if self.check_log:
            alarms = [line for line in self.log_text().splitlines() if any(a in line for a in LOG_ALARMS)]
            assert not alarms, "the mount logged errors:\n" + self.log_text()

    def kill(self) -> None:
        """Last resort after a failure: detach the mount and kill the process."""
        subprocess.run(["fusermount3", "-uz", str(self.mountpoint)], capture_output=True, check=False)
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(timeout=EXIT_TIMEOUT)


# How the artifactfs command is started: as `python -m fusefs`, the way `artifactfs` runs it.
ARTIFACTFS = ("-m", "fusefs")


def scrape(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of a mount's ``/metrics``, by name and labels."""
    with urllib.request.urlopen(url + "/metrics", timeout=30) as answer:
        text = answer.read().decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text) for s in family.samples
    }


def start_mount(
    mountpoint: Path, data_dir: Path, *, sandbox: str | None = "app", args: Sequence[str] = (),
    env: dict[str, str] | None = None, check_log: bool = True, world: StoreWorld = EMBEDDED,
    program: Sequence[str] = ARTIFACTFS,
) -> Mount:
    """Mount ``data_dir`` at ``mountpoint`` in the foreground (in a subprocess) and wait until it answers.

    ``env`` is the base environment (default: ours); ``world`` adds where the store lives. ``program``
    is what ``python`` runs to get the ``artifactfs`` command (a test's wrapper of it: ``clocked_mount.py``).
    """
    mountpoint.mkdir(parents=True, exist_ok=True)
    env = world.mount_env(data_dir, env)
    command = [sys.executable, *program, "mount", str(mountpoint), "--data-dir", str(data_dir), "--foreground"]
    if sandbox is not None:
        command += ["--sandbox", sandbox]
    command += list(args)
    stderr_path = mountpoint.parent / f"{mountpoint.name}.stderr"
    with open(stderr_path, "wb") as stderr:
        process = subprocess.Popen(command, cwd=REPO, stdout=subprocess.DEVNULL, stderr=stderr, env=env)
    mount = Mount(mountpoint, data_dir, sandbox, process, stderr_path, check_log, world)

    def answering() -> bool:
        if process.poll() is not None:
            raise AssertionError(f"`{shlex.join(command)}` exited {process.returncode}\n{mount.log_text()}")
        return is_mounted(mountpoint) and os.path.isdir(mountpoint)

    try:
        wait_for(answering, READY_TIMEOUT, f"the mount at {mountpoint}")
    except BaseException:
        mount.kill()
        raise
    return mount


def stop_mounts(mounts: Sequence[Mount]) -> None:
    """Stop every mount, the newest first; the first one whose checks failed raises once all are down."""
    failures = []
    for mount in reversed(mounts):
        try:
            mount.stop()
        except AssertionError as exc:
            failures.append(exc)
    if failures:
        raise failures[0]
