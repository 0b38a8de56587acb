"""The fixed upper tree, lookups, listings and statfs, through the handlers alone.

The mount's root is one sandbox (``--sandbox app``): ``sessions/``, ``users/``
and ``shared/`` are fixed; below ``sessions/`` and ``users/`` each directory
is a scope made by ``mkdir``. Nothing else can be made up there.
"""

from __future__ import annotations

import errno
import os
import stat
import uuid
from pathlib import Path

import pyfuse3
import pytest
from opskit import ROOT, SIGNER, Caller, Fields, ctx, errno_of, kernel, name_of

from core.backends.meta.redis.store import RedisMetaStore
from core.settings import Limits
from core.tree import grid
from fusefs.attrs import CACHE_SECONDS


@pytest.mark.semantics("S-tree-fixed")
async def test_the_root_holds_the_three_scope_kinds(tmp_path: Path) -> None:
    """What a reader of a fresh mount finds: three directories, and '.'/'..' answered by the mount itself."""
    async with kernel(tmp_path) as k:
        root = await k.ops.getattr(pyfuse3.ROOT_INODE, ctx(ROOT))
        assert stat.S_ISDIR(root.st_mode) and root.st_ino == pyfuse3.ROOT_INODE
        assert await k.listdir("") == [".", "..", "sessions", "shared", "users"]
        for name in ("sessions", "shared", "users"):
            attr = await k.lookup(name)
            assert stat.S_ISDIR(attr.st_mode), name
            dot = await k.ops.lookup(attr.st_ino, b".", ctx(ROOT))
            dotdot = await k.ops.lookup(attr.st_ino, b"..", ctx(ROOT))
            assert (dot.st_ino, dotdot.st_ino) == (attr.st_ino, pyfuse3.ROOT_INODE)
        assert await errno_of(k.lookup("nothing")) == errno.ENOENT


@pytest.mark.semantics("S-tree-fixed")
@pytest.mark.parametrize("where", ["", "sessions", "users"])
async def test_nothing_but_scope_directories_can_be_made_in_the_fixed_tree(tmp_path: Path, where: str) -> None:
    """Files, symlinks and (outside sessions/ and users/) directories above the scopes are EACCES."""
    async with kernel(tmp_path) as k:
        parent = await k.ino(where)
        assert await errno_of(k.ops.create(parent, b"stray", 0o644, os.O_WRONLY | os.O_CREAT, ctx(ROOT))) == errno.EACCES
        assert await errno_of(k.ops.symlink(parent, b"link", b"x", ctx(ROOT))) == errno.EACCES
        assert await errno_of(k.ops.mknod(parent, b"node", stat.S_IFREG | 0o644, 0, ctx(ROOT))) == errno.EACCES
        if where == "":
            assert await errno_of(k.mkdir("newdir")) == errno.EACCES
        assert await k.listdir(where) == [".", ".."] + (["sessions", "shared", "users"] if where == "" else [])


@pytest.mark.semantics("S-tree-fixed")
async def test_the_fixed_directories_cannot_be_removed_renamed_or_changed(tmp_path: Path) -> None:
    async with kernel(tmp_path) as k:
        assert await errno_of(k.rmdir("shared")) == errno.EACCES
        assert await errno_of(k.rmdir("users")) == errno.EACCES
        assert await errno_of(k.rename("sessions", "sessions2")) == errno.EACCES
        assert await errno_of(k.setattr("users", Fields(update_mode=True), st_mode=0o700)) == errno.EACCES
        assert await errno_of(k.setattr("", Fields(update_mtime=True), st_mtime_ns=1)) == errno.EACCES
        assert await k.listdir("") == [".", "..", "sessions", "shared", "users"]


@pytest.mark.semantics("S-tree-fixed", "S-tree-artifact")
async def test_mkdir_in_sessions_and_users_makes_a_scope(tmp_path: Path) -> None:
    """A session or user directory is a scope: files in it are artifacts of that session or user."""
    async with kernel(tmp_path) as k:
        session = await k.mkdir("sessions/s1")
        user = await k.mkdir("users/alice")
        assert stat.S_ISDIR(session.st_mode) and stat.S_ISDIR(user.st_mode)
        assert await errno_of(k.mkdir("users/alice")) == errno.EEXIST
        await k.write_file("sessions/s1/out.csv", b"a,b\n")
        await k.write_file("users/alice/notes.txt", b"notes")
        node = await k.ns.get(await k.ino("sessions/s1/out.csv"))
        assert node.space is not None and (node.space.scope.value, node.space.session_id) == ("session", "s1")
        node = await k.ns.get(await k.ino("users/alice/notes.txt"))
        assert node.space is not None and (node.space.scope.value, node.space.user_id) == ("user", "alice")


