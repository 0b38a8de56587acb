"""Files and directories only their owner can read (issue #16).

The data dir holds the signing key, the metadata and the blobs: whoever can
read it reads every artifact, whoever can write it forges what the store
acts on. Modes are given explicitly and set again with ``chmod``, so the
caller's umask neither widens nor narrows them, and a dir or database left
group- or world-readable by an older version is closed on the next open.
"""

from __future__ import annotations

import os
from pathlib import Path

DIR_MODE = 0o700
FILE_MODE = 0o600


def private_dir(path: Path) -> Path:
    """``path`` made if missing (its missing parents too), and set to owner-only."""
    path.mkdir(parents=True, exist_ok=True, mode=DIR_MODE)
    os.chmod(path, DIR_MODE)
    return path


def new_private_dir(path: Path | str) -> None:
    """Make one directory owner-only from the start; an existing one is left as it is."""
    os.mkdir(path, DIR_MODE)
    os.chmod(path, DIR_MODE)


def private_file(path: Path) -> Path:
    """``path`` made empty if missing, and set to owner-only either way (before anything is written to it)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, FILE_MODE)
    try:
        os.fchmod(fd, FILE_MODE)
    finally:
        os.close(fd)
    return path
