"""Extended attributes through the handlers: the artifact's fields as ``user.artifact.*``, and free ``user.*``.

The errno of each refusal is what ``setfattr``/``getfattr``/``cp -a`` see:
ENODATA (no such attribute), EPERM (a field that cannot be set or removed),
EINVAL (a bad value or an unknown field), EOPNOTSUPP (not ``user.*``),
ENOSPC (free attributes too large).
"""

from __future__ import annotations

import errno
import hashlib
import json
from datetime import datetime
from pathlib import Path

import pytest
from opskit import Kernel, errno_of, kernel

from core.infra.clock import ManualClock
from core.nodes import Node

FIELDS = ["id", "summary", "mime", "meta", "sha256", "expires_at", "ttl"]
LISTED = ["summary", "mime", "meta", "ttl"]  # the settable ones: what listxattr names, and copies carry


class FixedPresigner:
    """``user.artifact.presign`` as a mount with a presign service answers it."""

    async def url_for(self, node: Node) -> str:
        assert node.artifact is not None
        return f"https://example.invalid/{node.artifact.artifact_id}"


async def everything(k: Kernel, path: str) -> dict[str, bytes]:
    """Every attribute ``getfattr -d -m -`` shows, and on a file its computed fields, read by name."""
    names = await k.listxattr(path)
    if "user.artifact.summary" in names:
        names += [f"user.artifact.{f}" for f in FIELDS if f not in LISTED]
    return {name: await k.getxattr(path, name) for name in names}


@pytest.mark.semantics("S-xattr-fields")
async def test_a_file_lists_its_artifact_fields(tmp_path: Path) -> None:
    async with kernel(tmp_path) as k:
        await k.write_file("users/alice/notes.txt", b"the notes\n")
        assert await k.listxattr("users/alice/notes.txt") == [f"user.artifact.{f}" for f in LISTED]
        shown = await everything(k, "users/alice/notes.txt")
        assert sorted(shown) == sorted(f"user.artifact.{f}" for f in FIELDS)
        node = await k.ns.get(await k.ino("users/alice/notes.txt"))
        assert node.artifact is not None
        assert shown["user.artifact.id"] == node.artifact.artifact_id.encode()
        assert shown["user.artifact.sha256"] == hashlib.sha256(b"the notes\n").hexdigest().encode()
        assert shown["user.artifact.mime"] == b"text/plain"  # guessed from the name
        assert (shown["user.artifact.summary"], shown["user.artifact.meta"]) == (b"", b"{}")
        assert (shown["user.artifact.expires_at"], shown["user.artifact.ttl"]) == (b"", b"")  # user files live on


@pytest.mark.semantics("S-xattr-fields")
async def test_presign_is_read_by_name_where_the_mount_can_sign(tmp_path: Path) -> None:
    """A mount always has its presigner (``artifactfs mount`` builds one); without one the field is absent."""
    async with kernel(tmp_path, presigner=FixedPresigner()) as k:
        await k.write_file("users/alice/f", b"x")
        assert "user.artifact.presign" not in await k.listxattr("users/alice/f")  # read by name, never listed
        url = await k.getxattr("users/alice/f", "user.artifact.presign")
        assert url == b"https://example.invalid/" + await k.getxattr("users/alice/f", "user.artifact.id")
    (tmp_path / "bare").mkdir()
    async with kernel(tmp_path / "bare") as k:
        await k.write_file("users/alice/f", b"x")
        assert "user.artifact.presign" not in await k.listxattr("users/alice/f")
        assert await errno_of(k.getxattr("users/alice/f", "user.artifact.presign")) == errno.ENODATA


@pytest.mark.semantics("S-xattr-fields")
async def test_directories_and_symlinks_have_no_artifact_fields(tmp_path: Path) -> None:
    async with kernel(tmp_path) as k:
        await k.mkdir("users/alice")
        await k.symlink("users/alice/l", "x")
        for path in ("users/alice", "users/alice/l", "shared", ""):
            assert await k.listxattr(path) == []
            assert await errno_of(k.getxattr(path, "user.artifact.id")) == errno.ENODATA
            assert await errno_of(k.setxattr(path, "user.artifact.summary", b"s")) == errno.EPERM


