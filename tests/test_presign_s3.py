"""Presigned URLs on Redis + S3: S3's own URLs, used over real HTTP (httpx, curl) against moto in server mode.

What moto checks and what it does not (see ``test_moto_does_not_check_presigned_urls``):
moto serves a presigned URL whatever its signature, expiry or method, so it
can tell us nothing about refusals of tampered, expired, wrong-method or
other-key URLs. Those guarantees are S3's; what is ours is that every URL we
hand out is a SigV4 URL whose signature covers exactly one method, one key
(and upload id and part number) and its expiry, and that asks the client for
no header. ``sigv4_valid`` recomputes that signature the way S3 does
(botocore's SigV4 query signer, fed the URL's own date), so the tests below
show each tampered URL would fail S3's check, and make no claim that moto
refused it. What moto does check, it is tested on: a GET's bytes and ranges,
UploadPart, ListParts, a completion with a missing part or a wrong ETag
(InvalidPart) or a small part (EntityTooSmall), and aborted uploads.

Access rules are checked when a URL is issued, before anything is written:
refusals are checked against every place a write could land (objects, open
S3 multipart uploads, upload records in Redis, artifacts).
"""

from __future__ import annotations

import hashlib
import hmac
import os
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path
from urllib.parse import parse_qsl, quote, urlencode, urlsplit

import httpx
import pytest
import trio
from botocore.auth import S3SigV4QueryAuth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
from servers import AWS_ENV, BUCKET, MotoServer, redis_s3_settings

from core import (
    AccessDeniedError,
    ArtifactStore,
    MultipartUploadCompleteRequest,
    MultipartUploadInitRequest,
    MultipartUploadPart,
    shards,
)
from core.backends.blobs.s3.presign import EMPTY_KEY
from core.config import build_transfers
from core.errors import (
    ArtifactCorruptedError,
    ArtifactNotFoundError,
    ArtifactTooLargeError,
    InvalidPartError,
    ProviderError,
    QuotaExceededError,
    UploadConflictError,
    UploadNotFoundError,
)
from core.infra.clock import ManualClock
from core.settings import Limits
from core.transfers import service as presign_service

MiB = 1 << 20


@pytest.fixture
async def store(redis_server, moto_server, tmp_path: Path, clock: ManualClock) -> AsyncIterator[ArtifactStore]:
    async with ArtifactStore(settings=redis_s3_settings(tmp_path / "data"), clock=clock) as s:
        yield s


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(trust_env=False, timeout=60) as client:
        yield client


# -- helpers


def query(url: str) -> dict[str, str]:
    return dict(parse_qsl(urlsplit(url).query, keep_blank_values=True))


def sigv4_valid(method: str, url: str) -> bool:
    """Would S3 accept this signature for ``method`` on this exact URL? (Expiry aside: see ``expiry_of``.)

    The canonical request is rebuilt from the URL as it stands (path, every
    query parameter but the signature, the host header) and signed with the
    test credentials at the URL's own X-Amz-Date.
    """
    parts = urlsplit(url)
    pairs = parse_qsl(parts.query, keep_blank_values=True)
    fields = dict(pairs)
    if fields.get("X-Amz-Algorithm") != "AWS4-HMAC-SHA256":
        return False
    unsigned = [(k, v) for k, v in pairs if k != "X-Amz-Signature"]
    request = AWSRequest(method=method, url=parts._replace(query=urlencode(unsigned, quote_via=quote)).geturl(),
                         headers={"host": parts.netloc})
    request.context["timestamp"] = fields["X-Amz-Date"]
    auth = S3SigV4QueryAuth(Credentials(AWS_ENV["AWS_ACCESS_KEY_ID"], AWS_ENV["AWS_SECRET_ACCESS_KEY"]), "s3",
                            "us-east-1", expires=int(fields["X-Amz-Expires"]))
    expected = auth.signature(auth.string_to_sign(request, auth.canonical_request(request)), request)
    return hmac.compare_digest(expected, fields["X-Amz-Signature"])


def with_query(url: str, **changes: str) -> str:
    parts = urlsplit(url)
    pairs = [(k, changes.pop(k, v)) for k, v in parse_qsl(parts.query, keep_blank_values=True)]
    return parts._replace(query=urlencode(pairs + list(changes.items()), quote_via=quote)).geturl()


async def footprint(store: ArtifactStore) -> tuple[list[str], list[str], list[str], int]:
    """Everything a request could have written: objects, open S3 uploads, upload records, artifacts."""
    blobs = store.ns.blobs
    await store.ns.collect_garbage(now_ns=2**62)  # what gc leaves once every grace period is over
    keys = sorted([k async for k in blobs.keys()])  # noqa: SIM118 (an async listing, not a dict)
    native = sorted(u.upload_id for u in await blobs.incomplete_uploads())
    records = sorted(await store.transfers.registry.ids())
    return keys, native, records, (await store.ns.meta.totals()).files


def artifact_keys(keys: list[str]) -> list[str]:
    return [k for k in keys if k != EMPTY_KEY]


async def put(http: httpx.AsyncClient, url: str, data: bytes) -> str:
    response = await http.put(url, content=data)
    assert response.status_code == 200, response.text
    return response.headers["etag"]


async def put_part(http: httpx.AsyncClient, store: ArtifactStore, upload_id: str, n: int, data: bytes) -> str:
    return await put(http, await store.get_part_upload_url(upload_id, n), data)


