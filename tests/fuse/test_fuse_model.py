"""A reference model: the mount must behave like the local disk under it.

A Hypothesis state machine applies the same random operations to a fresh
directory in the mount (``users/alice/run-N``) and to a fresh directory on
the native filesystem, and after every step compares what both show: the
tree (kinds, names, modes, symlink targets, link counts, which names are
one inode), every file's size and bytes, a free ``user.*`` attribute, mtimes that were set explicitly, and the size of
every descriptor still open. Every operation must give the same result on
both sides, or fail with the same errno.

Several descriptors stay open across steps, so writes through one must be
seen by reads through another (and by a ``stat`` of the path), as on ext4;
files are renamed, replaced and removed while open.

The run is bounded and derandomized (no example database), so CI sees the
same sequences every time. Sequences that once failed are replayed as plain
tests at the end of this file.
"""

from __future__ import annotations

import ctypes
import errno
import hashlib
import itertools
import os
import random
import shutil
import stat
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule, run_state_machine_as_test
from mounting import Mount

# Names are drawn from one small pool for files, directories and symlinks alike, so collisions of
# kinds (a file where a directory is expected, a rename onto an existing entry, a move into the own
# subtree) come up often.
PATHS = ("a", "b", "d", "d/a", "d/b", "d/e", "d/e/a", "e", "e/a")
LINK_TARGETS = ("a", "b", "d/a", "e", "missing", "../a")
MODES = (0o644, 0o600, 0o755, 0o700, 0o444, 0o640, 0o777)
# Offsets and sizes around the mount's own boundaries: pages, its small-read size (128 KiB), its
# in-memory spool limit (256 KiB) and its readahead window (1 MiB).
OFFSETS = (0, 1, 100, 4095, 4096, 65536, 131071, 131072, 200000, 262143, 262144, 300000, 1048575, 1048577)
LENGTHS = (0, 1, 7, 100, 4096, 5000, 70000, 131072, 262145)
SIZES = (0, 1, 10, 4096, 131072, 262144, 262145, 500000, 1048577)
XATTR = "user.note"
# mtimes the model sets explicitly: far from "now", so a file showing one was set by utime
EXPLICIT_TIMES = tuple(1_000_000_000_123_456_789 + k * 86_400_000_000_007 for k in range(4))

RENAME_NOREPLACE, RENAME_EXCHANGE = 1, 2
_libc = ctypes.CDLL(None, use_errno=True)


def renameat2(old: Path, new: Path, flags: int) -> None:
    if _libc.renameat2(-100, os.fsencode(old), -100, os.fsencode(new), flags) != 0:
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code))


