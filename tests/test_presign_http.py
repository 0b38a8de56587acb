"""Presigned URLs over real HTTP: a hypercorn server on 127.0.0.1, httpx and curl as clients.

The service runs in the test's own trio loop and shares the store (and its
ManualClock), so expiry is tested by moving the clock, never by sleeping.
Every refusal is checked for its status and reason, and for having written
nothing: no blob, no upload part, no artifact.
"""

from __future__ import annotations

import hashlib
import os
import socket
from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest
import trio

from core import (
    AccessDeniedError,
    ArtifactStore,
    MultipartUploadCompleteRequest,
    MultipartUploadInitRequest,
    MultipartUploadPart,
    NamespaceType,
    Scope,
)
from core.errors import (
    ArtifactCorruptedError,
    ArtifactNotFoundError,
    ConfigurationError,
    InvalidPartError,
    UploadConflictError,
    UploadNotFoundError,
)
from core.infra.clock import ManualClock
from core.transfers import service as presign_service

MiB = 1 << 20


@pytest.fixture(params=["memory", "fs-sqlite"])
def backend(request: pytest.FixtureRequest) -> str:
    """The backends this service is for; S3 hands out its own URLs (the production-backends half)."""
    return request.param


@pytest.fixture
async def base_url(store: ArtifactStore, nursery: trio.Nursery) -> str:
    return await nursery.start(presign_service.serve, store.transfers, "127.0.0.1", 0)


@pytest.fixture
async def http(base_url: str) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(trust_env=False, timeout=30) as client:
        yield client


async def footprint(store: ArtifactStore) -> tuple[list[str], list[tuple[str, int]], int]:
    """Everything a request could have written: blob keys, open uploads with their part count, artifacts."""
    await store.ns.collect_garbage(now_ns=2**62)  # what gc leaves once every grace period is over
    keys = sorted([k async for k in store.ns.blobs.keys()])
    registry = store.transfers.registry
    uploads = []
    for upload_id in sorted(await registry.ids()):
        record = await registry.get(upload_id)
        assert record is not None
        if hasattr(registry, "_parts"):
            uploads.append((upload_id, len(registry._parts[upload_id])))
        else:
            uploads.append((upload_id, len(list((registry.root / upload_id).glob("part-*.json")))))
    return keys, uploads, (await store.ns.meta.totals()).files


def with_path(url: str, path: str) -> str:
    parts = urlsplit(url)
    return parts._replace(path=path).geturl()


def flip_sig(url: str, at: int) -> str:
    head, sig = url.split("sig=")
    ch = "B" if sig[at] == "A" else "A"
    return f"{head}sig={sig[:at]}{ch}{sig[at + 1:]}"


async def put_part(http: httpx.AsyncClient, store: ArtifactStore, upload_id: str, n: int, data: bytes) -> str:
    response = await http.put(await store.get_part_upload_url(upload_id, n), content=data)
    assert response.status_code == 200, response.text
    return response.headers["etag"]


# -- downloads


async def test_download_is_byte_identical_with_ranges(store: ArtifactStore, http: httpx.AsyncClient) -> None:
    data = os.urandom(3 * MiB + 12345)
    artifact_id = await store.store(data, mime="application/x-thing", filename="d/big.bin", user_id="u1", scope="user")
    url = await store.presign(artifact_id)
    whole = await http.get(url)
    assert whole.status_code == 200 and whole.content == data
    etag = f'"{hashlib.sha256(data).hexdigest()}"'
    assert whole.headers["etag"] == etag
    assert whole.headers["content-type"] == "application/x-thing"
    assert whole.headers["content-length"] == str(len(data))
    assert whole.headers["accept-ranges"] == "bytes"
    assert "big.bin" in whole.headers["content-disposition"]

    size = len(data)
    for header, (start, end) in {
        "bytes=0-0": (0, 1), "bytes=100-199": (100, 200), f"bytes={MiB - 1}-{2 * MiB}": (MiB - 1, 2 * MiB + 1),
        "bytes=-500": (size - 500, size), f"bytes={size - 10}-": (size - 10, size),
        f"bytes=5-{size * 2}": (5, size), f"bytes=-{size * 3}": (0, size),
    }.items():
        part = await http.get(url, headers={"Range": header})
        assert part.status_code == 206, header
        assert part.content == data[start:end], header
        assert part.headers["content-range"] == f"bytes {start}-{end - 1}/{size}"
        assert part.headers["content-length"] == str(end - start)

    for header in (f"bytes={size}-", f"bytes={size + 5}-{size + 9}", "bytes=-0"):
        refused = await http.get(url, headers={"Range": header})
        assert refused.status_code == 416, header
        assert refused.headers["content-range"] == f"bytes */{size}"
    # Several ranges, or a reversed one, are answered with the whole body, as RFC 9110 allows.
    for header in ("bytes=0-1,5-6", "bytes=9-3", "items=0-1"):
        full = await http.get(url, headers={"Range": header})
        assert (full.status_code, full.content) == (200, data), header

    head = await http.head(url)
    assert head.status_code == 200 and head.content == b""
    assert head.headers["content-length"] == str(size) and head.headers["etag"] == etag
    assert (await http.get(url, headers={"If-None-Match": etag})).status_code == 304
    stale = await http.get(url, headers={"Range": "bytes=0-9", "If-Range": '"other"'})
    assert (stale.status_code, stale.content) == (200, data)
    fresh = await http.get(url, headers={"Range": "bytes=0-9", "If-Range": etag})
    assert (fresh.status_code, fresh.content) == (206, data[:10])


