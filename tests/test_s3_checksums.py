"""Every body the S3 store sends carries its SHA-256, and S3 refusing one as damaged costs a retry.

moto keeps whatever it is sent, checksum or not, so these tests put a strict
front before it (tests/s3front.py) that checks each PUT's
``x-amz-checksum-sha256`` as S3 does, refuses a wrong one, and counts the PUTs
that came without one. Data stays small (5 MiB parts), since moto is slow.
"""

from __future__ import annotations

import base64
import hashlib
import random
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import botocore.exceptions
import pytest
from s3front import S3Front, Seen
from servers import BUCKET, MotoServer, RedisServer, redis_s3_settings

from core import ArtifactStore, StreamUploadRequest
from core.backends.blobs.s3.http import S3Error
from core.backends.blobs.s3.store import MiB, S3BlobStore, _transient
from core.infra.retry import RetryPolicy

FAST_RETRY = RetryPolicy(attempts=3, first_delay=0.01, max_delay=0.05)
PART = 5 * MiB


@pytest.fixture
def front(moto_server: MotoServer) -> Iterator[S3Front]:
    with S3Front(moto_server.endpoint) as running:
        yield running


def checked_store(front: S3Front) -> S3BlobStore:
    """A blob store that reaches moto through the front, with parts as small as S3 allows."""
    return S3BlobStore(
        BUCKET, prefix=f"ck-{uuid.uuid4().hex[:12]}/", endpoint_url=front.endpoint, part_size=PART,
        file_part_size=PART, sse_algorithm="AES256", retry=FAST_RETRY,
    )


@pytest.fixture
async def blobs(front: S3Front) -> AsyncIterator[S3BlobStore]:
    store = checked_store(front)
    await store.open()
    yield store
    await store.close()


def api_store(front: S3Front, root: Path) -> ArtifactStore:
    """The public API on Redis + S3, its blobs going through the front."""
    settings = redis_s3_settings(root, s3_endpoint_url=front.endpoint)
    return ArtifactStore(settings=settings, blob_store=checked_store(front))


def b64_sha256(data: bytes) -> str:
    return base64.b64encode(hashlib.sha256(data).digest()).decode()


def assert_every_put_checked(front: S3Front) -> list[Seen]:
    """Every PUT that carried bytes had a checksum, the right one, and the signed payload hash of the same digest;
    every upload declared SHA-256 and listed each part's checksum when it was completed."""
    puts = front.puts()
    assert puts, "no PUT went through the front"
    assert [p for p in puts if p.checksum is None] == []
    assert [p for p in puts if not p.checksum_ok or p.status != 200] == []
    assert all(base64.b64decode(p.checksum or "").hex() == p.payload_hash for p in puts)
    parts = {(p.path, p.checksum) for p in puts if p.operation == "UploadPart"}
    for seen in front.seen:
        if seen.operation == "CreateMultipartUpload":
            assert seen.algorithm == "SHA256"
        if seen.operation == "CompleteMultipartUpload":
            assert seen.listed and all((seen.path, checksum) in parts for _, checksum in seen.listed)
    return puts


def operations(puts: list[Seen]) -> Counter[str]:
    return Counter(p.operation for p in puts)


async def read_all(store: S3BlobStore, key: str) -> bytes:
    reader = await store.reader(key)
    try:
        return await reader.read(0, 1 << 30)
    finally:
        await reader.close()


# -- every write is checked


