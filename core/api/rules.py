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

from core.errors import InvalidArgumentError, InvalidNameError, NameTooLongError, shown
from core.models import Scope
from core.settings import Limits
from core.tree import grid
from core.tree.namespace import NS

DEFAULT: Literal["default"] = "default"
TTLArg = int | None | Literal["default"]

MAX_SUMMARY_CHARS = 4096
# Parameters are printable ASCII: a MIME type goes out as a Content-Type header, where CR, LF,
# NUL and other control characters are not allowed (a download of one would fail mid-answer).
_MIME_RE = re.compile(
    r"[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]{0,126}/[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]{0,126}(;[ -~]{0,200})?", re.ASCII
)
_LIMITS = Limits()

M = TypeVar("M", bound=BaseModel)
T = TypeVar("T")



def scope(scope: Scope | str) -> Scope:
    try:
        return Scope(scope)
    except ValueError:
        raise InvalidArgumentError(f"unknown scope {scope!r}; one of {[s.value for s in Scope]}") from None


def meta(meta: Any, limits: Limits = _LIMITS) -> dict[str, Any]:
    """``meta`` as the JSON object it will be stored as, within the size and depth limits.

    The depth is measured before anything recurses, so a 100,000-level
    object is refused as too deep rather than crashing the encoder.
    """
    if meta is None:
        return {}
    if not isinstance(meta, dict):
        raise InvalidArgumentError(f"meta must be a dict, got {type(meta).__name__}")
    if _depth(meta, limits.max_meta_depth) > limits.max_meta_depth:
        raise InvalidArgumentError(f"meta nests deeper than {limits.max_meta_depth} levels")
    try:
        encoded = json.dumps(meta, allow_nan=False, ensure_ascii=False).encode("utf-8")
    except (TypeError, ValueError) as exc:  # a set, bytes, NaN, a 5,000-digit number, a lone surrogate ...
        raise InvalidArgumentError(f"meta is not JSON-serialisable as UTF-8: {exc}"[:200]) from None
    if len(encoded) > limits.max_meta_bytes:
        raise InvalidArgumentError(f"meta is {len(encoded)} bytes as JSON, the limit is {limits.max_meta_bytes}")
    return json.loads(encoded)


def _depth(value: Any, stop: int) -> int:
    """How deeply dicts and lists nest in ``value``; stops counting past ``stop``."""
    deepest, todo = 0, [(value, 1)]
    while todo:
        item, level = todo.pop()
        if not isinstance(item, (dict, list, tuple)):
            continue
        deepest = max(deepest, level)
        if deepest > stop:
            break
        todo.extend((child, level + 1) for child in (item.values() if isinstance(item, dict) else item))
    return deepest


def mime(mime: Any, filename: str | None) -> str:
    if mime is None:
        guessed = mimetypes.guess_type(filename if isinstance(filename, str) else "")[0]
        return guessed or "application/octet-stream"
    if not isinstance(mime, str) or not _MIME_RE.fullmatch(mime):
        raise InvalidArgumentError(f"mime {shown(mime)} is not a MIME type like 'text/plain'")
    return mime


def summary(summary: Any) -> str:
    if summary is None:
        return ""
    if not isinstance(summary, str) or len(summary) > MAX_SUMMARY_CHARS or "\0" in summary or not _utf8(summary):
        raise InvalidArgumentError(f"summary must be UTF-8 text of at most {MAX_SUMMARY_CHARS} characters, without NUL")
    return summary


