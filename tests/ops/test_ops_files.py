"""Files through the handlers: create, write, publish at close, truncate, unlink, links, attributes.

What "another face" sees is read straight from the store (``k.ns``), as the
library or another mount would read it: the mount's own open state is not
consulted there.
"""

from __future__ import annotations

import errno
import hashlib
import os
import stat
from pathlib import Path
from typing import cast

import pyfuse3
import pytest
from opskit import ROOT, Caller, Fields, Kernel, attributes, ctx, errno_of, kernel

from core.nodes import Node


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


async def stored(k: Kernel, path: str) -> tuple[bytes, Node]:
    """What every other face of the store reads at ``path``: the committed bytes and the node."""
    node = await k.ns.get(await k.ino(path))
    data = b"".join([chunk async for chunk in k.ns.read_chunks(node, 1 << 20, verify=True)])
    return data, node


# -- create


@pytest.mark.semantics("S-create-new", "S-tree-artifact")
async def test_a_new_file_is_an_empty_artifact_of_its_creator_at_once(tmp_path: Path) -> None:
    """The artifact exists (empty) from the create on; its bytes come with the close."""
    alice = Caller(uid=1001, gid=1002)
    async with kernel(tmp_path) as k:
        await k.mkdir("users/alice")
        fh, attr = await k.create("users/alice/report.pdf", mode=0o640, caller=alice)
        assert stat.S_ISREG(attr.st_mode) and stat.S_IMODE(attr.st_mode) == 0o640
        assert (attr.st_uid, attr.st_gid, attr.st_size, attr.st_nlink) == (1001, 1002, 0, 1)
        data, node = await stored(k, "users/alice/report.pdf")
        assert data == b"" and node.artifact is not None and node.artifact.mime == "application/pdf"
        assert (await k.lookup("users/alice/report.pdf")).st_ino == attr.st_ino
        await k.close(fh)


@pytest.mark.semantics("S-create-excl")
async def test_o_excl_on_an_existing_name_is_eexist(tmp_path: Path) -> None:
    async with kernel(tmp_path) as k:
        await k.write_file("users/alice/f", b"kept")
        await k.mkdir("users/alice/d")
        for existing in ("users/alice/f", "users/alice/d"):
            assert await errno_of(k.create(existing, os.O_WRONLY | os.O_EXCL)) == errno.EEXIST
        assert (await stored(k, "users/alice/f"))[0] == b"kept"


@pytest.mark.semantics("S-create-excl")
async def test_o_creat_without_o_excl_opens_a_file_made_meanwhile(tmp_path: Path) -> None:
    """The kernel found no entry, but another process made one before the create: open(2) opens it,
    keeping its mode and bytes (O_TRUNC empties it, at close)."""
    async with kernel(tmp_path) as k:
        ino = await k.write_file("users/alice/f", b"made meanwhile")
        await k.setattr("users/alice/f", Fields(update_mode=True), st_mode=0o600)
        fh, attr = await k.create("users/alice/f", os.O_RDWR, mode=0o777)
        assert (attr.st_ino, stat.S_IMODE(attr.st_mode), attr.st_size) == (ino, 0o600, len(b"made meanwhile"))
        assert await k.read(fh, 0, 100) == b"made meanwhile"
        await k.close(fh)
        fh, attr = await k.create("users/alice/f", os.O_WRONLY | os.O_TRUNC)
        assert attr.st_ino == ino
        await k.close(fh)
        assert (await stored(k, "users/alice/f"))[0] == b""


@pytest.mark.semantics("S-create-new")
async def test_mknod_of_a_regular_file_is_a_create(tmp_path: Path) -> None:
    async with kernel(tmp_path) as k:
        await k.mkdir("users/alice")
        parent = await k.ino("users/alice")
        attr = await k.ops.mknod(parent, b"plain", stat.S_IFREG | 0o600, 0, ctx(ROOT))
        assert stat.S_ISREG(attr.st_mode) and stat.S_IMODE(attr.st_mode) == 0o600
        assert await errno_of(k.ops.mknod(parent, b"plain", stat.S_IFREG | 0o600, 0, ctx(ROOT))) == errno.EEXIST


# -- writing and publishing


