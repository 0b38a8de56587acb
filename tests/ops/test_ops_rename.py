"""rename(2) and renameat2(2) through the handlers: atomic, metadata only, within one scope.

A scope (one session, one user, ``shared/``) is one account of bytes and
files; a rename across two would move bytes between accounts and is EXDEV,
so ``mv`` copies and deletes instead.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pyfuse3
import pytest
from opskit import ROOT, Kernel, ctx, errno_of, kernel


async def artifact_id(k: Kernel, path: str) -> str:
    return (await k.getxattr(path, "user.artifact.id")).decode()


@pytest.mark.semantics("S-rename-atomic")
async def test_a_rename_moves_the_artifact_itself(tmp_path: Path) -> None:
    """The same artifact (id, bytes, inode) under the new name; the old name is gone in the same step."""
    async with kernel(tmp_path) as k:
        ino = await k.write_file("users/alice/dir/sub/f.txt", b"moving")
        before = await artifact_id(k, "users/alice/dir/sub/f.txt")
        await k.rename("users/alice/dir/sub/f.txt", "users/alice/dir/g.txt")
        assert await errno_of(k.lookup("users/alice/dir/sub/f.txt")) == errno.ENOENT
        assert (await k.lookup("users/alice/dir/g.txt")).st_ino == ino
        assert await artifact_id(k, "users/alice/dir/g.txt") == before
        assert await k.read_file("users/alice/dir/g.txt") == b"moving"
        node = await k.ns.get(ino)
        assert await k.ns.filename_of(node) == "dir/g.txt"  # the library's filename follows


@pytest.mark.semantics("S-rename-atomic")
async def test_a_directory_moves_with_everything_below_it(tmp_path: Path) -> None:
    async with kernel(tmp_path) as k:
        ino = await k.write_file("users/alice/dir/sub/deep/f", b"deep")
        await k.rename("users/alice/dir", "users/alice/renamed")
        assert await k.read_file("users/alice/renamed/sub/deep/f") == b"deep"
        assert await errno_of(k.lookup("users/alice/dir")) == errno.ENOENT
        assert await k.ns.filename_of(await k.ns.get(ino)) == "renamed/sub/deep/f"


@pytest.mark.semantics("S-rename-replace")
async def test_a_rename_onto_a_file_replaces_it(tmp_path: Path) -> None:
    """How editors and rsync save: the new file takes the name, the old artifact is gone."""
    async with kernel(tmp_path) as k:
        await k.write_file("users/alice/a", b"the old a")
        await k.write_file("users/alice/.a.tmp", b"the new a")
        old_id, new_id = await artifact_id(k, "users/alice/a"), await artifact_id(k, "users/alice/.a.tmp")
        await k.rename("users/alice/.a.tmp", "users/alice/a")
        assert await k.listdir("users/alice") == [".", "..", "a"]
        assert await k.read_file("users/alice/a") == b"the new a"
        assert await artifact_id(k, "users/alice/a") == new_id
        with pytest.raises(Exception, match="not found"):
            await k.ns.artifact_node(old_id)


@pytest.mark.semantics("S-rename-replace")
async def test_a_directory_replaces_only_an_empty_directory(tmp_path: Path) -> None:
    async with kernel(tmp_path) as k:
        await k.write_file("users/alice/src/f", b"f")
        await k.write_file("users/alice/full/g", b"g")
        await k.mkdir("users/alice/empty")
        await k.write_file("users/alice/file", b"x")
        assert await errno_of(k.rename("users/alice/src", "users/alice/full")) == errno.ENOTEMPTY
        assert await errno_of(k.rename("users/alice/src", "users/alice/file")) == errno.ENOTDIR
        assert await errno_of(k.rename("users/alice/file", "users/alice/empty")) == errno.EISDIR
        await k.rename("users/alice/src", "users/alice/empty")
        assert await k.listdir("users/alice") == [".", "..", "empty", "file", "full"]
        assert await k.read_file("users/alice/empty/f") == b"f"


@pytest.mark.semantics("S-rename-replace")
async def test_a_rename_onto_itself_changes_nothing(tmp_path: Path) -> None:
    async with kernel(tmp_path) as k:
        ino = await k.write_file("users/alice/f", b"f")
        await k.rename("users/alice/f", "users/alice/f")
        assert (await k.lookup("users/alice/f")).st_ino == ino
        assert await k.read_file("users/alice/f") == b"f"


@pytest.mark.semantics("S-rename-noreplace")
async def test_rename_noreplace_onto_an_existing_name_is_eexist(tmp_path: Path) -> None:
    async with kernel(tmp_path) as k:
        await k.write_file("users/alice/a", b"A")
        await k.write_file("users/alice/b", b"BB")
        await k.mkdir("users/alice/d")
        for target in ("users/alice/b", "users/alice/d"):
            assert await errno_of(k.rename("users/alice/a", target, pyfuse3.RENAME_NOREPLACE)) == errno.EEXIST
        assert (await k.read_file("users/alice/a"), await k.read_file("users/alice/b")) == (b"A", b"BB")
        await k.rename("users/alice/a", "users/alice/c", pyfuse3.RENAME_NOREPLACE)
        assert await k.listdir("users/alice") == [".", "..", "b", "c", "d"]


@pytest.mark.semantics("S-rename-exchange")
async def test_rename_exchange_swaps_two_entries(tmp_path: Path) -> None:
    """Two names trade places in one step, whatever their kinds, across directories of one scope."""
    async with kernel(tmp_path) as k:
        file_ino = await k.write_file("users/alice/f", b"file")
        await k.mkdir("users/alice/sub")
        dir_ino = (await k.mkdir("users/alice/sub/d")).st_ino
        await k.write_file("users/alice/sub/d/inside", b"in d")
        await k.rename("users/alice/f", "users/alice/sub/d", pyfuse3.RENAME_EXCHANGE)
        assert (await k.lookup("users/alice/sub/d")).st_ino == file_ino
        assert (await k.lookup("users/alice/f")).st_ino == dir_ino
        assert await k.read_file("users/alice/sub/d") == b"file"
        assert await k.read_file("users/alice/f/inside") == b"in d"
        assert await errno_of(k.rename("users/alice/f", "users/alice/none", pyfuse3.RENAME_EXCHANGE)) == errno.ENOENT


@pytest.mark.semantics("S-rename-subtree")
async def test_a_directory_cannot_move_into_its_own_subtree(tmp_path: Path) -> None:
    async with kernel(tmp_path) as k:
        await k.write_file("users/alice/a/b/c/f", b"")
        for target in ("users/alice/a/inside", "users/alice/a/b/c/inside"):
            assert await errno_of(k.rename("users/alice/a", target)) == errno.EINVAL
        assert await errno_of(k.rename("users/alice/a", "users/alice/a/b", pyfuse3.RENAME_EXCHANGE)) == errno.EINVAL
        assert await k.listdir("users/alice/a/b/c") == [".", "..", "f"]


@pytest.mark.semantics("S-rename-exdev")
@pytest.mark.parametrize(
    ("source", "target"),
    [
        ("users/alice/f", "users/bob/f"),
        ("users/alice/f", "shared/f"),
        ("users/alice/f", "sessions/s1/f"),
        ("sessions/s1/g", "sessions/s2/g"),
        ("shared/h", "users/alice/h"),
    ],
)
async def test_a_rename_across_scopes_is_exdev(tmp_path: Path, source: str, target: str) -> None:
    async with kernel(tmp_path) as k:
        for path in ("users/alice/f", "users/bob/x", "sessions/s1/g", "sessions/s2/x", "shared/h"):
            await k.write_file(path, b"bytes")
        assert await errno_of(k.rename(source, target)) == errno.EXDEV
        assert await errno_of(k.rename(source, target, pyfuse3.RENAME_NOREPLACE)) == errno.EXDEV
        await k.write_file(target, b"there")
        assert await errno_of(k.rename(source, target, pyfuse3.RENAME_EXCHANGE)) == errno.EXDEV
        assert await k.read_file(source) == b"bytes"


@pytest.mark.semantics("S-rename-exdev")
async def test_a_whole_scope_directory_cannot_be_renamed(tmp_path: Path) -> None:
    """A session or user directory is the scope itself; renaming it would re-key every artifact in it."""
    async with kernel(tmp_path) as k:
        await k.mkdir("users/alice")
        await k.mkdir("sessions/s1")
        assert await errno_of(k.rename("users/alice", "users/carol")) == errno.EACCES
        assert await errno_of(k.rename("sessions/s1", "sessions/s2")) == errno.EACCES


@pytest.mark.semantics("S-rename-mime")
async def test_a_mime_type_guessed_from_a_temporary_name_follows_the_final_name(tmp_path: Path) -> None:
    """``rsync`` and editors write ``.report.pdf.XyZ12`` and rename it to ``report.pdf``."""
    async with kernel(tmp_path) as k:
        await k.write_file("users/alice/.report.pdf.XyZ12", b"%PDF")
        assert await k.getxattr("users/alice/.report.pdf.XyZ12", "user.artifact.mime") == b"application/octet-stream"
        await k.rename("users/alice/.report.pdf.XyZ12", "users/alice/report.pdf")
        assert await k.getxattr("users/alice/report.pdf", "user.artifact.mime") == b"application/pdf"
        await k.setxattr("users/alice/report.pdf", "user.artifact.mime", b"application/x-custom")
        await k.rename("users/alice/report.pdf", "users/alice/report.txt")  # set by hand: kept
        assert await k.getxattr("users/alice/report.txt", "user.artifact.mime") == b"application/x-custom"


@pytest.mark.semantics("S-rename-exchange")
async def test_unknown_rename_flags_are_einval(tmp_path: Path) -> None:
    async with kernel(tmp_path) as k:
        await k.write_file("users/alice/a", b"")
        parent = await k.ino("users/alice")
        assert await errno_of(k.ops.rename(parent, b"a", parent, b"b", 4, ctx(ROOT))) == errno.EINVAL  # RENAME_WHITEOUT
        assert await k.listdir("users/alice") == [".", "..", "a"]


@pytest.mark.semantics("S-rename-replace")
async def test_a_rename_over_an_open_file_publishes_nothing_under_the_new_name(tmp_path: Path) -> None:
    """The replaced file's descriptors write into their own bytes; their close touches nothing else."""
    async with kernel(tmp_path) as k:
        await k.write_file("users/alice/a", b"old a")
        await k.write_file("users/alice/b", b"new a")
        fh = await k.open("users/alice/a", os.O_RDWR)
        await k.rename("users/alice/b", "users/alice/a")
        await k.ops.write(fh, 0, b"late write")
        await k.close(fh)
        assert await k.read_file("users/alice/a") == b"new a"
