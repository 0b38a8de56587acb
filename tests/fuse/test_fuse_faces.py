"""Two faces, one store: what the mount writes the library sees, and the reverse."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest
from mounting import Mount, wait_for

from core import Scope


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.mark.semantics("S-tree-artifact")
async def test_a_file_written_through_the_mount_is_an_artifact(mount: Mount, alice: Path) -> None:
    data = b"quarterly numbers\n" * 1000
    (alice / "docs" / "q4").mkdir(parents=True)
    (alice / "docs" / "q4" / "report.txt").write_bytes(data)
    async with mount.store() as store:
        [found] = await store.search(user_id="alice")
        assert found.filename == "docs/q4/report.txt"
        assert (found.mime, found.sha256, found.bytes) == ("text/plain", sha(data), len(data))
        assert (found.scope, found.user_id, found.session_id, found.sandbox_id) == (Scope.USER, "alice", None, "app")
        assert await store.read_file(found.artifact_id) == data
        assert found.artifact_id == os.getxattr(alice / "docs" / "q4" / "report.txt", "user.artifact.id").decode()


@pytest.mark.semantics("S-tree-artifact")
async def test_session_and_shared_files_are_artifacts_of_their_scope(mount: Mount) -> None:
    (mount / "sessions" / "s1" / "out").mkdir(parents=True)
    (mount / "sessions" / "s1" / "out" / "data.csv").write_text("a,b\n1,2\n")
    (mount / "shared" / "config.json").write_text('{"k": 1}')
    async with mount.store() as store:
        [session_file] = await store.list_by_session("s1")
        assert (session_file.filename, session_file.mime, session_file.scope) == ("out/data.csv", "text/csv", Scope.SESSION)
        assert session_file.session_id == "s1" and session_file.ttl == 900 and session_file.expires_at is not None
        [shared] = await store.search(scope="sandbox")
        assert (shared.filename, shared.mime, shared.scope) == ("config.json", "application/json", Scope.SANDBOX)
        assert await store.read_file(shared.artifact_id) == b'{"k": 1}'


@pytest.mark.semantics("S-tree-artifact", "S-consistency-cache")
async def test_an_artifact_stored_through_the_library_appears_in_the_mount(mount: Mount) -> None:
    data = os.urandom(300_000)
    async with mount.store() as store:
        artifact_id = await store.store(data, filename="api/hello.bin", user_id="alice", scope="user")
    path = mount / "users" / "alice" / "api" / "hello.bin"
    assert sorted(os.listdir(mount / "users" / "alice")) == ["api"]
    assert path.read_bytes() == data
    assert os.getxattr(path, "user.artifact.id").decode() == artifact_id
    assert os.getxattr(path, "user.artifact.mime") == b"application/octet-stream"


@pytest.mark.semantics("S-consistency-close-to-open")
async def test_a_new_version_from_the_library_is_seen_at_the_next_open(mount: Mount, alice: Path) -> None:
    (alice / "v.txt").write_bytes(b"version one")
    assert (alice / "v.txt").read_bytes() == b"version one"  # now in the kernel's page cache
    artifact_id = os.getxattr(alice / "v.txt", "user.artifact.id").decode()
    async with mount.store() as store:
        await store.update_file(artifact_id, data=b"version TWO")  # same size
        assert (alice / "v.txt").read_bytes() == b"version TWO"
        await store.update_file(artifact_id, data=b"version three, longer")
        assert (alice / "v.txt").read_bytes() == b"version three, longer"
        await store.update_file(artifact_id, data=b"v4")
        assert (alice / "v.txt").read_bytes() == b"v4"


@pytest.mark.semantics("S-publish-close", "S-consistency-one-mount")
async def test_readers_see_the_old_version_until_the_writer_closes(mount: Mount, alice: Path) -> None:
    (alice / "w.txt").write_bytes(b"old content")
    artifact_id = os.getxattr(alice / "w.txt", "user.artifact.id").decode()
    async with mount.store() as store:
        with open(alice / "w.txt", "r+b") as writer:  # noqa: ASYNC230 - the file system under test
            writer.write(b"NEW")
            writer.flush()  # the bytes reach the mount, the file stays open
            with open(alice / "w.txt", "rb") as reader:  # noqa: ASYNC230  # another descriptor in the same mount sees them
                assert reader.read() == b"NEW content"
            assert await store.read_file(artifact_id) == b"old content"  # the store: not yet
        assert await store.read_file(artifact_id) == b"NEW content"
        meta = await store.metadata(artifact_id)
        assert meta.sha256 == sha(b"NEW content") and meta.version == 2


@pytest.mark.semantics("S-truncate")
async def test_shell_redirection_over_a_file_never_shows_it_empty(mount: Mount, alice: Path) -> None:
    """Regression (issue #13): `cmd > f` and `dd of=f` open with O_TRUNC, dup the descriptor and
    close the first one before writing. That close published an empty version: every other view
    read an empty file until the writer finished, and a crash left it empty."""
    target = alice / "out.bin"
    target.write_bytes(b"old content " * 1000)
    artifact_id = os.getxattr(target, "user.artifact.id").decode()
    async with mount.store() as store:
        fd = os.open(target, os.O_WRONLY | os.O_TRUNC)
        kept = os.dup(fd)
        os.close(fd)  # the kernel's flush: nothing written since the truncate
        assert await store.read_file(artifact_id) == b"old content " * 1000
        os.write(kept, b"new content")
        os.close(kept)
        assert await store.read_file(artifact_id) == b"new content"
        assert target.read_bytes() == b"new content"


@pytest.mark.semantics("S-expiry-vanish")
async def test_an_expired_session_file_disappears(mount: Mount) -> None:
    (mount / "sessions" / "s2").mkdir()
    async with mount.store() as store:
        await store.store(b"short-lived", filename="brief.txt", session_id="s2", ttl=1)
        await store.store(b"long-lived", filename="stays.txt", session_id="s2", ttl=3600)
    listing = lambda: sorted(os.listdir(mount / "sessions" / "s2"))
    assert listing() == ["brief.txt", "stays.txt"]
    wait_for(lambda: listing() == ["stays.txt"], 10, "the expired file to leave the listing")
    wait_for(lambda: not (mount / "sessions" / "s2" / "brief.txt").exists(), 10, "the expired file to leave lookups")
    assert (mount / "sessions" / "s2" / "stays.txt").read_bytes() == b"long-lived"


@pytest.mark.semantics("S-multimount-inodes")
def test_inode_numbers_survive_a_remount(mount_factory, tmp_path: Path) -> None:
    first = mount_factory("m1", data_dir=tmp_path / "data")
    (first / "users" / "bob" / "deep").mkdir(parents=True)
    (first / "users" / "bob" / "deep" / "f.txt").write_text("f")
    paths = ["users", "users/bob", "users/bob/deep", "users/bob/deep/f.txt"]
    before = {p: (first / p).stat().st_ino for p in paths}
    first.stop()
    second = mount_factory("m2", data_dir=tmp_path / "data")
    assert {p: (second / p).stat().st_ino for p in paths} == before
    assert (second / "users/bob/deep/f.txt").read_text() == "f"