def _utf8(text: str) -> bool:
    """Whether ``text`` can be stored: a lone surrogate cannot be written as UTF-8."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def data(data: Any) -> bytes:
    if isinstance(data, (bytes, bytearray, memoryview)):
        return bytes(data)
    raise InvalidArgumentError(f"data must be bytes, got {type(data).__name__}")


def ttl_seconds(ttl: Any, limits: Limits = _LIMITS, what: str = "ttl") -> int:
    """A lifetime in whole seconds: positive and at most ``limits.max_ttl``."""
    if isinstance(ttl, bool) or not isinstance(ttl, int):
        raise InvalidArgumentError(f"{what} must be a whole number of seconds, got {shown(ttl)}")
    if not 0 < ttl <= limits.max_ttl:
        raise InvalidArgumentError(f"{what} must be between 1 and {limits.max_ttl} seconds, got {shown(ttl)}")
    return ttl


def hours(hours: Any, limits: Limits = _LIMITS) -> int:
    """A lifetime in hours (fractions allowed) as nanoseconds, within ``limits.max_ttl``."""
    if isinstance(hours, bool) or not isinstance(hours, (int, float)) or not 0 < hours <= limits.max_ttl / 3600:
        # NaN fails the comparison too; inf and huge ints exceed the bound
        raise InvalidArgumentError(f"hours must be a positive number of at most {limits.max_ttl // 3600}, got {shown(hours)}")
    return int(hours * 3600 * NS)


def limited(items: list[T], limit: int | None) -> list[T]:
    if limit is None:
        return items
    return items[:a_limit(limit)]


def a_limit(limit: Any) -> int:
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 0:
        raise InvalidArgumentError(f"limit must be a non-negative whole number, got {shown(limit)}")
    return limit


MAX_PAGE = 1000  # items one page may hold: a page is one bounded read, whatever the caller asks


def page_size(limit: Any) -> int:
    """A page's ``limit``: 1 to :data:`MAX_PAGE` (a cursor continues past it)."""
    if isinstance(limit, bool) or not isinstance(limit, int) or not 0 < limit <= MAX_PAGE:
        raise InvalidArgumentError(f"a page's limit must be a whole number from 1 to {MAX_PAGE}, got {shown(limit)}")
    return limit


MAX_MIME_PREFIX_BYTES = 512  # longer than any MIME type the store takes (``_MIME_RE``)


def mime_prefix(prefix: Any) -> str | None:
    """A search's ``mime_prefix``: text the store could hold, of a bounded length.

    It becomes the bounds of an index range, which must be encodable
    (a lone surrogate is not) and is compared a character at a time.
    """
    if prefix is None or prefix == "":
        return None
    if not isinstance(prefix, str) or "\0" in prefix or not _utf8(prefix) or len(prefix) > MAX_MIME_PREFIX_BYTES \
            or len(prefix.encode("utf-8")) > MAX_MIME_PREFIX_BYTES:
        raise InvalidArgumentError(f"mime_prefix must be UTF-8 text of at most {MAX_MIME_PREFIX_BYTES} bytes, without NUL")
    return prefix


def path_prefix(prefix: Any) -> str:
    """A listing's ``prefix``: the start of a filename that could exist.

    Each whole component before the last '/' is a name (:func:`grid.validate_name`),
    the partial last one no longer than a name, and the whole no longer than a
    filename. A page walks down the prefix and looks up a name per character
    of it below '/' (:mod:`core.tree.pages`), so its length is what a page
    costs: one no file can start with is refused, not walked.
    """
    if not isinstance(prefix, str):
        raise InvalidArgumentError(f"prefix must be a string, got {type(prefix).__name__}")
    if not prefix:
        return prefix
    if "\0" in prefix or not _utf8(prefix):
        raise InvalidNameError(f"prefix {prefix!r:.60} is not UTF-8 text without NUL")
    if len(prefix) > grid.MAX_PATH_BYTES or len(prefix.encode("utf-8")) > grid.MAX_PATH_BYTES:
        raise NameTooLongError(f"prefix is longer than a filename ({grid.MAX_PATH_BYTES} bytes)")
    *whole, last = prefix.split("/")
    for name in whole:
        grid.validate_name(name)
    if len(last.encode("utf-8")) > grid.MAX_NAME_BYTES:
        raise NameTooLongError(f"the prefix's last name is longer than a name ({grid.MAX_NAME_BYTES} bytes)")
    return prefix


def model(kind: type[M], value: Any) -> M:
    """A request model from a model or a dict; a bad field is an InvalidArgumentError."""
    try:
        return kind.model_validate(value)
    except ValidationError as exc:
        raise InvalidArgumentError(f"invalid {kind.__name__}: {exc}") from None