def parts_of(etags: dict[int, str], numbers: list[int] | None = None) -> list[MultipartUploadPart]:
    return [MultipartUploadPart(PartNumber=n, ETag=etags[n]) for n in (numbers or sorted(etags))]


async def blob_key(store: ArtifactStore, artifact_id: str) -> str | None:
    return (await store.ns.artifact_node(artifact_id)).artifact.blob_key  # type: ignore[union-attr]


# -- what moto checks


async def test_moto_does_not_check_presigned_urls(store: ArtifactStore, http: httpx.AsyncClient) -> None:
    """A record of moto's limits, so no other test leans on them: it serves tampered and expired URLs alike.

    If this fails, moto has started checking presigned URLs, and the tests
    below can assert real refusals instead of recomputing signatures.
    """
    artifact_id = await store.store(b"moto serves this", filename="m.txt", user_id="u", scope="user")
    url = await store.presign(artifact_id, expires=60)
    flipped = with_query(url, **{"X-Amz-Signature": "0" * 64})
    expired = with_query(url, **{"X-Amz-Date": "20000101T000000Z"})
    for lax in (flipped, expired):
        assert not sigv4_valid("GET", lax)
        assert (await http.get(lax)).content == b"moto serves this"


async def test_urls_are_sigv4_for_one_key_and_method(store: ArtifactStore) -> None:
    artifact_id = await store.store(b"x" * 100, filename="k.txt", user_id="u", scope="user")
    other_id = await store.store(b"y", filename="other.txt", user_id="u", scope="user")
    url = await store.presign(artifact_id, expires=42, user_id="u")
    fields = query(url)
    assert fields["X-Amz-Algorithm"] == "AWS4-HMAC-SHA256"
    assert fields["X-Amz-Expires"] == "42"
    assert fields["X-Amz-SignedHeaders"] == "host"  # curl needs no header of its own
    assert urlsplit(url).path == f"/{BUCKET}/{store.settings.s3_prefix}{await blob_key(store, artifact_id)}"
    assert sigv4_valid("GET", url)
    assert sigv4_valid("HEAD", url) is False  # S3 signs HEAD apart; only GET is granted
    for method in ("PUT", "DELETE", "POST"):
        assert not sigv4_valid(method, url)
    other_path = urlsplit(url)._replace(path=f"/{BUCKET}/{store.settings.s3_prefix}{await blob_key(store, other_id)}")
    assert not sigv4_valid("GET", other_path.geturl())
    assert not sigv4_valid("GET", with_query(url, **{"X-Amz-Expires": "604800"}))
    assert not sigv4_valid("GET", with_query(url, **{"response-content-type": "text/html"}))

    put_url, _ = await store.presign_upload(filename="up.bin", user_id="u", scope="user", expires=600)
    put_fields = query(put_url)
    assert (put_fields["partNumber"], put_fields["X-Amz-Expires"]) == ("1", "600")
    assert sigv4_valid("PUT", put_url)
    assert not sigv4_valid("GET", put_url)
    assert not sigv4_valid("PUT", with_query(put_url, partNumber="2"))
    assert not sigv4_valid("PUT", with_query(put_url, uploadId="another"))

    info = await store.initiate_multipart_upload(MultipartUploadInitRequest(filename="m.bin", user_id="u", scope="user"))
    part_url = await store.get_part_upload_url(info["upload_id"], 7, expires=30)
    assert query(part_url)["partNumber"] == "7" and query(part_url)["X-Amz-Expires"] == "30"
    assert sigv4_valid("PUT", part_url)
    assert not sigv4_valid("PUT", with_query(part_url, partNumber="8"))


async def test_presign_lifetimes_and_the_artifacts_ttl(store: ArtifactStore, clock: ManualClock) -> None:
    artifact_id = await store.store(b"x", filename="x", ttl=None, scope="user", user_id="u")
    for url, seconds in ((await store.presign_short(artifact_id), 900), (await store.presign_medium(artifact_id), 3600),
                         (await store.presign_long(artifact_id), 86400), (await store.presign(artifact_id, 5), 5)):
        assert query(url)["X-Amz-Expires"] == str(seconds)
        assert sigv4_valid("GET", url)
    # S3 cannot revoke a URL, so one never outlives its artifact.
    session = await store.create_session()
    short_lived = await store.store(b"y", filename="y", session_id=session, ttl=120)
    clock.advance(20)
    assert query(await store.presign_long(short_lived))["X-Amz-Expires"] == "100"


# -- downloads