@pytest.mark.semantics("S-publish-close", "S-consistency-one-mount")
async def test_writes_are_published_whole_at_close(tmp_path: Path) -> None:
    """Until close the store keeps the old version (other faces read it whole); descriptors in this
    mount already read the new bytes and stat shows the new size."""
    async with kernel(tmp_path) as k:
        await k.write_file("users/alice/w.txt", b"old content")
        _, before = await stored(k, "users/alice/w.txt")
        writer = await k.open("users/alice/w.txt", os.O_RDWR)
        await k.ops.write(writer, 0, b"NEW")
        await k.ops.write(writer, 11, b", and more")
        reader = await k.open("users/alice/w.txt")
        assert await k.read_all(reader) == b"NEW content, and more"
        assert (await k.ops.getattr(await k.ino("users/alice/w.txt"), ctx(ROOT))).st_size == 21
        data, node = await stored(k, "users/alice/w.txt")
        assert (data, node.artifact.version) == (b"old content", before.artifact.version)  # type: ignore[union-attr]
        await k.ops.flush(reader)  # closing a reader publishes nothing
        await k.ops.release(reader)
        assert (await stored(k, "users/alice/w.txt"))[0] == b"old content"
        await k.ops.flush(writer)
        data, node = await stored(k, "users/alice/w.txt")
        assert data == b"NEW content, and more"
        assert node.artifact is not None and node.artifact.sha256 == sha(data)
        assert node.artifact.version == before.artifact.version + 1  # type: ignore[union-attr]
        assert node.artifact.artifact_id == before.artifact.artifact_id  # type: ignore[union-attr]
        await k.ops.release(writer)


@pytest.mark.semantics("S-publish-close")
async def test_each_close_of_a_writer_publishes_and_a_close_that_wrote_nothing_does_not(tmp_path: Path) -> None:
    async with kernel(tmp_path) as k:
        await k.write_file("users/alice/f", b"v1")
        version = (await stored(k, "users/alice/f"))[1].artifact.version  # type: ignore[union-attr]
        fh = await k.open("users/alice/f", os.O_RDWR)
        await k.close(fh)  # opened for writing, wrote nothing
        assert (await stored(k, "users/alice/f"))[1].artifact.version == version  # type: ignore[union-attr]
        fh = await k.open("users/alice/f", os.O_WRONLY)
        await k.ops.write(fh, 0, b"v2")
        await k.ops.release(fh)  # no flush first: the release publishes
        data, node = await stored(k, "users/alice/f")
        assert (data, node.artifact.version) == (b"v2", version + 1)  # type: ignore[union-attr]


@pytest.mark.semantics("S-consistency-one-mount")
async def test_descriptors_of_one_file_share_its_unpublished_state(tmp_path: Path) -> None:
    """Two writers in one mount write into the same bytes, as on a local disk; the first close publishes
    both their writes."""
    async with kernel(tmp_path) as k:
        await k.write_file("users/alice/f", b"." * 10)
        a = await k.open("users/alice/f", os.O_WRONLY)
        b = await k.open("users/alice/f", os.O_RDWR)
        await k.ops.write(a, 0, b"AA")
        await k.ops.write(b, 8, b"BB")
        assert await k.read(b, 0, 100) == b"AA......BB"
        await k.close(a)
        assert (await stored(k, "users/alice/f"))[0] == b"AA......BB"
        await k.ops.write(b, 4, b"CC")
        await k.close(b)
        assert (await stored(k, "users/alice/f"))[0] == b"AA..CC..BB"


@pytest.mark.semantics("S-publish-close")
async def test_sparse_writes_read_zeros_in_the_gap(tmp_path: Path) -> None:
    async with kernel(tmp_path) as k:
        await k.directory("users/alice")
        fh, _ = await k.create("users/alice/sparse", os.O_RDWR)
        await k.ops.write(fh, 300_000, b"end")
        await k.close(fh)
        data, node = await stored(k, "users/alice/sparse")
        assert node.size == 300_003 and data == b"\0" * 300_000 + b"end"


@pytest.mark.semantics("S-tree-dirs")
async def test_open_of_a_directory_is_eisdir(tmp_path: Path) -> None:
    async with kernel(tmp_path) as k:
        await k.mkdir("users/alice")
        for flags in (os.O_RDONLY, os.O_WRONLY):
            assert await errno_of(k.open("users/alice", flags)) == errno.EISDIR


# -- truncate


@pytest.mark.semantics("S-truncate")
async def test_truncate_by_path_is_published_before_it_returns(tmp_path: Path) -> None:
    async with kernel(tmp_path) as k:
        data = os.urandom(5000)
        await k.write_file("users/alice/t", data)
        attr = await k.setattr("users/alice/t", Fields(update_size=True), st_size=100)
        assert attr.st_size == 100
        assert (await stored(k, "users/alice/t"))[0] == data[:100]
        await k.setattr("users/alice/t", Fields(update_size=True), st_size=300_000)  # grows with zeros
        assert (await stored(k, "users/alice/t"))[0] == data[:100] + b"\0" * 299_900
        assert await k.read_file("users/alice/t") == data[:100] + b"\0" * 299_900


