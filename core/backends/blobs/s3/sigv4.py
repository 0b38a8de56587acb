"""AWS Signature Version 4 for S3 requests, as a pure function.

The data path sends its S3 requests itself (:mod:`core.backends.blobs.s3.http`), so it
signs them itself. The rules are S3's variant of SigV4: the path is signed
exactly as sent (no normalising), the payload is named by its SHA-256 or by
``UNSIGNED-PAYLOAD``, and every header we send is signed. The tests check
each signature against botocore's signer for the same request.
"""

from __future__ import annotations

import hashlib
import hmac
from datetime import datetime
from urllib.parse import quote

ALGORITHM = "AWS4-HMAC-SHA256"
UNSIGNED_PAYLOAD = "UNSIGNED-PAYLOAD"
EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()


def uri_encode(text: str, *, keep_slash: bool) -> str:
    """SigV4's encoding: everything but unreserved characters (and ``/`` in a path) is escaped."""
    return quote(text, safe="-_.~/" if keep_slash else "-_.~")


def canonical_query(params: dict[str, str]) -> str:
    pairs = sorted((uri_encode(k, keep_slash=False), uri_encode(v, keep_slash=False)) for k, v in params.items())
    return "&".join(f"{k}={v}" for k, v in pairs)


class Credentials:
    """One frozen set of keys (a refreshing provider hands out a new one when they rotate)."""

    __slots__ = ("access_key", "secret_key", "token")

    def __init__(self, access_key: str, secret_key: str, token: str | None = None) -> None:
        self.access_key, self.secret_key, self.token = access_key, secret_key, token


_key_cache: dict[tuple[str, str, str], bytes] = {}


def _signing_key(secret: str, day: str, region: str) -> bytes:
    """The day's derived key: four HMACs, the same for every request of that day, so kept."""
    cached = _key_cache.get((secret, day, region))
    if cached is None:
        key = hmac.new(f"AWS4{secret}".encode(), day.encode(), hashlib.sha256).digest()
        for part in (region, "s3", "aws4_request"):
            key = hmac.new(key, part.encode(), hashlib.sha256).digest()
        if len(_key_cache) > 16:
            _key_cache.clear()
        cached = _key_cache[(secret, day, region)] = key
    return cached


def sign(
    method: str,
    host: str,
    path: str,
    query: str,
    headers: dict[str, str],
    payload_sha256: str,
    credentials: Credentials,
    region: str,
    now: datetime,
) -> dict[str, str]:
    """``headers`` plus the date, payload hash, token and Authorization headers of a signed request.

    ``path`` and ``query`` are as they go on the wire (already encoded,
    the query in :func:`canonical_query` form); ``now`` is UTC.
    """
    stamp = now.strftime("%Y%m%dT%H%M%SZ")
    day = stamp[:8]
    signed = {k.lower(): str(v).strip() for k, v in headers.items()}
    signed["host"] = host
    signed["x-amz-date"] = stamp
    signed["x-amz-content-sha256"] = payload_sha256
    if credentials.token:
        signed["x-amz-security-token"] = credentials.token
    names = sorted(signed)
    canonical = "\n".join([
        method,
        path,
        query,
        "".join(f"{name}:{' '.join(signed[name].split())}\n" for name in names),
        ";".join(names),
        payload_sha256,
    ])
    scope = f"{day}/{region}/s3/aws4_request"
    to_sign = f"{ALGORITHM}\n{stamp}\n{scope}\n{hashlib.sha256(canonical.encode()).hexdigest()}"
    signature = hmac.new(_signing_key(credentials.secret_key, day, region), to_sign.encode(), hashlib.sha256).hexdigest()
    out = {k: v for k, v in signed.items() if k != "host"}
    out["authorization"] = (
        f"{ALGORITHM} Credential={credentials.access_key}/{scope}, SignedHeaders={';'.join(names)}, Signature={signature}"
    )
    return out