async def test_empty_artifact(store: ArtifactStore, http: httpx.AsyncClient) -> None:
    url = await store.presign(await store.store(b"", filename="empty.txt"))
    response = await http.get(url)
    assert (response.status_code, response.content, response.headers["content-length"]) == (200, b"", "0")
    assert (await http.get(url, headers={"Range": "bytes=0-"})).status_code == 416


async def test_curl_downloads_byte_for_byte(store: ArtifactStore, base_url: str, tmp_path: Path) -> None:
    data = os.urandom(2 * MiB + 7)
    url = await store.presign_short(await store.store(data, filename="c.bin"))
    out = tmp_path / "out.bin"
    await trio.run_process(["curl", "-sSf", "-o", str(out), url])
    assert out.read_bytes() == data
    ranged = await trio.run_process(["curl", "-sSf", "-r", "1000-1999", url], capture_stdout=True)
    assert ranged.stdout == data[1000:2000]


async def test_presign_wrappers_set_their_lifetimes(store: ArtifactStore, clock: ManualClock, http: httpx.AsyncClient) -> None:
    artifact_id = await store.store(b"x", filename="x", ttl=None, scope="user", user_id="u")
    urls = {
        15 * 60: await store.presign_short(artifact_id), 3600: await store.presign_medium(artifact_id),
        24 * 3600: await store.presign_long(artifact_id), 42: await store.presign(artifact_id, expires=42),
    }
    for lifetime, url in urls.items():
        assert int(dict(p.split("=") for p in urlsplit(url).query.split("&"))["exp"]) == clock.now_ns() // 10**9 + lifetime
    clock.advance(43)
    assert (await http.get(urls[42])).text == "403 expired\n"
    assert (await http.get(urls[15 * 60])).status_code == 200


async def test_download_of_a_corrupted_blob_is_cut_off(store: ArtifactStore, http: httpx.AsyncClient) -> None:
    data = os.urandom(3 * MiB)
    artifact_id = await store.store(data, filename="c.bin")
    node = await store.ns.artifact_node(artifact_id)
    corrupt_blob(store, node.artifact.blob_key, 2 * MiB)
    url = await store.presign(artifact_id)
    with pytest.raises(httpx.RemoteProtocolError):
        await http.get(url)  # the full read fails its SHA-256 at the end: the body never completes


async def test_gone_artifact_is_404(store: ArtifactStore, clock: ManualClock, http: httpx.AsyncClient) -> None:
    session = await store.create_session()
    short = await store.store(b"x", filename="s", session_id=session, ttl=60)
    deleted = await store.store(b"y", filename="d", session_id=session)
    url_short, url_deleted = await store.presign(short), await store.presign(deleted)
    await store.delete(deleted)
    assert (await http.get(url_deleted)).status_code == 404
    clock.advance(61)
    assert (await http.get(url_short)).status_code == 404


# -- single uploads


async def test_presigned_put_then_register(store: ArtifactStore, http: httpx.AsyncClient) -> None:
    session = await store.create_session(user_id="alice")
    data = os.urandom(MiB + 3)
    url, artifact_id = await store.presign_upload(session_id=session, filename="in/photo.jpg", expires=1800)
    assert not await store.exists(artifact_id)
    response = await http.put(url, content=data, headers={"Content-Type": "image/jpeg"})
    assert response.status_code == 200
    assert response.headers["etag"] == f'"{hashlib.sha256(data).hexdigest()}"'
    assert not await store.exists(artifact_id)  # bytes stored, not yet published
    assert await store.register_uploaded_artifact(artifact_id, mime="image/jpeg", summary="Profile pic",
                                                  meta={"by": "alice"})
    meta = await store.metadata(artifact_id)
    assert (meta.filename, meta.mime, meta.summary, meta.meta, meta.session_id) == (
        "in/photo.jpg", "image/jpeg", "Profile pic", {"by": "alice"}, session)
    assert (meta.bytes, meta.sha256, meta.version) == (len(data), hashlib.sha256(data).hexdigest(), 1)
    assert await store.retrieve(artifact_id) == data
    assert [m.artifact_id for m in await store.list_by_session(session)] == [artifact_id]
    keys, uploads, _ = await footprint(store)
    assert uploads == [] and keys == [meta_key for meta_key in keys if meta_key == (await store.ns.artifact_node(artifact_id)).artifact.blob_key]
    with pytest.raises(UploadNotFoundError):
        await store.register_uploaded_artifact(artifact_id)
    assert (await http.put(url, content=b"again")).status_code == 404  # the upload is over


