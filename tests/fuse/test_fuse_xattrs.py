"""Artifact metadata as extended attributes (DESIGN §4), with getfattr and setfattr."""

from __future__ import annotations

import hashlib
import json
import time
from datetime import datetime
from pathlib import Path

import pytest
from mounting import Mount

FIELDS = ["expires_at", "id", "meta", "mime", "presign", "sha256", "summary", "ttl"]
LISTED = ["meta", "mime", "summary", "ttl"]  # the settable ones: what getfattr -d and copies see


def getfattr(mount: Mount, path: str, name: str) -> str:
    done = mount.sh(f"getfattr --only-values --absolute-names -n {name} {path}")
    return done.stdout


def setfattr(mount: Mount, path: str, name: str, value: str) -> tuple[int, str]:
    done = mount.sh(f"setfattr -n {name} -v '{value}' {path}", check=False)
    return done.returncode, done.stderr


def unchanged_view(mount: Mount, path: str) -> dict[str, str]:
    """What 'nothing changed' compares: every attribute but the presigned URL, which is signed anew each time."""
    shown = dump(mount, path)
    for field in ("id", "sha256", "expires_at"):  # read by name: they are not listed
        shown[f"user.artifact.{field}"] = getfattr(mount, path, f"user.artifact.{field}")
    return shown


def dump(mount: Mount, path: str) -> dict[str, str]:
    """Every attribute getfattr -d shows, decoded."""
    out = mount.sh(f"getfattr -d -m - --absolute-names {path}").stdout
    found = {}
    for line in out.splitlines():
        if "=" in line and not line.startswith("#"):
            name, _, value = line.partition("=")
            found[name] = json.loads(value) if value.startswith('"') else value
    return found


@pytest.mark.semantics("S-xattr-fields", "S-xattr-presign")
async def test_getfattr_shows_every_field_and_they_match_the_library(mount: Mount, alice: Path) -> None:
    (alice / "notes.txt").write_text("the notes\n")
    shown = dump(mount, "users/alice/notes.txt")
    assert sorted(shown) == [f"user.artifact.{f}" for f in LISTED]  # the computed ones are read by name
    for field in sorted(set(FIELDS) - set(LISTED)):
        shown[f"user.artifact.{field}"] = getfattr(mount, "users/alice/notes.txt", f"user.artifact.{field}")
    assert shown["user.artifact.sha256"] == hashlib.sha256(b"the notes\n").hexdigest()
    assert shown["user.artifact.mime"] == "text/plain"
    assert shown["user.artifact.meta"] == "{}"
    assert shown["user.artifact.summary"] == ""
    assert shown["user.artifact.expires_at"] == "" and shown["user.artifact.ttl"] == ""  # user files live on
    # A download URL: `artifactfs serve`'s on the embedded default (tests/fuse/test_presign_mount.py), S3's own on S3.
    assert ("/v1/objects/" if mount.world.embedded else "X-Amz-Signature=") in shown["user.artifact.presign"]
    async with mount.store() as store:
        meta = await store.metadata(shown["user.artifact.id"])
    assert (meta.filename, meta.user_id, meta.sha256) == ("notes.txt", "alice", shown["user.artifact.sha256"])


@pytest.mark.semantics("S-xattr-settable")
async def test_settable_fields_reach_the_library(mount: Mount, alice: Path) -> None:
    (alice / "r.bin").write_bytes(b"\0" * 10)
    path = "users/alice/r.bin"
    assert setfattr(mount, path, "user.artifact.summary", "Quarterly numbers") == (0, "")
    assert setfattr(mount, path, "user.artifact.mime", "application/pdf") == (0, "")
    assert setfattr(mount, path, "user.artifact.meta", '{"team": "finance", "n": [1, 2]}') == (0, "")
    assert getfattr(mount, path, "user.artifact.summary") == "Quarterly numbers"
    assert getfattr(mount, path, "user.artifact.mime") == "application/pdf"
    assert json.loads(getfattr(mount, path, "user.artifact.meta")) == {"team": "finance", "n": [1, 2]}
    async with mount.store() as store:
        meta = await store.metadata(getfattr(mount, path, "user.artifact.id"))
    assert (meta.summary, meta.mime, meta.meta) == ("Quarterly numbers", "application/pdf", {"team": "finance", "n": [1, 2]})


