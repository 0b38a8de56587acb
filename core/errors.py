"""The error family of the store.

Every failure a caller can meet is one of these, so an API user can catch
``ArtifactStoreError`` and the mount can turn each into one errno
(``fusefs/errnos.py`` is the only place that mapping lives).
"""

from __future__ import annotations

from typing import Any


class ArtifactStoreError(Exception):
    """Base of every error the store raises on purpose."""


class ArtifactNotFoundError(ArtifactStoreError):
    """No artifact, file or directory by that id or name."""


class NamespaceNotFoundError(ArtifactNotFoundError, ValueError):
    """No such namespace, or no such path in one (a ValueError, as the reference raises)."""


class ArtifactExpiredError(ArtifactNotFoundError):
    """It existed, but its TTL (or its session's) has run out."""


class ArtifactCorruptedError(ArtifactStoreError):
    """Stored bytes or a metadata record failed their digest or signature."""


class AccessDeniedError(ArtifactStoreError):
    """The caller's session or user may not do this to that artifact."""


class NamespaceAccessError(AccessDeniedError, PermissionError):
    """A namespace of another session (a PermissionError too, as the reference raises)."""


class OwnershipChangeError(AccessDeniedError):
    """Changing owner or group of a node the caller does not own (EPERM)."""


class ProviderError(ArtifactStoreError):
    """A storage backend failed after bounded retries."""


class StaleRecordError(ProviderError):
    """A conditional metadata write found the record changed since it was read.

    Nothing was written. ``current`` is the record as stored then, if the
    backend had it at hand; the caller re-reads, re-applies its change and
    tries again (only an exhausted retry loop lets this reach a user, as EIO).
    """

    def __init__(self, message: str, current: object | None = None) -> None:
        super().__init__(message)
        self.current = current


class StoreFullError(ProviderError):
    """The backend has no room left (a full disk under SQLite or the blob directory).

    Nothing was written; the caller may retry once space is freed (ENOSPC).
    """


class SessionError(ArtifactStoreError):
    """The session system failed, or a session is unknown or expired."""


class QuotaExceededError(ArtifactStoreError):
    """A user's or session's byte or file-count quota would be exceeded."""


class ArtifactTooLargeError(ArtifactStoreError):
    """The artifact is larger than the configured maximum size."""


class InvalidArgumentError(ArtifactStoreError, ValueError):
    """An argument is malformed: bad TTL, unknown scope, non-JSON meta, ..."""


class InvalidCursorError(InvalidArgumentError):
    """A page cursor that this store did not hand out for this query (edited, truncated, or another query's)."""


class InvalidNameError(InvalidArgumentError):
    """A name or id is not allowed: '..', NUL, '/' in a component, empty."""


class NameTooLongError(InvalidNameError):
    """A name component or id is longer than its limit."""


class StoreClosedError(ArtifactStoreError):
    """The store was closed; open a new one."""


class ConfigurationError(InvalidArgumentError):
    """The settings (the environment, or the arguments that override it) name an impossible store."""


class UnknownProviderError(ConfigurationError):
    """A provider name that no registered backend answers to (``ARTIFACT_PROVIDER``, ``SESSION_PROVIDER``)."""


# Tree errors: what a filesystem can say that an artifact API rarely needs.


class AlreadyExistsError(ArtifactStoreError):
    """The name is taken (O_EXCL, mkdir, RENAME_NOREPLACE)."""


class NotADirectoryError_(ArtifactStoreError):
    """A path component is a file where a directory was needed."""


class IsADirectoryError_(ArtifactStoreError):
    """A directory was given where a file was needed."""


class DirectoryNotEmptyError(ArtifactStoreError):
    """rmdir or rename onto a directory that still has entries."""


class DirectoryLinkError(ArtifactStoreError):
    """A hard link to a directory, which no Linux filesystem makes (EPERM)."""


class TooManyLinksError(ArtifactStoreError):
    """A hard link beyond the names one inode may have (``core.nodes.MAX_LINKS``)."""


class CrossScopeError(ArtifactStoreError):
    """A rename or move between scopes; the mount answers EXDEV."""


class ReadOnlyError(AccessDeniedError):
    """A place in the tree that nobody writes to (the root, ``sessions/``)."""


class FrozenError(ReadOnlyError):
    """A checkpoint and what is in it are read-only (EROFS in the mount)."""


class NotSupportedError(ArtifactStoreError):
    """An operation this store does not offer (e.g. RENAME_EXCHANGE)."""


# Presigned URLs and uploads.


class UrlRefusedError(AccessDeniedError):
    """A presigned URL that does not grant this request: expired, tampered, wrong method or key."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class UploadNotFoundError(ArtifactNotFoundError):
    """No open upload by that id: never made, already finished, aborted, or expired."""


class InvalidPartError(InvalidArgumentError):
    """A multipart completion names a part that was not uploaded, or gives another ETag."""


class UploadConflictError(ArtifactStoreError):
    """The upload is being completed by another call at this moment."""


def shown(value: Any) -> str:
    """A bad argument as an error message quotes it: short, and never raising.

    ``repr`` of a 5,000-digit int raises ValueError (Python's digit limit),
    which would turn a refusal into a crash.
    """
    if isinstance(value, int) and value.bit_length() > 128:
        return f"a {value.bit_length()}-bit number"
    try:
        return repr(value)[:40]
    except Exception:  # a repr that fails is the caller's object's fault; say what type it was
        return f"a {type(value).__name__}"