@pytest.mark.semantics("S-checkpoints")
async def test_an_uploaded_file_in_a_checkpoint_keeps_its_bytes(
    store: ArtifactStore, clock: ManualClock, http: httpx.AsyncClient,
) -> None:
    """Regression: a published upload's blob is its part's key (``.../up-...``), which gc looked up
    without the checkpoints' copies, so deleting the live file let gc delete what a checkpoint named."""
    info = await store.create_namespace(NamespaceType.WORKSPACE, scope=Scope.USER, user_id="alice")
    entry = info.path.rpartition("/")[2]
    url, artifact_id = await store.presign_upload(filename=f"namespaces/{entry}/up.bin", user_id="alice", scope="user")
    assert (await http.put(url, content=b"uploaded bytes")).status_code == 200
    assert await store.register_uploaded_artifact(artifact_id)
    assert "/up-" in (await store.ns.artifact_node(artifact_id)).artifact.blob_key  # type: ignore[union-attr,operator]
    await store.checkpoint_namespace(info.namespace_id, name="cp")
    assert await store.delete(artifact_id)
    clock.advance(store.ns.limits.blob_grace + 1)
    await store.gc()
    vfs_root = (await store.namespace_node(info.namespace_id, "/"))[0]
    holder = await store.ns.checkpoints.find(vfs_root, "cp")
    copy = await store.ns.meta.lookup(holder.ino, "up.bin")
    assert copy is not None and await store.retrieve(copy.artifact.artifact_id) == b"uploaded bytes"  # type: ignore[union-attr]


async def test_put_again_replaces_the_bytes_before_register(store: ArtifactStore, http: httpx.AsyncClient) -> None:
    url, artifact_id = await store.presign_upload(filename="twice.txt")
    assert (await http.put(url, content=b"first")).status_code == 200
    assert (await http.put(url, content=b"second")).status_code == 200
    await store.register_uploaded_artifact(artifact_id, filename="renamed.txt")
    assert await store.retrieve(artifact_id) == b"second"
    assert (await store.metadata(artifact_id)).filename == "renamed.txt"
    keys, uploads, _ = await footprint(store)
    assert len(keys) == 1 and uploads == []  # the first PUT's blob went with the upload


async def test_chunked_put_streams(store: ArtifactStore, http: httpx.AsyncClient) -> None:
    pieces = [os.urandom(100_000) for _ in range(30)]

    async def body() -> AsyncIterator[bytes]:
        for piece in pieces:
            yield piece

    url, artifact_id = await store.presign_upload(user_id="u", scope="user", filename="chunked.bin")
    assert (await http.put(url, content=body())).status_code == 200  # no Content-Length: chunked
    await store.register_uploaded_artifact(artifact_id)
    assert await store.retrieve(artifact_id) == b"".join(pieces)


async def test_empty_put(store: ArtifactStore, http: httpx.AsyncClient) -> None:
    url, artifact_id = await store.presign_upload(filename="nothing")
    assert (await http.put(url, content=b"")).status_code == 200
    await store.register_uploaded_artifact(artifact_id)
    assert (await store.metadata(artifact_id)).bytes == 0 and await store.retrieve(artifact_id) == b""


async def test_register_before_any_put(store: ArtifactStore, http: httpx.AsyncClient) -> None:
    url, artifact_id = await store.presign_upload(filename="later.txt")
    with pytest.raises(ArtifactNotFoundError, match="nothing has been uploaded"):
        await store.register_uploaded_artifact(artifact_id)
    assert not await store.exists(artifact_id)
    assert (await http.put(url, content=b"now")).status_code == 200  # still open after the refusal
    await store.register_uploaded_artifact(artifact_id)
    assert await store.retrieve(artifact_id) == b"now"


async def test_presign_upload_and_register_publishes_on_put(store: ArtifactStore, http: httpx.AsyncClient) -> None:
    url, artifact_id = await store.presign_upload_and_register(
        mime="image/jpeg", summary="Profile picture", filename="avatar.jpg", user_id="bob", scope="user",
        meta={"avatar": True},
    )
    assert not await store.exists(artifact_id)
    assert (await http.put(url, content=b"\xff\xd8jpeg")).status_code == 200
    meta = await store.metadata(artifact_id)
    assert (meta.filename, meta.mime, meta.summary, meta.meta, meta.user_id) == (
        "avatar.jpg", "image/jpeg", "Profile picture", {"avatar": True}, "bob")
    assert await store.retrieve(artifact_id, user_id="bob") == b"\xff\xd8jpeg"


