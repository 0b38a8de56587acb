"""Bad input and forbidden places: each gets the errno a real filesystem gives, and changes nothing."""

from __future__ import annotations

import ctypes
import errno
import os
from pathlib import Path

import pytest
from mounting import Mount

_libc = ctypes.CDLL(None, use_errno=True)
_libc.fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_long, ctypes.c_long]
RENAME_NOREPLACE, RENAME_EXCHANGE = 1, 2
AT_FDCWD = -100
FALLOC_FL_KEEP_SIZE, FALLOC_FL_PUNCH_HOLE = 1, 2


def renameat2(old: Path, new: Path, flags: int) -> None:
    if _libc.renameat2(AT_FDCWD, os.fsencode(old), AT_FDCWD, os.fsencode(new), flags) != 0:
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code))


def fallocate(fd: int, mode: int, offset: int, length: int) -> None:
    """fallocate(2) itself, not glibc's posix_fallocate (which falls back to writing zeros)."""
    if _libc.fallocate(fd, mode, offset, length) != 0:
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code))


def snapshot(root: Path) -> list[tuple[str, int]]:
    """Every path below ``root`` with its size: what 'nothing changed' compares."""
    return sorted((str(p.relative_to(root)), p.lstat().st_size) for p in root.rglob("*"))


def fails_with(code: int, action, *args) -> None:
    with pytest.raises(OSError) as caught:
        action(*args)
    assert caught.value.errno == code, f"{errno.errorcode.get(caught.value.errno)} instead of {errno.errorcode[code]}"


@pytest.mark.semantics("S-limit-names")
def test_names_over_255_bytes(mount: Mount, alice: Path) -> None:
    before = snapshot(mount.mountpoint)
    fails_with(errno.ENAMETOOLONG, open, alice / ("x" * 256), "w")
    fails_with(errno.ENAMETOOLONG, os.mkdir, alice / ("é" * 128))  # 256 bytes in UTF-8
    fails_with(errno.ENAMETOOLONG, os.stat, alice / ("y" * 300))
    (alice / ("z" * 255)).write_text("the longest name there is")
    assert snapshot(mount.mountpoint) == before + [("users/alice/" + "z" * 255, 25)]


@pytest.mark.semantics("S-limit-names")
def test_dot_names_slashes_and_nul(mount: Mount, alice: Path) -> None:
    (alice / "sub").mkdir()
    before = snapshot(mount.mountpoint)
    fails_with(errno.EEXIST, os.mkdir, alice / "..")
    fails_with(errno.EISDIR, open, alice / "..", "w")
    fails_with(errno.ENOENT, open, alice / "no-such-dir" / "f", "w")  # a '/' in a name is a path
    with pytest.raises(ValueError):  # a NUL never reaches the kernel
        open(alice / "a\0b", "w")  # noqa: SIM115 - never opens
    fails_with(errno.EINVAL, open, os.fsencode(alice) + b"/not-utf8-\xff", "w")
    assert snapshot(mount.mountpoint) == before


@pytest.mark.semantics("S-tree-fixed")
def test_nothing_but_scope_directories_in_the_fixed_tree(mount: Mount) -> None:
    before = snapshot(mount.mountpoint)
    fails_with(errno.EACCES, open, mount / "stray.txt", "w")  # the sandbox root
    fails_with(errno.EACCES, os.mkdir, mount / "newdir")
    fails_with(errno.EACCES, open, mount / "sessions" / "stray.txt", "w")
    fails_with(errno.EACCES, open, mount / "users" / "stray.txt", "w")
    fails_with(errno.EACCES, os.symlink, "x", mount / "sessions" / "link")
    fails_with(errno.EACCES, os.rmdir, mount / "shared")
    fails_with(errno.EACCES, os.rename, mount / "sessions", mount / "sessions2")
    fails_with(errno.EINVAL, os.mkdir, mount / "sessions" / "bad id!")  # ids are stricter than names
    assert snapshot(mount.mountpoint) == before


@pytest.mark.semantics("S-tree-fixed")
@pytest.mark.parametrize("mount", [{"sandbox": None}], indirect=True)
def test_the_root_of_an_all_sandboxes_mount_holds_sandboxes(mount: Mount) -> None:
    assert os.listdir(mount.mountpoint) == ["default"]
    fails_with(errno.EACCES, open, mount / "stray.txt", "w")
    os.mkdir(mount / "second")
    assert sorted(os.listdir(mount / "second")) == ["sessions", "shared", "users"]