@pytest.mark.semantics("S-truncate")
async def test_ftruncate_is_published_with_the_next_close(tmp_path: Path) -> None:
    async with kernel(tmp_path) as k:
        await k.write_file("users/alice/t", b"0123456789")
        fh = await k.open("users/alice/t", os.O_RDWR)
        attr = await k.setattr("users/alice/t", Fields(update_size=True), fh=fh, st_size=4)
        assert attr.st_size == 4 and await k.read(fh, 0, 100) == b"0123"
        assert (await stored(k, "users/alice/t"))[0] == b"0123456789"
        await k.close(fh)
        assert (await stored(k, "users/alice/t"))[0] == b"0123"


@pytest.mark.semantics("S-truncate")
async def test_truncate_of_what_has_no_bytes(tmp_path: Path) -> None:
    async with kernel(tmp_path) as k:
        await k.directory("users/alice/d")
        await k.symlink("users/alice/l", "d")
        assert await errno_of(k.setattr("users/alice/d", Fields(update_size=True), st_size=0)) == errno.EISDIR
        assert await errno_of(k.setattr("users/alice/l", Fields(update_size=True), st_size=0)) == errno.EINVAL


@pytest.mark.semantics("S-truncate")
async def test_o_trunc_empties_the_file_for_this_mount_and_publishes_at_close(tmp_path: Path) -> None:
    async with kernel(tmp_path) as k:
        await k.write_file("users/alice/f", b"old bytes")
        fh = await k.open("users/alice/f", os.O_WRONLY | os.O_TRUNC)
        assert (await k.ops.getattr(await k.ino("users/alice/f"), ctx(ROOT))).st_size == 0
        assert (await stored(k, "users/alice/f"))[0] == b"old bytes"
        await k.ops.write(fh, 0, b"new")
        await k.close(fh)
        assert (await stored(k, "users/alice/f"))[0] == b"new"


@pytest.mark.semantics("S-truncate")
async def test_a_close_after_o_trunc_that_wrote_nothing_leaves_publishing_to_the_last_close(tmp_path: Path) -> None:
    """Regression (issue #13): shell `>` opens with O_TRUNC, dups and closes the first descriptor
    (a flush) before writing; that flush published an empty version, which other views, and a
    crash, were left with until the last close."""
    async with kernel(tmp_path) as k:
        await k.write_file("users/alice/f", b"old bytes")
        fh = await k.open("users/alice/f", os.O_WRONLY | os.O_TRUNC)
        await k.ops.flush(fh)  # close(fd) after dup(fd): the description stays open
        assert (await stored(k, "users/alice/f"))[0] == b"old bytes"
        await k.ops.write(fh, 0, b"new")
        await k.ops.flush(fh)  # a flush after writing publishes, as every close of a writer does
        assert (await stored(k, "users/alice/f"))[0] == b"new"
        await k.ops.release(fh)
        fh = await k.open("users/alice/f", os.O_WRONLY | os.O_TRUNC)
        await k.close(fh)  # `: > f`: the truncate alone is published by the last close
        data, node = await stored(k, "users/alice/f")
        assert data == b"" and node.size == 0


# -- unlink


@pytest.mark.semantics("S-unlink-open")
async def test_an_unlinked_open_file_lives_on_in_its_descriptors(tmp_path: Path) -> None:
    """As on a local disk: reads, writes, fstat and ftruncate go on; the last close drops the bytes, and
    nothing is published, neither under the old name nor anywhere else."""
    async with kernel(tmp_path) as k:
        data = os.urandom(300_000)
        ino = await k.write_file("users/alice/f", data)
        reader = await k.open("users/alice/f")
        writer = await k.open("users/alice/f", os.O_RDWR)
        await k.unlink("users/alice/f")
        assert await errno_of(k.lookup("users/alice/f")) == errno.ENOENT
        assert await k.listdir("users/alice") == [".", ".."]
        assert await k.read(reader, 200_000, 10) == data[200_000:200_010]
        await k.ops.write(writer, 0, b"still writable")
        assert await k.read(reader, 0, 14) == b"still writable"
        attr = await k.ops.getattr(ino, ctx(ROOT))
        assert (attr.st_size, attr.st_nlink) == (300_000, 0)  # regression (issue #13): nlink stayed 1
        await k.ops.fsync(writer, False)  # nowhere to publish to: nothing happens, no error
        await k.write_file("users/alice/f", b"a new file by the old name")
        await k.close(writer)
        await k.close(reader)
        assert (await stored(k, "users/alice/f"))[0] == b"a new file by the old name"
        assert await errno_of(k.ops.getattr(ino, ctx(ROOT))) == errno.ESTALE