async def test_upload_over_its_limit_writes_nothing(store: ArtifactStore, http: httpx.AsyncClient) -> None:
    url, artifact_id = await store.presign_upload(filename="small", max_bytes=1000)
    before = await footprint(store)
    assert (await http.put(url, content=b"x" * 1001)).status_code == 413  # refused on Content-Length

    async def body() -> AsyncIterator[bytes]:
        for _ in range(3):
            yield b"y" * 600

    assert (await http.put(url, content=body())).status_code == 413  # refused while streaming
    assert await footprint(store) == before
    assert (await http.put(url, content=b"z" * 1000)).status_code == 200
    await store.register_uploaded_artifact(artifact_id)
    assert await store.retrieve(artifact_id) == b"z" * 1000


async def test_upload_beyond_the_store_size_limit(store: ArtifactStore, http: httpx.AsyncClient) -> None:
    store.ns.limits.max_artifact_bytes = 10_000
    url, _ = await store.presign_upload(filename="big")
    before = await footprint(store)
    assert (await http.put(url, content=os.urandom(10_001))).status_code == 413
    assert await footprint(store) == before


async def test_client_vanishing_mid_put_leaves_nothing(store: ArtifactStore, base_url: str) -> None:
    url, artifact_id = await store.presign_upload(filename="cut")
    before = await footprint(store)
    parts = urlsplit(url)
    stream = await trio.open_tcp_stream(parts.hostname, parts.port)
    await stream.send_all(
        f"PUT {parts.path}?{parts.query} HTTP/1.1\r\nHost: x\r\nContent-Length: {4 * MiB}\r\n\r\n".encode()
        + os.urandom(MiB)
    )
    await stream.aclose()
    staging = Path(store.settings.fs_root) / "staging"
    with trio.fail_after(10):
        while True:  # the server notices the disconnect and aborts the staged write
            await trio.sleep(0.01)
            if await footprint(store) == before and not (staging.exists() and any(staging.iterdir())):
                break
    with pytest.raises(ArtifactNotFoundError):
        await store.register_uploaded_artifact(artifact_id)


# -- multipart


async def test_multipart_parts_out_of_order(store: ArtifactStore, http: httpx.AsyncClient) -> None:
    info = await store.initiate_multipart_upload(MultipartUploadInitRequest(
        filename="video/large.mp4", mime_type="video/mp4", user_id="alice", scope="user", ttl=3600,
        meta={"project": "Q4"},
    ))
    assert info["key"] == f"grid/default/users/alice/{info['artifact_id']}"
    chunks = [os.urandom(5 * MiB), os.urandom(5 * MiB + 1), os.urandom(123)]
    etags: dict[int, str] = {}

    async def upload(n: int) -> None:
        etags[n] = await put_part(http, store, info["upload_id"], n, chunks[n - 1])

    async with trio.open_nursery() as nursery:  # all at once, finishing in any order
        for n in (3, 1, 2):
            nursery.start_soon(upload, n)
    parts = [MultipartUploadPart(PartNumber=n, ETag=etags[n]) for n in (1, 2, 3)]
    artifact_id = await store.complete_multipart_upload(MultipartUploadCompleteRequest(
        upload_id=info["upload_id"], parts=parts, summary="4K video upload (multipart)"))
    assert artifact_id == info["artifact_id"]
    whole = b"".join(chunks)
    meta = await store.metadata(artifact_id)
    assert (meta.bytes, meta.sha256, meta.filename, meta.mime, meta.ttl, meta.summary, meta.meta) == (
        len(whole), hashlib.sha256(whole).hexdigest(), "video/large.mp4", "video/mp4", 3600,
        "4K video upload (multipart)", {"project": "Q4"})
    assert await store.retrieve(artifact_id) == whole
    keys, uploads, _ = await footprint(store)
    assert uploads == [] and len(keys) == 1  # parts gone, one blob for the artifact
    downloaded = await http.get(await store.presign(artifact_id))
    assert downloaded.content == whole


async def test_multipart_single_part_is_adopted(store: ArtifactStore, http: httpx.AsyncClient) -> None:
    info = await store.initiate_multipart_upload(MultipartUploadInitRequest(filename="one.bin"))
    etag = await put_part(http, store, info["upload_id"], 1, b"only part")
    artifact_id = await store.complete_multipart_upload(
        {"upload_id": info["upload_id"], "parts": [{"PartNumber": 1, "ETag": etag.strip('"')}]})
    assert await store.retrieve(artifact_id) == b"only part"


async def test_multipart_reuploaded_part_uses_the_newest(store: ArtifactStore, http: httpx.AsyncClient) -> None:
    info = await store.initiate_multipart_upload(MultipartUploadInitRequest(filename="re.bin"))
    upload_id = info["upload_id"]
    old = await put_part(http, store, upload_id, 1, b"a" * (5 * MiB))
    new = await put_part(http, store, upload_id, 1, b"b" * (5 * MiB))
    tail = await put_part(http, store, upload_id, 2, b"end")
    with pytest.raises(InvalidPartError, match="part 1: ETag"):
        await store.complete_multipart_upload(MultipartUploadCompleteRequest(upload_id=upload_id, parts=[
            MultipartUploadPart(PartNumber=1, ETag=old), MultipartUploadPart(PartNumber=2, ETag=tail)]))
    artifact_id = await store.complete_multipart_upload(MultipartUploadCompleteRequest(upload_id=upload_id, parts=[
        MultipartUploadPart(PartNumber=1, ETag=new), MultipartUploadPart(PartNumber=2, ETag=tail)]))
    assert await store.retrieve(artifact_id) == b"b" * (5 * MiB) + b"end"
    keys, uploads, _ = await footprint(store)
    assert uploads == [] and len(keys) == 1