@pytest.mark.semantics("S-xattr-settable")
@pytest.mark.parametrize("bad", ["not json", "[1, 2]", '"a string"', "42", "{broken"])
def test_invalid_meta_is_refused_and_nothing_changes(mount: Mount, alice: Path, bad: str) -> None:
    (alice / "m.txt").write_text("m")
    path = "users/alice/m.txt"
    assert setfattr(mount, path, "user.artifact.meta", '{"keep": true}')[0] == 0
    before = unchanged_view(mount, path)
    code, err = setfattr(mount, path, "user.artifact.meta", bad)
    assert code != 0 and "Invalid argument" in err
    assert unchanged_view(mount, path) == before


@pytest.mark.semantics("S-expiry-ttl", "S-xattr-settable")
def test_ttl_sets_expiry(mount: Mount, alice: Path) -> None:
    (alice / "t.txt").write_text("t")
    path = "users/alice/t.txt"
    start = time.time()
    assert setfattr(mount, path, "user.artifact.ttl", "3600") == (0, "")
    left = int(getfattr(mount, path, "user.artifact.ttl"))
    assert 3590 <= left <= 3600
    expires = datetime.fromisoformat(getfattr(mount, path, "user.artifact.expires_at")).timestamp()
    assert start + 3590 <= expires <= time.time() + 3600
    for bad in ("0", "-5", "abc", "1.5"):
        code, err = setfattr(mount, path, "user.artifact.ttl", bad)
        assert code != 0 and "Invalid argument" in err, bad
    assert setfattr(mount, path, "user.artifact.ttl", "") == (0, "")  # what a copy of a never-expiring file sets
    assert 3580 <= int(getfattr(mount, path, "user.artifact.ttl")) <= 3600


@pytest.mark.semantics("S-expiry-ttl")
def test_session_files_get_the_default_ttl(mount: Mount) -> None:
    (mount / "sessions" / "s1").mkdir()
    (mount / "sessions" / "s1" / "out.csv").write_text("a,b\n")
    ttl = int(getfattr(mount, "sessions/s1/out.csv", "user.artifact.ttl"))
    assert 880 <= ttl <= 900  # Limits.default_ttl
    assert getfattr(mount, "sessions/s1/out.csv", "user.artifact.mime") == "text/csv"
    assert getfattr(mount, "sessions/s1/out.csv", "user.artifact.expires_at") != ""


@pytest.mark.semantics("S-xattr-readonly")
@pytest.mark.parametrize("field", ["id", "sha256", "expires_at"])
def test_read_only_fields_refuse_a_new_value(mount: Mount, alice: Path, field: str) -> None:
    (alice / "ro.txt").write_text("ro")
    before = unchanged_view(mount, "users/alice/ro.txt")
    code, err = setfattr(mount, "users/alice/ro.txt", f"user.artifact.{field}", "0123")
    assert code != 0 and "Operation not permitted" in err
    assert unchanged_view(mount, "users/alice/ro.txt") == before


@pytest.mark.semantics("S-xattr-unknown")
def test_unknown_artifact_attribute_is_invalid_and_changes_nothing(mount: Mount, alice: Path) -> None:
    (alice / "u.txt").write_text("u")
    before = unchanged_view(mount, "users/alice/u.txt")
    code, err = setfattr(mount, "users/alice/u.txt", "user.artifact.colour", "red")
    assert code != 0 and "Invalid argument" in err
    assert unchanged_view(mount, "users/alice/u.txt") == before
    done = mount.sh("getfattr -n user.artifact.colour users/alice/u.txt", check=False)
    assert done.returncode != 0 and "Invalid argument" in done.stderr


