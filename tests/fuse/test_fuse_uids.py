"""Access per calling uid on a shared mount (``-o allow_other`` + a uid map, DESIGN §7).

The commands run as other, unprivileged uids (:mod:`uidkit`): real tools
for the everyday paths, and a small system-Python probe where the exact
errno matters.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from mounting import Mount
from uidkit import ADMIN, ALICE, BOB, OK, STRANGER, as_uid, denied, probe
from uidkit import shared_mount as start_shared_mount
from worlds import StoreWorld


@pytest.fixture
def shared_mount(tmp_path: Path, world: StoreWorld) -> Iterator[Mount]:
    with start_shared_mount(tmp_path / "data", world) as mount:
        yield mount


def mkdirs(mount: Mount, *names: str) -> None:
    for name in names:
        (mount / name).mkdir(parents=True, exist_ok=True)


@pytest.mark.semantics("S-perm-scopes", "S-perm-owner")
def test_a_user_directory_is_for_its_own_uid_only(shared_mount: Mount) -> None:
    m = shared_mount
    mkdirs(m, "users/alice", "users/bob")
    (m / "users/bob/private.txt").write_text("bob's\n")
    alice_file = m / "users/alice/notes.txt"

    assert probe(
        ALICE,
        ("write", alice_file, "mine"),
        ("append", alice_file, " and more"),
        ("read", alice_file),
        ("mkdir", m / "users/alice/sub"),
        ("rename", alice_file, str(m / "users/alice/sub/notes.txt")),
        ("chmod", m / "users/alice/sub/notes.txt", "600"),
        ("setxattr", m / "users/alice/sub/notes.txt", "user.artifact.summary=alice wrote this"),
        ("list", m / "users/alice"),
    ) == [OK, OK, ("ok", "mine and more"), OK, OK, OK, OK, ("ok", ["sub"])]

    bobs = m / "users/bob"
    assert probe(
        ALICE,
        ("list", bobs),
        ("read", bobs / "private.txt"),
        ("stat", bobs / "private.txt"),
        ("write", bobs / "planted.txt", "x"),
        ("unlink", bobs / "private.txt"),
        ("mkdir", bobs / "dir"),
        ("symlink", bobs / "link", "private.txt"),
        ("rename", m / "users/alice/sub/notes.txt", str(bobs / "notes.txt")),
        ("getxattr", bobs / "private.txt", "user.artifact.id"),
        ("mkdir", m / "users/carol"),  # a user space of someone else
    ) == [denied()] * 10
    assert probe(STRANGER, ("list", m / "users/alice"), ("read", m / "users/alice/sub/notes.txt")) == [denied()] * 2

    # what alice wrote is hers (shown with her uid), and the refused attempts changed nothing
    written = m / "users/alice/sub/notes.txt"
    assert (written.stat().st_uid, oct(written.stat().st_mode & 0o777)) == (ALICE, "0o600")
    assert written.read_text() == "mine and more"
    assert os.getxattr(written, "user.artifact.summary") == b"alice wrote this"
    assert sorted(os.listdir(bobs)) == ["private.txt"]
    assert (bobs / "private.txt").read_text() == "bob's\n"

    # bob reaches his own space, and the tools he would use work there
    done = as_uid(BOB, "sh", "-c", "cat private.txt && cp private.txt copy.txt && mkdir -p a/b && ls", cwd=bobs)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["bob's", "a", "copy.txt", "private.txt"]
    done = as_uid(BOB, "ls", str(m / "users/alice"))
    assert done.returncode != 0 and "Permission denied" in done.stderr


@pytest.mark.semantics("S-perm-chown")
def test_ownership_changes_are_refused_with_eperm(shared_mount: Mount) -> None:
    m = shared_mount
    mkdirs(m, "users/alice")
    assert probe(ALICE, ("write", m / "users/alice/f.txt", "f")) == [OK]
    assert probe(
        ALICE,
        ("chown", m / "users/alice/f.txt", str(BOB)),  # giving a file away
        ("chown", m / "users/alice/f.txt", "0"),
    ) == [denied(errno.EPERM)] * 2
    done = as_uid(ALICE, "chown", str(BOB), str(m / "users/alice/f.txt"))
    assert done.returncode != 0 and "Operation not permitted" in done.stderr
    assert (m / "users/alice/f.txt").stat().st_uid == ALICE
    os.chown(m / "users/alice/f.txt", BOB, -1)  # root may
    assert (m / "users/alice/f.txt").stat().st_uid == BOB


@pytest.mark.semantics("S-perm-scopes")
def test_a_session_is_for_the_uid_that_made_it(shared_mount: Mount) -> None:
    m = shared_mount
    session = m / "sessions/s-alice"
    assert probe(
        ALICE,
        ("mkdir", session),
        ("mkdir", session / "out"),
        ("write", session / "out/result.csv", "a,b\n"),
        ("read", session / "out/result.csv"),
        ("setxattr", session / "out/result.csv", "user.artifact.ttl=600"),
    ) == [OK, OK, OK, ("ok", "a,b\n"), OK]
    assert session.stat().st_uid == ALICE

    for outsider in (BOB, STRANGER):
        assert probe(
            outsider,
            ("list", session),
            ("read", session / "out/result.csv"),
            ("write", session / "out/other.csv", "x"),
            ("unlink", session / "out/result.csv"),
            ("rmdir", session / "out"),
        ) == [denied()] * 5, outsider
    # an unmapped uid may still open a session of its own
    assert probe(
        STRANGER, ("mkdir", m / "sessions/s-stranger"), ("write", m / "sessions/s-stranger/f", "mine"),
        ("read", m / "sessions/s-stranger/f"),
    ) == [OK, OK, ("ok", "mine")]
    assert probe(ALICE, ("list", m / "sessions/s-stranger")) == [denied()]
    # the admin uid reaches every session
    assert probe(ADMIN, ("read", session / "out/result.csv"), ("list", m / "sessions/s-stranger")) == [
        ("ok", "a,b\n"), ("ok", ["f"]),
    ]
    assert sorted(os.listdir(session / "out")) == ["result.csv"]


@pytest.mark.semantics("S-perm-scopes")
def test_shared_is_read_only_except_for_admin_uids(shared_mount: Mount) -> None:
    m = shared_mount
    (m / "shared/docs").mkdir()
    (m / "shared/docs/policy.txt").write_text("be nice")
    before = sorted(str(p.relative_to(m / "shared")) for p in (m / "shared").rglob("*"))

    for reader in (ALICE, BOB, STRANGER):
        assert probe(
            reader,
            ("list", m / "shared"),
            ("read", m / "shared/docs/policy.txt"),
            ("getxattr", m / "shared/docs/policy.txt", "user.artifact.mime"),
        ) == [("ok", ["docs"]), ("ok", "be nice"), ("ok", "text/plain")], reader
        assert probe(
            reader,
            ("write", m / "shared/new.txt", "x"),
            ("write", m / "shared/docs/policy.txt", "rewritten"),
            ("append", m / "shared/docs/policy.txt", "!"),
            ("truncate", m / "shared/docs/policy.txt", "0"),
            ("mkdir", m / "shared/mine"),
            ("unlink", m / "shared/docs/policy.txt"),
            ("rename", m / "shared/docs/policy.txt", str(m / "shared/docs/moved.txt")),
            ("symlink", m / "shared/link", "docs"),
            ("setxattr", m / "shared/docs/policy.txt", "user.artifact.summary=mine now"),
            # shared/ is shown 1777 so that admin uids get through the kernel's checks; like /tmp it
            # is sticky, so removing someone else's entry right in it is the kernel's EPERM
            ("rmdir", m / "shared/docs"),
            ("rename", m / "shared/docs", str(m / "shared/moved")),
        ) == [denied()] * 9 + [denied(errno.EPERM)] * 2, reader
        done = as_uid(reader, "sh", "-c", f"echo x >> {m / 'shared/docs/policy.txt'}")
        assert done.returncode != 0 and "Permission denied" in done.stderr
    assert sorted(str(p.relative_to(m / "shared")) for p in (m / "shared").rglob("*")) == before
    assert (m / "shared/docs/policy.txt").read_text() == "be nice"
    assert os.getxattr(m / "shared/docs/policy.txt", "user.artifact.summary") == b""

    # the admin uid writes shared/ with ordinary tools (mode bits still rule: root's 0644 files stay root's)
    done = as_uid(ADMIN, "sh", "-c", "mkdir team && cp docs/policy.txt team/ && echo v2 >> team/policy.txt"
                  " && mv team/policy.txt team/p.txt && echo tmp > t && rm t", cwd=m / "shared")
    assert done.returncode == 0, done.stderr
    assert (m / "shared/team/p.txt").read_text() == "be nicev2\n"
    assert (m / "shared/team/p.txt").stat().st_uid == ADMIN
    assert probe(ADMIN, ("read", m / "users/alice/none")) == [denied(errno.ENOENT)]  # no such user space yet


@pytest.mark.semantics("S-perm-scopes")
async def test_the_library_sees_who_wrote_what(shared_mount: Mount) -> None:
    """Files a uid writes land in that user's scope, as artifacts of that user."""
    m = shared_mount
    assert probe(ALICE, ("mkdir", m / "users/alice"), ("write", m / "users/alice/report.md", "# hi")) == [OK, OK]
    async with m.store() as store:
        [found] = await store.search(user_id="alice")
        assert (found.filename, found.user_id, found.mime) == ("report.md", "alice", "text/markdown")
        assert await store.read_file(found.artifact_id) == b"# hi"