def payload(length: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(length)


# Every open is O_NONBLOCK: on a FIFO a plain open (or a write past the pipe's buffer) waits for
# the other end, which the model never is; on a regular file it changes nothing.
NB = os.O_NONBLOCK
OPEN_FLAGS = {
    "r": NB | os.O_RDONLY,
    "w": NB | os.O_WRONLY,
    "rw": NB | os.O_RDWR,
    "rw-trunc": NB | os.O_RDWR | os.O_TRUNC,
    "append": NB | os.O_WRONLY | os.O_APPEND,
    "rw-append": NB | os.O_RDWR | os.O_APPEND,
    "create": NB | os.O_RDWR | os.O_CREAT,
    "create-excl": NB | os.O_RDWR | os.O_CREAT | os.O_EXCL,
}


@dataclass
class OpenPair:
    """One descriptor on each side, opened the same way."""

    how: str
    mount_fd: int
    local_fd: int

    @property
    def appends(self) -> bool:
        return bool(OPEN_FLAGS[self.how] & os.O_APPEND)


def outcome(action: Callable[[], Any]) -> tuple[str, Any]:
    try:
        return "ok", action()
    except OSError as exc:
        return "error", errno.errorcode.get(exc.errno, exc.errno)


def describe(root: Path) -> tuple[dict[str, tuple], list[tuple[str, ...]]]:
    """Everything the model compares below ``root``, by relative path, and which paths are one inode."""
    tree: dict[str, tuple] = {}
    inodes: dict[int, list[str]] = {}

    def visit(rel: str) -> None:
        for name in sorted(os.listdir(root / rel if rel else root)):
            path_rel = f"{rel}/{name}" if rel else name
            path = root / path_rel
            info = os.lstat(path)
            mode = stat.S_IMODE(info.st_mode)
            if stat.S_ISLNK(info.st_mode):
                tree[path_rel] = ("link", os.readlink(path))
                continue
            note = outcome(lambda path=path: os.getxattr(path, XATTR, follow_symlinks=False))
            if stat.S_ISDIR(info.st_mode):
                tree[path_rel] = ("dir", oct(mode), note)
                visit(path_rel)
            elif not stat.S_ISREG(info.st_mode):  # a special file: no bytes to read
                tree[path_rel] = ("special", stat.S_IFMT(info.st_mode), oct(mode), info.st_size, info.st_nlink, note)
            else:
                with open(path, "rb") as f:
                    data = f.read()
                assert len(data) == info.st_size, f"{path}: read {len(data)} bytes, stat says {info.st_size}"
                digest = hashlib.sha256(data).hexdigest()
                tree[path_rel] = ("file", oct(mode), info.st_size, digest, info.st_nlink, note)
            inodes.setdefault(info.st_ino, []).append(path_rel)

    visit("")
    return tree, sorted(tuple(paths) for paths in inodes.values() if len(paths) > 1)


def fd_size(fd: int) -> tuple[int, int | None]:
    """Kind and size of what ``fd`` refers to (a directory's size is the file system's own business)."""
    info = os.fstat(fd)
    return stat.S_IFMT(info.st_mode), info.st_size if stat.S_ISREG(info.st_mode) else None


def explicit_mtimes(root: Path, paths: list[str]) -> dict[str, int]:
    found = {}
    for rel in paths:
        mtime = os.lstat(root / rel).st_mtime_ns
        if mtime in EXPLICIT_TIMES:
            found[rel] = mtime
    return found


class MountModel(RuleBasedStateMachine):
    """The mount (``self.m``) and the local directory (``self.l``) under the same operations."""

    mount_root: Path  # set by the test before running
    local_root: Path
    runs = itertools.count()

    def __init__(self) -> None:
        super().__init__()
        run = next(self.runs)
        self.m = self.mount_root / f"run-{run}"
        self.l = self.local_root / f"run-{run}"
        self.m.mkdir()
        self.l.mkdir()
        self.fds: list[OpenPair] = []
        for root in (self.m, self.l):  # a start with something in it: fewer steps end in ENOENT
            for directory in ("d", "e"):
                (root / directory).mkdir()
            (root / "a").write_bytes(payload(5000, 1))
            (root / "d" / "a").write_bytes(payload(300000, 2))

    # -- doing it twice

    def both(self, action: Callable[[Path], Any]) -> tuple[str, Any]:
        got_mount = outcome(lambda: action(self.m))
        got_local = outcome(lambda: action(self.l))
        assert got_mount == got_local, f"mount gave {got_mount!r}, local disk {got_local!r}"
        return got_local

    def pair(self, index: int) -> OpenPair:
        return self.fds[index % len(self.fds)]

    def both_fd(self, index: int, action: Callable[[int], Any]) -> tuple[str, Any]:
        pair = self.pair(index)
        got_mount = outcome(lambda: action(pair.mount_fd))
        got_local = outcome(lambda: action(pair.local_fd))
        assert got_mount == got_local, f"mount gave {got_mount!r}, local disk {got_local!r} (fd opened {pair.how})"
        return got_local

    # -- whole files by path

    @rule(path=st.sampled_from(PATHS), mode=st.sampled_from(MODES), exclusive=st.booleans())
    def create(self, path: str, mode: int, exclusive: bool) -> None:
        flags = NB | os.O_CREAT | os.O_WRONLY | (os.O_EXCL if exclusive else os.O_TRUNC)
        self.both(lambda root: os.close(os.open(root / path, flags, mode)))

    @rule(path=st.sampled_from(PATHS), offset=st.sampled_from(OFFSETS), length=st.sampled_from(LENGTHS),
          seed=st.integers(0, 1000))
    def write_at(self, path: str, offset: int, length: int, seed: int) -> None:
        data = payload(length, seed)

        def write(root: Path) -> int:
            fd = os.open(root / path, NB | os.O_WRONLY)
            try:
                return os.pwrite(fd, data, offset)
            finally:
                os.close(fd)

        self.both(write)

    @rule(path=st.sampled_from(PATHS), length=st.sampled_from(LENGTHS), seed=st.integers(0, 1000))
    def append(self, path: str, length: int, seed: int) -> None:
        data = payload(length, seed)

        def append(root: Path) -> int:
            fd = os.open(root / path, NB | os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            try:
                return os.write(fd, data)
            finally:
                os.close(fd)

        self.both(append)

    @rule(path=st.sampled_from(PATHS), size=st.sampled_from(SIZES))
    def truncate(self, path: str, size: int) -> None:
        self.both(lambda root: os.truncate(root / path, size))

    @rule(path=st.sampled_from(PATHS), offset=st.sampled_from(OFFSETS), length=st.sampled_from(LENGTHS))
    def read_range(self, path: str, offset: int, length: int) -> None:
        def read(root: Path) -> str:
            fd = os.open(root / path, NB | os.O_RDONLY)
            try:
                return hashlib.sha256(os.pread(fd, length, offset)).hexdigest()
            finally:
                os.close(fd)

        self.both(read)

    # -- open descriptors kept across steps

    @precondition(lambda self: len(self.fds) < 4)
    @rule(path=st.sampled_from(PATHS), how=st.sampled_from(sorted(OPEN_FLAGS)))
    def open_fd(self, path: str, how: str) -> None:
        flags = OPEN_FLAGS[how]
        got_mount = outcome(lambda: os.open(self.m / path, flags, 0o644))
        got_local = outcome(lambda: os.open(self.l / path, flags, 0o644))
        if got_mount[0] == got_local[0] == "ok":
            self.fds.append(OpenPair(how, got_mount[1], got_local[1]))
            return
        for result in (got_mount, got_local):
            if result[0] == "ok":
                os.close(result[1])
        assert got_mount == got_local, f"open({how}): mount gave {got_mount!r}, local disk {got_local!r}"

    @precondition(lambda self: self.fds)
    @rule(index=st.integers(0, 3), offset=st.sampled_from(OFFSETS), length=st.sampled_from(LENGTHS),
          seed=st.integers(0, 1000))
    def write_fd(self, index: int, offset: int, length: int, seed: int) -> None:
        data = payload(length, seed)
        if self.pair(index).appends:  # Linux appends whatever the offset; write(2) says what is meant
            self.both_fd(index, lambda fd: os.write(fd, data))
        else:
            self.both_fd(index, lambda fd: os.pwrite(fd, data, offset))

    @precondition(lambda self: self.fds)
    @rule(index=st.integers(0, 3), offset=st.sampled_from(OFFSETS), length=st.sampled_from(LENGTHS))
    def read_fd(self, index: int, offset: int, length: int) -> None:
        self.both_fd(index, lambda fd: hashlib.sha256(os.pread(fd, length, offset)).hexdigest())

    @precondition(lambda self: self.fds)
    @rule(index=st.integers(0, 3), size=st.sampled_from(SIZES))
    def ftruncate_fd(self, index: int, size: int) -> None:
        self.both_fd(index, lambda fd: os.ftruncate(fd, size))

    @precondition(lambda self: self.fds)
    @rule(index=st.integers(0, 3))
    def fsync_fd(self, index: int) -> None:
        self.both_fd(index, os.fsync)

    @precondition(lambda self: self.fds)
    @rule(index=st.integers(0, 3))
    def close_fd(self, index: int) -> None:
        pair = self.fds.pop(index % len(self.fds))
        got_mount = outcome(lambda: os.close(pair.mount_fd))
        got_local = outcome(lambda: os.close(pair.local_fd))
        assert got_mount == got_local, f"close: mount gave {got_mount!r}, local disk {got_local!r}"

    # -- the tree

    @rule(path=st.sampled_from(PATHS), mode=st.sampled_from(MODES))
    def mkdir(self, path: str, mode: int) -> None:
        self.both(lambda root: os.mkdir(root / path, mode))

    @rule(path=st.sampled_from(PATHS))
    def rmdir(self, path: str) -> None:
        self.both(lambda root: os.rmdir(root / path))

    @rule(path=st.sampled_from(PATHS))
    def unlink(self, path: str) -> None:
        self.both(lambda root: os.unlink(root / path))

    @rule(src=st.sampled_from(PATHS), dst=st.sampled_from(PATHS),
          flags=st.sampled_from((0, 0, RENAME_NOREPLACE, RENAME_EXCHANGE)))
    def rename(self, src: str, dst: str, flags: int) -> None:
        self.both(lambda root: renameat2(root / src, root / dst, flags))

    # Sockets and FIFOs: the kernel answers their I/O on both sides alike. A device opens on the
    # local disk but not in the mount (nodev); tests/fuse/test_fuse_tools.py covers devices.
    @rule(path=st.sampled_from(PATHS), mode=st.sampled_from(MODES))
    def mksocket(self, path: str, mode: int) -> None:
        self.both(lambda root: os.mknod(root / path, stat.S_IFSOCK | mode))

    @rule(path=st.sampled_from(PATHS), mode=st.sampled_from(MODES))
    def mkfifo(self, path: str, mode: int) -> None:
        self.both(lambda root: os.mkfifo(root / path, mode))

    @rule(src=st.sampled_from(PATHS), dst=st.sampled_from(PATHS))
    def link(self, src: str, dst: str) -> None:
        self.both(lambda root: os.link(root / src, root / dst, follow_symlinks=False))

    @rule(pointee=st.sampled_from(LINK_TARGETS), path=st.sampled_from(PATHS))
    def symlink(self, pointee: str, path: str) -> None:
        self.both(lambda root: os.symlink(pointee, root / path))

    @rule(path=st.sampled_from(PATHS))
    def readlink(self, path: str) -> None:
        self.both(lambda root: os.readlink(root / path))

    @rule(path=st.sampled_from(PATHS), mode=st.sampled_from(MODES))
    def chmod(self, path: str, mode: int) -> None:
        self.both(lambda root: os.chmod(root / path, mode))

    @rule(path=st.sampled_from(PATHS), mtime=st.sampled_from(EXPLICIT_TIMES), follow=st.booleans())
    def utime(self, path: str, mtime: int, follow: bool) -> None:
        self.both(lambda root: os.utime(root / path, ns=(mtime - 1, mtime), follow_symlinks=follow))
        self.both(lambda root: os.stat(root / path, follow_symlinks=follow).st_mtime_ns)

    @rule(path=st.sampled_from(PATHS), value=st.sampled_from((b"", b"x", b"note \xff\x00 binary", b"v" * 3000)))
    def setxattr(self, path: str, value: bytes) -> None:
        self.both(lambda root: os.setxattr(root / path, XATTR, value))

    @rule(path=st.sampled_from(PATHS))
    def removexattr(self, path: str) -> None:
        self.both(lambda root: os.removexattr(root / path, XATTR))

    # -- after every step

    @invariant()
    def same_tree(self) -> None:
        tree, links = describe(self.l)
        assert describe(self.m) == (tree, links)
        assert explicit_mtimes(self.m, list(tree)) == explicit_mtimes(self.l, list(tree))

    @invariant()
    def open_descriptors_agree(self) -> None:
        for index in range(len(self.fds)):
            self.both_fd(index, fd_size)

    def teardown(self) -> None:
        for pair in self.fds:
            for fd in (pair.mount_fd, pair.local_fd):
                try:
                    os.close(fd)
                except OSError:
                    pass
        self.fds.clear()
        shutil.rmtree(self.m, ignore_errors=True)
        shutil.rmtree(self.l, ignore_errors=True)


# CI runs the same 100 sequences every time. To hunt for more, run with a random search of any size:
#   MODEL_HUNT_EXAMPLES=2000 .venv/bin/python -m pytest tests/fuse/test_fuse_model.py
HUNT_EXAMPLES = int(os.environ.get("MODEL_HUNT_EXAMPLES", "0"))
CI_RUN = settings(
    max_examples=HUNT_EXAMPLES or 100, stateful_step_count=80 if HUNT_EXAMPLES else 50, deadline=None,
    derandomize=not HUNT_EXAMPLES, database=None, suppress_health_check=list(HealthCheck), print_blob=True,
    report_multiple_bugs=False,
)


@pytest.fixture
def model(mount: Mount, alice: Path, tmp_path: Path) -> type[MountModel]:
    local = tmp_path / "local"
    local.mkdir()

    class Model(MountModel):
        mount_root = alice
        local_root = local
        runs = itertools.count()

    return Model


@pytest.mark.semantics("S-posix-model")
@pytest.mark.embedded_only("thousands of operations: on Redis + S3 their cost would be moto's")
@pytest.mark.heavy
def test_the_mount_behaves_like_the_local_disk(model: type[MountModel]) -> None:
    run_state_machine_as_test(model, settings=CI_RUN)


# -- sequences the model once found, replayed as plain tests


def replay(model: type[MountModel], steps: Callable[[MountModel], None]) -> None:
    machine = model()
    try:
        machine.same_tree()
        steps(machine)
        machine.same_tree()
        machine.open_descriptors_agree()
    finally:
        machine.teardown()


@pytest.mark.semantics("S-unlink-open")
def test_ftruncate_and_fchmod_of_an_unlinked_open_file(model: type[MountModel]) -> None:
    """Was ENOENT: attributes of a file removed while open were looked up in the store."""

    def steps(m: MountModel) -> None:
        m.open_fd(path="a", how="append")
        m.append(path="a", length=100, seed=0)
        m.unlink(path="a")
        m.ftruncate_fd(index=0, size=10)
        m.open_descriptors_agree()
        m.both_fd(0, lambda fd: os.fchmod(fd, 0o600))
        m.both_fd(0, lambda fd: stat.S_IMODE(os.fstat(fd).st_mode))
        m.write_fd(index=0, offset=0, length=5000, seed=3)
        m.ftruncate_fd(index=0, size=1048577)
        m.open_descriptors_agree()
        m.read_fd(index=0, offset=4096, length=70000)

    replay(model, steps)


@pytest.mark.semantics("S-perm-attrs")
def test_chmod_keeps_the_mtime_of_unpublished_writes(model: type[MountModel]) -> None:
    def steps(m: MountModel) -> None:
        m.utime(path="a", mtime=EXPLICIT_TIMES[0], follow=True)
        m.open_fd(path="a", how="rw")
        m.write_fd(index=0, offset=10, length=100, seed=1)
        m.chmod(path="a", mode=0o600)
        m.same_tree()
        m.close_fd(index=0)

    replay(model, steps)


@pytest.mark.semantics("S-unlink-open", "S-rename-replace")
def test_an_open_file_keeps_its_bytes_when_unlinked_or_replaced(model: type[MountModel]) -> None:
    """Was ENOENT (reads, ftruncate): removing a file dropped its blob under descriptors still open."""

    def steps(m: MountModel) -> None:
        m.open_fd(path="d/a", how="r")  # 300,000 committed bytes, nothing read yet
        m.open_fd(path="a", how="rw")
        m.unlink(path="d/a")
        m.rename(src="d/b", dst="a", flags=0)  # no d/b: ENOENT, a stays
        m.create(path="b", mode=0o644, exclusive=True)
        m.rename(src="b", dst="a", flags=0)  # replaces the open a
        m.read_fd(index=0, offset=200000, length=131072)
        m.read_fd(index=1, offset=0, length=5000)
        m.write_fd(index=1, offset=4000, length=7, seed=9)
        m.read_fd(index=1, offset=3990, length=100)
        m.open_descriptors_agree()

    replay(model, steps)


@pytest.mark.semantics("S-unlink-open")
def test_fsync_of_an_unlinked_open_file_keeps_its_bytes(model: type[MountModel]) -> None:
    """Was ENOENT: fsync of a removed file dropped the bytes its descriptors still held."""

    def steps(m: MountModel) -> None:
        m.open_fd(path="a", how="append")
        m.unlink(path="a")
        m.append(path="a", length=10, seed=0)  # a new file by the old name
        m.fsync_fd(index=0)
        m.ftruncate_fd(index=0, size=1)
        m.read_fd(index=0, offset=0, length=100)
        m.write_fd(index=0, offset=0, length=100, seed=1)
        m.fsync_fd(index=0)
        m.read_fd(index=0, offset=0, length=4096)
        m.open_descriptors_agree()

    replay(model, steps)


@pytest.mark.semantics("S-truncate")
@pytest.mark.parametrize("how", ["truncate", "ftruncate", "O_TRUNC"])
def test_a_truncate_to_the_same_size_still_sets_the_mtime(model: type[MountModel], how: str) -> None:
    """Was: the explicit mtime stayed, where truncate(2), ftruncate(2) and O_TRUNC set it to now."""

    def steps(m: MountModel) -> None:
        m.truncate(path="a", size=0)
        m.utime(path="a", mtime=EXPLICIT_TIMES[0], follow=False)
        if how == "truncate":
            m.truncate(path="a", size=0)
        elif how == "ftruncate":
            m.open_fd(path="a", how="rw")
            m.ftruncate_fd(index=0, size=0)
            m.same_tree()
            m.close_fd(index=0)
        else:
            m.open_fd(path="a", how="rw-trunc")
            m.same_tree()
            m.close_fd(index=0)

    replay(model, steps)


@pytest.mark.semantics("S-unlink-open")
@pytest.mark.parametrize("remove", ["rmdir", "rename onto"])
def test_a_directory_removed_while_open_can_still_be_fstat(model: type[MountModel], remove: str) -> None:
    """Was ESTALE: fstat of an open directory that rmdir or a rename over it removed."""

    def steps(m: MountModel) -> None:
        m.open_fd(path="e", how="r")
        if remove == "rmdir":
            m.rmdir(path="e")
        else:
            m.rename(src="d", dst="e", flags=0)
        m.open_descriptors_agree()
        m.both_fd(0, lambda fd: (stat.S_IMODE(os.fstat(fd).st_mode), os.fstat(fd).st_mtime_ns > 0))

    replay(model, steps)


@pytest.mark.semantics("S-rename-exchange", "S-tree-dirs")
def test_rename_exchange_updates_both_directories(model: type[MountModel]) -> None:
    """Was: RENAME_EXCHANGE left the mtime of the directories whose entries it swapped."""

    def steps(m: MountModel) -> None:
        m.utime(path="d", mtime=EXPLICIT_TIMES[0], follow=False)
        m.utime(path="e", mtime=EXPLICIT_TIMES[1], follow=False)
        m.rename(src="d/a", dst="a", flags=RENAME_EXCHANGE)
        m.same_tree()
        m.rename(src="e", dst="d/a", flags=RENAME_EXCHANGE)
        m.same_tree()

    replay(model, steps)
