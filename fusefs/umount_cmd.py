"""``artifactfs umount``: unmount, then wait until the mount process has let its data dir go."""

from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import Callable
from pathlib import Path

from fusefs.datadir import DataDirLock, data_dir_of, mount_entry

UMOUNT_WAIT = 60.0


def umount(mountpoint: Path, *, say: Callable[[str], None], force: bool = False) -> int:
    """Unmount, then wait (bounded) for the mount process to finish and free its data dir.

    ``force``: detach even while busy, and stop the mount process (SIGTERM): requests it is
    still serving are answered ``EIO``, writes nobody closed are discarded (its log says so),
    and processes still using the mount get ``ENOTCONN``.
    """
    path = Path(os.path.abspath(mountpoint))
    entry = mount_entry(path)
    if entry is None:
        say(f"artifactfs: {path} is not mounted")
        return 1
    fstype, source = entry
    if not fstype.startswith("fuse"):
        say(f"artifactfs: {path} is a {fstype} mount, not an artifactfs one")
        return 1
    data_dir = data_dir_of(source)
    # --force: the mount process unmounts itself (lazily) on SIGTERM; signalled after a detach, it
    # could find its signal watcher gone already and die mid-clean-up.
    if force and data_dir is not None and DataDirLock.signal_holder(data_dir, signal.SIGTERM):
        if DataDirLock.wait_released(data_dir, UMOUNT_WAIT):
            return 0
        say(f"artifactfs: the mount process of {path} still holds {data_dir} {UMOUNT_WAIT:.0f} s after SIGTERM")
        return 1
    command = ["fusermount3", "-uz" if force else "-u", str(path)]
    done = subprocess.run(command, capture_output=True, text=True, check=False, timeout=UMOUNT_WAIT)
    if done.returncode != 0:
        reason = done.stderr.strip() or f"fusermount3 exited {done.returncode}"
        hint = ""
        if "busy" in reason.lower():
            hint = (" (a process still uses it: close its files or leave the directory, or stop the mount anyway"
                    " with artifactfs umount --force)")
        say(f"artifactfs: cannot unmount {path}: {reason}{hint}")
        return 1
    if data_dir is not None and not DataDirLock.wait_released(data_dir, UMOUNT_WAIT):
        say(f"artifactfs: unmounted {path}, but its process still holds {data_dir} after {UMOUNT_WAIT:.0f} s")
        return 1
    return 0
