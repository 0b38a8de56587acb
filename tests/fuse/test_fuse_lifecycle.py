"""The life of a mount under stress: signals mid-write, lazy unmounts, crashes, busy unmounts, double mounts.

Whatever happens to the mount process, every staged write ends up either
committed whole or discarded: the library then sees the old version (or
no file), never part of a new one, and no spool file outlives a remount.
"""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from mounting import EXIT_TIMEOUT, LOG_ALARMS, Mount, artifactfs, is_mounted, start_mount, wait_for
from worlds import StoreWorld

from core import ArtifactStore

MiB = 1 << 20

# Writes 1 MiB blocks to a file until told otherwise by an error, reporting each block written.
WRITER = r"""
import os, sys
fd = os.open(sys.argv[1], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
block = os.urandom(1 << 20)
written = 0
try:
    while written < (8 << 30):
        os.write(fd, block)
        written += len(block)
        print(written, flush=True)
except OSError as exc:
    print("stopped", exc.errno, flush=True)
"""


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class Writer:
    """A process writing a large file through the mount, never closing it."""

    def __init__(self, path: Path) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-c", WRITER, str(path)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )

    def wait_written(self, at_least: int) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            if line.startswith("stopped"):
                raise AssertionError(f"the writer stopped early: {line}")
            if int(line) >= at_least:
                return
        raise AssertionError(f"the writer died: {self.process.stderr.read() if self.process.stderr else ''}")

    def finish(self) -> None:
        """The writer must stop by itself once the mount is gone (its writes fail)."""
        try:
            self.process.communicate(timeout=EXIT_TIMEOUT)
        finally:
            if self.process.poll() is None:
                self.process.kill()
                self.process.wait()


def pid_alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def check_log(data_dir: Path, text: str) -> None:
    alarms = [line for line in text.splitlines() if any(a in line for a in LOG_ALARMS)]
    assert not alarms, f"the mount at {data_dir} logged errors:\n{text}"


async def library_files(store: ArtifactStore) -> dict[str, bytes]:
    """Every user artifact of alice by filename, read whole (a whole read checks its SHA-256)."""
    async with store:
        found = await store.search(user_id="alice")
        files = {}
        for meta in found:
            data = await store.read_file(meta.artifact_id)
            assert (len(data), sha(data)) == (meta.bytes, meta.sha256), meta.filename
            files[meta.filename] = data
        return files


# -- signals while writes are staged


@pytest.fixture
def daemon_mount(tmp_path: Path, world: StoreWorld) -> Iterator[tuple[Path, Path]]:
    mnt, data = tmp_path / "dmnt", tmp_path / "ddata"
    mnt.mkdir()
    done = artifactfs("mount", mnt, "--data-dir", data, "--sandbox", "app", env=world.mount_env(data))
    assert done.returncode == 0, done.stderr
    try:
        yield mnt, data
    finally:
        if is_mounted(mnt):
            subprocess.run(["fusermount3", "-uz", str(mnt)], check=False)


@pytest.mark.parametrize(
    ("mode", "signum"),
    [("foreground", signal.SIGTERM), ("foreground", signal.SIGINT), ("daemon", signal.SIGTERM)],
)
@pytest.mark.semantics("S-crash-atomic", "S-unmount-staged")
async def test_a_signal_mid_write_commits_nothing_partial(
    mode: str, signum: int, tmp_path: Path, world: StoreWorld, request: pytest.FixtureRequest
) -> None:
    if mode == "daemon":
        mnt, data = request.getfixturevalue("daemon_mount")
        pid = int((data / "mount.lock").read_text().split()[0])
        foreground = None
    else:
        foreground = start_mount(tmp_path / "mnt", tmp_path / "data", world=world)
        mnt, data, pid = foreground.mountpoint, foreground.data_dir, foreground.process.pid
    alice = mnt / "users" / "alice"
    alice.mkdir()
    old = os.urandom(MiB + 7)
    (alice / "big.bin").write_bytes(old)
    (alice / "done.bin").write_bytes(b"closed before the signal")
    writers = [Writer(alice / "big.bin"), Writer(alice / "fresh.bin")]
    try:
        for writer in writers:
            writer.wait_written(48 * MiB)  # well into a file spool
        assert len(os.listdir(data / "spool")) == 2
        os.kill(pid, signum)
        if foreground is not None:
            assert foreground.process.wait(timeout=EXIT_TIMEOUT) == 0, foreground.log_text()
            foreground.stopped = True
        else:
            wait_for(lambda: not pid_alive(pid), EXIT_TIMEOUT, "the daemon to exit")
    finally:
        for writer in writers:
            writer.finish()
        if foreground is not None and not foreground.stopped:
            foreground.kill()
    assert not is_mounted(mnt)
    log = (data / "mount.log").read_text()
    check_log(data, log)
    assert "2 file(s) still open with unpublished writes" in log
    assert os.listdir(data / "spool") == []
    files = await library_files(world.store(data, "app"))
    # the old version, the file that was closed, and the new file as created (empty) or not at all
    assert files.pop("big.bin") == old
    assert files.pop("done.bin") == b"closed before the signal"
    assert files in ({}, {"fresh.bin": b""})


