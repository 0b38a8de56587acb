"""Page cursors: where the next page of a listing or a search starts, as an opaque string.

A cursor is a position, not a capability: every page applies the caller's
access rules again, so a forged cursor can only start a page somewhere else
in what the caller may read anyway. It is therefore validated, not signed:
bounded in length, one pydantic model, and tied to the query it continues
(a digest of its arguments), so a cursor of another query, or an edited or
truncated one, is an :class:`InvalidCursorError` rather than a wrong page.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from enum import Enum
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, field_validator

from core.errors import InvalidCursorError, InvalidNameError
from core.tree.grid import validate_name

# A listing cursor holds the last path answered, and a path has no fixed bound: each name is at most
# 255 bytes, but a tree made through the mount may nest names deeper than a filename's 4,096 bytes.
# This allows paths of ~48 KB (base64 is 4/3 of the JSON); a longer one gets no cursor (:func:`files_cursor`).
MAX_CURSOR_CHARS = 65536
_DIGEST_CHARS = 16  # hex digits of the query digest: enough to tell queries apart, not a secret


class CursorKind(str, Enum):
    FILES = "files"  # a session's files, in filename order
    SEARCH = "search"  # a search, in (stored_at, artifact_id) order


class _Cursor(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    query: str = Field(min_length=_DIGEST_CHARS, max_length=_DIGEST_CHARS)


class FilesCursor(_Cursor):
    """After the file with path ``after`` below the session's root."""

    kind: Literal[CursorKind.FILES] = CursorKind.FILES
    after: str = Field(min_length=1, max_length=MAX_CURSOR_CHARS)

    @field_validator("after")
    @classmethod
    def _a_path(cls, after: str) -> str:
        """Names a page walks back down (a lookup per character below '/' of each): each one a file
        could have, so a forged cursor costs what a real one does."""
        try:
            for name in after.split("/"):
                validate_name(name)
        except InvalidNameError as exc:
            raise ValueError(str(exc)) from None
        return after


class SearchCursor(_Cursor):
    """After the artifact stored at ``stored_at_ns`` with id ``artifact_id`` (ties broken by id)."""

    kind: Literal[CursorKind.SEARCH] = CursorKind.SEARCH
    stored_at_ns: int = Field(ge=0)
    artifact_id: str = Field(min_length=1, max_length=256)


Cursor = Annotated[FilesCursor | SearchCursor, Field(discriminator="kind")]
_CURSOR: TypeAdapter[FilesCursor | SearchCursor] = TypeAdapter(Cursor)


def query_digest(kind: CursorKind, **arguments: Any) -> str:
    """What ties a cursor to its query: a digest of the kind and the arguments that choose the results."""
    canonical = json.dumps({"kind": kind.value, **arguments}, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:_DIGEST_CHARS]


def encode(cursor: FilesCursor | SearchCursor) -> str:
    return base64.urlsafe_b64encode(cursor.model_dump_json().encode()).decode().rstrip("=")


def files_cursor(query: str, after: str) -> str | None:
    """The cursor of a listing after path ``after``; None if the path is too deep for one
    (:data:`MAX_CURSOR_CHARS`): the caller answers a page that ends before it."""
    if len(after) > MAX_CURSOR_CHARS:
        return None
    try:
        text = encode(FilesCursor(query=query, after=after))
    except ValidationError:  # a name no cursor may hold: not one this store answers
        return None
    return text if len(text) <= MAX_CURSOR_CHARS else None


def decode(text: object, query: str) -> FilesCursor | SearchCursor:
    """The cursor ``text`` encodes, if it is one this store could have handed out for ``query``."""
    if not isinstance(text, str) or not 0 < len(text) <= MAX_CURSOR_CHARS:
        raise InvalidCursorError("a cursor is a non-empty string this store handed out")
    try:
        raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
        cursor = _CURSOR.validate_json(raw)
    except (binascii.Error, ValueError, ValidationError) as exc:  # ValidationError first would be shadowed
        raise InvalidCursorError("the cursor is damaged or was not handed out by this store") from exc
    if cursor.query != query:
        raise InvalidCursorError("the cursor belongs to another query")
    return cursor