@pytest.mark.semantics("S-xattr-settable")
async def test_summary_mime_and_meta_are_settable_and_reach_the_artifact(tmp_path: Path) -> None:
    async with kernel(tmp_path) as k:
        await k.write_file("users/alice/r.bin", b"\0" * 10)
        path = "users/alice/r.bin"
        await k.setxattr(path, "user.artifact.summary", "Quarterly numbers — Q4".encode())
        await k.setxattr(path, "user.artifact.mime", b" application/pdf\n")
        await k.setxattr(path, "user.artifact.meta", b'{"team": "finance", "n": [1, 2]}')
        assert await k.getxattr(path, "user.artifact.summary") == "Quarterly numbers — Q4".encode()
        assert await k.getxattr(path, "user.artifact.mime") == b"application/pdf"
        assert json.loads(await k.getxattr(path, "user.artifact.meta")) == {"team": "finance", "n": [1, 2]}
        art = (await k.ns.get(await k.ino(path))).artifact
        assert art is not None
        assert (art.summary, art.mime, art.meta) == ("Quarterly numbers — Q4", "application/pdf",
                                                     {"team": "finance", "n": [1, 2]})


@pytest.mark.semantics("S-xattr-settable")
@pytest.mark.parametrize(
    ("name", "bad"),
    [
        ("meta", b"not json"), ("meta", b"[1, 2]"), ("meta", b'"a string"'), ("meta", b"42"), ("meta", b"{broken"),
        ("meta", b"\xff"), ("ttl", b"0"), ("ttl", b"-5"), ("ttl", b"abc"), ("ttl", b"1.5"),
        ("ttl", b"9999999999999"), ("summary", b"\xff\xfe"), ("mime", b"not a mime type"),
        # Bounded input (issue #16): past Limits.max_ttl (and a 64-bit expiry), too deep for the
        # parser or for the record, past the digit limit, a control character in a MIME parameter.
        ("ttl", b"999999999999"), ("ttl", b"\xd9\xa1"), ("meta", b'{"a":' * 1000 + b"1" + b"}" * 1000),
        ("meta", b'{"a":' * 33 + b"{}" + b"}" * 33), ("meta", b'{"n": ' + b"9" * 5000 + b"}"),
        ("meta", b'{"big": "' + b"x" * 70_000 + b'"}'), ("mime", b"text/plain; a=\rb"), ("mime", b"text/plain;\x00"),
    ],
    ids=lambda v: v if isinstance(v, str) else f"{len(v)}b",
)
async def test_a_bad_value_is_einval_and_changes_nothing(tmp_path: Path, name: str, bad: bytes) -> None:
    async with kernel(tmp_path) as k:
        await k.write_file("users/alice/m.txt", b"m")
        path = "users/alice/m.txt"
        await k.setxattr(path, "user.artifact.meta", b'{"keep": true}')
        before = await everything(k, path)
        assert await errno_of(k.setxattr(path, f"user.artifact.{name}", bad)) == errno.EINVAL
        assert await everything(k, path) == before


@pytest.mark.semantics("S-xattr-settable", "S-expiry-ttl")
async def test_ttl_sets_the_expiry_and_is_read_back_as_seconds_left(tmp_path: Path) -> None:
    clock = ManualClock(1_700_000_000_000_000_000)
    async with kernel(tmp_path, clock=clock) as k:
        await k.write_file("users/alice/t.txt", b"t")
        await k.setxattr("users/alice/t.txt", "user.artifact.ttl", b"3600")
        assert await k.getxattr("users/alice/t.txt", "user.artifact.ttl") == b"3600"
        expires = datetime.fromisoformat((await k.getxattr("users/alice/t.txt", "user.artifact.expires_at")).decode())
        assert expires.timestamp() == 1_700_000_000 + 3600
        clock.advance(100.5)
        assert await k.getxattr("users/alice/t.txt", "user.artifact.ttl") == b"3500"  # rounded up


@pytest.mark.semantics("S-xattr-readonly")
@pytest.mark.parametrize("field", ["id", "sha256", "expires_at", "presign"])
async def test_computed_fields_refuse_a_new_value_with_eperm(tmp_path: Path, field: str) -> None:
    async with kernel(tmp_path, presigner=FixedPresigner()) as k:
        await k.write_file("users/alice/ro.txt", b"ro")
        before = await k.getxattr("users/alice/ro.txt", "user.artifact.sha256")
        assert await errno_of(k.setxattr("users/alice/ro.txt", f"user.artifact.{field}", b"0123")) == errno.EPERM
        assert await k.getxattr("users/alice/ro.txt", "user.artifact.sha256") == before


