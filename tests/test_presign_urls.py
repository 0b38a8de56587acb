"""URL signing on its own: what a signature covers, and every reason a URL is refused."""

from __future__ import annotations

from urllib.parse import parse_qsl, urlsplit

import pytest

from core.errors import InvalidArgumentError, UrlRefusedError
from core.transfers.urls import Refusal, Target, TargetKind, UrlSigner, check_expires, parse_target

KEY = b"k" * 32
NOW = 1_700_000_000
OBJ = Target(kind=TargetKind.OBJECT, ident="a1")
PART = Target(kind=TargetKind.PART, ident="up1", part_number=7)


def split(url: str) -> tuple[str, dict[str, str]]:
    parts = urlsplit(url)
    return parts.path, dict(parse_qsl(parts.query))


def refusal(method: str, path: str, query: dict[str, str], now: int = NOW, key: bytes = KEY) -> str:
    with pytest.raises(UrlRefusedError) as caught:
        UrlSigner(key, "http://h").verify(method, path, query, now)
    return caught.value.reason


def test_round_trip_grants_exactly_the_signed_target() -> None:
    signer = UrlSigner(KEY, "http://127.0.0.1:9/")
    url = signer.sign(PART, NOW + 60, max_bytes=1000)
    assert url.startswith("http://127.0.0.1:9/v1/uploads/up1/parts/7?")
    grant = signer.verify("PUT", *split(url), NOW)
    assert (grant.target, grant.expires_at, grant.max_bytes) == (PART, NOW + 60, 1000)


def test_get_url_allows_head_but_not_put() -> None:
    path, query = split(UrlSigner(KEY, "http://h").sign(OBJ, NOW + 60))
    UrlSigner(KEY, "http://h").verify("HEAD", path, query, NOW)
    for method in ("PUT", "POST", "DELETE"):
        assert refusal(method, path, query) == Refusal.WRONG_METHOD.value


def test_expiry_is_exclusive() -> None:
    path, query = split(UrlSigner(KEY, "http://h").sign(OBJ, NOW + 60))
    UrlSigner(KEY, "http://h").verify("GET", path, query, NOW + 59)
    assert refusal("GET", path, query, now=NOW + 60) == Refusal.EXPIRED.value


def test_every_changed_signature_character_is_refused() -> None:
    path, query = split(UrlSigner(KEY, "http://h").sign(OBJ, NOW + 60))
    sig = query["sig"]
    for i in range(len(sig)):
        # 'A' and 'B' differ only in the low bits; the last base64 character has unused ones.
        flipped = sig[:i] + ("B" if sig[i] == "A" else "A") + sig[i + 1 :]
        assert refusal("GET", path, {**query, "sig": flipped}) == Refusal.BAD_SIGNATURE.value
    assert refusal("GET", path, {**query, "sig": sig + "A"}) == Refusal.BAD_SIGNATURE.value


@pytest.mark.parametrize("field,value", [("exp", str(NOW + 10**6)), ("max", "99999999")])
def test_signed_fields_cannot_be_changed(field: str, value: str) -> None:
    path, query = split(UrlSigner(KEY, "http://h").sign(PART, NOW + 60, max_bytes=10))
    assert refusal("PUT", path, {**query, field: value}) == Refusal.BAD_SIGNATURE.value


def test_dropping_the_limit_is_refused() -> None:
    path, query = split(UrlSigner(KEY, "http://h").sign(PART, NOW + 60, max_bytes=10))
    del query["max"]
    assert refusal("PUT", path, query) == Refusal.BAD_SIGNATURE.value


def test_url_replayed_on_another_target() -> None:
    _, query = split(UrlSigner(KEY, "http://h").sign(OBJ, NOW + 60))
    assert refusal("GET", "/v1/objects/a2", query) == Refusal.OTHER_KEY.value
    _, part_query = split(UrlSigner(KEY, "http://h").sign(PART, NOW + 60))
    assert refusal("PUT", "/v1/uploads/up1/parts/8", part_query) == Refusal.OTHER_KEY.value
    assert refusal("PUT", "/v1/uploads/up1", part_query) == Refusal.OTHER_KEY.value
    # A forged fingerprint for the new path still lacks the signature for it.
    forged = {**query, "for": Target(kind=TargetKind.OBJECT, ident="a2").fingerprint}
    assert refusal("GET", "/v1/objects/a2", forged) == Refusal.BAD_SIGNATURE.value


def test_another_signing_key_is_refused() -> None:
    path, query = split(UrlSigner(KEY, "http://h").sign(OBJ, NOW + 60))
    assert refusal("GET", path, query, key=b"x" * 32) == Refusal.BAD_SIGNATURE.value


@pytest.mark.parametrize("query", [{}, {"exp": "x", "for": "f", "sig": "s"}, {"exp": "1", "sig": "s"}])
def test_malformed_query(query: dict[str, str]) -> None:
    assert refusal("GET", "/v1/objects/a1", query) == Refusal.MALFORMED.value


@pytest.mark.parametrize("path", [
    "/v1/objects/..", "/v1/objects/../signing.key", "/v1/objects/a/b", "/v1/objects/", "/v1/objects/.hidden",
    "/v1/uploads/u/parts/0", "/v1/uploads/u/parts/10001", "/v1/uploads/u/parts/007", "/etc/passwd",
    "/v1/objects/a1/", "//v1/objects/a1", "/v1/objects/a%2Fb",
])
def test_paths_outside_the_scheme_name_nothing(path: str) -> None:
    assert parse_target(path) is None


def test_expires_bounds() -> None:
    assert check_expires(1) == 1
    for bad in (0, -5, 7 * 24 * 3600 + 1, 1.5, True, "60"):
        with pytest.raises(InvalidArgumentError):
            check_expires(bad)


def test_settings_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    from core.settings import PresignSettings, Settings

    assert PresignSettings().url == "http://127.0.0.1:8470"
    monkeypatch.setenv("ARTIFACT_SERVE_HOST", "0.0.0.0")
    monkeypatch.setenv("ARTIFACT_SERVE_PORT", "9000")
    assert Settings.from_env().presign.url == "http://0.0.0.0:9000"
    monkeypatch.setenv("ARTIFACT_PRESIGN_URL", "https://files.example.com/")
    assert Settings.from_env().presign.url == "https://files.example.com/"
    assert UrlSigner(KEY, Settings.from_env().presign.url).sign(OBJ, NOW).startswith("https://files.example.com/v1/objects/a1?")
    monkeypatch.setenv("ARTIFACT_SERVE_PORT", "http")
    with pytest.raises(InvalidArgumentError, match="presign"):
        Settings.from_env()