@pytest.mark.semantics("S-integrity-upload")
async def test_every_put_and_part_of_the_blob_store_carries_its_checksum(
    blobs: S3BlobStore, front: S3Front, tmp_path: Path
) -> None:
    """S3 can only refuse damaged bytes it was told the hash of: each way the store writes (one PutObject,
    a multipart put from memory, a spool file sent as file regions, small or not) must tell it."""
    rng = random.Random(1)
    small, big = rng.randbytes(1000), rng.randbytes(2 * PART + 17)
    spooled, spooled_small = rng.randbytes(2 * PART + 5), rng.randbytes(PART // 2)
    await blobs.put("small", small)
    await blobs.put("big", big)
    for name, data in (("spooled", spooled), ("spooled-small", spooled_small)):
        (tmp_path / name).write_bytes(data)
        await blobs.put_file(name, tmp_path / name)
    puts = assert_every_put_checked(front)
    assert operations(puts) == {"PutObject": 2, "UploadPart": 6}
    for key, data in (("small", small), ("big", big), ("spooled", spooled), ("spooled-small", spooled_small)):
        assert await read_all(blobs, key) == data


@pytest.mark.semantics("S-integrity-upload")
async def test_artifacts_stored_through_the_api_carry_checksums(
    redis_server: RedisServer, front: S3Front, tmp_path: Path
) -> None:
    """What users call: ``store`` (one PutObject, or multipart past a part) and ``stream_upload``
    (multipart as the stream arrives) send no byte S3 has not the hash of."""
    rng = random.Random(2)
    small, big, streamed = rng.randbytes(3000), rng.randbytes(PART + 1), rng.randbytes(2 * PART + 3)

    async def stream() -> AsyncIterator[bytes]:
        for at in range(0, len(streamed), MiB):
            yield streamed[at : at + MiB]

    async with api_store(front, tmp_path / "data") as store:
        ids = [await store.store(data, user_id="u", scope="user") for data in (small, big)]
        ids.append(await store.stream_upload(
            StreamUploadRequest(data_stream=stream(), filename="s.bin", user_id="u", scope="user")
        ))
        for artifact_id, data in zip(ids, (small, big, streamed), strict=True):
            assert await store.retrieve(artifact_id, user_id="u") == data
    puts = assert_every_put_checked(front)
    assert operations(puts) == {"PutObject": 1, "UploadPart": 5}


# -- damage on the way


@pytest.mark.semantics("S-integrity-upload")
@pytest.mark.parametrize("damaged", ["UploadPart", "PutObject"])
async def test_bytes_damaged_on_the_way_are_refused_and_sent_again(
    redis_server: RedisServer, front: S3Front, tmp_path: Path, damaged: str
) -> None:
    """A byte flipped in transit must cost a refused request and one more, never a stored blob that
    fails its SHA-256 at the next read: the source bytes are intact, so the store sends them again."""
    data = random.Random(3).randbytes(3 * PART if damaged == "UploadPart" else 4000)
    front.corrupt(1, damaged)
    async with api_store(front, tmp_path / "data") as store:
        artifact_id = await store.store(data, user_id="u", scope="user")
        assert await store.retrieve(artifact_id, user_id="u") == data  # verified against its SHA-256
    sent = [p for p in front.puts() if p.operation == damaged]
    refused = [p for p in sent if p.status == 400]
    assert len(refused) == 1 and refused[0].corrupted and refused[0].error == "BadDigest"
    assert len(sent) == (4 if damaged == "UploadPart" else 2)  # every part once, the refused one twice
    again = [p for p in sent if p.path == refused[0].path and p.checksum == refused[0].checksum]
    assert [p.status for p in again] == [400, 200]


@pytest.mark.parametrize("code", ["BadDigest", "InvalidDigest", "XAmzContentSHA256Mismatch", "XAmzContentChecksumMismatch"])
def test_a_refused_digest_is_retried_and_other_refusals_are_not(code: str) -> None:
    """A digest refused is damage on the way, which a fresh send mends; a 400 of any other kind
    (a bad argument) would be refused again, and is reported at once."""
    assert _transient(S3Error(400, code))
    assert not _transient(S3Error(400, "InvalidArgument"))
    assert not _transient(S3Error(403, code))


# -- the front itself


def _request(front: S3Front, method: str, path: str, body: bytes = b"", **headers: str) -> tuple[int, bytes]:
    # urllib would call a body a form (application/x-www-form-urlencoded), which moto then parses away
    headers = {"Content-Type": "application/octet-stream", **headers}
    request = urllib.request.Request(f"{front.endpoint}/{BUCKET}/{path}", data=body or None, method=method,
                                     headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=60) as reply:
            return reply.status, reply.read()
    except urllib.error.HTTPError as refused:
        return refused.code, refused.read()


def _stored(server: MotoServer, key: str) -> bytes | None:
    try:
        return server.client().get_object(Bucket=BUCKET, Key=key)["Body"].read()
    except botocore.exceptions.ClientError:
        return None


def test_the_front_refuses_a_wrong_checksum_and_passes_a_right_one(front: S3Front, moto_server: MotoServer) -> None:
    """The tests above trust the front to stand where S3 checks: it must not pass whatever it is sent."""
    key, body = f"front-{uuid.uuid4().hex[:8]}", b"the bytes S3 should keep"
    status, answer = _request(front, "PUT", key, body, **{"x-amz-checksum-sha256": b64_sha256(b"other bytes")})
    assert status == 400 and b"<Code>BadDigest</Code>" in answer
    assert _stored(moto_server, key) is None  # refused before moto saw it
    front.corrupt(1)
    status, answer = _request(front, "PUT", key, body, **{"x-amz-checksum-sha256": b64_sha256(body)})
    assert status == 400 and b"<Code>BadDigest</Code>" in answer
    status, _ = _request(front, "PUT", key, body, **{"x-amz-checksum-sha256": b64_sha256(body)})
    assert status == 200 and _stored(moto_server, key) == body
    assert _request(front, "PUT", key + "-bare", b"no checksum")[0] == 200  # accepted, as S3 would, and counted
    assert [(p.checksum_ok, p.corrupted, p.status) for p in front.puts()] == [
        (False, False, 400), (False, True, 400), (True, False, 200), (None, False, 200)
    ]


def test_the_front_wants_each_part_checksum_listed_at_completion(front: S3Front, moto_server: MotoServer) -> None:
    """An upload that declared SHA-256 completes only with each part's checksum listed, as on S3: the
    front would otherwise let a completion that S3 refuses pass."""
    key, part = f"front-{uuid.uuid4().hex[:8]}", b"one small last part"
    status, answer = _request(front, "POST", f"{key}?uploads", **{"x-amz-checksum-algorithm": "SHA256"})
    assert status == 200
    upload_id = answer.split(b"<UploadId>")[1].split(b"</UploadId>")[0].decode()
    query = f"uploadId={urllib.parse.quote(upload_id, safe='')}"
    checksum = b64_sha256(part)
    assert _request(front, "PUT", f"{key}?partNumber=1&{query}", part, **{"x-amz-checksum-sha256": checksum})[0] == 200
    md5 = hashlib.md5(part).hexdigest()

    def complete(listed: str) -> tuple[int, bytes]:
        part_xml = f'<Part><PartNumber>1</PartNumber><ETag>"{md5}"</ETag>{listed}</Part>'
        document = f"<CompleteMultipartUpload>{part_xml}</CompleteMultipartUpload>"
        return _request(front, "POST", f"{key}?{query}", document.encode())

    status, answer = complete("")
    assert status == 400 and b"<Code>InvalidPart</Code>" in answer
    status, answer = complete(f"<ChecksumSHA256>{b64_sha256(b'other')}</ChecksumSHA256>")
    assert status == 400 and b"<Code>InvalidPart</Code>" in answer
    status, _ = complete(f"<ChecksumSHA256>{checksum}</ChecksumSHA256>")
    assert status == 200 and _stored(moto_server, key) == part
