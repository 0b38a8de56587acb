"""Artifact metadata as extended attributes (DESIGN §4).

``user.artifact.<field>`` names show the artifact half of a file node; some
may be set (summary, mime, meta, ttl), the others are read-only (``EPERM``
when set). An unknown ``user.artifact.*`` name is refused (``EINVAL``). Any
other ``user.*`` name is a free attribute kept on the node, as on ext4;
other namespaces (``security.``, ``trusted.``) are not supported.

``listxattr`` names the settable fields and the free attributes only: what a
copy that keeps attributes (``cp --preserve=all``, ``rsync -X``, ``mv``
across scopes) reads from one file and sets on the other. The computed
fields (id, sha256, expires_at, presign) belong to one artifact and cannot
be set, so they are read by name, as CephFS's virtual attributes are; listed,
every such copy reported an error for each.

Values set here pass the library's own argument checks, so both faces of
the store accept exactly the same summaries, MIME types and metadata.
"""

from __future__ import annotations

import errno
import json
import math
import re
from datetime import UTC, datetime
from enum import Enum
from typing import Protocol

import pyfuse3

from core.api import rules
from core.errors import InvalidArgumentError
from core.nodes import Node
from core.settings import Limits
from core.tree.namespace import NS

PREFIX = "user."
ARTIFACT_PREFIX = "user.artifact."
_MAX_FREE_BYTES = 256 * 1024  # all free attributes of one node, hex-encoded as stored


class Field(str, Enum):
    ID = "id"
    SUMMARY = "summary"
    MIME = "mime"
    META = "meta"
    SHA256 = "sha256"
    EXPIRES_AT = "expires_at"
    TTL = "ttl"
    PRESIGN = "presign"


SETTABLE = frozenset({Field.SUMMARY, Field.MIME, Field.META, Field.TTL})
LISTED = [field for field in Field if field in SETTABLE]  # what listxattr names, in this order


class Presigner(Protocol):
    """THE PRESIGN HOOK: how ``user.artifact.presign`` gets its URL.

    The presigned-URL work plugs an implementation into the mount
    (``Operations(presigner=...)``); until then the attribute is absent
    (``ENODATA``).
    """

    async def url_for(self, node: Node) -> str: ...


def _absent() -> pyfuse3.FUSEError:
    return pyfuse3.FUSEError(pyfuse3.ENOATTR)


def _field(name: str) -> Field:
    try:
        return Field(name[len(ARTIFACT_PREFIX) :])
    except ValueError:
        raise InvalidArgumentError(f"{name!r} is not an artifact attribute; they are {[f.value for f in Field]}") from None


def _text(value: bytes) -> str:
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidArgumentError("the value is not UTF-8 text") from None


def _json_object(text: str, limits: Limits) -> dict[str, object]:
    """The JSON object a ``user.artifact.meta`` value holds.

    Too big or too deep is refused before parsing: the parser recurses (a
    deep enough value would raise RecursionError), and a number past
    Python's 4,300 digits raises a plain ValueError.
    """
    if len(text) > limits.max_meta_bytes:
        raise InvalidArgumentError(f"user.artifact.meta is longer than {limits.max_meta_bytes} characters")
    if _brackets_deep(text) > limits.max_meta_depth:
        raise InvalidArgumentError(f"user.artifact.meta nests deeper than {limits.max_meta_depth} levels")
    try:
        meta = json.loads(text)
    except (ValueError, RecursionError) as exc:  # JSONDecodeError is a ValueError
        raise InvalidArgumentError(f"user.artifact.meta must be a JSON object: {exc}"[:200]) from None
    if not isinstance(meta, dict):
        raise InvalidArgumentError("user.artifact.meta must be a JSON object")
    return meta


def _brackets_deep(text: str) -> int:
    """An upper bound of how deeply ``text`` nests as JSON: brackets outside strings."""
    deepest = depth = 0
    in_string = escaped = False
    for char in text:
        if in_string:
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == '"':
                in_string = False
        elif char == '"':
            in_string = True
        elif char in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif char in "]}":
            depth -= 1
    return deepest


class Xattrs:
    def __init__(self, presigner: Presigner | None = None, limits: Limits | None = None) -> None:
        self.presigner = presigner
        self.limits = limits or Limits()  # the store's: a value is refused here as the library refuses it

    def names(self, node: Node) -> list[bytes]:
        names = [f"{ARTIFACT_PREFIX}{f.value}".encode() for f in LISTED] if node.artifact is not None else []
        return names + [name.encode() for name in node.xattrs]

    async def get(self, node: Node, name: str, now_ns: int) -> bytes:
        if not name.startswith(PREFIX):
            raise pyfuse3.FUSEError(errno.EOPNOTSUPP)
        if not name.startswith(ARTIFACT_PREFIX):
            stored = node.xattrs.get(name)
            if stored is None:
                raise _absent()
            return bytes.fromhex(stored)
        art = node.artifact
        if art is None:
            raise _absent()
        field = _field(name)
        if field is Field.ID:
            return art.artifact_id.encode()
        if field is Field.SUMMARY:
            return art.summary.encode()
        if field is Field.MIME:
            return art.mime.encode()
        if field is Field.META:
            return json.dumps(art.meta, ensure_ascii=False, separators=(",", ":")).encode()
        if field is Field.SHA256:
            return art.sha256.encode()
        if field is Field.EXPIRES_AT:
            if node.expires_at_ns is None:
                return b""
            return datetime.fromtimestamp(node.expires_at_ns / NS, tz=UTC).isoformat().encode()
        if field is Field.TTL:
            if node.expires_at_ns is None:
                return b""
            return str(max(0, math.ceil((node.expires_at_ns - now_ns) / NS))).encode()
        if self.presigner is None:
            raise _absent()
        return (await self.presigner.url_for(node)).encode()

    def set(self, node: Node, name: str, value: bytes, now_ns: int) -> None:
        """Change ``node`` in memory; nothing is touched if the value is refused."""
        if not name.startswith(PREFIX):
            raise pyfuse3.FUSEError(errno.EOPNOTSUPP)
        if not name.startswith(ARTIFACT_PREFIX):
            free = {**node.xattrs, name: value.hex()}
            if sum(len(k) + len(v) for k, v in free.items()) > _MAX_FREE_BYTES:
                raise pyfuse3.FUSEError(errno.ENOSPC)
            node.xattrs = free
            return
        field = _field(name)
        art = node.artifact
        if field not in SETTABLE or art is None:
            raise pyfuse3.FUSEError(errno.EPERM)
        if field is Field.SUMMARY:
            art.summary = rules.summary(_text(value))
        elif field is Field.MIME:
            art.mime = rules.mime(_text(value).strip(), None)
        elif field is Field.META:
            art.meta = rules.meta(_json_object(_text(value), self.limits), self.limits)
        else:
            ttl = _text(value).strip()
            if not ttl:
                return  # what a file that never expires reads: a copy of one changes nothing
            if not re.fullmatch(r"[0-9]{1,12}", ttl, re.ASCII):
                raise InvalidArgumentError(f"user.artifact.ttl must be a positive number of seconds, not {ttl[:40]!r}")
            art.ttl = rules.ttl_seconds(int(ttl), self.limits, "user.artifact.ttl")
            node.expires_at_ns = now_ns + art.ttl * NS

    def remove(self, node: Node, name: str) -> None:
        if name.startswith(ARTIFACT_PREFIX):
            _field(name)
            raise pyfuse3.FUSEError(errno.EPERM)  # artifact fields always exist; set them instead
        if name not in node.xattrs:
            raise _absent()
        node.xattrs = {k: v for k, v in node.xattrs.items() if k != name}
