"""Presigned URLs: what a URL grants, how it is signed, and why one is refused.

A URL names one *target* (an artifact to read, an upload to write, or one
part of a multipart upload), one HTTP method, an expiry and optional limits;
an HMAC-SHA256 over exactly those fields, keyed from the store's signing key,
is the only thing the service trusts. Nothing here does I/O: the store signs,
the HTTP service (:mod:`core.transfers.service`) verifies.

URL shape (``base`` is the service's address, e.g. ``http://127.0.0.1:8470``)::

    {base}/v1/objects/{artifact_id}?exp=..&for=..&sig=..              GET, HEAD
    {base}/v1/uploads/{upload_id}?exp=..[&max=..]&for=..&sig=..       PUT
    {base}/v1/uploads/{upload_id}/parts/{n}?exp=..[&max=..]&for=..&sig=..  PUT

``for`` is a short fingerprint of the target. It is not a secret and adds no
security (the signature covers the target already); it lets the service say
"signed for another key" rather than just "bad signature" when a valid URL is
replayed against a different path.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
from collections.abc import Mapping
from enum import Enum
from urllib.parse import quote, urlencode

from pydantic import BaseModel

from core.errors import InvalidArgumentError, UrlRefusedError, shown

MAX_URL_SECONDS = 7 * 24 * 3600  # what S3 allows for a SigV4 URL; we match it
MAX_PARTS = 10_000
_ID = r"[A-Za-z0-9][A-Za-z0-9._@+=:,~-]{0,127}"  # grid.validate_id's alphabet
_PATHS = re.compile(rf"/v1/(?:objects/(?P<obj>{_ID})|uploads/(?P<up>{_ID})(?:/parts/(?P<part>[0-9]{{1,5}}))?)")
_VERSION = "artifactfs-url-v1"


class Method(str, Enum):
    GET = "GET"
    PUT = "PUT"


class Refusal(str, Enum):
    """Why a URL does not grant a request; the text is what the 403 body says."""

    MALFORMED = "malformed URL"
    OTHER_KEY = "signed for another key"
    BAD_SIGNATURE = "bad signature"
    WRONG_METHOD = "wrong method"
    EXPIRED = "expired"


class TargetKind(str, Enum):
    OBJECT = "objects"
    UPLOAD = "uploads"
    PART = "parts"


class Target(BaseModel, frozen=True):
    """What a URL points at: one artifact, one upload, or one part of an upload."""

    kind: TargetKind
    ident: str  # artifact id or upload id
    part_number: int | None = None

    @property
    def path(self) -> str:
        if self.kind is TargetKind.OBJECT:
            return f"/v1/objects/{self.ident}"
        if self.kind is TargetKind.UPLOAD:
            return f"/v1/uploads/{self.ident}"
        return f"/v1/uploads/{self.ident}/parts/{self.part_number}"

    @property
    def method(self) -> Method:
        return Method.GET if self.kind is TargetKind.OBJECT else Method.PUT

    @property
    def fingerprint(self) -> str:
        return hashlib.sha256(self.path.encode()).hexdigest()[:12]


class Grant(BaseModel, frozen=True):
    """A verified URL: the one thing it lets its holder do, until when."""

    target: Target
    expires_at: int  # unix seconds
    max_bytes: int | None = None


def parse_target(path: str) -> Target | None:
    """The target a request path names, or None for any other path."""
    match = _PATHS.fullmatch(path)
    if match is None:
        return None
    if match["obj"] is not None:
        return Target(kind=TargetKind.OBJECT, ident=match["obj"])
    if match["part"] is None:
        return Target(kind=TargetKind.UPLOAD, ident=match["up"])
    number = int(match["part"])
    if not 1 <= number <= MAX_PARTS or match["part"] != str(number):
        return None
    return Target(kind=TargetKind.PART, ident=match["up"], part_number=number)


def derive_key(signing_key: bytes, purpose: str) -> bytes:
    """A key for one purpose, so URL and record signatures can never be swapped."""
    return hmac.new(signing_key, f"artifactfs/{purpose}".encode(), hashlib.sha256).digest()


class UrlSigner:
    """Signs and verifies presigned URLs with one key."""

    def __init__(self, signing_key: bytes, base_url: str) -> None:
        self._key = derive_key(signing_key, "presign-url/v1")
        self.base_url = base_url.rstrip("/")

    def _sig(self, method: Method, target: Target, expires_at: int, max_bytes: int | None) -> str:
        text = "\n".join((_VERSION, method.value, target.path, str(expires_at), "" if max_bytes is None else str(max_bytes)))
        digest = hmac.new(self._key, text.encode(), hashlib.sha256).digest()
        return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()

    def sign(self, target: Target, expires_at: int, *, max_bytes: int | None = None) -> str:
        query: dict[str, str | int] = {"exp": expires_at}
        if max_bytes is not None:
            query["max"] = max_bytes
        query["for"] = target.fingerprint
        query["sig"] = self._sig(target.method, target, expires_at, max_bytes)
        return f"{self.base_url}{quote(target.path)}?{urlencode(query)}"

    def verify(self, method: str, path: str, query: Mapping[str, str], now_s: int) -> Grant:
        """The grant a request carries, or :class:`UrlRefusedError` saying why not.

        The signature is checked before any signed field is believed, and it
        is compared as text (constant time), so a changed character that
        happens to decode to the same bytes is still a changed signature.
        """
        target = parse_target(path)
        if target is None:
            raise UrlRefusedError(Refusal.MALFORMED.value)
        try:
            expires_at = int(query["exp"])
            max_bytes = int(query["max"]) if "max" in query else None
            fingerprint, sig = query["for"], query["sig"]
        except (KeyError, ValueError):
            raise UrlRefusedError(Refusal.MALFORMED.value) from None
        if not hmac.compare_digest(fingerprint.encode(), target.fingerprint.encode()):
            raise UrlRefusedError(Refusal.OTHER_KEY.value)
        if not hmac.compare_digest(sig.encode(), self._sig(target.method, target, expires_at, max_bytes).encode()):
            raise UrlRefusedError(Refusal.BAD_SIGNATURE.value)
        allowed = ("GET", "HEAD") if target.method is Method.GET else ("PUT",)
        if method not in allowed:
            raise UrlRefusedError(Refusal.WRONG_METHOD.value)
        if now_s >= expires_at:
            raise UrlRefusedError(Refusal.EXPIRED.value)
        return Grant(target=target, expires_at=expires_at, max_bytes=max_bytes)


def check_expires(expires: object) -> int:
    """A URL lifetime in whole seconds, 1 s to 7 days."""
    if isinstance(expires, bool) or not isinstance(expires, int) or not 0 < expires <= MAX_URL_SECONDS:
        raise InvalidArgumentError(f"expires must be whole seconds between 1 and {MAX_URL_SECONDS}, got {shown(expires)}")
    return expires