@pytest.mark.semantics("S-xattr-readonly")
@pytest.mark.parametrize("field", FIELDS)
async def test_no_artifact_field_can_be_removed(tmp_path: Path, field: str) -> None:
    """They always exist (set them instead); ``setfattr -x`` answers EPERM."""
    async with kernel(tmp_path) as k:
        await k.write_file("users/alice/f", b"f")
        assert await errno_of(k.removexattr("users/alice/f", f"user.artifact.{field}")) == errno.EPERM
        assert await errno_of(k.getxattr("users/alice/f", f"user.artifact.{field}")) is None  # still there


@pytest.mark.semantics("S-xattr-unknown")
async def test_an_unknown_artifact_field_is_einval(tmp_path: Path) -> None:
    async with kernel(tmp_path) as k:
        await k.write_file("users/alice/u.txt", b"u")
        path = "users/alice/u.txt"
        before = await everything(k, path)
        assert await errno_of(k.setxattr(path, "user.artifact.colour", b"red")) == errno.EINVAL
        assert await errno_of(k.getxattr(path, "user.artifact.colour")) == errno.EINVAL
        assert await errno_of(k.removexattr(path, "user.artifact.colour")) == errno.EINVAL
        assert await everything(k, path) == before


@pytest.mark.semantics("S-xattr-free")
async def test_free_user_attributes_are_kept_like_on_ext4(tmp_path: Path) -> None:
    """On files, directories and symlinks alike, any bytes, listed after the artifact fields."""
    async with kernel(tmp_path) as k:
        await k.write_file("users/alice/f.txt", b"f")
        await k.mkdir("users/alice/dir")
        await k.symlink("users/alice/l", "f.txt")
        for path in ("users/alice/f.txt", "users/alice/dir", "users/alice/l", "users/alice"):
            await k.setxattr(path, "user.colour", b"blue")
            await k.setxattr(path, "user.binary", b"\0\xff\x00 bytes")
            await k.setxattr(path, "user.empty", b"")
            assert await k.getxattr(path, "user.binary") == b"\0\xff\x00 bytes"
            assert await k.getxattr(path, "user.empty") == b""
            assert (await k.listxattr(path))[-3:] == ["user.colour", "user.binary", "user.empty"]
            await k.setxattr(path, "user.colour", b"green")  # replaced
            assert await k.getxattr(path, "user.colour") == b"green"
            await k.removexattr(path, "user.colour")
            assert await errno_of(k.getxattr(path, "user.colour")) == errno.ENODATA
            assert await errno_of(k.removexattr(path, "user.colour")) == errno.ENODATA
            assert "user.colour" not in await k.listxattr(path)


@pytest.mark.semantics("S-xattr-free")
async def test_free_attributes_of_one_node_are_bounded_with_enospc(tmp_path: Path) -> None:
    """As ext4 bounds them by a block: here all of one node's names and values take at most 256 KiB as
    stored (each value byte counts twice)."""
    async with kernel(tmp_path) as k:
        await k.write_file("users/alice/f", b"")
        await k.setxattr("users/alice/f", "user.big", b"v" * 100_000)
        assert await errno_of(k.setxattr("users/alice/f", "user.more", b"v" * 40_000)) == errno.ENOSPC
        assert await k.listxattr("users/alice/f") == [f"user.artifact.{f}" for f in LISTED] + ["user.big"]
        await k.setxattr("users/alice/f", "user.more", b"v" * 30_000)


@pytest.mark.semantics("S-xattr-namespaces")
@pytest.mark.parametrize("name", ["trusted.x", "security.selinux", "system.posix_acl_access", "security.capability"])
async def test_other_namespaces_are_not_supported(tmp_path: Path, name: str) -> None:
    """Said for reads too (not ENODATA): ls -l and cp then stop asking per file, per device."""
    async with kernel(tmp_path) as k:
        await k.write_file("users/alice/s.txt", b"s")
        assert await errno_of(k.getxattr("users/alice/s.txt", name)) == errno.EOPNOTSUPP
        assert await errno_of(k.setxattr("users/alice/s.txt", name, b"1")) == errno.EOPNOTSUPP
        assert name not in await k.listxattr("users/alice/s.txt")


@pytest.mark.semantics("S-xattr-settable")
async def test_attribute_changes_move_the_ctime_not_the_mtime(tmp_path: Path) -> None:
    async with kernel(tmp_path) as k:
        await k.write_file("users/alice/f", b"f")
        before = await k.lookup("users/alice/f")
        await k.setxattr("users/alice/f", "user.artifact.summary", b"s")
        await k.setxattr("users/alice/f", "user.note", b"n")
        after = await k.lookup("users/alice/f")
        assert after.st_mtime_ns == before.st_mtime_ns and after.st_ctime_ns >= before.st_ctime_ns
        assert await k.read_file("users/alice/f") == b"f"