@pytest.mark.semantics("S-limit-names")
@pytest.mark.parametrize(
    ("name", "code"),
    [("bad id!", errno.EINVAL), ("-dash-first", errno.EINVAL), ("é", errno.EINVAL), ("a" * 129, errno.ENAMETOOLONG)],
)
async def test_scope_ids_are_stricter_than_names(tmp_path: Path, name: str, code: int) -> None:
    """A session or user id becomes part of grid keys: letters, digits and ._@+=:,~- only, at most 128."""
    async with kernel(tmp_path) as k:
        for holder in ("sessions", "users"):
            assert await errno_of(k.mkdir(f"{holder}/{name}")) == code, (holder, name_of(code))
        await k.mkdir("users/" + "a" * 128)
        await k.mkdir("sessions/a.b@c+d=e:f,g~h-i_j")


@pytest.mark.semantics("S-limit-names")
async def test_names_are_at_most_255_bytes_of_utf8(tmp_path: Path) -> None:
    async with kernel(tmp_path) as k:
        await k.mkdir("users/alice")
        alice = await k.ino("users/alice")
        for name in ("x" * 256, "é" * 128):
            raw = name.encode()
            assert await errno_of(k.ops.lookup(alice, raw, ctx(ROOT))) == errno.ENAMETOOLONG
            assert await errno_of(k.ops.create(alice, raw, 0o644, os.O_CREAT | os.O_WRONLY, ctx(ROOT))) == errno.ENAMETOOLONG
            assert await errno_of(k.ops.mkdir(alice, raw, 0o755, ctx(ROOT))) == errno.ENAMETOOLONG
        assert await errno_of(k.ops.create(alice, b"not-utf8-\xff", 0o644, os.O_CREAT, ctx(ROOT))) == errno.EINVAL
        assert await errno_of(k.ops.lookup(alice, b"not-utf8-\xff", ctx(ROOT))) == errno.EINVAL
        await k.write_file("users/alice/" + "z" * 255, b"the longest name there is")
        await k.write_file("users/alice/" + "é" * 127, b"254 bytes")
        assert sorted(await k.listdir("users/alice"))[2:] == sorted(["z" * 255, "é" * 127])
        stats = await k.ops.statfs(ctx(ROOT))
        assert stats.f_namemax == grid.MAX_NAME_BYTES == 255


@pytest.mark.semantics("S-readdir-offsets")
async def test_readdir_resumes_at_any_offset_without_losing_or_repeating(tmp_path: Path) -> None:
    """A listing that does not fit one request goes on from the offset of its last entry, as getdents does."""
    async with kernel(tmp_path) as k:
        names = [f"f{i:03d}" for i in range(50)]
        for name in names:
            await k.write_file(f"users/alice/{name}", b"")
        fh = await k.ops.opendir(await k.ino("users/alice"), ctx(ROOT))
        whole = await k.readdir(fh)
        assert [n for n, _, _ in whole] == [b".", b".."] + [n.encode() for n in names]
        assert [offset for _, _, offset in whole] == list(range(1, 53))  # each entry's offset is the next one's start
        for room in (1, 7, 52):
            got: list[bytes] = []
            offset = 0
            while batch := await k.readdir(fh, offset, room):
                assert len(batch) <= room
                got += [n for n, _, _ in batch]
                offset = batch[-1][2]
            assert got == [n for n, _, _ in whole], room
        for start in (1, 2, 30, 52):
            assert [(n, o) for n, _, o in await k.readdir(fh, start)] == [(n, o) for n, _, o in whole[start:]]
        await k.ops.releasedir(fh)


