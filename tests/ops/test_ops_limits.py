"""The size limit and the quotas, as a writer through the mount meets them.

``artifactfs mount`` runs with the default limits (64 GiB per file, no
quotas); a store built with other :class:`core.tree.namespace.Limits`
answers as below. Each refusal leaves the old version whole.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest
from opskit import Fields, errno_of, kernel

from core.settings import GiB, Limits
from fusefs.spool import FileSpool

KiB = 1 << 10


@pytest.mark.semantics("S-limit-size")
def test_the_default_size_limit_is_64_gib_and_there_are_no_quotas() -> None:
    limits = Limits()
    assert limits.max_artifact_bytes == 64 * GiB
    assert (limits.user_quota_bytes, limits.user_quota_files) == (None, None)
    assert (limits.session_quota_bytes, limits.session_quota_files) == (None, None)


@pytest.mark.semantics("S-limit-size")
async def test_a_write_past_the_size_limit_is_efbig(tmp_path: Path) -> None:
    async with kernel(tmp_path, limits=Limits(max_artifact_bytes=100 * KiB)) as k:
        await k.write_file("users/alice/f", b"old")
        fh = await k.open("users/alice/f", os.O_WRONLY)
        await k.ops.write(fh, 0, b"x" * 100 * KiB)  # up to the limit: fine
        assert await errno_of(k.ops.write(fh, 100 * KiB, b"y")) == errno.EFBIG
        assert await errno_of(k.ops.write(fh, 1 << 30, b"y")) == errno.EFBIG
        await k.close(fh)
        assert await k.read_file("users/alice/f") == b"x" * 100 * KiB


@pytest.mark.semantics("S-limit-size")
async def test_a_truncate_past_the_size_limit_is_efbig(tmp_path: Path) -> None:
    async with kernel(tmp_path, limits=Limits(max_artifact_bytes=100 * KiB)) as k:
        await k.write_file("users/alice/f", b"old")
        assert await errno_of(k.setattr("users/alice/f", Fields(update_size=True), st_size=100 * KiB + 1)) == errno.EFBIG
        fh = await k.open("users/alice/f", os.O_RDWR)
        assert await errno_of(k.setattr("users/alice/f", Fields(update_size=True), fh=fh, st_size=1 << 40)) == errno.EFBIG
        await k.close(fh)
        assert await k.read_file("users/alice/f") == b"old"


@pytest.mark.semantics("S-limit-quota")
async def test_a_create_beyond_the_file_quota_is_edquot(tmp_path: Path) -> None:
    async with kernel(tmp_path, limits=Limits(user_quota_files=2, session_quota_files=1)) as k:
        await k.write_file("users/alice/a", b"")
        await k.write_file("users/alice/b", b"")
        assert await errno_of(k.create("users/alice/c")) == errno.EDQUOT
        await k.mkdir("users/alice/dirs-are-free")
        await k.write_file("users/bob/a", b"")  # a quota is per user
        await k.write_file("sessions/s1/a", b"")
        assert await errno_of(k.create("sessions/s1/b")) == errno.EDQUOT
        await k.unlink("users/alice/a")
        await k.write_file("users/alice/c", b"room again")
        assert await k.listdir("users/alice") == [".", "..", "b", "c", "dirs-are-free"]


@pytest.mark.semantics("S-limit-quota")
async def test_bytes_beyond_the_quota_are_edquot_at_close_and_the_old_version_stays(tmp_path: Path) -> None:
    """write(2) fills the local spool and succeeds; the close that publishes is where the quota is
    checked (as over NFS), and its failure leaves the file as it was."""
    async with kernel(tmp_path, limits=Limits(user_quota_bytes=100 * KiB)) as k:
        await k.write_file("users/alice/f", b"o" * 60 * KiB)
        fh = await k.open("users/alice/f", os.O_WRONLY)
        await k.ops.write(fh, 0, b"n" * 120 * KiB)
        assert await errno_of(k.ops.flush(fh)) == errno.EDQUOT
        await k.ops.release(fh)
        assert await k.read_file("users/alice/f") == b"o" * 60 * KiB
        fh = await k.open("users/alice/f", os.O_WRONLY)
        await k.ops.write(fh, 0, b"n" * 100 * KiB)  # replacing 60 KiB by 100 KiB fits exactly
        await k.close(fh)
        assert await k.read_file("users/alice/f") == b"n" * 100 * KiB


@pytest.mark.semantics("S-limit-quota")
async def test_fsync_beyond_the_quota_is_edquot(tmp_path: Path) -> None:
    async with kernel(tmp_path, limits=Limits(user_quota_bytes=10 * KiB)) as k:
        await k.directory("users/alice")
        fh, _ = await k.create("users/alice/f")
        await k.ops.write(fh, 0, b"x" * 11 * KiB)
        assert await errno_of(k.ops.fsync(fh, False)) == errno.EDQUOT
        await k.ops.release(fh)
        assert await k.read_file("users/alice/f") == b""


@pytest.mark.semantics("S-limit-resources")
@pytest.mark.parametrize("code", [errno.EMFILE, errno.ENOSPC])
async def test_a_write_the_spool_cannot_take_leaves_the_previous_version(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, code: int
) -> None:
    """Regression (issue #16): with the mount out of descriptors, `cp` over a file got an error
    for its write, and its close then published what was pending: the O_TRUNC cut, an empty file.
    The close now answers the error and drops the pending change; the file keeps its version."""
    async with kernel(tmp_path) as k:
        old = os.urandom(600 * KiB)
        await k.write_file("users/alice/f", old)

        def no_spool_file(cls: type, directory: Path) -> None:
            raise OSError(code, os.strerror(code))

        with monkeypatch.context() as patched:
            patched.setattr(FileSpool, "create", classmethod(no_spool_file))
            fh = await k.open("users/alice/f", os.O_WRONLY | os.O_TRUNC)
            await k.ops.write(fh, 0, b"n" * 128 * KiB)  # in memory: fine
            expected = errno.ENFILE if code == errno.EMFILE else code
            assert await errno_of(k.ops.write(fh, 128 * KiB, b"n" * 512 * KiB)) == expected  # must spill
            assert await errno_of(k.ops.flush(fh)) == expected
            await k.ops.release(fh)
        assert await k.read_file("users/alice/f") == old
        with monkeypatch.context() as patched:  # the first write after O_TRUNC fails: the close says so too
            patched.setattr(FileSpool, "create", classmethod(no_spool_file))
            fh = await k.open("users/alice/f", os.O_WRONLY | os.O_TRUNC)
            assert await errno_of(k.ops.write(fh, 0, b"n" * 512 * KiB)) == expected
            assert await errno_of(k.ops.flush(fh)) == expected
            await k.ops.release(fh)
        assert await k.read_file("users/alice/f") == old
        fh = await k.open("users/alice/f", os.O_WRONLY | os.O_TRUNC)  # and the file works as before
        await k.ops.write(fh, 0, b"new")
        await k.close(fh)
        assert await k.read_file("users/alice/f") == b"new"