async def test_download_is_byte_identical_with_ranges(store: ArtifactStore, http: httpx.AsyncClient, tmp_path: Path) -> None:
    data = os.urandom(3 * MiB + 12345)
    artifact_id = await store.store(data, mime="application/x-thing", filename="d/big file.bin", user_id="u1",
                                    scope="user")
    url = await store.presign(artifact_id, user_id="u1")
    assert url.startswith(store.settings.s3_endpoint_url + "/")  # S3's own URL: no service in between
    whole = await http.get(url)
    assert whole.status_code == 200 and whole.content == data
    assert whole.headers["content-type"] == "application/x-thing"
    assert whole.headers["content-disposition"] == "inline; filename*=UTF-8''big%20file.bin"
    size = len(data)
    for header, (start, end) in {
        "bytes=0-0": (0, 1), "bytes=100-199": (100, 200), f"bytes={MiB - 1}-{2 * MiB}": (MiB - 1, 2 * MiB + 1),
        "bytes=-500": (size - 500, size), f"bytes={size - 10}-": (size - 10, size),
    }.items():
        part = await http.get(url, headers={"Range": header})
        assert part.status_code == 206, header
        assert part.content == data[start:end], header
        assert part.headers["content-range"] == f"bytes {start}-{end - 1}/{size}"

    out = tmp_path / "out.bin"
    await trio.run_process(["curl", "-sSf", "-o", str(out), url])
    assert out.read_bytes() == data
    ranged = await trio.run_process(["curl", "-sSf", "-r", "1000-1999", url], capture_stdout=True)
    assert ranged.stdout == data[1000:2000]


async def test_empty_artifact_downloads_empty(store: ArtifactStore, http: httpx.AsyncClient) -> None:
    url = await store.presign(await store.store(b"", filename="empty.txt", mime="text/plain"))
    response = await http.get(url)
    assert (response.status_code, response.content) == (200, b"")
    assert response.headers["content-type"] == "text/plain"
    assert "empty.txt" in response.headers["content-disposition"]


async def test_a_url_names_one_version(store: ArtifactStore, http: httpx.AsyncClient) -> None:
    """An S3 URL names a blob: after an update or delete it serves that version until the blob's
    grace period is over (issue #16), then it is refused; never another version's bytes.

    (S3 answers 404, or 403 when the signer may not list the bucket; moto 403.)
    """
    artifact_id = await store.store(b"version one", filename="v.txt", user_id="u", scope="user")
    old = await store.presign(artifact_id)
    await store.update_file(artifact_id, data=b"version two")
    assert (await http.get(old)).content == b"version one"
    await store.ns.collect_garbage(now_ns=2**62)
    assert (await http.get(old)).status_code in (403, 404)
    new = await store.presign(artifact_id)
    assert (await http.get(new)).content == b"version two"
    await store.delete(artifact_id)
    await store.ns.collect_garbage(now_ns=2**62)
    assert (await http.get(new)).status_code in (403, 404)
    with pytest.raises(ArtifactNotFoundError):
        await store.presign(artifact_id)


# -- single uploads


async def test_presigned_put_then_register(store: ArtifactStore, http: httpx.AsyncClient) -> None:
    session = await store.create_session(user_id="alice")
    data = os.urandom(MiB + 3)
    url, artifact_id = await store.presign_upload(session_id=session, filename="in/photo.jpg", expires=1800)
    assert url.startswith(store.settings.s3_endpoint_url + "/")
    assert not await store.exists(artifact_id)
    etag = await put(http, url, data)
    assert etag == f'"{hashlib.md5(data).hexdigest()}"'  # S3's own ETag
    assert not await store.exists(artifact_id)  # bytes stored, not yet published
    assert await store.register_uploaded_artifact(artifact_id, mime="image/jpeg", summary="Profile pic",
                                                  meta={"by": "alice"})
    meta = await store.metadata(artifact_id)
    assert (meta.filename, meta.mime, meta.summary, meta.meta, meta.session_id) == (
        "in/photo.jpg", "image/jpeg", "Profile pic", {"by": "alice"}, session)
    assert (meta.bytes, meta.sha256, meta.version) == (len(data), hashlib.sha256(data).hexdigest(), 1)
    assert await store.retrieve(artifact_id) == data
    # Published where it was uploaded: one object, no copy, no upload left anywhere.
    keys, native, records, _ = await footprint(store)
    key = await blob_key(store, artifact_id)
    assert artifact_keys(keys) == [key] and key.startswith(meta.key + ".v1-")
    assert native == [] and records == []
    with pytest.raises(UploadNotFoundError):
        await store.register_uploaded_artifact(artifact_id)
    # The URL died with its upload: it can no longer write the published blob.
    late = await http.put(url, content=b"overwrite")
    assert late.status_code != 200
    assert await store.retrieve(artifact_id) == data
    assert artifact_keys((await footprint(store))[0]) == [key]


async def test_put_again_replaces_the_bytes_before_register(store: ArtifactStore, http: httpx.AsyncClient) -> None:
    url, artifact_id = await store.presign_upload(filename="twice.txt")
    await put(http, url, b"first")
    await put(http, url, b"second")
    await store.register_uploaded_artifact(artifact_id, filename="renamed.txt")
    assert await store.retrieve(artifact_id) == b"second"
    assert (await store.metadata(artifact_id)).filename == "renamed.txt"


async def test_chunked_put(store: ArtifactStore, http: httpx.AsyncClient) -> None:
    pieces = [os.urandom(100_000) for _ in range(30)]

    async def body() -> AsyncIterator[bytes]:
        for piece in pieces:
            yield piece

    url, artifact_id = await store.presign_upload(user_id="u", scope="user", filename="chunked.bin")
    assert (await http.put(url, content=body())).status_code == 200  # no Content-Length: chunked
    await store.register_uploaded_artifact(artifact_id)
    assert (await store.metadata(artifact_id)).sha256 == hashlib.sha256(b"".join(pieces)).hexdigest()


