"""Our S3 requests carry the signature botocore would give them.

moto checks no signature, so a wrong one would pass every other test here and
fail on AWS, MinIO or Ceph. Each request below is built by ``S3Http.prepare``
exactly as it goes on the wire, then signed again by botocore's own
``S3SigV4Auth`` at the same instant: the two Authorization headers must be
equal, byte for byte.
"""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime
from pathlib import Path

import pytest
from botocore.auth import S3SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.config import Config
from botocore.credentials import Credentials as BotoCredentials

from core.backends.blobs.s3.http import S3Http, resolve_credentials
from core.backends.blobs.s3.sigv4 import EMPTY_SHA256, UNSIGNED_PAYLOAD, Credentials
from core.backends.blobs.s3.store import S3BlobStore
from core.config import Settings, build_backends
from core.errors import ProviderError
from core.infra import aio_bridge

NOW = datetime(2026, 11, 21, 9, 30, 5, tzinfo=UTC)
AWKWARD_KEYS = [
    "plain/key.bin",
    "with space/and+plus=equals&amp;.txt",
    "unicode/naïve résumé ✓.txt",
    "tilde~/star*/paren(1)/quote'/colon:semi;/comma,/at@/dollar$",
    "percent%20already/hash#/question?",
]


def http(endpoint: str | None, *, path_style: bool, bucket: str = "my-bucket", region: str = "eu-west-1") -> S3Http:
    return S3Http(bucket, endpoint_url=endpoint, region=region, path_style=path_style, connect_timeout=1,
                  read_timeout=1, max_connections=1)


def botocore_authorization(method: str, url: str, headers: dict[str, str], body: bytes, creds: Credentials,
                           region: str, *, sign_payload: bool) -> str:
    request = AWSRequest(method=method, url=url, headers=headers, data=body)
    request.context["client_config"] = Config(s3={"payload_signing_enabled": sign_payload})
    request.context["timestamp"] = NOW.strftime("%Y%m%dT%H%M%SZ")
    auth = S3SigV4Auth(BotoCredentials(creds.access_key, creds.secret_key, creds.token), "s3", region)
    auth._modify_request_before_signing(request)
    # add_auth would stamp the current time; sign at NOW instead, through botocore's own steps
    canonical = auth.canonical_request(request)
    string_to_sign = auth.string_to_sign(request, canonical)
    signature = auth.signature(string_to_sign, request)
    return f"AWS4-HMAC-SHA256 Credential={auth.scope(request)}, SignedHeaders={auth.signed_headers(auth.headers_to_sign(request))}, Signature={signature}"


def check(client: S3Http, method: str, key: str | None, query: dict[str, str], headers: dict[str, str], body: bytes,
          creds: Credentials, *, sign_payload: bool) -> None:
    payload = (hashlib.sha256(body).hexdigest() if body else EMPTY_SHA256) if sign_payload else UNSIGNED_PAYLOAD
    url, signed = client.prepare(method, key, query, headers, payload, creds, NOW)
    sent = {k: v for k, v in signed.items() if k not in ("authorization", "x-amz-date", "x-amz-content-sha256",
                                                          "x-amz-security-token")}
    expected = botocore_authorization(method, url, sent, body, creds, client.region, sign_payload=sign_payload)
    assert signed["authorization"] == expected
    assert signed["x-amz-content-sha256"] == payload
    assert signed["x-amz-date"] == "20261121T093005Z"
    assert ("x-amz-security-token" in signed) == bool(creds.token)


@pytest.mark.parametrize("key", AWKWARD_KEYS)
def test_a_ranged_get_path_style_over_http(key: str) -> None:
    client = http("http://127.0.0.1:9000", path_style=True)
    check(client, "GET", key, {}, {"Range": "bytes=0-1048575"}, b"", Credentials("AKID", "secret"), sign_payload=True)


@pytest.mark.parametrize("key", AWKWARD_KEYS)
def test_an_encrypted_put_virtual_host_over_https_with_a_session_token(key: str) -> None:
    client = http(None, path_style=False)
    headers = {"x-amz-server-side-encryption": "aws:kms", "x-amz-server-side-encryption-aws-kms-key-id": "key/1"}
    check(client, "PUT", key, {}, headers, b"some bytes" * 100, Credentials("AKID", "s3cr/t+", "tok/en=="),
          sign_payload=False)