@pytest.mark.semantics("S-unlink-open")
async def test_ftruncate_and_fchmod_of_an_unlinked_open_file(tmp_path: Path) -> None:
    async with kernel(tmp_path) as k:
        ino = await k.write_file("users/alice/f", b"0123456789")
        fh = await k.open("users/alice/f", os.O_RDWR)
        await k.unlink("users/alice/f")
        fields = Fields(update_size=True, update_mode=True)
        attr = await k.ops.setattr(ino, attributes(st_size=4, st_mode=0o600), cast(pyfuse3.SetattrFields, fields), fh, ctx(ROOT))
        assert (attr.st_size, stat.S_IMODE(attr.st_mode), attr.st_nlink) == (4, 0o600, 0)
        assert await k.read(fh, 0, 100) == b"0123"
        await k.close(fh)


@pytest.mark.semantics("S-unlink-open", "S-rename-replace")
async def test_a_file_replaced_by_rename_while_open_keeps_its_bytes_for_its_descriptors(tmp_path: Path) -> None:
    async with kernel(tmp_path) as k:
        old = os.urandom(300_000)
        await k.write_file("users/alice/a", old)
        await k.write_file("users/alice/b", b"the new a")
        fh = await k.open("users/alice/a")
        await k.rename("users/alice/b", "users/alice/a")
        assert await k.read_all(fh) == old
        assert await k.read_file("users/alice/a") == b"the new a"
        await k.close(fh)


@pytest.mark.semantics("S-tree-dirs")
async def test_unlink_errors(tmp_path: Path) -> None:
    async with kernel(tmp_path) as k:
        await k.mkdir("users/alice")
        assert await errno_of(k.unlink("users/alice/none")) == errno.ENOENT
        assert await errno_of(k.unlink("users/alice")) == errno.EISDIR
        assert await errno_of(k.unlink("shared")) == errno.EISDIR


# -- symlinks, hard links, special files


@pytest.mark.semantics("S-symlink")
async def test_symlinks_keep_their_target_verbatim(tmp_path: Path) -> None:
    """The mount stores the target and never follows it itself (the kernel does): dangling, relative,
    absolute and out-of-mount targets are all just text."""
    async with kernel(tmp_path) as k:
        await k.mkdir("users/alice")
        for name, target in (("rel", "docs/report.txt"), ("up", "../../shared/x"), ("abs", "/etc/passwd"),
                             ("dangling", "missing"), ("utf8", "ünïcode")):
            attr = await k.symlink(f"users/alice/{name}", target)
            assert stat.S_ISLNK(attr.st_mode) and stat.S_IMODE(attr.st_mode) == 0o777
            assert attr.st_size == len(target.encode())
            assert await k.ops.readlink(attr.st_ino, ctx(ROOT)) == target.encode()
            assert (await k.lookup(f"users/alice/{name}")).st_ino == attr.st_ino
        assert await errno_of(k.symlink("users/alice/rel", "other")) == errno.EEXIST
        parent = await k.ino("users/alice")
        assert await errno_of(k.ops.symlink(parent, b"bad", b"\xff\xfe", ctx(ROOT))) == errno.EINVAL
        await k.write_file("users/alice/file", b"x")
        assert await errno_of(k.ops.readlink(await k.ino("users/alice/file"), ctx(ROOT))) == errno.EINVAL


