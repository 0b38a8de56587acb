"""Names, ids and grid keys: building, parsing and validating them.

Every id and name that reaches a backend passes through here first, so a
bad one is refused before anything is written.
"""

from __future__ import annotations

import re

from core.errors import InvalidNameError, NameTooLongError
from core.models import GridKey, Scope
from core.nodes import SESSIONS_DIR, SHARED_DIR, USERS_DIR, grid_key, scope_prefix  # noqa: F401  (kept with Space)

MAX_ID_LEN = 128
MAX_NAME_BYTES = 255
MAX_PATH_BYTES = 4096

_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@+=:,~-]*")


def validate_id(value: object, what: str = "id") -> str:
    """An id (sandbox, session, user, artifact) is one safe path segment."""
    if not isinstance(value, str) or not value:
        raise InvalidNameError(f"{what} must be a non-empty string, got {value!r:.60}")
    if len(value) > MAX_ID_LEN:
        raise NameTooLongError(f"{what} is {len(value)} characters, the limit is {MAX_ID_LEN}")
    if not _ID_RE.fullmatch(value) or value in (".", ".."):
        raise InvalidNameError(
            f"{what} {value!r:.60} may hold only letters, digits and ._@+=:,~- "
            "and must start with a letter or digit"
        )
    return value


def validate_name(name: object) -> str:
    """One directory entry name, as a filesystem would accept it."""
    if not isinstance(name, str) or not name:
        raise InvalidNameError("a name must be a non-empty string")
    if name in (".", ".."):
        raise InvalidNameError(f"{name!r} is not a valid name")
    if "/" in name or "\0" in name:
        raise InvalidNameError(f"name {name!r:.60} contains '/' or NUL")
    try:
        size = len(name.encode("utf-8"))  # strictly: a record cannot hold a lone surrogate
    except UnicodeEncodeError as exc:
        raise InvalidNameError(f"name {name!r:.60} is not encodable") from exc
    if size > MAX_NAME_BYTES:
        raise NameTooLongError(f"name is {size} bytes, the limit is {MAX_NAME_BYTES}")
    return name


def split_filename(filename: object) -> list[str]:
    """``docs/q4/report.pdf`` -> its components, each validated.

    Empty components (``a//b``), a leading ``/``, ``.`` and ``..`` are refused
    rather than normalised: a name that means something other than it says
    is a bug in the caller.
    """
    if not isinstance(filename, str) or not filename:
        raise InvalidNameError("filename must be a non-empty string")
    if len(filename.encode("utf-8", "replace")) > MAX_PATH_BYTES:  # each component is checked strictly below
        raise NameTooLongError(f"filename is longer than {MAX_PATH_BYTES} bytes")
    if "\0" in filename:
        raise InvalidNameError("filename contains NUL")
    parts = filename.split("/")
    if any(p == "" for p in parts):
        raise InvalidNameError(f"filename {filename!r:.80} has an empty component or a leading/trailing '/'")
    return [validate_name(p) for p in parts]


def parse_grid_key(key: str) -> GridKey:
    """Inverse of :func:`grid_key`; anything after the artifact id is ``subpath``."""
    if not isinstance(key, str):
        raise InvalidNameError("grid key must be a string")
    parts = key.split("/")
    if len(parts) < 3 or parts[0] != "grid":
        raise InvalidNameError(f"not a grid key: {key!r:.100}")
    sandbox_id = validate_id(parts[1], "sandbox id")
    kind, rest = parts[2], parts[3:]
    session_id = user_id = None
    if kind == SESSIONS_DIR and rest:
        scope, session_id, rest = Scope.SESSION, validate_id(rest[0], "session id"), rest[1:]
    elif kind == USERS_DIR and rest:
        scope, user_id, rest = Scope.USER, validate_id(rest[0], "user id"), rest[1:]
    elif kind == SHARED_DIR:
        scope = Scope.SANDBOX
    else:
        raise InvalidNameError(f"not a grid key: {key!r:.100}")
    artifact_id = validate_id(rest[0], "artifact id") if rest else None
    subpath = "/".join(rest[1:]) or None
    return GridKey(
        sandbox_id=sandbox_id,
        scope=scope,
        session_id=session_id,
        user_id=user_id,
        artifact_id=artifact_id,
        subpath=subpath,
    )
