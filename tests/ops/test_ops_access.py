"""Scope rules per calling uid (``-o allow_other`` with ``--map-user`` and ``--admin-uid``).

Mode bits are the kernel's (``default_permissions``) and are not seen here:
these tests show what the mount adds on top, by uid, whatever the modes say.
Root, the mounting uid and every ``--admin-uid`` reach everything.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
from opskit import Caller, Fields, Kernel, ctx, errno_of, kernel

from core.nodes import MADE_BY_UID

ALICE = Caller(uid=1001, gid=1001)
BOB = Caller(uid=1002, gid=1002)
STRANGER = Caller(uid=4242, gid=4242)  # mapped to no user
ADMIN = Caller(uid=1500, gid=1500)


@asynccontextmanager
async def shared_mount(tmp_path: Path) -> AsyncIterator[Kernel]:
    """alice and bob own their user directories; the tree holds a file of each and one in shared/."""
    async with kernel(tmp_path, allow_other=True, user_uids={"alice": 1001, "bob": 1002},
                      admin_uids=frozenset({1500})) as k:
        await k.mkdir("users/alice")
        await k.mkdir("users/bob")
        await k.write_file("users/alice/mine.txt", b"alice's")
        await k.write_file("users/bob/private.txt", b"bob's")
        await k.write_file("shared/docs/policy.txt", b"be nice")
        yield k


@pytest.mark.semantics("S-perm-scopes")
async def test_a_user_directory_is_for_its_own_uid(tmp_path: Path) -> None:
    async with shared_mount(tmp_path) as k:
        await k.write_file("users/alice/new.txt", b"new", caller=ALICE)
        assert await k.read_file("users/alice/mine.txt", caller=ALICE) == b"alice's"
        await k.mkdir("users/alice/sub", caller=ALICE)
        await k.rename("users/alice/new.txt", "users/alice/sub/new.txt", caller=ALICE)
        await k.setxattr("users/alice/sub/new.txt", "user.artifact.summary", b"hers", caller=ALICE)
        assert await k.listdir("users/alice", caller=ALICE) == [".", "..", "mine.txt", "sub"]
        await k.unlink("users/alice/sub/new.txt", caller=ALICE)


@pytest.mark.semantics("S-perm-scopes")
@pytest.mark.parametrize("who", [ALICE, STRANGER], ids=["another-user", "unmapped"])
async def test_another_users_directory_is_eacces_for_everything(tmp_path: Path, who: Caller) -> None:
    async with shared_mount(tmp_path) as k:
        await k.mkdir("users/bob/empty")
        bobs = await k.ino("users/bob")
        private = await k.ino("users/bob/private.txt")
        attempts = {
            "lookup": k.ops.lookup(bobs, b"private.txt", ctx(who)),
            "opendir": k.ops.opendir(bobs, ctx(who)),
            "open": k.ops.open(private, os.O_RDONLY, ctx(who)),
            "create": k.ops.create(bobs, b"planted", 0o644, os.O_CREAT | os.O_WRONLY, ctx(who)),
            "unlink": k.ops.unlink(bobs, b"private.txt", ctx(who)),
            "mkdir": k.ops.mkdir(bobs, b"new", 0o755, ctx(who)),
            "symlink": k.ops.symlink(bobs, b"link", b"private.txt", ctx(who)),
            "rmdir": k.ops.rmdir(bobs, b"empty", ctx(who)),
            "getxattr": k.ops.getxattr(private, b"user.artifact.id", ctx(who)),
            "setxattr": k.ops.setxattr(private, b"user.artifact.summary", b"x", ctx(who)),
            "listxattr": k.ops.listxattr(private, ctx(who)),
            "chmod": k.setattr("users/bob/private.txt", Fields(update_mode=True), caller=who, st_mode=0o777),
            "rename in": k.rename("users/alice/mine.txt", "users/bob/mine.txt", caller=who),
            "new user space": k.mkdir("users/carol", caller=who),
        }
        got = {what: await errno_of(attempt) for what, attempt in attempts.items()}
        assert got == dict.fromkeys(attempts, errno.EACCES)
        assert await k.listdir("users/bob") == [".", "..", "empty", "private.txt"]
        assert await k.read_file("users/bob/private.txt") == b"bob's"


@pytest.mark.semantics("S-perm-scopes")
async def test_a_name_that_is_not_there_is_eacces_not_enoent_for_an_outsider(tmp_path: Path) -> None:
    """An outsider learns nothing of what a scope holds, not even which names are free."""
    async with shared_mount(tmp_path) as k:
        bobs = await k.ino("users/bob")
        assert await errno_of(k.ops.lookup(bobs, b"no-such-file", ctx(ALICE))) == errno.EACCES
        assert await errno_of(k.ops.lookup(bobs, b"x" * 300, ctx(ALICE))) == errno.EACCES  # even a bad name


@pytest.mark.semantics("S-perm-scopes")
async def test_a_session_is_for_the_uid_that_made_it(tmp_path: Path) -> None:
    async with shared_mount(tmp_path) as k:
        made = await k.mkdir("sessions/s-alice", caller=ALICE)
        assert made.st_uid == ALICE.uid
        await k.write_file("sessions/s-alice/out.csv", b"a,b\n", caller=ALICE)
        assert await k.read_file("sessions/s-alice/out.csv", caller=ALICE) == b"a,b\n"
        for outsider in (BOB, STRANGER):
            assert await errno_of(k.listdir("sessions/s-alice", caller=outsider)) == errno.EACCES
            assert await errno_of(k.open("sessions/s-alice/out.csv", caller=outsider)) == errno.EACCES
            assert await errno_of(k.rmdir("sessions/s-alice", caller=outsider)) == errno.EACCES
        await k.mkdir("sessions/s-stranger", caller=STRANGER)  # an unmapped uid may open sessions of its own
        await k.write_file("sessions/s-stranger/f", b"mine", caller=STRANGER)
        assert await errno_of(k.listdir("sessions/s-stranger", caller=ALICE)) == errno.EACCES
        assert await k.read_file("sessions/s-stranger/f", caller=ADMIN) == b"mine"


@pytest.mark.semantics("S-perm-scopes")
async def test_a_session_belongs_to_the_user_of_the_uid_that_made_it(tmp_path: Path) -> None:
    """A session made by a uid mapped to one user is that user's: the library lists it under them."""
    async with shared_mount(tmp_path) as k:
        await k.mkdir("sessions/s1", caller=ALICE)
        root = await k.ns.session_root("app", "s1")
        assert root is not None and root.space is not None and root.space.user_id == "alice"


