"""link(2) through the handlers: hard links within one scope (issue #13).

A hard link is a further name of one inode: every name reads the same bytes
and attributes, st_nlink counts the names, and the bytes live while any
name or open descriptor does. Names never cross scopes (EXDEV), and no
directory gets a second name (EPERM), as on Linux.
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

import pytest
from opskit import ROOT, Fields, Kernel, ctx, errno_of, kernel

from core.nodes import MAX_LINKS


async def nlink(k: Kernel, path: str) -> int:
    return (await k.lookup(path)).st_nlink


@pytest.mark.semantics("S-hardlink")
async def test_every_name_of_a_linked_file_is_the_same_file(tmp_path: Path) -> None:
    async with kernel(tmp_path) as k:
        ino = await k.write_file("users/alice/f", b"one inode")
        await k.mkdir("users/alice/sub")
        attr = await k.link("users/alice/f", "users/alice/sub/g")
        assert (attr.st_ino, attr.st_nlink) == (ino, 2)
        assert (await k.lookup("users/alice/sub/g")).st_ino == ino
        assert await nlink(k, "users/alice/f") == 2
        await k.write_file("users/alice/sub/g", b"written through g")  # O_TRUNC through the second name
        assert await k.read_file("users/alice/f") == b"written through g"
        await k.setattr("users/alice/f", Fields(update_mode=True), st_mode=0o600)
        assert stat.S_IMODE((await k.lookup("users/alice/sub/g")).st_mode) == 0o600
        assert await k.getxattr("users/alice/f", "user.artifact.id") == await k.getxattr(
            "users/alice/sub/g", "user.artifact.id"
        )
        assert await k.listdir("users/alice/sub") == [".", "..", "g"]
        # the library sees one artifact, under its first name
        node = await k.ns.get(ino)
        assert await k.ns.filename_of(node) == "f"


@pytest.mark.semantics("S-hardlink")
async def test_unlink_of_one_name_leaves_the_others(tmp_path: Path) -> None:
    async with kernel(tmp_path) as k:
        ino = await k.write_file("users/alice/f", b"kept")
        await k.link("users/alice/f", "users/alice/g")
        await k.link("users/alice/f", "users/alice/h")
        await k.unlink("users/alice/f")
        assert await errno_of(k.lookup("users/alice/f")) == errno.ENOENT
        assert await nlink(k, "users/alice/g") == 2 and await k.read_file("users/alice/h") == b"kept"
        assert await k.ns.filename_of(await k.ns.get(ino)) == "g"  # the oldest name left is the filename
        await k.unlink("users/alice/g")
        await k.unlink("users/alice/h")
        assert await errno_of(k.ops.getattr(ino, ctx(ROOT))) == errno.ESTALE
        assert await k.listdir("users/alice") == [".", ".."]
        assert (await k.ns.totals()).files == 0


@pytest.mark.semantics("S-hardlink")
async def test_an_open_file_keeps_its_bytes_and_counts_its_names(tmp_path: Path) -> None:
    async with kernel(tmp_path) as k:
        ino = await k.write_file("users/alice/f", b"open")
        fh = await k.open("users/alice/f", os.O_RDWR)
        await k.link("users/alice/f", "users/alice/g")
        assert (await k.ops.getattr(ino, ctx(ROOT))).st_nlink == 2
        await k.unlink("users/alice/f")
        assert (await k.ops.getattr(ino, ctx(ROOT))).st_nlink == 1  # not 0: g still leads to it
        await k.ops.write(fh, 0, b"OPEN")
        await k.close(fh)  # published: the inode still has a name
        assert await k.read_file("users/alice/g") == b"OPEN"


@pytest.mark.semantics("S-hardlink")
async def test_rename_over_a_linked_name_and_between_two_names_of_one_file(tmp_path: Path) -> None:
    async with kernel(tmp_path) as k:
        linked = await k.write_file("users/alice/f", b"linked")
        await k.link("users/alice/f", "users/alice/g")
        # rename(2) between two names of one inode does nothing, both stay
        await k.rename("users/alice/f", "users/alice/g")
        assert (await k.lookup("users/alice/f")).st_ino == (await k.lookup("users/alice/g")).st_ino == linked
        other = await k.write_file("users/alice/other", b"other")
        await k.rename("users/alice/other", "users/alice/g")  # g's inode loses a name, keeps the other
        assert (await k.lookup("users/alice/g")).st_ino == other
        assert await nlink(k, "users/alice/f") == 1 and await k.read_file("users/alice/f") == b"linked"
        # a link's name moves alone
        await k.link("users/alice/f", "users/alice/h")
        await k.mkdir("users/alice/d")
        await k.rename("users/alice/h", "users/alice/d/moved")
        assert await k.listdir("users/alice") == [".", "..", "d", "f", "g"]
        assert (await k.lookup("users/alice/d/moved")).st_ino == linked


@pytest.mark.semantics("S-hardlink")
async def test_link_refusals(tmp_path: Path) -> None:
    async with kernel(tmp_path) as k:
        await k.write_file("users/alice/f", b"x")
        await k.write_file("users/alice/taken", b"y")
        await k.write_file("users/bob/b", b"z")
        await k.mkdir("users/alice/dir")
        assert await errno_of(k.link("users/alice/f", "users/alice/taken")) == errno.EEXIST
        assert await errno_of(k.link("users/alice/f", "users/bob/f")) == errno.EXDEV
        assert await errno_of(k.link("users/alice/f", "shared/f")) == errno.EXDEV
        assert await errno_of(k.link("users/alice/dir", "users/alice/dir2")) == errno.EPERM
        assert await errno_of(k.link("users/alice/f", "users/alice/f/under")) == errno.ENOTDIR
        assert await k.read_file("users/alice/taken") == b"y" and await nlink(k, "users/alice/f") == 1


@pytest.mark.semantics("S-hardlink")
async def test_links_to_symlinks_and_special_files(tmp_path: Path) -> None:
    async with kernel(tmp_path) as k:
        await k.mkdir("users/alice")
        await k.symlink("users/alice/s", "target")
        await k.mkdir("users/alice/d")
        fifo = await k.ops.mknod(await k.ino("users/alice/d"), b"p", stat.S_IFIFO | 0o644, 0, ctx(ROOT))
        await k.link("users/alice/s", "users/alice/s2")
        await k.link("users/alice/d/p", "users/alice/p2")
        assert await k.ops.readlink(await k.ino("users/alice/s2"), ctx(ROOT)) == b"target"
        p2 = await k.lookup("users/alice/p2")
        assert (p2.st_ino, stat.S_ISFIFO(p2.st_mode), p2.st_nlink) == (fifo.st_ino, True, 2)


@pytest.mark.semantics("S-hardlink")
async def test_a_file_has_at_most_max_links_names(tmp_path: Path) -> None:
    async with kernel(tmp_path) as k:
        ino = await k.write_file("users/alice/f", b"x")
        node = await k.ns.get(ino)
        parent = await k.ns.get(await k.ino("users/alice"))
        for i in range(MAX_LINKS - 1):  # straight to the namespace: a thousand handler calls add nothing
            await k.ns.link(node, parent, f"l{i}")
        assert await nlink(k, "users/alice/f") == MAX_LINKS
        assert await errno_of(k.link("users/alice/f", "users/alice/one-more")) == errno.EMLINK


@pytest.mark.semantics("S-hardlink")
async def test_the_library_deletes_an_artifact_with_all_its_names(tmp_path: Path) -> None:
    async with kernel(tmp_path) as k:
        ino = await k.write_file("users/alice/f", b"x")
        await k.link("users/alice/f", "users/alice/g")
        node = await k.ns.get(ino)
        assert await k.ns.unlink(node, every_name=True) is None
        assert await k.listdir("users/alice") == [".", ".."]


@pytest.mark.semantics("S-hardlink")
async def test_a_link_is_charged_once(tmp_path: Path) -> None:
    async with kernel(tmp_path) as k:
        await k.write_file("users/alice/f", b"12345")
        before = await k.ns.totals()
        await k.link("users/alice/f", "users/alice/g")
        assert await k.ns.totals() == before
        await k.unlink("users/alice/f")
        assert await k.ns.totals() == before