async def test_curl_uploads(store: ArtifactStore, tmp_path: Path) -> None:
    source = tmp_path / "src.bin"
    source.write_bytes(os.urandom(2 * MiB + 1))
    url, artifact_id = await store.presign_upload(filename="curl.bin", user_id="u", scope="user")
    await trio.run_process(["curl", "-sSf", "-T", str(source), url], capture_stdout=True)
    await store.register_uploaded_artifact(artifact_id)
    assert await store.retrieve(artifact_id) == source.read_bytes()


async def test_empty_put(store: ArtifactStore, http: httpx.AsyncClient) -> None:
    url, artifact_id = await store.presign_upload(filename="nothing")
    await put(http, url, b"")
    await store.register_uploaded_artifact(artifact_id)
    assert (await store.metadata(artifact_id)).bytes == 0 and await store.retrieve(artifact_id) == b""
    keys, native, records, _ = await footprint(store)
    assert artifact_keys(keys) == [] and native == [] and records == []  # an empty artifact has no blob


async def test_register_before_any_put(store: ArtifactStore, http: httpx.AsyncClient) -> None:
    url, artifact_id = await store.presign_upload(filename="later.txt")
    with pytest.raises(ArtifactNotFoundError, match="nothing has been uploaded"):
        await store.register_uploaded_artifact(artifact_id)
    assert not await store.exists(artifact_id)
    await put(http, url, b"now")  # still open after the refusal
    await store.register_uploaded_artifact(artifact_id)
    assert await store.retrieve(artifact_id) == b"now"


async def test_presign_upload_and_register_publishes_when_asked_for(store: ArtifactStore, http: httpx.AsyncClient) -> None:
    url, artifact_id = await store.presign_upload_and_register(
        mime="image/jpeg", summary="Profile picture", filename="avatar.jpg", user_id="bob", scope="user",
        meta={"avatar": True},
    )
    assert not await store.exists(artifact_id)
    await put(http, url, b"\xff\xd8jpeg")
    meta = await store.metadata(artifact_id, user_id="bob")  # S3 tells nobody: the first ask publishes it
    assert (meta.filename, meta.mime, meta.summary, meta.meta, meta.user_id) == (
        "avatar.jpg", "image/jpeg", "Profile picture", {"avatar": True}, "bob")
    assert await store.retrieve(artifact_id, user_id="bob") == b"\xff\xd8jpeg"
    assert (await footprint(store))[1:3] == ([], [])


async def test_gc_publishes_what_nobody_asked_for(store: ArtifactStore, http: httpx.AsyncClient) -> None:
    url, artifact_id = await store.presign_upload_and_register(filename="quiet.txt", user_id="bob", scope="user")
    waiting_url, waiting_id = await store.presign_upload_and_register(filename="waiting.txt", user_id="bob", scope="user")
    await put(http, url, b"quiet")
    assert [m.artifact_id for m in await store.search(user_id="bob")] == []
    await store.cleanup_expired_sessions()
    assert [m.artifact_id for m in await store.search(user_id="bob")] == [artifact_id]
    assert (await footprint(store))[2] == [waiting_id]  # no bytes yet: it waits
    await put(http, waiting_url, b"late")
    assert await store.retrieve(waiting_id) == b"late"


async def test_upload_over_its_limit_is_not_published(store: ArtifactStore, http: httpx.AsyncClient) -> None:
    """S3 cannot cap a presigned PUT's size, so the limit is enforced when the upload is published."""
    url, artifact_id = await store.presign_upload(filename="small", max_bytes=1000)
    await put(http, url, b"x" * 1001)
    before = await footprint(store)
    with pytest.raises(ArtifactTooLargeError, match="1001 bytes"):
        await store.register_uploaded_artifact(artifact_id)
    assert not await store.exists(artifact_id)
    assert await footprint(store) == before  # the upload stays open, unjoined
    await put(http, url, b"z" * 1000)
    await store.register_uploaded_artifact(artifact_id)
    assert await store.retrieve(artifact_id) == b"z" * 1000


async def test_store_size_limit_and_quota_at_register(
    redis_server, moto_server, tmp_path: Path, clock: ManualClock, http: httpx.AsyncClient
) -> None:
    limits = Limits(max_artifact_bytes=10_000, user_quota_bytes=15_000)
    async with ArtifactStore(settings=redis_s3_settings(tmp_path / "q"), clock=clock, limits=limits) as store:
        url, big = await store.presign_upload(filename="big", user_id="u", scope="user")
        await put(http, url, os.urandom(10_001))
        with pytest.raises(ArtifactTooLargeError):
            await store.register_uploaded_artifact(big)
        await store.store(os.urandom(9_000), filename="held", user_id="u", scope="user")
        url, over = await store.presign_upload(filename="over", user_id="u", scope="user")
        await put(http, url, os.urandom(7_000))
        before = await footprint(store)
        with pytest.raises(QuotaExceededError):
            await store.register_uploaded_artifact(over)
        assert await footprint(store) == before and not await store.exists(over)


# -- multipart


