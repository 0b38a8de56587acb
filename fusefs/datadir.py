"""What a mount and the commands beside it share: the data dir's claim and the mount table.

Standard library only: ``artifactfs umount`` and ``status`` start in a few
milliseconds instead of importing the store (half a second of CPU each).
"""

from __future__ import annotations

import fcntl
import os
import time
from pathlib import Path

LOCK_FILE = "mount.lock"
LOG_FILE = "mount.log"
SPOOL_DIR = "spool"
FS_TYPE = "artifactfs"


class MountError(Exception):
    """A mount that cannot go ahead, with a sentence for the user."""


class DataDirLock:
    """The one-mount-per-data-dir claim: an ``flock`` on ``mount.lock``."""

    def __init__(self, data_dir: Path) -> None:
        self.path = data_dir / LOCK_FILE
        self._fd: int | None = None

    def acquire(self, mountpoint: Path) -> None:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 4096, 0).decode(errors="replace").split("\n")
            os.close(fd)
            pid, where = (holder + ["?", "?"])[:2]
            raise MountError(
                f"the data dir {self.path.parent} is already mounted (pid {pid or '?'} at {where or '?'}); "
                f"unmount it first: artifactfs umount {where or 'MOUNTPOINT'}"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n{mountpoint}\n".encode(), 0)
        self._fd = fd

    def record_pid(self) -> None:
        """After a fork, name the process that really holds the mount."""
        assert self._fd is not None
        holder = os.pread(self._fd, 4096, 0).decode().split("\n")
        os.ftruncate(self._fd, 0)
        os.pwrite(self._fd, f"{os.getpid()}\n{holder[1]}\n".encode(), 0)

    def forget(self) -> None:
        """Close our descriptor without unlocking (the forked child keeps the lock)."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def release(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            self.forget()

    @staticmethod
    def holder(data_dir: Path) -> tuple[int, str] | None:
        """The pid and mountpoint of the mount that holds ``data_dir``, or None if none does."""
        path = data_dir / LOCK_FILE
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            return None
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
                return None  # nobody holds it
            except BlockingIOError:
                pid, _, where = os.pread(fd, 4096, 0).decode(errors="replace").partition("\n")
        finally:
            os.close(fd)
        return (int(pid), where.strip()) if pid.isdigit() else None

    @staticmethod
    def signal_holder(data_dir: Path, signum: int) -> bool:
        """Send ``signum`` to the process that holds ``data_dir``; False if none does."""
        held = DataDirLock.holder(data_dir)
        if held is None:
            return False
        try:
            os.kill(held[0], signum)
        except ProcessLookupError:
            return False
        return True

    @staticmethod
    def wait_released(data_dir: Path, timeout: float) -> bool:
        """Wait (bounded) until no mount holds ``data_dir``."""
        path = data_dir / LOCK_FILE
        deadline = time.monotonic() + timeout
        while True:
            try:
                fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
            except FileNotFoundError:
                return True
            try:
                fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
                return True
            except BlockingIOError:
                pass
            finally:
                os.close(fd)
            if time.monotonic() > deadline:
                return False
            time.sleep(0.05)


def data_dir_of(source: str) -> Path | None:
    """The data dir a mount's source (``artifactfs:<data dir>``, its fsname) names, if it names one."""
    prefix = f"{FS_TYPE}:"
    return Path(source[len(prefix) :]) if source.startswith(prefix) else None


def mounted_data_dir(mountpoint: Path) -> Path | None:
    """The data dir of the artifactfs mount at ``mountpoint``, or None if there is none."""
    entry = mount_entry(Path(os.path.abspath(mountpoint)))
    return data_dir_of(entry[1]) if entry is not None and entry[0].startswith("fuse") else None


def mount_entry(path: Path) -> tuple[str, str] | None:
    """(filesystem type, source) of the mount at ``path``, from /proc/self/mountinfo."""
    found = None
    with open("/proc/self/mountinfo", encoding="utf-8", errors="replace") as table:
        for line in table:
            fields = line.split()
            if len(fields) < 10 or _unescape(fields[4]) != str(path):
                continue
            rest = fields[fields.index("-") + 1 :]
            found = (rest[0], _unescape(rest[1]))
    return found


def _unescape(field: str) -> str:
    """mountinfo writes space, tab, newline and backslash as octal escapes."""
    for code in ("\\040", "\\011", "\\012", "\\134"):
        field = field.replace(code, chr(int(code[1:], 8)))
    return field