@pytest.mark.semantics("S-readdir-offsets")
async def test_rewinddir_starts_a_fresh_listing(tmp_path: Path) -> None:
    """Entries made or removed while a directory is being read do not shift the offsets of the others;
    a rewind (offset 0) then sees the directory as it is."""
    async with kernel(tmp_path) as k:
        for name in ("a", "b", "c"):
            await k.write_file(f"users/alice/{name}", b"")
        fh = await k.ops.opendir(await k.ino("users/alice"), ctx(ROOT))
        first = await k.readdir(fh, 0, room=3)
        assert [n for n, _, _ in first] == [b".", b"..", b"a"]
        await k.unlink("users/alice/a")
        await k.unlink("users/alice/b")
        await k.write_file("users/alice/d", b"")
        rest = await k.readdir(fh, first[-1][2])
        assert [n for n, _, _ in rest] == [b"b", b"c"]
        again = await k.readdir(fh, 0)  # rewinddir(): a fresh look
        assert [n for n, _, _ in again] == [b".", b"..", b"c", b"d"]
        await k.ops.releasedir(fh)


@pytest.mark.semantics("S-readdir-attrs")
async def test_readdir_gives_each_entry_the_attributes_a_lookup_gives(tmp_path: Path) -> None:
    """readdirplus fills the kernel's attribute cache: the listing's attributes must be the lookup's."""
    async with kernel(tmp_path) as k:
        await k.write_file("users/alice/f", b"12345")
        await k.mkdir("users/alice/d", 0o700)
        await k.symlink("users/alice/l", "f")
        fh = await k.ops.opendir(await k.ino("users/alice"), ctx(ROOT))
        listed = {name.decode(): attr for name, attr, _ in await k.readdir(fh)}
        await k.ops.releasedir(fh)
        for name in ("f", "d", "l"):
            looked = await k.lookup(f"users/alice/{name}")
            got = listed[name]
            assert (got.st_ino, got.st_mode, got.st_size, got.st_mtime_ns) == (
                looked.st_ino, looked.st_mode, looked.st_size, looked.st_mtime_ns
            ), name
        assert listed[".."].st_ino == await k.ino("users") and stat.S_ISDIR(listed[".."].st_mode)


@pytest.mark.semantics("S-tree-dirs")
async def test_opendir_of_a_file_is_enotdir(tmp_path: Path) -> None:
    async with kernel(tmp_path) as k:
        await k.write_file("users/alice/f", b"")
        assert await errno_of(k.ops.opendir(await k.ino("users/alice/f"), ctx(ROOT))) == errno.ENOTDIR


@pytest.mark.semantics("S-consistency-cache")
async def test_the_kernel_may_cache_entries_and_attributes_for_five_seconds(tmp_path: Path) -> None:
    """The bound on how stale a stat can be after a change made through another face of the store."""
    async with kernel(tmp_path) as k:
        await k.write_file("users/alice/f", b"x")
        for path in ("", "users", "users/alice", "users/alice/f"):
            attr = await k.lookup(path)
            assert attr.attr_timeout == attr.entry_timeout == CACHE_SECONDS == 5.0, path


@pytest.mark.semantics("S-consistency-cache", "S-perm-scopes")
async def test_with_allow_other_entries_in_owned_scopes_are_never_cached_as_names(tmp_path: Path) -> None:
    """The kernel's dentry cache is shared by all uids: a cached name inside users/alice would let bob
    reach it without the mount checking him."""
    async with kernel(tmp_path, allow_other=True, user_uids={"alice": 1001}) as k:
        await k.write_file("users/alice/f", b"x")
        await k.write_file("shared/g", b"y")
        assert (await k.lookup("users/alice/f")).entry_timeout == 0
        assert (await k.lookup("shared/g")).entry_timeout == CACHE_SECONDS  # readable by everyone anyway
        assert (await k.lookup("users/alice")).entry_timeout == CACHE_SECONDS  # the scope itself is checked at use


@pytest.mark.semantics("S-limit-statfs")
async def test_statfs_reports_the_disk_of_the_data_dir(tmp_path: Path) -> None:
    async with kernel(tmp_path) as k:
        stats = await k.ops.statfs(ctx(ROOT))
        disk = os.statvfs(tmp_path)
        assert (stats.f_bsize, stats.f_frsize, stats.f_blocks) == (disk.f_bsize, disk.f_frsize, disk.f_blocks)
        assert stats.f_files == disk.f_files