async def test_multipart_parts_out_of_order(store: ArtifactStore, http: httpx.AsyncClient) -> None:
    info = await store.initiate_multipart_upload(MultipartUploadInitRequest(
        filename="video/large.mp4", mime_type="video/mp4", user_id="alice", scope="user", ttl=3600,
        meta={"project": "Q4"},
    ))
    assert info["min_part_bytes"] == 5 * MiB  # S3's
    chunks = [os.urandom(5 * MiB), os.urandom(5 * MiB + 1), os.urandom(123)]
    etags: dict[int, str] = {}

    async def upload(n: int) -> None:
        etags[n] = await put_part(http, store, info["upload_id"], n, chunks[n - 1])

    async with trio.open_nursery() as nursery:  # all at once, finishing in any order
        for n in (3, 1, 2):
            nursery.start_soon(upload, n)
    artifact_id = await store.complete_multipart_upload(MultipartUploadCompleteRequest(
        upload_id=info["upload_id"], parts=parts_of(etags), summary="4K video upload (multipart)"))
    assert artifact_id == info["artifact_id"]
    whole = b"".join(chunks)
    meta = await store.metadata(artifact_id)
    assert (meta.bytes, meta.sha256, meta.filename, meta.mime, meta.ttl, meta.summary, meta.meta) == (
        len(whole), hashlib.sha256(whole).hexdigest(), "video/large.mp4", "video/mp4", 3600,
        "4K video upload (multipart)", {"project": "Q4"})
    keys, native, records, _ = await footprint(store)
    assert artifact_keys(keys) == [await blob_key(store, artifact_id)] and native == [] and records == []
    downloaded = await http.get(await store.presign(artifact_id))
    assert downloaded.content == whole
    assert await store.retrieve(artifact_id) == whole


async def test_multipart_missing_part_publishes_nothing(store: ArtifactStore, http: httpx.AsyncClient) -> None:
    info = await store.initiate_multipart_upload(MultipartUploadInitRequest(filename="gap.bin", user_id="u", scope="user"))
    upload_id, artifact_id = info["upload_id"], info["artifact_id"]
    etags = {1: await put_part(http, store, upload_id, 1, os.urandom(5 * MiB)),
             2: '"' + "0" * 32 + '"', 3: await put_part(http, store, upload_id, 3, b"three")}
    before = await footprint(store)
    with pytest.raises(InvalidPartError, match="part 2 was never uploaded"):
        await store.complete_multipart_upload(MultipartUploadCompleteRequest(upload_id=upload_id, parts=parts_of(etags)))
    assert not await store.exists(artifact_id)
    assert await footprint(store) == before  # S3's upload still open, nothing joined
    etags[2] = await put_part(http, store, upload_id, 2, os.urandom(5 * MiB))
    assert await store.complete_multipart_upload(
        MultipartUploadCompleteRequest(upload_id=upload_id, parts=parts_of(etags))) == artifact_id
    assert (await store.metadata(artifact_id)).bytes == 10 * MiB + 5


async def test_multipart_wrong_etag_publishes_nothing(store: ArtifactStore, http: httpx.AsyncClient) -> None:
    info = await store.initiate_multipart_upload(MultipartUploadInitRequest(filename="etag.bin"))
    upload_id = info["upload_id"]
    e1 = await put_part(http, store, upload_id, 1, os.urandom(5 * MiB))
    await put_part(http, store, upload_id, 2, b"two")  # its real ETag is never listed
    before = await footprint(store)
    wrong = f'"{hashlib.md5(b"something else").hexdigest()}"'
    with pytest.raises(InvalidPartError, match="part 2: ETag"):
        await store.complete_multipart_upload(MultipartUploadCompleteRequest(
            upload_id=upload_id, parts=parts_of({1: e1, 2: wrong})))
    assert not await store.exists(info["artifact_id"])
    assert await footprint(store) == before


async def test_multipart_reuploaded_part_uses_the_newest(store: ArtifactStore, http: httpx.AsyncClient) -> None:
    info = await store.initiate_multipart_upload(MultipartUploadInitRequest(filename="re.bin"))
    upload_id = info["upload_id"]
    old = await put_part(http, store, upload_id, 1, b"a" * (5 * MiB))
    new = await put_part(http, store, upload_id, 1, b"b" * (5 * MiB))
    tail = await put_part(http, store, upload_id, 2, b"end")
    with pytest.raises(InvalidPartError, match="part 1: ETag"):
        await store.complete_multipart_upload(MultipartUploadCompleteRequest(upload_id=upload_id,
                                                                             parts=parts_of({1: old, 2: tail})))
    artifact_id = await store.complete_multipart_upload(MultipartUploadCompleteRequest(
        upload_id=upload_id, parts=parts_of({1: new, 2: tail})))
    assert await store.retrieve(artifact_id) == b"b" * (5 * MiB) + b"end"


@pytest.mark.parametrize("numbers,match", [([2, 1], "ascending"), ([1, 1], "once each"), ([], "list of its parts")])
async def test_multipart_part_list_must_be_ordered(store: ArtifactStore, http: httpx.AsyncClient, numbers: list[int],
                                                  match: str) -> None:
    info = await store.initiate_multipart_upload(MultipartUploadInitRequest(filename="o.bin"))
    etags = {n: await put_part(http, store, info["upload_id"], n, os.urandom(5 * MiB)) for n in (1, 2)}
    with pytest.raises(InvalidPartError, match=match):
        await store.complete_multipart_upload(MultipartUploadCompleteRequest(
            upload_id=info["upload_id"], parts=[MultipartUploadPart(PartNumber=n, ETag=etags[n]) for n in numbers]))
    assert not await store.exists(info["artifact_id"])