async def test_multipart_missing_part_publishes_nothing(store: ArtifactStore, http: httpx.AsyncClient) -> None:
    info = await store.initiate_multipart_upload(MultipartUploadInitRequest(filename="gap.bin", user_id="u", scope="user"))
    upload_id, artifact_id = info["upload_id"], info["artifact_id"]
    e1 = await put_part(http, store, upload_id, 1, os.urandom(5 * MiB))
    e3 = await put_part(http, store, upload_id, 3, b"three")
    listed = [MultipartUploadPart(PartNumber=1, ETag=e1), MultipartUploadPart(PartNumber=2, ETag='"' + "0" * 64 + '"'),
              MultipartUploadPart(PartNumber=3, ETag=e3)]
    before = await footprint(store)
    with pytest.raises(InvalidPartError, match="part 2 was never uploaded"):
        await store.complete_multipart_upload(MultipartUploadCompleteRequest(upload_id=upload_id, parts=listed))
    assert not await store.exists(artifact_id)
    assert await footprint(store) == before
    # The upload stays open: send the missing part, and completion succeeds.
    listed[1] = MultipartUploadPart(PartNumber=2, ETag=await put_part(http, store, upload_id, 2, os.urandom(5 * MiB)))
    assert await store.complete_multipart_upload(
        MultipartUploadCompleteRequest(upload_id=upload_id, parts=listed)) == artifact_id
    assert (await store.metadata(artifact_id)).bytes == 10 * MiB + 5


async def test_multipart_wrong_etag_publishes_nothing(store: ArtifactStore, http: httpx.AsyncClient) -> None:
    info = await store.initiate_multipart_upload(MultipartUploadInitRequest(filename="etag.bin"))
    upload_id = info["upload_id"]
    e1 = await put_part(http, store, upload_id, 1, os.urandom(5 * MiB))
    await put_part(http, store, upload_id, 2, b"two")  # its real ETag is never listed
    before = await footprint(store)
    wrong = '"' + hashlib.sha256(b"something else").hexdigest() + '"'
    with pytest.raises(InvalidPartError, match="part 2: ETag"):
        await store.complete_multipart_upload(MultipartUploadCompleteRequest(
            upload_id=upload_id, parts=[MultipartUploadPart(PartNumber=1, ETag=e1), MultipartUploadPart(PartNumber=2, ETag=wrong)]))
    assert not await store.exists(info["artifact_id"])
    assert await footprint(store) == before


@pytest.mark.parametrize("numbers,match", [([2, 1], "ascending"), ([1, 1], "once each"), ([], "list of its parts")])
async def test_multipart_part_list_must_be_ordered(store: ArtifactStore, http: httpx.AsyncClient, numbers: list[int], match: str) -> None:
    info = await store.initiate_multipart_upload(MultipartUploadInitRequest(filename="o.bin"))
    etags = {n: await put_part(http, store, info["upload_id"], n, os.urandom(5 * MiB)) for n in (1, 2)}
    with pytest.raises(InvalidPartError, match=match):
        await store.complete_multipart_upload(MultipartUploadCompleteRequest(
            upload_id=info["upload_id"], parts=[MultipartUploadPart(PartNumber=n, ETag=etags[n]) for n in numbers]))
    assert not await store.exists(info["artifact_id"])


async def test_multipart_small_part_is_refused(store: ArtifactStore, http: httpx.AsyncClient) -> None:
    info = await store.initiate_multipart_upload(MultipartUploadInitRequest(filename="small.bin"))
    parts = [MultipartUploadPart(PartNumber=n, ETag=await put_part(http, store, info["upload_id"], n, b"tiny"))
             for n in (1, 2)]
    with pytest.raises(InvalidPartError, match="part 1 is 4 bytes"):
        await store.complete_multipart_upload(MultipartUploadCompleteRequest(upload_id=info["upload_id"], parts=parts))
    assert not await store.exists(info["artifact_id"])


def corrupt_blob(store: ArtifactStore, key: str, offset: int) -> None:
    if store.settings.storage_provider == "memory":
        store.ns.blobs.corrupt(key, offset)
        return
    with open(store.ns.blobs.path_of(key), "r+b") as f:
        f.seek(offset)
        byte = f.read(1)
        f.seek(offset)
        f.write(bytes([byte[0] ^ 0xFF]))


