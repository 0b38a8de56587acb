"""S3 checksums, checked where moto does not check them.

moto keeps whatever it is sent, checksum or not, so these tests put a strict
front before it (tests/s3front.py) that checks each PUT's
``x-amz-checksum-sha256`` as S3 does, refuses a wrong one, and counts the PUTs
that came without one. First, the front itself must refuse what S3 refuses.
"""

from __future__ import annotations

import base64
import hashlib
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Iterator

import botocore.exceptions
import pytest
from s3front import S3Front
from servers import BUCKET, MotoServer


@pytest.fixture
def front(moto_server: MotoServer) -> Iterator[S3Front]:
    with S3Front(moto_server.endpoint) as running:
        yield running


def b64_sha256(data: bytes) -> str:
    return base64.b64encode(hashlib.sha256(data).digest()).decode()


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