# -- a lazy unmount while files are open


@pytest.mark.semantics("S-unmount-staged")
@pytest.mark.parametrize("detach", [["fusermount3", "-uz"], ["umount", "-l"]])
async def test_a_lazy_unmount_with_open_files_corrupts_nothing(mount: Mount, alice: Path, detach: list[str]) -> None:
    committed = os.urandom(5 * MiB + 3)
    (alice / "r.bin").write_bytes(committed)
    (alice / "log.txt").write_text("line 1\n")
    reader = open(alice / "r.bin", "rb")  # noqa: ASYNC230, SIM115 - descriptors kept across the detach
    writer = open(alice / "w.bin", "wb")  # noqa: ASYNC230, SIM115
    appender = open(alice / "log.txt", "a")  # noqa: ASYNC230, SIM115
    fresh = os.urandom(4 * MiB)
    try:
        assert reader.read(MiB) == committed[:MiB]
        writer.write(fresh[: 2 * MiB])
        writer.flush()
        subprocess.run([*detach, str(alice.parent.parent)], check=True)  # noqa: ASYNC221 - in order, on purpose
        assert not is_mounted(mount.mountpoint)
        # the descriptors still reach the detached mount, which serves them to the end
        writer.write(fresh[2 * MiB :])
        appender.write("line 2\n")
        assert reader.read() == committed[MiB:]
    finally:
        for f in (reader, writer, appender):
            f.close()  # publishes the writes
    assert mount.process.wait(timeout=EXIT_TIMEOUT) == 0, mount.log_text()  # gone with its last user
    mount.stopped = True
    check_log(mount.data_dir, mount.log_text())
    assert "discarded" not in mount.log_text()
    assert await library_files(mount.store()) == {"r.bin": committed, "w.bin": fresh, "log.txt": b"line 1\nline 2\n"}
    assert os.listdir(mount.data_dir / "spool") == []


# -- a crash


@pytest.mark.semantics("S-crash-atomic")
async def test_a_killed_mount_is_cleared_and_remounted_without_leftovers(mount_factory, tmp_path: Path) -> None:
    first = mount_factory("m", data_dir=tmp_path / "data")
    alice = first.user_dir("alice")
    (alice / "big.bin").write_bytes(b"old version")
    writer = Writer(alice / "big.bin")
    try:
        writer.wait_written(32 * MiB)
        first.process.kill()  # SIGKILL: no unmount, no cleanup
        first.process.wait(timeout=EXIT_TIMEOUT)
    finally:
        writer.finish()
    first.stopped = True
    try:
        assert len(os.listdir(first.data_dir / "spool")) == 1  # the staged write, left behind
        again = artifactfs("mount", first.mountpoint, "--data-dir", first.data_dir)
        assert again.returncode == 1, again.stderr
        assert "dead mount" in again.stderr and "artifactfs umount" in again.stderr, again.stderr
        assert "Traceback" not in again.stderr
        cleared = artifactfs("umount", first.mountpoint)
        assert cleared.returncode == 0, cleared.stderr
        assert not is_mounted(first.mountpoint)
    finally:
        if is_mounted(first.mountpoint):
            subprocess.run(["fusermount3", "-uz", str(first.mountpoint)], check=False)  # noqa: ASYNC221

    second = mount_factory("m", data_dir=tmp_path / "data")
    assert (second / "users/alice/big.bin").read_bytes() == b"old version"
    assert os.listdir(second.data_dir / "spool") == []
    second.stop()
    assert await library_files(second.store()) == {"big.bin": b"old version"}


# -- unmounting


@pytest.mark.semantics("S-umount-busy")
def test_umount_of_a_busy_mount_says_why_and_keeps_serving(mount: Mount, alice: Path) -> None:
    (alice / "f.txt").write_text("still here")
    holder = subprocess.Popen(["sleep", "600"], cwd=alice)  # a shell parked in the mount
    try:
        done = artifactfs("umount", mount.mountpoint)
        assert done.returncode == 1, done.stderr
        assert "busy" in done.stderr.lower() and "artifactfs umount --force" in done.stderr, done.stderr
        assert "Traceback" not in done.stderr
        assert is_mounted(mount.mountpoint)
        assert (alice / "f.txt").read_text() == "still here"
    finally:
        holder.kill()
        holder.wait()
    mount.stop()  # now it goes


@pytest.mark.semantics("S-multimount-one-per-datadir")
def test_a_second_mount_through_another_path_to_the_data_dir_is_refused(mount: Mount, tmp_path: Path) -> None:
    alias = tmp_path / "alias"
    alias.symlink_to(mount.data_dir)
    other = tmp_path / "other"
    other.mkdir()
    for extra in ([], ["--foreground"]):
        done = artifactfs("mount", other, "--data-dir", alias, "--sandbox", "app", *extra)
        assert done.returncode == 1, done.stderr
        assert "already mounted" in done.stderr and "Traceback" not in done.stderr, done.stderr
        assert not is_mounted(other)
    (mount / "shared" / "unharmed.txt").write_text("yes")
    assert (mount / "shared" / "unharmed.txt").read_text() == "yes"