async def test_multipart_corrupted_part_publishes_nothing(store: ArtifactStore, http: httpx.AsyncClient) -> None:
    info = await store.initiate_multipart_upload(MultipartUploadInitRequest(filename="rot.bin"))
    upload_id = info["upload_id"]
    listed = [MultipartUploadPart(PartNumber=n, ETag=await put_part(http, store, upload_id, n, os.urandom(5 * MiB)))
              for n in (1, 2)]
    _, parts = await store.transfers.registry.begin_complete(upload_id, store.ns.now())
    await store.transfers.registry.reopen(upload_id, store.ns.now())
    corrupt_blob(store, next(p.blob_key for p in parts if p.part_number == 2), 3 * MiB)
    before = await footprint(store)
    with pytest.raises(ArtifactCorruptedError, match="part 2"):
        await store.complete_multipart_upload(MultipartUploadCompleteRequest(upload_id=upload_id, parts=listed))
    assert not await store.exists(info["artifact_id"])
    assert await footprint(store) == before  # the joined blob was discarded; the parts stay for a retry or gc


async def test_multipart_abort(store: ArtifactStore, http: httpx.AsyncClient) -> None:
    before = await footprint(store)
    info = await store.initiate_multipart_upload(MultipartUploadInitRequest(filename="abort.bin"))
    upload_id = info["upload_id"]
    url = await store.get_part_upload_url(upload_id, 2)
    etag = await put_part(http, store, upload_id, 1, os.urandom(MiB))
    assert await store.abort_multipart_upload(upload_id)
    keys, uploads, files = await footprint(store)
    assert keys == before[0] and uploads == []
    response = await http.put(url, content=b"late part")  # signed, unexpired, but the upload is gone
    assert response.status_code == 404
    assert (keys, uploads, files) == await footprint(store)
    with pytest.raises(UploadNotFoundError):
        await store.complete_multipart_upload(MultipartUploadCompleteRequest(
            upload_id=upload_id, parts=[MultipartUploadPart(PartNumber=1, ETag=etag)]))
    with pytest.raises(UploadNotFoundError):
        await store.get_part_upload_url(upload_id, 3)
    assert not await store.abort_multipart_upload(upload_id)
    assert not await store.exists(info["artifact_id"])


async def test_parts_refused_while_completing(store: ArtifactStore, http: httpx.AsyncClient) -> None:
    info = await store.initiate_multipart_upload(MultipartUploadInitRequest(filename="busy.bin"))
    url = await store.get_part_upload_url(info["upload_id"], 1)
    await store.transfers.registry.begin_complete(info["upload_id"], store.ns.now())
    before = await footprint(store)
    assert (await http.put(url, content=b"x")).status_code == 409
    assert await footprint(store) == before
    with pytest.raises(UploadConflictError):
        await store.complete_multipart_upload(MultipartUploadCompleteRequest(upload_id=info["upload_id"], parts=[]))
    with pytest.raises(UploadConflictError):
        await store.abort_multipart_upload(info["upload_id"])


# -- refusals: each writes nothing


async def test_expired_urls_are_refused(store: ArtifactStore, clock: ManualClock, http: httpx.AsyncClient) -> None:
    artifact_id = await store.store(b"data", filename="e.txt", ttl=None, user_id="u", scope="user")
    get_url = await store.presign(artifact_id, expires=60)
    put_url, _ = await store.presign_upload(filename="up.txt", user_id="u", scope="user", expires=60)
    info = await store.initiate_multipart_upload(MultipartUploadInitRequest(filename="m.bin", user_id="u", scope="user"))
    part_url = await store.get_part_upload_url(info["upload_id"], 1, expires=60)
    clock.advance(60)
    before = await footprint(store)
    for method, url in (("GET", get_url), ("HEAD", get_url), ("PUT", put_url), ("PUT", part_url)):
        response = await http.request(method, url, content=b"late" if method == "PUT" else None)
        assert response.status_code == 403, (method, url)
        if method != "HEAD":
            assert response.text == "403 expired\n"
    assert await footprint(store) == before


async def test_flipped_signature_is_refused(store: ArtifactStore, http: httpx.AsyncClient) -> None:
    get_url = await store.presign(await store.store(b"secret", filename="s.txt"))
    put_url, artifact_id = await store.presign_upload(filename="p.txt")
    before = await footprint(store)
    for at in (0, 20, -1):
        assert (await http.get(flip_sig(get_url, at))).text == "403 bad signature\n"
        response = await http.put(flip_sig(put_url, at), content=b"forged")
        assert (response.status_code, response.text) == (403, "403 bad signature\n")
    assert (await http.get(get_url.replace("exp=", "exp=9"))).text == "403 bad signature\n"
    assert await footprint(store) == before
    with pytest.raises(ArtifactNotFoundError, match="nothing has been uploaded"):
        await store.register_uploaded_artifact(artifact_id)


