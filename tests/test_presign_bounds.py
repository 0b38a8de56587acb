"""The presign service on malformed or absurd headers (issue #16): a 4xx, or the header ignored, never a 500.

Over real HTTP (hypercorn on 127.0.0.1, httpx) where the request can travel
that far; straight into the ASGI application (tests/asgikit.py) where h11
would refuse it first, so the application's own answer is shown too.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from urllib.parse import urlsplit

import httpx
import pytest
import trio
from asgikit import call

from core import ArtifactStore
from core.nodes import Node
from core.transfers import service as presign_service
from core.transfers.service import PresignService

DATA = bytes(range(256)) * 40  # 10,240 bytes


@pytest.fixture(params=["memory", "fs-sqlite"])
def backend(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture
async def http(store: ArtifactStore, nursery: trio.Nursery) -> AsyncIterator[httpx.AsyncClient]:
    await nursery.start(presign_service.serve, store.transfers, "127.0.0.1", 0)
    async with httpx.AsyncClient(trust_env=False, timeout=30) as client:
        yield client


async def test_a_range_of_thousands_of_digits_is_416_or_the_whole_body(store: ArtifactStore, http: httpx.AsyncClient) -> None:
    """int() of over 4,300 digits raises ValueError: such a Range answered 500."""
    url = await store.presign(await store.store(DATA, filename="r.bin"))
    huge = "9" * 5000
    start_past_the_end = await http.get(url, headers={"Range": f"bytes={huge}-"})
    assert start_past_the_end.status_code == 416
    assert start_past_the_end.headers["content-range"] == f"bytes */{len(DATA)}"
    assert (await http.get(url, headers={"Range": f"bytes={huge}-{huge}"})).status_code == 416
    for header in (f"bytes=0-{huge}", f"bytes=-{huge}"):  # up to (or the last) absurdly many bytes: all of them
        whole = await http.get(url, headers={"Range": header})
        assert (whole.status_code, whole.content) == (206, DATA), header
        assert whole.headers["content-range"] == f"bytes 0-{len(DATA) - 1}/{len(DATA)}"
    reversed_ = await http.get(url, headers={"Range": f"bytes=10-{'0' * 5000}9"})  # 10-9: invalid, so ignored
    assert (reversed_.status_code, reversed_.content) == (200, DATA)
    # Digits of another script are not ASCII digits: not a byte range, so ignored.
    ignored = await http.get(url, headers={"Range": "bytes=\u0661-\u0662".encode()})
    assert (ignored.status_code, ignored.content) == (200, DATA)


@pytest.mark.parametrize("mime", ["text/plain;\r", "text/plain; a=\0", "text/plain;\r\nX-Injected: 1", "text/plain; é"])
async def test_a_mime_type_stored_before_the_rule_still_downloads(
    store: ArtifactStore, http: httpx.AsyncClient, mime: str
) -> None:
    """The API refuses these now; records stored before answered 500 (h11 refuses the header)."""
    artifact_id = await store.store(DATA, filename="m.txt", mime="text/plain")

    def as_before(node: Node) -> None:
        assert node.artifact is not None
        node.artifact.mime = mime

    await store.ns.update_node(await store.ns.artifact_node(artifact_id), as_before)
    response = await http.get(await store.presign(artifact_id))
    assert (response.status_code, response.content) == (200, DATA)
    assert response.headers["content-type"] == "application/octet-stream"
    assert "x-injected" not in response.headers
    head = await http.head(await store.presign(artifact_id))
    assert head.status_code == 200


@pytest.mark.parametrize(
    ("length", "status"),
    [("\u00b2", 400), ("\u0661", 400), ("1" * 5000, 413), ("", 400), ("-1", 400), ("1e3", 400), ("99999999999999999999999", 413)],
    ids=["superscript-two", "arabic-one", "5000-digits", "empty", "negative", "exponent", "23-digits"],
)
async def test_a_malformed_content_length_is_a_4xx(store: ArtifactStore, length: str, status: int) -> None:
    """'\u00b2'.isdigit() is True but int('\u00b2') raises; 5,000 digits raise too: both answered 500."""
    url, artifact_id = await store.presign_upload(filename="up.bin", expires=600, user_id="u", scope="user")
    parts = urlsplit(url)
    app = PresignService(store.transfers)
    answer = await call(app, "PUT", parts.path, parts.query.encode(),
                        [(b"content-length", length.encode("latin-1" if max(length, default="0") < "\u0100" else "utf-8"))],
                        body=b"abc")
    assert answer.status == status, answer.body
    assert not await store.exists(artifact_id)