def test_multipart_queries() -> None:
    client = http("https://minio.example:9000/base/", path_style=True, region="us-east-1")
    creds = Credentials("AKID", "secret")
    check(client, "POST", "a/b c", {"uploads": ""}, {"x-amz-server-side-encryption": "AES256"}, b"", creds,
          sign_payload=True)
    check(client, "PUT", "a/b c", {"uploadId": "up/id+with=odd chars", "partNumber": "7"}, {}, b"p" * 5000, creds,
          sign_payload=True)
    document = b"<CompleteMultipartUpload><Part><PartNumber>1</PartNumber></Part></CompleteMultipartUpload>"
    check(client, "POST", "a/b c", {"uploadId": "up/id"}, {"Content-Type": "application/xml"}, document, creds,
          sign_payload=False)
    check(client, "DELETE", "a/b c", {"uploadId": "up/id"}, {}, b"", creds, sign_payload=True)


def test_the_bucket_itself() -> None:
    check(http("http://127.0.0.1:9000", path_style=True), "HEAD", None, {}, {}, b"", Credentials("AKID", "s"),
          sign_payload=True)
    check(http(None, path_style=False), "HEAD", None, {}, {}, b"", Credentials("AKID", "s"), sign_payload=False)


def test_urls_name_the_bucket_and_key_as_s3_expects() -> None:
    creds = Credentials("AKID", "s")
    url, _ = http("http://127.0.0.1:9000", path_style=True).prepare("GET", "d/a b+c", {}, {}, EMPTY_SHA256, creds, NOW)
    assert url == "http://127.0.0.1:9000/my-bucket/d/a%20b%2Bc"
    url, signed = http(None, path_style=False).prepare("GET", "k", {"uploads": ""}, {}, EMPTY_SHA256, creds, NOW)
    assert url == "https://my-bucket.s3.eu-west-1.amazonaws.com/k?uploads="
    assert "host" not in signed  # the HTTP client sets Host from the URL, the same value that was signed


# -- whose keys sign


def _no_env_keys(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, profile: str) -> None:
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    (tmp_path / "credentials").write_text(profile)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "credentials"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-config"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")  # no instance role to ask, here


async def test_keys_come_from_the_environment_first(monkeypatch: pytest.MonkeyPatch) -> None:
    """The keys the environment names reach our requests through the settings, without botocore's chain."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "ENVKEY")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "envsecret")
    monkeypatch.setenv("AWS_SESSION_TOKEN", "envtoken")
    assert await _signing_keys() == ("ENVKEY", "envsecret", "envtoken")
    monkeypatch.setenv("AWS_SESSION_TOKEN", "")  # empty is unset: the older name of the token counts then
    monkeypatch.setenv("AWS_SECURITY_TOKEN", "oldtoken")
    assert await _signing_keys() == ("ENVKEY", "envsecret", "oldtoken")


async def _signing_keys() -> tuple[str, str, str | None]:
    """The keys an S3 store configured from the environment signs with: ours, not a botocore object."""
    blobs, _ = build_backends(Settings.from_env(storage_provider="s3", signing_key="k" * 32))
    assert isinstance(blobs, S3BlobStore)
    client = S3Http(blobs.bucket, **blobs._http_args)
    await aio_bridge.run(client.open)
    try:
        keys = client._credentials
        assert isinstance(keys, Credentials)
        return keys.access_key, keys.secret_key, keys.token
    finally:
        await aio_bridge.run(client.close)


async def test_without_them_botocores_chain_finds_a_profile(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    _no_env_keys(monkeypatch, tmp_path, "[default]\naws_access_key_id = PROFILEKEY\naws_secret_access_key = psecret\n")
    client = http("http://127.0.0.1:9", path_style=True)
    client._credentials = await aio_bridge.run(resolve_credentials)
    keys = await aio_bridge.run(client._frozen)
    assert (keys.access_key, keys.secret_key) == ("PROFILEKEY", "psecret")


async def test_no_keys_anywhere_is_a_clear_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    _no_env_keys(monkeypatch, tmp_path, "")
    with pytest.raises(ProviderError, match="no AWS credentials"):
        await aio_bridge.run(resolve_credentials)