async def test_multipart_small_part_is_refused(store: ArtifactStore, http: httpx.AsyncClient) -> None:
    info = await store.initiate_multipart_upload(MultipartUploadInitRequest(filename="small.bin"))
    etags = {n: await put_part(http, store, info["upload_id"], n, b"tiny") for n in (1, 2)}
    with pytest.raises(InvalidPartError, match="part 1 is 4 bytes"):
        await store.complete_multipart_upload(MultipartUploadCompleteRequest(upload_id=info["upload_id"],
                                                                             parts=parts_of(etags)))
    assert not await store.exists(info["artifact_id"])


async def test_s3_refusal_is_an_invalid_part(store: ArtifactStore, http: httpx.AsyncClient) -> None:
    """S3's own check stands behind ours: a part replaced between our check and S3's join is refused by S3."""
    info = await store.initiate_multipart_upload(MultipartUploadInitRequest(filename="race.bin"))
    upload_id = info["upload_id"]
    etags = {1: await put_part(http, store, upload_id, 1, os.urandom(5 * MiB)),
             2: await put_part(http, store, upload_id, 2, b"two")}
    native = store.transfers.native
    record = await store.transfers.registry.get(upload_id)
    with pytest.raises(InvalidPartError, match="InvalidPart"):
        await native.backend.complete_multipart(record.native_key, record.native_id,
                                                [(1, etags[1]), (2, f'"{hashlib.md5(b"x").hexdigest()}"')])
    assert not await store.exists(info["artifact_id"])


async def test_multipart_abort(store: ArtifactStore, http: httpx.AsyncClient) -> None:
    before = await footprint(store)
    info = await store.initiate_multipart_upload(MultipartUploadInitRequest(filename="abort.bin"))
    upload_id = info["upload_id"]
    url = await store.get_part_upload_url(upload_id, 2)
    etag = await put_part(http, store, upload_id, 1, os.urandom(MiB))
    assert len((await footprint(store))[1]) == len(before[1]) + 1
    assert await store.abort_multipart_upload(upload_id)
    assert await footprint(store) == before  # S3's upload and its parts are gone, and the record
    late = await http.put(url, content=b"late part")  # signed, unexpired, but its upload is gone
    assert late.status_code != 200  # S3 answers 404 NoSuchUpload; moto 500: either way nothing is written
    assert await footprint(store) == before
    with pytest.raises(UploadNotFoundError):
        await store.complete_multipart_upload(MultipartUploadCompleteRequest(
            upload_id=upload_id, parts=[MultipartUploadPart(PartNumber=1, ETag=etag)]))
    with pytest.raises(UploadNotFoundError):
        await store.get_part_upload_url(upload_id, 3)
    assert not await store.abort_multipart_upload(upload_id)
    assert not await store.exists(info["artifact_id"])


async def test_parts_refused_while_completing(store: ArtifactStore) -> None:
    info = await store.initiate_multipart_upload(MultipartUploadInitRequest(filename="busy.bin"))
    await store.transfers.registry.begin_complete(info["upload_id"], store.ns.now())
    with pytest.raises(UploadConflictError):
        await store.get_part_upload_url(info["upload_id"], 1)
    with pytest.raises(UploadConflictError):
        await store.complete_multipart_upload(MultipartUploadCompleteRequest(upload_id=info["upload_id"], parts=[]))
    with pytest.raises(UploadConflictError):
        await store.abort_multipart_upload(info["upload_id"])


