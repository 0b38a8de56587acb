"""The argument rules of the public API, in one place.

Every public entry point (the store's methods, the presign API, the mount's
``user.artifact.*`` xattrs) checks its arguments here before anything is
written, so a bad one is refused the same way everywhere, with an
:class:`~core.errors.InvalidArgumentError` that says what was wrong.
"""

from __future__ import annotations

import json
import mimetypes
import re
from typing import Any, Literal, TypeVar

from pydantic import BaseModel, ValidationError

from core.errors import InvalidArgumentError
from core.models import Scope
from core.tree.namespace import NS

DEFAULT: Literal["default"] = "default"
TTLArg = int | None | Literal["default"]

MAX_META_BYTES = 64 * 1024
MAX_SUMMARY_CHARS = 4096
_MIME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]{0,126}/[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]{0,126}(;.{0,200})?")

M = TypeVar("M", bound=BaseModel)
T = TypeVar("T")



def scope(scope: Scope | str) -> Scope:
    try:
        return Scope(scope)
    except ValueError:
        raise InvalidArgumentError(f"unknown scope {scope!r}; one of {[s.value for s in Scope]}") from None


def meta(meta: Any) -> dict[str, Any]:
    if meta is None:
        return {}
    if not isinstance(meta, dict):
        raise InvalidArgumentError(f"meta must be a dict, got {type(meta).__name__}")
    try:
        encoded = json.dumps(meta, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise InvalidArgumentError(f"meta is not JSON-serialisable: {exc}") from None
    if len(encoded) > MAX_META_BYTES:
        raise InvalidArgumentError(f"meta is {len(encoded)} bytes as JSON, the limit is {MAX_META_BYTES}")
    return json.loads(encoded)


def mime(mime: Any, filename: str | None) -> str:
    if mime is None:
        guessed = mimetypes.guess_type(filename if isinstance(filename, str) else "")[0]
        return guessed or "application/octet-stream"
    if not isinstance(mime, str) or not _MIME_RE.fullmatch(mime):
        raise InvalidArgumentError(f"mime {mime!r:.60} is not a MIME type like 'text/plain'")
    return mime


def summary(summary: Any) -> str:
    if summary is None:
        return ""
    if not isinstance(summary, str) or len(summary) > MAX_SUMMARY_CHARS or "\0" in summary:
        raise InvalidArgumentError(f"summary must be text of at most {MAX_SUMMARY_CHARS} characters")
    return summary


def data(data: Any) -> bytes:
    if isinstance(data, (bytes, bytearray, memoryview)):
        return bytes(data)
    raise InvalidArgumentError(f"data must be bytes, got {type(data).__name__}")


def hours(hours: Any) -> int:
    if isinstance(hours, bool) or not isinstance(hours, (int, float)) or hours <= 0:
        raise InvalidArgumentError(f"hours must be a positive number, got {hours!r:.40}")
    return int(hours * 3600 * NS)


def limited(items: list[T], limit: int | None) -> list[T]:
    if limit is None:
        return items
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 0:
        raise InvalidArgumentError(f"limit must be a non-negative whole number, got {limit!r:.40}")
    return items[:limit]


def model(kind: type[M], value: Any) -> M:
    """A request model from a model or a dict; a bad field is an InvalidArgumentError."""
    try:
        return kind.model_validate(value)
    except ValidationError as exc:
        raise InvalidArgumentError(f"invalid {kind.__name__}: {exc}") from None
