"""The one table from store errors to errno values (``fusefs/errnos.py``), as every handler applies it.

Each handler runs inside ``fuse_call``; a typed store error becomes its
errno (looked up along the error's class hierarchy, so a subclass may be
more specific), anything unexpected becomes EIO with its traceback logged,
and no request can take the mount down.
"""

from __future__ import annotations

import errno
import logging
import os
from pathlib import Path

import pyfuse3
import pytest
from opskit import errno_of, kernel

from core import errors
from fusefs.errnos import ERRNO_OF, fuse_call
from fusefs.watchdog import Watchdog

# DESIGN §8 and the rows the tree adds: what a reader of the mount sees for each condition.
EXPECTED: dict[type[errors.ArtifactStoreError], int] = {
    errors.ArtifactNotFoundError: errno.ENOENT,
    errors.ArtifactExpiredError: errno.ENOENT,
    errors.UploadNotFoundError: errno.ENOENT,
    errors.NamespaceNotFoundError: errno.ENOENT,
    errors.FrozenError: errno.EROFS,
    errors.NamespaceAccessError: errno.EACCES,
    errors.AccessDeniedError: errno.EACCES,
    errors.ReadOnlyError: errno.EACCES,
    errors.UrlRefusedError: errno.EACCES,
    errors.OwnershipChangeError: errno.EPERM,
    errors.QuotaExceededError: errno.EDQUOT,
    errors.ArtifactTooLargeError: errno.EFBIG,
    errors.ArtifactCorruptedError: errno.EIO,
    errors.ProviderError: errno.EIO,
    errors.StoreFullError: errno.ENOSPC,
    errors.StaleRecordError: errno.EIO,  # only when its retries are spent
    errors.SessionError: errno.EIO,
    errors.StoreClosedError: errno.EIO,
    errors.CrossScopeError: errno.EXDEV,
    errors.DirectoryLinkError: errno.EPERM,
    errors.TooManyLinksError: errno.EMLINK,
    errors.InvalidArgumentError: errno.EINVAL,
    errors.ConfigurationError: errno.EINVAL,
    errors.UnknownProviderError: errno.EINVAL,
    errors.InvalidNameError: errno.EINVAL,
    errors.InvalidPartError: errno.EINVAL,
    errors.InvalidCursorError: errno.EINVAL,  # the API's pages only; a mount never meets one
    errors.NameTooLongError: errno.ENAMETOOLONG,
    errors.AlreadyExistsError: errno.EEXIST,
    errors.NotADirectoryError_: errno.ENOTDIR,
    errors.IsADirectoryError_: errno.EISDIR,
    errors.DirectoryNotEmptyError: errno.ENOTEMPTY,
    errors.NotSupportedError: errno.EOPNOTSUPP,
    errors.UploadConflictError: errno.EIO,  # no row of its own: the family's default
}


class Handlers:
    """The smallest owner of guarded handlers: one that raises what it is told to."""

    def __init__(self) -> None:
        self.watchdog = Watchdog(None)

    @fuse_call
    async def fail(self, exc: BaseException) -> None:
        raise exc


def make(klass: type[errors.ArtifactStoreError]) -> errors.ArtifactStoreError:
    if klass is errors.UrlRefusedError:
        return errors.UrlRefusedError("expired")
    return klass("what happened")


@pytest.mark.semantics("S-errno-table")
@pytest.mark.parametrize("klass", list(EXPECTED), ids=lambda k: k.__name__)
async def test_each_store_error_becomes_its_errno(klass: type[errors.ArtifactStoreError]) -> None:
    assert await errno_of(Handlers().fail(make(klass))) == EXPECTED[klass]


@pytest.mark.semantics("S-errno-table")
def test_every_error_the_store_defines_has_an_expected_errno() -> None:
    """A new error class must come with a decision (and a line in docs/SEMANTICS.md)."""
    defined = {
        value for value in vars(errors).values()
        if isinstance(value, type) and issubclass(value, errors.ArtifactStoreError) and value is not errors.ArtifactStoreError
    }
    assert defined == set(EXPECTED)
    assert set(ERRNO_OF) <= set(EXPECTED)


@pytest.mark.semantics("S-errno-table")
@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EIO, errno.EROFS])
async def test_the_spools_own_disk_errors_pass_through(code: int) -> None:
    """A full (or read-only) disk under the write spool is said as such, not as EIO."""
    assert await errno_of(Handlers().fail(OSError(code, os.strerror(code)))) == code


@pytest.mark.semantics("S-errno-table")
@pytest.mark.parametrize("code", [errno.EMFILE, errno.ENFILE])
async def test_running_out_of_descriptors_is_enfile_in_one_line(code: int, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="artifactfs.mount")
    assert await errno_of(Handlers().fail(OSError(code, os.strerror(code)))) == errno.ENFILE
    assert [r.exc_info for r in caplog.records] == [None]


@pytest.mark.semantics("S-errno-table")
async def test_anything_unexpected_is_eio_and_logged(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.ERROR, logger="artifactfs.mount")
    handlers = Handlers()
    assert await errno_of(handlers.fail(KeyError("a bug"))) == errno.EIO
    assert await errno_of(handlers.fail(OSError(errno.EBADF, "bad descriptor"))) == errno.EIO
    assert await errno_of(handlers.fail(pyfuse3.FUSEError(errno.ENODATA))) == errno.ENODATA  # already an answer
    logged = [r for r in caplog.records if r.exc_info]
    assert [r.getMessage() for r in logged] == [
        "fail: unexpected error, answered EIO", "fail: unexpected OS error, answered EIO",
    ]


@pytest.mark.semantics("S-errno-table")
async def test_eio_of_the_store_is_logged_without_a_traceback(caplog: pytest.LogCaptureFixture) -> None:
    """A backend fault is an operator's business (mount.log says which); a refusal is the caller's."""
    caplog.set_level(logging.INFO, logger="artifactfs.mount")
    handlers = Handlers()
    await errno_of(handlers.fail(errors.ProviderError("s3: failed after 6 attempts")))
    await errno_of(handlers.fail(errors.AccessDeniedError("no")))
    assert [r.getMessage() for r in caplog.records] == ["fail: ProviderError: s3: failed after 6 attempts"]
    assert caplog.records[0].levelno == logging.ERROR and not caplog.records[0].exc_info


@pytest.mark.semantics("S-errno-table")
async def test_a_failing_request_leaves_the_mount_answering(tmp_path: Path) -> None:
    """An error is one request's answer: the next one is served as if nothing happened."""
    async with kernel(tmp_path) as k:
        await k.write_file("users/alice/f", b"fine")
        for _ in range(3):
            assert await errno_of(k.lookup("users/alice/missing")) == errno.ENOENT
            assert await errno_of(k.rename("users/alice/f", "shared/f")) == errno.EXDEV
            assert await errno_of(k.mkdir("users/alice/" + "x" * 256)) == errno.ENAMETOOLONG
        assert await k.read_file("users/alice/f") == b"fine"
