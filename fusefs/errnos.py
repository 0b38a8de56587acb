"""The one place where store errors become errno values (DESIGN §8).

Every FUSE handler runs inside :func:`fuse_call`: a typed store error becomes
``FUSEError(errno)``, and anything unexpected is logged with its traceback
and answered with ``EIO``, so no request can take the mount down. The
handler itself runs under the owner's :class:`fusefs.watchdog.Watchdog`, so
no request can wait forever either.
"""

from __future__ import annotations

import errno
import functools
import logging
import time
from collections.abc import Awaitable, Callable
from typing import ParamSpec, Protocol, TypeVar

import pyfuse3

from core.errors import (
    AccessDeniedError,
    AlreadyExistsError,
    ArtifactCorruptedError,
    ArtifactNotFoundError,
    ArtifactStoreError,
    ArtifactTooLargeError,
    CrossScopeError,
    DirectoryLinkError,
    DirectoryNotEmptyError,
    InvalidArgumentError,
    InvalidNameError,
    IsADirectoryError_,
    NameTooLongError,
    NotADirectoryError_,
    NotSupportedError,
    OwnershipChangeError,
    ProviderError,
    QuotaExceededError,
    FrozenError,
    ReadOnlyError,
    SessionError,
    StoreClosedError,
    StoreFullError,
    TooManyLinksError,
)
from core.infra import metrics
from core.infra.tally import tally
from fusefs.handed import REQUEST_STARTED
from fusefs.watchdog import Watchdog

log = logging.getLogger("artifactfs.mount")

# Looked up along the exception's MRO, so a subclass may be more specific than its base
# (NameTooLongError before InvalidNameError, OwnershipChangeError before AccessDeniedError).
ERRNO_OF: dict[type[ArtifactStoreError], int] = {
    ArtifactNotFoundError: errno.ENOENT,  # and ArtifactExpiredError
    OwnershipChangeError: errno.EPERM,
    # The fixed upper tree (mount root, sessions/, users/): nobody may write there, which a real
    # filesystem reports as a permission problem on the directory.
    ReadOnlyError: errno.EACCES,
    FrozenError: errno.EROFS,  # a checkpoint: read-only as a snapshot is
    AccessDeniedError: errno.EACCES,
    QuotaExceededError: errno.EDQUOT,
    ArtifactTooLargeError: errno.EFBIG,
    ArtifactCorruptedError: errno.EIO,
    StoreFullError: errno.ENOSPC,
    ProviderError: errno.EIO,
    SessionError: errno.EIO,
    StoreClosedError: errno.EIO,
    CrossScopeError: errno.EXDEV,
    DirectoryLinkError: errno.EPERM,
    TooManyLinksError: errno.EMLINK,
    NameTooLongError: errno.ENAMETOOLONG,
    InvalidNameError: errno.EINVAL,
    InvalidArgumentError: errno.EINVAL,
    AlreadyExistsError: errno.EEXIST,
    NotADirectoryError_: errno.ENOTDIR,
    IsADirectoryError_: errno.EISDIR,
    DirectoryNotEmptyError: errno.ENOTEMPTY,
    NotSupportedError: errno.EOPNOTSUPP,
}

# OS errors of the mount's own local files (the write spool) that mean what they say.
_PASSED_OS_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EIO, errno.EROFS})
# The mount process out of file descriptors (its own or the system's): ENFILE, for the limit
# is not the caller's. One log line: a flood of them is the symptom, tracebacks would bury it.
_OUT_OF_FDS = frozenset({errno.EMFILE, errno.ENFILE})


def errno_of(exc: ArtifactStoreError) -> int:
    for klass in type(exc).__mro__:
        found = ERRNO_OF.get(klass)  # type: ignore[arg-type]
        if found is not None:
            return found
    return errno.EIO


class _Trace:
    """Whether every request is logged (``--debug``); read on each call, so kept to one attribute."""

    enabled = False


trace = _Trace()

def _brief(arg: object) -> str:
    if isinstance(arg, pyfuse3.RequestContext):
        return f"uid={arg.uid}"
    if isinstance(arg, bytes) and len(arg) > 64:
        return f"<{len(arg)} bytes>"
    return repr(arg)


P = ParamSpec("P")
R = TypeVar("R")


def describe(args: tuple[object, ...]) -> str:
    """A request's arguments for the log (its handler's owner left out)."""
    return ", ".join(map(_brief, args[1:]))


class Guarded(Protocol):
    """What owns guarded handlers: a watchdog that answers each request in time."""

    watchdog: Watchdog


def fuse_call(handler: Callable[P, Awaitable[R]]) -> Callable[P, Awaitable[R]]:
    """Run a FUSE handler (a method of a :class:`Guarded`) so that every failure leaves it as a
    ``FUSEError`` and every request is answered within the watchdog's bound."""
    name = handler.__name__

    @functools.wraps(handler)
    async def guarded(*args: P.args, **kwargs: P.kwargs) -> R:
        assert not kwargs, "the kernel's requests come with positional arguments"
        if not trace.enabled:
            return await answer(args)
        log.debug("%s(%s)", name, describe(args))
        # With the trace on, each request also tells its metadata round trips: what makes a request
        # slow on a remote store, and what tests count per request (tests/fuse/test_fuse_round_trips.py).
        # Worded so that "name(" still occurs once per request in the log (tests count requests by it).
        with tally() as counted:
            try:
                return await answer(args)
            finally:
                log.debug("%s answered: %d metadata round trips (%s)", name, counted.round_trips, describe(args))

    seconds, answered = metrics.FUSE_SECONDS.labels(name), metrics.FUSE_REQUESTS.labels(name, "ok")

    async def answer(args: tuple[object, ...]) -> R:
        """The request answered, timed and counted by its outcome (artifactfs_fuse_requests_total)."""
        start = time.perf_counter()
        outcome = None  # ok: its counter is looked up once, at decoration (reads and writes are many)
        REQUEST_STARTED.set(time.monotonic())  # this request's own task: nothing to reset
        try:
            return await settle(args)
        except pyfuse3.FUSEError as exc:
            outcome = errno.errorcode.get(exc.errno, str(exc.errno))
            raise
        except BaseException:
            outcome = "cancelled"
            raise
        finally:
            seconds.observe(time.perf_counter() - start)
            (answered if outcome is None else metrics.FUSE_REQUESTS.labels(name, outcome)).inc()

    async def settle(args: tuple[object, ...]) -> R:
        owner: Guarded = args[0]  # type: ignore[assignment]
        try:
            return await owner.watchdog.answer(name, handler, args, lambda: describe(args))  # type: ignore[no-any-return]
        except pyfuse3.FUSEError:
            raise
        except ArtifactStoreError as exc:
            code = errno_of(exc)
            if code == errno.EIO:
                log.error("%s: %s: %s", name, type(exc).__name__, exc)
            raise pyfuse3.FUSEError(code) from None
        except OSError as exc:
            if exc.errno in _OUT_OF_FDS:
                log.warning("%s: out of file descriptors (%s), answered ENFILE", name, errno.errorcode[exc.errno])
                raise pyfuse3.FUSEError(errno.ENFILE) from None
            if exc.errno in _PASSED_OS_ERRNOS:
                log.warning("%s: %s", name, exc)
                raise pyfuse3.FUSEError(exc.errno) from None
            log.exception("%s: unexpected OS error, answered EIO", name)
            raise pyfuse3.FUSEError(errno.EIO) from None
        except Exception:
            log.exception("%s: unexpected error, answered EIO", name)
            raise pyfuse3.FUSEError(errno.EIO) from None

    return guarded