@pytest.mark.semantics("S-limit-statfs", "S-limit-quota")
async def test_statfs_of_a_mapped_uid_is_capped_by_its_user_quota(tmp_path: Path) -> None:
    """``df`` in a user's space says how much more that user may store, as a quota-aware disk would."""
    alice = Caller(uid=1001, gid=1001)
    limits = Limits(user_quota_bytes=1 << 20, user_quota_files=10)
    async with kernel(tmp_path, limits=limits, allow_other=True, user_uids={"alice": 1001}) as k:
        await k.mkdir("users/alice")
        await k.write_file("users/alice/f", b"x" * (256 << 10), caller=alice)
        stats = await k.ops.statfs(ctx(alice))
        disk = os.statvfs(tmp_path)
        assert stats.f_bavail == stats.f_bfree == (768 << 10) // disk.f_frsize  # the disk has more room than that
        assert stats.f_favail == stats.f_ffree == 9
        unmapped = await k.ops.statfs(ctx(Caller(uid=4242)))  # no user: the disk as it is
        assert (unmapped.f_blocks, unmapped.f_files) == (disk.f_blocks, disk.f_files)


@pytest.mark.semantics("S-tree-dirs")
async def test_new_and_removed_entries_move_their_directory_times(tmp_path: Path) -> None:
    """make and rsync decide by mtimes: a directory's mtime and ctime follow its entries."""
    async with kernel(tmp_path) as k:
        await k.mkdir("users/alice")
        await k.mkdir("users/alice/d")
        await k.setattr("users/alice/d", Fields(update_mtime=True), st_mtime_ns=1_000_000_000)
        steps = [
            k.write_file("users/alice/d/f", b"x"),
            k.rename("users/alice/d/f", "users/alice/d/g"),
            k.symlink("users/alice/d/l", "g"),
            k.unlink("users/alice/d/l"),
            k.mkdir("users/alice/d/sub"),
            k.rmdir("users/alice/d/sub"),
        ]
        for step in steps:
            before = await k.lookup("users/alice/d")
            await k.setattr("users/alice/d", Fields(update_mtime=True), st_mtime_ns=1_000_000_000)
            await step
            after = await k.lookup("users/alice/d")
            assert after.st_mtime_ns > 1_000_000_000 and after.st_ctime_ns >= before.st_ctime_ns


@pytest.mark.semantics("S-tree-dirs")
async def test_directory_errors(tmp_path: Path) -> None:
    async with kernel(tmp_path) as k:
        await k.write_file("users/alice/full/f", b"f")
        await k.write_file("users/alice/file", b"x")
        await k.mkdir("users/alice/empty")
        assert await errno_of(k.rmdir("users/alice/full")) == errno.ENOTEMPTY
        assert await errno_of(k.rmdir("users/alice/file")) == errno.ENOTDIR
        assert await errno_of(k.rmdir("users/alice/none")) == errno.ENOENT
        assert await errno_of(k.unlink("users/alice/full")) == errno.EISDIR
        assert await errno_of(k.mkdir("users/alice/full")) == errno.EEXIST
        assert await errno_of(k.mkdir("users/alice/file")) == errno.EEXIST
        file_ino = await k.ino("users/alice/file")
        assert await errno_of(k.ops.mkdir(file_ino, b"below", 0o755, ctx(ROOT))) == errno.ENOTDIR
        assert await errno_of(k.ops.create(file_ino, b"below", 0o644, os.O_CREAT, ctx(ROOT))) == errno.ENOTDIR
        await k.rmdir("users/alice/empty")
        assert await k.listdir("users/alice") == [".", "..", "file", "full"]


@pytest.mark.semantics("S-tree-dirs")
async def test_an_empty_scope_can_be_removed_and_made_again(tmp_path: Path) -> None:
    """rmdir of an empty session ends it; of an empty user directory, removes that user's space."""
    async with kernel(tmp_path) as k:
        await k.write_file("sessions/s1/f", b"x")
        await k.mkdir("users/bob")
        assert await errno_of(k.rmdir("sessions/s1")) == errno.ENOTEMPTY
        await k.unlink("sessions/s1/f")
        await k.rmdir("sessions/s1")
        await k.rmdir("users/bob")
        assert await k.listdir("sessions") == [".", ".."] and await k.listdir("users") == [".", ".."]
        await k.mkdir("sessions/s1")
        assert await k.listdir("sessions/s1") == [".", ".."]


@pytest.mark.semantics("S-unlink-open")
async def test_a_directory_removed_while_open_can_still_be_fstat(tmp_path: Path) -> None:
    """fstat(2) of an open directory that rmdir removed, as on a local disk; lookups no longer find it."""
    async with kernel(tmp_path) as k:
        await k.mkdir("users/alice")
        ino = (await k.mkdir("users/alice/d", 0o750)).st_ino
        fh = await k.ops.opendir(ino, ctx(ROOT))
        await k.rmdir("users/alice/d")
        attr = await k.ops.getattr(ino, ctx(ROOT))
        assert stat.S_IMODE(attr.st_mode) == 0o750 and attr.st_nlink == 0  # no name leads to it
        assert await errno_of(k.lookup("users/alice/d")) == errno.ENOENT
        await k.ops.releasedir(fh)
        assert await errno_of(k.ops.getattr(ino, ctx(ROOT))) == errno.ESTALE