@pytest.mark.semantics("S-perm-scopes")
async def test_shared_is_read_by_all_and_written_by_admins(tmp_path: Path) -> None:
    async with shared_mount(tmp_path) as k:
        for reader in (ALICE, BOB, STRANGER):
            assert await k.read_file("shared/docs/policy.txt", caller=reader) == b"be nice"
            assert await k.listdir("shared/docs", caller=reader) == [".", "..", "policy.txt"]
            assert await k.getxattr("shared/docs/policy.txt", "user.artifact.mime", caller=reader) == b"text/plain"
            attempts = [
                k.create("shared/new.txt", caller=reader),
                k.open("shared/docs/policy.txt", os.O_WRONLY, caller=reader),
                k.open("shared/docs/policy.txt", os.O_RDONLY | os.O_TRUNC, caller=reader),
                k.setattr("shared/docs/policy.txt", Fields(update_size=True), caller=reader, st_size=0),
                k.mkdir("shared/mine", caller=reader),
                k.unlink("shared/docs/policy.txt", caller=reader),
                k.rename("shared/docs/policy.txt", "shared/docs/moved.txt", caller=reader),
                k.symlink("shared/link", "docs", caller=reader),
                k.setxattr("shared/docs/policy.txt", "user.artifact.summary", b"mine now", caller=reader),
                k.rmdir("shared/docs", caller=reader),
            ]
            assert [await errno_of(a) for a in attempts] == [errno.EACCES] * len(attempts), reader
        assert await k.read_file("shared/docs/policy.txt") == b"be nice"
        await k.mkdir("shared/team", caller=ADMIN)
        await k.write_file("shared/team/p.txt", b"by the admin", caller=ADMIN)
        assert (await k.lookup("shared/team/p.txt")).st_uid == ADMIN.uid


@pytest.mark.semantics("S-perm-owner")
async def test_files_show_who_made_them(tmp_path: Path) -> None:
    """A file made through the mount is its creator's; one the library made (uid 0) is shown as the uid
    mapped to its user, so that user's tools may change it."""
    async with shared_mount(tmp_path) as k:
        await k.write_file("users/alice/by-alice", b"", caller=ALICE)
        attr = await k.lookup("users/alice/by-alice")
        assert (attr.st_uid, attr.st_gid) == (ALICE.uid, ALICE.gid)
        library = await k.lookup("users/bob/private.txt")  # made as root: what the library does
        assert library.st_uid == BOB.uid
        assert (await k.lookup("shared/docs/policy.txt")).st_uid == 0


@pytest.mark.semantics("S-perm-owner")
async def test_the_scope_holders_are_open_to_every_uid(tmp_path: Path) -> None:
    """sessions/, users/ and shared/ are shown 1777 (sticky, like /tmp) so that the kernel lets every uid
    try, and the mount decides."""
    async with shared_mount(tmp_path) as k:
        for path in ("sessions", "users", "shared"):
            mode = (await k.lookup(path)).st_mode
            assert stat.S_IMODE(mode) == 0o1777, path
        assert stat.S_IMODE((await k.lookup("users/alice")).st_mode) == 0o755


@pytest.mark.semantics("S-perm-owner")
async def test_without_allow_other_everything_is_the_mounting_users(tmp_path: Path) -> None:
    """Without allow_other the kernel lets only the mounting user in; the mount then checks nobody."""
    async with kernel(tmp_path) as k:
        await k.mkdir("users/bob")
        await k.write_file("users/bob/f", b"x", caller=ALICE)
        assert await k.read_file("users/bob/f", caller=STRANGER) == b"x"
        assert stat.S_IMODE((await k.lookup("users")).st_mode) == 0o755


@pytest.mark.semantics("S-trust-owner")
async def test_a_session_a_checked_uid_makes_is_marked_as_its_claim(tmp_path: Path) -> None:
    """The mark the library's join rule reads: set for a checked uid, not for an admin's session."""
    async with shared_mount(tmp_path) as k:
        await k.mkdir("sessions/theirs", caller=STRANGER)
        await k.mkdir("sessions/admins", caller=ADMIN)
        await k.mkdir("sessions/mounters")
        marks = {}
        for name in ("theirs", "admins", "mounters"):
            root = await k.ns.session_root("app", name)
            assert root is not None
            marks[name] = (root.session_meta or {}).get(MADE_BY_UID)
        assert marks == {"theirs": STRANGER.uid, "admins": None, "mounters": None}