@pytest.mark.semantics("S-special")
@pytest.mark.parametrize("kind", [stat.S_IFIFO, stat.S_IFCHR, stat.S_IFBLK, stat.S_IFSOCK])
async def test_special_files_are_nodes_with_a_type_and_no_bytes(tmp_path: Path, kind: int) -> None:
    """Regression (issue #13): mknod answered EPERM for every special type."""
    alice = Caller(uid=1001, gid=1002)
    async with kernel(tmp_path) as k:
        await k.mkdir("users/alice")
        parent = await k.ino("users/alice")
        rdev = os.makedev(8, 3) if kind in (stat.S_IFCHR, stat.S_IFBLK) else 0
        made = await k.ops.mknod(parent, b"special", kind | 0o640, rdev, ctx(alice))
        for attr in (made, await k.lookup("users/alice/special")):
            assert (stat.S_IFMT(attr.st_mode), stat.S_IMODE(attr.st_mode)) == (kind, 0o640)
            assert (attr.st_rdev, attr.st_uid, attr.st_gid, attr.st_size, attr.st_nlink) == (rdev, 1001, 1002, 0, 1)
        assert await k.listdir("users/alice") == [".", "..", "special"]
        assert await k.listxattr("users/alice/special") == []
        await k.setattr("users/alice/special", Fields(update_mode=True), st_mode=kind | 0o600)
        await k.rename("users/alice/special", "users/alice/moved")
        attr = await k.lookup("users/alice/moved")
        assert (stat.S_IFMT(attr.st_mode), stat.S_IMODE(attr.st_mode), attr.st_rdev) == (kind, 0o600, rdev)
        await k.unlink("users/alice/moved")
        assert await k.listdir("users/alice") == [".", ".."]


# -- attributes


@pytest.mark.semantics("S-perm-attrs")
async def test_chmod_chown_and_utimens_are_stored(tmp_path: Path) -> None:
    async with kernel(tmp_path) as k:
        for path in ("users/alice/f", "users/alice/d"):
            if path.endswith("f"):
                await k.write_file(path, b"x")
            else:
                await k.mkdir(path)
            before = await k.lookup(path)
            attr = await k.setattr(path, Fields(update_mode=True), st_mode=stat.S_IFREG | 0o4750)
            assert stat.S_IMODE(attr.st_mode) == 0o4750 and stat.S_IFMT(attr.st_mode) == stat.S_IFMT(before.st_mode)
            attr = await k.setattr(path, Fields(update_uid=True, update_gid=True), st_uid=1234, st_gid=5678)
            assert (attr.st_uid, attr.st_gid) == (1234, 5678)
            attr = await k.setattr(path, Fields(update_atime=True, update_mtime=True),
                                   st_atime_ns=1_000_000_001, st_mtime_ns=2_000_000_002)
            assert (attr.st_atime_ns, attr.st_mtime_ns) == (1_000_000_001, 2_000_000_002)
            assert attr.st_ctime_ns >= before.st_ctime_ns
            again = await k.lookup(path)
            assert (stat.S_IMODE(again.st_mode), again.st_uid, again.st_gid, again.st_mtime_ns) == (
                0o4750, 1234, 5678, 2_000_000_002
            )


@pytest.mark.semantics("S-perm-attrs")
async def test_an_explicit_mtime_survives_the_close_that_publishes(tmp_path: Path) -> None:
    """``cp -p``, ``tar`` and ``rsync -t`` set the mtime after writing, before closing."""
    async with kernel(tmp_path) as k:
        await k.directory("users/alice")
        fh, _ = await k.create("users/alice/f")
        await k.ops.write(fh, 0, b"data")
        await k.setattr("users/alice/f", Fields(update_mtime=True), fh=fh, st_mtime_ns=1_500_000_000_123_456_789)
        await k.close(fh)
        assert (await k.lookup("users/alice/f")).st_mtime_ns == 1_500_000_000_123_456_789
        assert (await stored(k, "users/alice/f"))[1].mtime_ns == 1_500_000_000_123_456_789


@pytest.mark.semantics("S-perm-attrs")
async def test_writes_move_the_mtime(tmp_path: Path) -> None:
    async with kernel(tmp_path) as k:
        await k.write_file("users/alice/f", b"x")
        await k.setattr("users/alice/f", Fields(update_mtime=True), st_mtime_ns=1_000_000_000)
        fh = await k.open("users/alice/f", os.O_WRONLY)
        await k.ops.write(fh, 1, b"y")
        assert (await k.ops.getattr(await k.ino("users/alice/f"), ctx(ROOT))).st_mtime_ns > 1_000_000_000
        await k.close(fh)
        assert (await k.lookup("users/alice/f")).st_mtime_ns > 1_000_000_000



@pytest.mark.semantics("S-perm-attrs")
async def test_reads_leave_the_atime_alone(tmp_path: Path) -> None:
    """The mount never moves atime on its own (as with noatime): only utimensat sets it."""
    async with kernel(tmp_path) as k:
        await k.write_file("users/alice/f", b"read me")
        await k.setattr("users/alice/f", Fields(update_atime=True), st_atime_ns=1_000_000_000)
        assert await k.read_file("users/alice/f") == b"read me"
        assert (await k.lookup("users/alice/f")).st_atime_ns == 1_000_000_000