@pytest.mark.semantics("S-tree-dirs", "S-rename-subtree", "S-rename-replace")
def test_directory_errors(mount: Mount, alice: Path) -> None:
    (alice / "full").mkdir()
    (alice / "full" / "f").write_text("f")
    (alice / "file").write_text("x")
    before = snapshot(mount.mountpoint)
    fails_with(errno.ENOTEMPTY, os.rmdir, alice / "full")
    fails_with(errno.ENOTDIR, os.rmdir, alice / "file")
    fails_with(errno.EISDIR, os.unlink, alice / "full")
    fails_with(errno.EEXIST, os.mkdir, alice / "full")
    fails_with(errno.ENOTDIR, open, alice / "file" / "below", "w")
    fails_with(errno.EINVAL, os.rename, alice / "full", alice / "full" / "inside")
    (alice / "empty").mkdir()
    fails_with(errno.ENOTEMPTY, os.rename, alice / "empty", alice / "full")
    os.rmdir(alice / "empty")
    assert snapshot(mount.mountpoint) == before


@pytest.mark.semantics("S-rename-noreplace", "S-rename-exchange")
def test_rename_flags(mount: Mount, alice: Path) -> None:
    (alice / "a").write_text("A")
    (alice / "b").write_text("BB")
    fails_with(errno.EEXIST, renameat2, alice / "a", alice / "b", RENAME_NOREPLACE)
    assert ((alice / "a").read_text(), (alice / "b").read_text()) == ("A", "BB")
    renameat2(alice / "a", alice / "c", RENAME_NOREPLACE)
    renameat2(alice / "c", alice / "b", RENAME_EXCHANGE)
    assert ((alice / "b").read_text(), (alice / "c").read_text()) == ("A", "BB")
    fails_with(errno.ENOENT, renameat2, alice / "b", alice / "nothing", RENAME_EXCHANGE)


@pytest.mark.semantics("S-hardlink", "S-rename-exdev")
def test_what_artifacts_cannot_be(mount: Mount, alice: Path) -> None:
    (alice / "f").write_text("f")
    (alice / "d").mkdir()
    before = snapshot(mount.mountpoint)
    fails_with(errno.EPERM, os.link, alice / "d", alice / "hard")  # no hard link to a directory
    fails_with(errno.EXDEV, os.link, alice / "f", mount / "shared" / "f")
    fails_with(errno.EXDEV, os.rename, alice / "f", mount / "shared" / "f")
    assert snapshot(mount.mountpoint) == before


@pytest.mark.semantics("S-unsupported-fallocate")
def test_fallocate_is_not_supported_and_posix_fallocate_falls_back(mount: Mount, alice: Path) -> None:
    """The mount has no fallocate handler: the kernel answers EOPNOTSUPP for every mode, and glibc's
    posix_fallocate then extends the file by writing, as on any file system without fallocate."""
    (alice / "f").write_bytes(b"x" * 10)
    fd = os.open(alice / "f", os.O_RDWR)
    try:
        for mode in (0, FALLOC_FL_KEEP_SIZE, FALLOC_FL_KEEP_SIZE | FALLOC_FL_PUNCH_HOLE):
            fails_with(errno.EOPNOTSUPP, fallocate, fd, mode, 0, 8192)
        assert os.fstat(fd).st_size == 10
        os.posix_fallocate(fd, 0, 8192)
        assert os.fstat(fd).st_size == 8192
    finally:
        os.close(fd)
    assert (alice / "f").read_bytes() == b"x" * 10 + bytes(8182)


@pytest.mark.embedded_only("the data dir's own disk filling up")
@pytest.mark.semantics("S-errno-table", "S-limit-resources")
def test_a_full_disk_is_enospc_at_write_or_close_and_the_mount_goes_on(small_disk: Path, mount_factory) -> None:
    """Regression (issue #13): with the data dir's disk full, close() answered EIO (a failed
    SQLite rollback hid "database or disk is full"). Every failure is ENOSPC, every file written
    before reads back whole, and the mount keeps answering."""
    mount = mount_factory(data_dir=small_disk / "data")
    alice = mount.user_dir("alice")
    piece = os.urandom(1 << 20)
    kept: list[Path] = []
    failures: list[int] = []
    for i in range(64):
        path = alice / f"f{i:02d}.bin"
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        except OSError as exc:
            failures.append(exc.errno)
            continue
        try:
            try:
                os.write(fd, piece)
            finally:
                os.close(fd)
        except OSError as exc:
            failures.append(exc.errno)
            continue
        kept.append(path)
    assert failures, "the disk never filled up"
    assert {errno.errorcode[code] for code in failures} == {"ENOSPC"}
    assert kept, "nothing fitted"
    for path in kept:
        assert path.read_bytes() == piece
    assert set(os.listdir(alice)) >= {path.name for path in kept}
    os.statvfs(mount.mountpoint)  # still answering