async def test_publishing_fails_after_s3_joined_the_parts(
    store: ArtifactStore, http: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The joined object stays, the upload reopens, and the next completion publishes that object."""
    info = await store.initiate_multipart_upload(MultipartUploadInitRequest(filename="retry.bin"))
    upload_id = info["upload_id"]
    chunks = [os.urandom(5 * MiB), b"tail"]
    etags = {n: await put_part(http, store, upload_id, n, chunks[n - 1]) for n in (1, 2)}
    real_insert = store.ns.insert_file

    async def failing_insert(*args, **kwargs):
        raise ProviderError("redis went away")

    monkeypatch.setattr(store.ns, "insert_file", failing_insert)
    with pytest.raises(ProviderError):
        await store.complete_multipart_upload(MultipartUploadCompleteRequest(upload_id=upload_id, parts=parts_of(etags)))
    monkeypatch.setattr(store.ns, "insert_file", real_insert)
    assert not await store.exists(info["artifact_id"])
    keys, native, records, _ = await footprint(store)
    assert native == [] and records == [upload_id] and len(artifact_keys(keys)) == 1  # joined, not published
    with pytest.raises(InvalidPartError, match="joined from other parts"):
        await store.complete_multipart_upload(MultipartUploadCompleteRequest(
            upload_id=upload_id, parts=parts_of({1: etags[1]})))
    artifact_id = await store.complete_multipart_upload(MultipartUploadCompleteRequest(
        upload_id=upload_id, parts=parts_of(etags)))
    assert (await store.metadata(artifact_id)).sha256 == hashlib.sha256(b"".join(chunks)).hexdigest()
    assert (await footprint(store))[2] == []


async def test_abort_after_a_failed_publish_deletes_the_joined_object(
    store: ArtifactStore, http: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    before = await footprint(store)
    url, artifact_id = await store.presign_upload(filename="x.bin", user_id="u", scope="user")
    await put(http, url, b"joined, never published")

    async def failing_insert(*args, **kwargs):
        raise ProviderError("redis went away")

    monkeypatch.setattr(store.ns, "insert_file", failing_insert)
    with pytest.raises(ProviderError):
        await store.register_uploaded_artifact(artifact_id)
    monkeypatch.undo()
    assert len(artifact_keys((await footprint(store))[0])) == len(artifact_keys(before[0])) + 1
    assert await store.transfers.abort(artifact_id)
    assert await footprint(store) == before


# -- access: checked when a URL is issued; a refusal writes nothing


async def test_another_users_session_gets_no_url(store: ArtifactStore, http: httpx.AsyncClient) -> None:
    alice_file = await store.store(b"alice's", filename="a.txt", user_id="alice", scope="user")
    alice_session = await store.create_session(user_id="alice")
    alice_session_file = await store.store(b"alice's session", filename="s.txt", session_id=alice_session)
    bob_session = await store.create_session(user_id="bob")
    before = await footprint(store)
    for artifact_id in (alice_file, alice_session_file):
        with pytest.raises(AccessDeniedError):
            await store.presign(artifact_id, session_id=bob_session)
        with pytest.raises(AccessDeniedError):
            await store.presign_long(artifact_id, user_id="bob")
    with pytest.raises(AccessDeniedError):
        await store.presign_upload(session_id=bob_session, user_id="alice", filename="x")
    with pytest.raises(AccessDeniedError):
        await store.presign_upload_and_register(session_id=alice_session, user_id="bob", filename="x")
    with pytest.raises(AccessDeniedError):
        await store.initiate_multipart_upload(MultipartUploadInitRequest(
            filename="x", session_id=alice_session, user_id="bob"))
    with pytest.raises(AccessDeniedError):
        await store.presign_upload(filename="x", scope="sandbox")  # shared: admin only
    assert await footprint(store) == before  # no object, no S3 upload, no record, no artifact
    response = await http.get(await store.presign(alice_session_file, session_id=alice_session))
    assert response.content == b"alice's session"
    # Registering or completing with the wrong session is refused too, and publishes nothing.
    url, artifact_id = await store.presign_upload(session_id=alice_session, filename="up.txt")
    await put(http, url, b"up")
    with pytest.raises(AccessDeniedError):
        await store.register_uploaded_artifact(artifact_id, session_id=bob_session)
    info = await store.initiate_multipart_upload(MultipartUploadInitRequest(filename="m", session_id=alice_session))
    etag = await put_part(http, store, info["upload_id"], 1, b"m")
    with pytest.raises(AccessDeniedError):
        await store.complete_multipart_upload(MultipartUploadCompleteRequest(
            upload_id=info["upload_id"], parts=parts_of({1: etag}), session_id=bob_session))
    with pytest.raises(AccessDeniedError):
        await store.abort_multipart_upload(info["upload_id"], session_id=bob_session)
    assert not await store.exists(artifact_id) and not await store.exists(info["artifact_id"])
    await store.register_uploaded_artifact(artifact_id, session_id=alice_session)
    assert await store.retrieve(artifact_id, session_id=alice_session) == b"up"


# -- many hosts, gc


async def test_another_host_finishes_an_upload(
    redis_server, moto_server, tmp_path: Path, clock: ManualClock, http: httpx.AsyncClient
) -> None:
    """Upload records live in Redis: any host on the same Redis and bucket can sign parts, complete or abort."""
    settings = redis_s3_settings(tmp_path / "shared")
    async with ArtifactStore(settings=settings, clock=clock) as host_a, ArtifactStore(settings=settings, clock=clock) as host_b:
        info = await host_a.initiate_multipart_upload(MultipartUploadInitRequest(filename="two-hosts.bin", user_id="u",
                                                                                 scope="user"))
        etags = {1: await put_part(http, host_b, info["upload_id"], 1, os.urandom(5 * MiB)),
                 2: await put_part(http, host_a, info["upload_id"], 2, b"end")}
        assert await host_b.complete_multipart_upload(MultipartUploadCompleteRequest(
            upload_id=info["upload_id"], parts=parts_of(etags))) == info["artifact_id"]
        assert (await host_a.metadata(info["artifact_id"])).bytes == 5 * MiB + 3
        assert not await host_a.abort_multipart_upload(info["upload_id"])
        url, artifact_id = await host_b.presign_upload(filename="b.txt", user_id="u", scope="user")
        await put(http, url, b"from b")
        await host_a.register_uploaded_artifact(artifact_id)
        assert await host_b.retrieve(artifact_id) == b"from b"


async def test_gc_removes_uploads_never_finished(store: ArtifactStore, clock: ManualClock, http: httpx.AsyncClient) -> None:
    baseline = await footprint(store)
    url, never_registered = await store.presign_upload(filename="orphan.bin", user_id="u", scope="user", expires=600)
    await put(http, url, os.urandom(MiB))
    info = await store.initiate_multipart_upload(MultipartUploadInitRequest(filename="half.bin", user_id="u", scope="user"))
    await put_part(http, store, info["upload_id"], 1, os.urandom(MiB))
    kept_url, kept = await store.presign_upload(filename="kept.bin", user_id="u", scope="user")
    await put(http, kept_url, b"kept")
    await store.register_uploaded_artifact(kept)

    await store.cleanup_expired_sessions()  # nothing has expired yet
    keys, native, records, _ = await footprint(store)
    assert len(native) == 2 and sorted(records) == sorted([never_registered, info["upload_id"]])

    clock.advance(600 + 3600)  # the single upload's URL and its register grace are over
    await store.cleanup_expired_sessions()
    keys, native, records, _ = await footprint(store)
    assert records == [info["upload_id"]] and len(native) == 1
    with pytest.raises(UploadNotFoundError):
        await store.register_uploaded_artifact(never_registered)

    clock.advance(24 * 3600)  # the multipart window is over
    await store.cleanup_expired_sessions()
    keys, native, records, _ = await footprint(store)
    assert (native, records) == ([], []) and len(artifact_keys(keys)) == len(artifact_keys(baseline[0])) + 1
    assert await store.retrieve(kept) == b"kept"
    assert not await store.exists(info["artifact_id"])


async def test_gc_aborts_s3_uploads_nobody_owns(store: ArtifactStore, moto_server: MotoServer) -> None:
    """A crashed writer's S3 upload is aborted once stale; an open presigned upload is spared however old."""
    info = await store.initiate_multipart_upload(MultipartUploadInitRequest(filename="open.bin"))
    open_native = (await store.transfers.registry.get(info["upload_id"])).native_id
    client = moto_server.client()
    orphan = client.create_multipart_upload(Bucket=BUCKET, Key=f"{store.settings.s3_prefix}grid/crashed.v1-0000")
    store.transfers.native.stale_upload_age = timedelta(0)
    await store.cleanup_expired_sessions()
    assert (await footprint(store))[1] == [open_native]
    assert orphan["UploadId"] not in [u["UploadId"] for u in client.list_multipart_uploads(Bucket=BUCKET).get("Uploads", [])]


async def test_tampered_upload_record_is_never_trusted(store: ArtifactStore, redis_server) -> None:
    _, artifact_id = await store.presign_upload(filename="t.bin", user_id="u", scope="user")
    key = store.ns.meta.key("up", artifact_id, shard=shards.UPPER)  # type: ignore[attr-defined]
    with redis_server.client() as r:
        rec = r.hget(key, "rec")
        r.hset(key, "rec", rec.replace(b'"users"', b'"sandbox"').replace(b'"user"', b'"sandbox"'))
    with pytest.raises(ArtifactCorruptedError):
        await store.register_uploaded_artifact(artifact_id)
    await store.cleanup_expired_sessions()  # gc drops the record it cannot trust
    assert (await footprint(store))[2] == []


async def test_the_mounts_presigner_hands_out_s3_urls(store: ArtifactStore, tmp_path: Path) -> None:
    """``getfattr -n user.artifact.presign`` asks Transfers.url_for, built as the mount builds it."""
    data = os.urandom(MiB + 5)
    artifact_id = await store.store(data, filename="m/x.bin", user_id="u", scope="user")
    presigner = build_transfers(store.ns, store.settings)
    url = await presigner.url_for(await store.ns.artifact_node(artifact_id))
    assert url.startswith(store.settings.s3_endpoint_url + "/") and query(url)["X-Amz-Expires"] == "3600"
    out = tmp_path / "x.bin"
    await trio.run_process(["curl", "-sSf", "-o", str(out), url])
    assert out.read_bytes() == data


async def test_redis_records_for_service_uploads(
    redis_server, moto_server, tmp_path: Path, clock: ManualClock, nursery: trio.Nursery, http: httpx.AsyncClient
) -> None:
    """Redis metadata with filesystem blobs: the service takes the bytes, Redis keeps the parts (newest wins)."""
    settings = redis_s3_settings(tmp_path / "fs", storage_provider="filesystem")
    async with ArtifactStore(settings=settings, clock=clock) as store:
        assert store.transfers.native is None
        await nursery.start(presign_service.serve, store.transfers, "127.0.0.1", 0)
        info = await store.initiate_multipart_upload(MultipartUploadInitRequest(filename="svc.bin"))
        upload_id = info["upload_id"]
        assert await store.transfers.registry.ids() == [upload_id]
        chunks = {1: b"a" * (5 * MiB), 2: b"tail"}
        etags = {n: await put_part(http, store, upload_id, n, chunks[n]) for n in (2, 1)}
        etags[1] = await put_part(http, store, upload_id, 1, chunks[1].replace(b"a", b"b"))
        with pytest.raises(InvalidPartError, match="part 3 was never uploaded"):
            await store.complete_multipart_upload(MultipartUploadCompleteRequest(
                upload_id=upload_id, parts=parts_of({**etags, 3: etags[2]})))
        late_url = await store.get_part_upload_url(upload_id, 3)
        _, parts = await store.transfers.registry.begin_complete(upload_id, store.ns.now())
        assert [(p.part_number, p.seq) for p in parts] == [(2, 1), (1, 2), (1, 3)]
        assert (await http.put(late_url, content=b"while completing")).status_code == 409
        await store.transfers.registry.reopen(upload_id, store.ns.now())
        artifact_id = await store.complete_multipart_upload(MultipartUploadCompleteRequest(
            upload_id=upload_id, parts=parts_of(etags)))
        assert await store.retrieve(artifact_id) == b"b" * (5 * MiB) + b"tail"
        assert await store.transfers.registry.ids() == []