async def test_url_reused_for_another_key(store: ArtifactStore, http: httpx.AsyncClient) -> None:
    mine = await store.store(b"mine", filename="mine.txt")
    theirs = await store.store(b"theirs", filename="theirs.txt")
    url = await store.presign(mine)
    response = await http.get(with_path(url, f"/v1/objects/{theirs}"))
    assert (response.status_code, response.text) == (403, "403 signed for another key\n")
    put_a, _ = await store.presign_upload(filename="a.txt")
    _, b_id = await store.presign_upload(filename="b.txt")
    info = await store.initiate_multipart_upload(MultipartUploadInitRequest(filename="m.bin"))
    part_1 = await store.get_part_upload_url(info["upload_id"], 1)
    before = await footprint(store)
    for path in (f"/v1/uploads/{b_id}", f"/v1/uploads/{info['upload_id']}/parts/2",
                 f"/v1/uploads/{info['upload_id']}", f"/v1/objects/{mine}"):
        for url in (put_a, part_1):
            response = await http.put(with_path(url, path), content=b"smuggled")
            assert (response.status_code, response.text) == (403, "403 signed for another key\n"), path
    assert await footprint(store) == before


async def test_wrong_method_is_refused(store: ArtifactStore, http: httpx.AsyncClient) -> None:
    get_url = await store.presign(await store.store(b"read only", filename="r.txt"))
    put_url, _ = await store.presign_upload(filename="w.txt")
    before = await footprint(store)
    for method, url in (("PUT", get_url), ("POST", get_url), ("DELETE", get_url), ("GET", put_url), ("POST", put_url)):
        response = await http.request(method, url, content=b"x" if method in ("PUT", "POST") else None)
        assert (response.status_code, response.text) == (403, "403 wrong method\n"), method
    assert await footprint(store) == before
    assert await store.retrieve((await store.search())[0].artifact_id) == b"read only"