@pytest.mark.semantics("S-consistency-stale")
async def test_an_inode_gone_from_the_store_is_estale_not_enoent(tmp_path: Path) -> None:
    """The kernel asked by an inode it reached through a cached name: ESTALE makes it look the name up
    again (as over NFS), where ENOENT would fail a name that may well exist again."""
    async with kernel(tmp_path) as k:
        ino = await k.write_file("users/alice/f", b"old")
        node = await k.ns.get(ino)
        await k.ns.unlink(node)  # another face of the store removed it
        assert await errno_of(k.ops.getattr(ino, ctx(ROOT))) == errno.ESTALE
        assert await errno_of(k.ops.open(ino, os.O_RDONLY, ctx(ROOT))) == errno.ESTALE
        assert await errno_of(k.lookup("users/alice/f")) == errno.ENOENT



@pytest.mark.semantics("S-tree-nlink")
@pytest.mark.parametrize("backend", ["sqlite", "redis"])
async def test_a_directory_links_two_plus_its_subdirectories(
    tmp_path: Path, request: pytest.FixtureRequest, backend: str
) -> None:
    """Regression (issue #13, pjdfstest rename/24): every directory reported st_nlink 2."""
    meta = None
    if backend == "redis":
        meta = RedisMetaStore(request.getfixturevalue("redis_server").url, SIGNER, prefix=f"nl-{uuid.uuid4().hex[:12]}")
    async with kernel(tmp_path, meta=meta) as k:

        async def links(path: str) -> int:
            return int((await k.lookup(path)).st_nlink)

        await k.mkdir("users/alice")
        await k.mkdir("users/alice/a")
        await k.mkdir("users/alice/b")
        await k.write_file("users/alice/f", b"files do not count")
        await k.symlink("users/alice/l", "a")
        assert (await links("users/alice"), await links("users/alice/a")) == (4, 2)
        await k.mkdir("users/alice/a/x")
        await k.rename("users/alice/a/x", "users/alice/b/x")  # moved between parents
        assert (await links("users/alice/a"), await links("users/alice/b")) == (2, 3)
        await k.mkdir("users/alice/c")
        await k.rename("users/alice/c", "users/alice/a")  # replaces the empty directory a
        assert await links("users/alice") == 4
        await k.rename("users/alice/b", "users/alice/a/b")  # into a sibling
        assert (await links("users/alice"), await links("users/alice/a")) == (3, 3)
        await k.rename("users/alice/a/b", "users/alice/f", flags=2)  # RENAME_EXCHANGE with a file
        assert (await links("users/alice"), await links("users/alice/a")) == (4, 2)
        await k.rmdir("users/alice/f/x")
        assert await links("users/alice/f") == 2
        fh = await k.ops.opendir(await k.ino("users/alice"), ctx(ROOT))
        listed = {name: attr.st_nlink for name, attr, _ in await k.readdir(fh)}
        await k.ops.releasedir(fh)
        assert (listed[b"a"], listed[b"f"]) == (2, 2)  # readdirplus gives the same counts


@pytest.mark.semantics("S-limit-statfs")
async def test_statfs_on_a_remote_blob_store_is_a_large_constant_less_what_is_held(tmp_path: Path) -> None:
    """S3 has no size to ask: df shows 1 PiB and 2^32 files, less what the store holds."""
    from fusefs.operations import REMOTE_CAPACITY, REMOTE_FILES

    async with kernel(tmp_path) as k:
        k.ops.blobs_on_disk = False  # as a mount on S3 is made
        await k.write_file("users/alice/f", b"x" * 8192)
        stats = await k.ops.statfs(ctx(ROOT))
        assert stats.f_blocks * stats.f_frsize == REMOTE_CAPACITY
        assert stats.f_bavail == stats.f_bfree == (REMOTE_CAPACITY - 8192) // stats.f_frsize
        assert (stats.f_files, stats.f_ffree) == (REMOTE_FILES, REMOTE_FILES - 1)