@pytest.mark.semantics("S-xattr-free")
def test_free_user_attributes_are_kept_like_on_ext4(mount: Mount, alice: Path) -> None:
    (alice / "f.txt").write_text("f")
    (alice / "dir").mkdir()
    for path in ("users/alice/f.txt", "users/alice/dir"):
        assert setfattr(mount, path, "user.colour", "blue") == (0, "")
        assert getfattr(mount, path, "user.colour") == "blue"
        assert "user.colour" in dump(mount, path)
        mount.sh(f"setfattr -x user.colour {path}")
        done = mount.sh(f"getfattr -n user.colour {path}", check=False)
        assert done.returncode != 0 and "No such attribute" in done.stderr
    done = mount.sh("setfattr -x user.never.set users/alice/f.txt", check=False)
    assert done.returncode != 0 and "No such attribute" in done.stderr


@pytest.mark.semantics("S-xattr-fields")
def test_directories_have_no_artifact_fields(mount: Mount, alice: Path) -> None:
    assert dump(mount, "users/alice") == {}
    done = mount.sh("getfattr -n user.artifact.id users/alice", check=False)
    assert done.returncode != 0 and "No such attribute" in done.stderr


@pytest.mark.semantics("S-xattr-namespaces")
def test_other_namespaces_are_not_supported(mount: Mount, alice: Path) -> None:
    (alice / "s.txt").write_text("s")
    done = mount.sh("setfattr -n trusted.x -v 1 users/alice/s.txt", check=False)
    assert done.returncode != 0 and "Operation not supported" in done.stderr
    # Said for reads too, so ls -l and cp remember it per device instead of asking for every file.
    done = mount.sh("getfattr -n security.selinux users/alice/s.txt", check=False)
    assert done.returncode != 0 and "Operation not supported" in done.stderr


@pytest.mark.semantics("S-xattr-namespaces")
def test_ls_l_does_not_ask_for_security_attributes_per_file(mount_factory) -> None:
    mount = mount_factory(args=["--debug"])  # --debug logs every request
    alice = mount.user_dir("alice")
    for i in range(50):
        (alice / f"f{i}").write_text("x")
    before = mount.log_text().count(" getxattr(")
    listing = mount.sh("ls -l users/alice").stdout
    assert listing.count(" f") == 50
    assert mount.log_text().count(" getxattr(") - before <= 4  # not 2 per file: ls remembers ENOTSUP


@pytest.mark.semantics("S-xattr-copy")
async def test_copies_that_keep_attributes_are_silent_and_carry_the_fields(mount: Mount, alice: Path) -> None:
    """Regression (issue #13): cp --preserve=all, rsync -X and mv across scopes set every listed
    attribute on the copy, and the computed ones (id, sha256, expires_at, presign) answered EPERM:
    the copy succeeded, but each tool reported errors and exited non-zero."""
    (alice / "src").mkdir()
    (alice / "src" / "report.txt").write_text("the report\n")
    for name, value in (("summary", "Q3 figures"), ("meta", '{"team":"blue"}'), ("mime", "text/markdown")):
        assert setfattr(mount, "users/alice/src/report.txt", f"user.artifact.{name}", value) == (0, "")
    assert setfattr(mount, "users/alice/src/report.txt", "user.colour", "green") == (0, "")
    (mount / "sessions" / "s9").mkdir()
    for command, copy in (
        ("cp --preserve=all users/alice/src/report.txt users/alice/cp.txt", "users/alice/cp.txt"),
        ("cp -a users/alice/src users/alice/tree", "users/alice/tree/report.txt"),
        ("rsync -aX users/alice/src/ users/alice/synced/", "users/alice/synced/report.txt"),
        ("cp -a users/alice/src/report.txt users/alice/to-move.txt && mv users/alice/to-move.txt sessions/s9/",
         "sessions/s9/to-move.txt"),
    ):
        done = mount.sh(command, check=False)
        assert (done.returncode, done.stderr) == (0, ""), command
        assert getfattr(mount, copy, "user.artifact.summary") == "Q3 figures", command
        assert getfattr(mount, copy, "user.artifact.meta") == '{"team":"blue"}', command
        assert getfattr(mount, copy, "user.artifact.mime") == "text/markdown", command
        assert getfattr(mount, copy, "user.colour") == "green", command
        assert getfattr(mount, copy, "user.artifact.id") != getfattr(mount, "users/alice/src/report.txt", "user.artifact.id")
    assert getfattr(mount, "sessions/s9/to-move.txt", "user.artifact.ttl") != ""  # a session file keeps its expiry