async def test_paths_never_reach_other_files(store: ArtifactStore, base_url: str) -> None:
    url = await store.presign(await store.store(b"x", filename="x"))
    query = urlsplit(url).query
    for raw in ("/v1/objects/../../signing.key", "/v1/objects/%2e%2e%2fsigning.key", "/signing.key",
                "/v1/objects/x/../../meta.sqlite3", "/v1/objects/.%2e/blobs"):
        stream = await trio.open_tcp_stream("127.0.0.1", urlsplit(base_url).port)
        await stream.send_all(f"GET {raw}?{query} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
        reply = b""
        while chunk := await stream.receive_some():
            reply += chunk
        await stream.aclose()
        assert reply.startswith(b"HTTP/1.1 403"), raw
        assert reply.endswith(b"403 malformed URL\n"), raw


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
            await store.presign(artifact_id, user_id="bob")
    with pytest.raises(AccessDeniedError):
        await store.presign_upload(session_id=bob_session, user_id="alice", filename="x")
    with pytest.raises(AccessDeniedError):
        await store.presign_upload(session_id=alice_session, user_id="bob", filename="x")
    with pytest.raises(AccessDeniedError):
        await store.initiate_multipart_upload(MultipartUploadInitRequest(
            filename="x", session_id=alice_session, user_id="bob"))
    with pytest.raises(AccessDeniedError):
        await store.presign_upload(filename="x", scope="sandbox")  # shared: admin only
    assert await footprint(store) == before
    # Alice's own session is allowed, and its URL works.
    response = await http.get(await store.presign(alice_session_file, session_id=alice_session))
    assert response.content == b"alice's session"
    # Registering or completing with the wrong session is refused too.
    url, artifact_id = await store.presign_upload(session_id=alice_session, filename="up.txt")
    assert (await http.put(url, content=b"up")).status_code == 200
    with pytest.raises(AccessDeniedError):
        await store.register_uploaded_artifact(artifact_id, session_id=bob_session)
    assert not await store.exists(artifact_id)
    await store.register_uploaded_artifact(artifact_id, session_id=alice_session)
    assert await store.retrieve(artifact_id, session_id=alice_session) == b"up"


# -- gc


async def test_gc_removes_uploads_never_finished(store: ArtifactStore, clock: ManualClock, http: httpx.AsyncClient) -> None:
    baseline = await footprint(store)
    url, never_registered = await store.presign_upload(filename="orphan.bin", user_id="u", scope="user", expires=600)
    assert (await http.put(url, content=os.urandom(MiB))).status_code == 200
    info = await store.initiate_multipart_upload(MultipartUploadInitRequest(filename="half.bin", user_id="u", scope="user"))
    await put_part(http, store, info["upload_id"], 1, os.urandom(MiB))
    kept_url, kept = await store.presign_upload(filename="kept.bin", user_id="u", scope="user")
    assert (await http.put(kept_url, content=b"kept")).status_code == 200
    await store.register_uploaded_artifact(kept)

    await store.cleanup_expired_sessions()  # nothing has expired yet
    keys, uploads, _ = await footprint(store)
    assert len(uploads) == 2 and len(keys) == len(baseline[0]) + 3

    clock.advance(600 + 3600)  # the single upload's URL and its register grace are over
    await store.cleanup_expired_sessions()
    keys, uploads, _ = await footprint(store)
    assert [u for u, _ in uploads] == [info["upload_id"]]
    with pytest.raises(UploadNotFoundError):
        await store.register_uploaded_artifact(never_registered)

    clock.advance(24 * 3600)  # the multipart window is over
    await store.cleanup_expired_sessions()
    keys, uploads, _ = await footprint(store)
    assert uploads == [] and len(keys) == len(baseline[0]) + 1
    assert await store.retrieve(kept) == b"kept"
    assert not await store.exists(info["artifact_id"])


async def test_expired_upload_cannot_be_completed(store: ArtifactStore, clock: ManualClock, http: httpx.AsyncClient) -> None:
    info = await store.initiate_multipart_upload(MultipartUploadInitRequest(filename="late.bin"))
    etag = await put_part(http, store, info["upload_id"], 1, b"x")
    clock.advance(24 * 3600)
    with pytest.raises(UploadNotFoundError, match="expired"):
        await store.complete_multipart_upload(MultipartUploadCompleteRequest(
            upload_id=info["upload_id"], parts=[MultipartUploadPart(PartNumber=1, ETag=etag)]))
    assert not await store.exists(info["artifact_id"])


# -- the service off the test's loop


def test_service_runs_on_asyncio(tmp_path: Path) -> None:
    """A library user on asyncio (FastAPI, an MCP server) serves its own memory store."""
    import anyio

    async def main() -> None:
        async with ArtifactStore(storage_provider="memory", session_provider="memory") as store:
            async with anyio.create_task_group() as tg:
                await tg.start(presign_service.serve, store.transfers, "127.0.0.1", 0)
                url = await store.presign(await store.store(b"from asyncio", filename="a.txt"))
                put_url, artifact_id = await store.presign_upload(filename="b.txt")
                async with httpx.AsyncClient(trust_env=False) as http:
                    assert (await http.get(url)).content == b"from asyncio"
                    assert (await http.put(put_url, content=b"back")).status_code == 200
                await store.register_uploaded_artifact(artifact_id)
                assert await store.retrieve(artifact_id) == b"back"
                tg.cancel_scope.cancel()

    anyio.run(main, backend="asyncio")


@pytest.mark.semantics("S-presign-service-connections")
def test_an_asyncio_service_keeps_the_same_connection_bounds() -> None:
    """Regression: in-process under asyncio the service had no cap on connections and no write timeout."""
    import asyncio

    import anyio
    import psutil

    from core.settings import Settings

    def served_sockets(port: int) -> int:  # the service's end of its connections, in any state: its descriptors
        return sum(1 for c in psutil.Process().net_connections(kind="tcp")
                   if c.laddr and c.laddr.port == port and c.status != psutil.CONN_LISTEN)

    async def until(condition, what: str) -> None:
        with anyio.fail_after(60):
            while not condition():
                await anyio.sleep(0.05)

    async def main() -> None:
        settings = Settings.from_env(environ={
            "ARTIFACT_PROVIDER": "memory", "SESSION_PROVIDER": "memory", "ARTIFACT_SERVE_MAX_CONNECTIONS": "4",
            "ARTIFACT_SERVE_IO_TIMEOUT": "1", "ARTIFACT_SERVE_IDLE_TIMEOUT": "600",
        })
        async with ArtifactStore(settings=settings) as store, anyio.create_task_group() as tg:
            url = await tg.start(presign_service.serve, store.transfers, "127.0.0.1", 0)
            port = httpx.URL(url).port
            idle = [await asyncio.open_connection("127.0.0.1", port) for _ in range(4)]
            await until(lambda: served_sockets(port) == 4, "the four idle connections")
            for _ in range(10):
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
                assert (await asyncio.wait_for(reader.read(), 30)).startswith(b"HTTP/1.1 503")
                writer.close()
            assert served_sockets(port) == 4
            for _, writer in idle:
                writer.close()
            await until(lambda: served_sockets(port) == 0, "the idle ones to go")

            big = await store.presign(await store.store(os.urandom(16 * MiB), filename="big.bin"))
            sock = socket.socket()
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            sock.setblocking(False)
            await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port))
            reader, writer = await asyncio.open_connection(sock=sock, limit=4096)
            path = httpx.URL(big).raw_path.decode()
            writer.write(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
            assert (await reader.readuntil(b"\r\n")).startswith(b"HTTP/1.1 200")  # and not one more byte read
            await until(lambda: served_sockets(port) == 0, "the unread download to be cut")
            writer.close()
            tg.cancel_scope.cancel()

    anyio.run(main, backend="asyncio")


def test_port_in_use_is_a_clear_error() -> None:
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()

    async def main() -> None:
        async with ArtifactStore() as store:
            await presign_service.serve(store.transfers, "127.0.0.1", taken.getsockname()[1])

    with pytest.raises(ConfigurationError, match=f"cannot listen on 127.0.0.1:{taken.getsockname()[1]}: Address already in use"):
        trio.run(main)
    taken.close()
