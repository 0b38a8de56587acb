"""The BlobStore contract (core/backends/blobs/base.py), run on every implementation.

A new blob backend proves itself by adding one line to ``BLOB_STORES``: an id
and a function that makes a store on a fresh, empty namespace (it may ask
pytest for fixtures, such as the moto server). Each test is one promise of the
protocol: bytes round trip whole and in ranges, a blob appears all at once
(at commit, at put) and never changes once committed, a missing blob is
:class:`ArtifactNotFoundError`, deleting is idempotent, listing finds exactly
a prefix, and a file sent part by part becomes one blob.
"""

from __future__ import annotations

import hashlib
import random
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import anyio
import pytest
from servers import BUCKET, MotoServer

from core.backends.blobs.base import BlobStore
from core.backends.blobs.filesystem import FilesystemBlobStore
from core.backends.blobs.memory import MemoryBlobStore
from core.backends.blobs.s3.store import MiB, S3BlobStore
from core.errors import ArtifactNotFoundError

# A store on a fresh, empty namespace.
MakeBlobs = Callable[[pytest.FixtureRequest, Path], BlobStore]


def memory(request: pytest.FixtureRequest, root: Path) -> BlobStore:
    return MemoryBlobStore()


def filesystem(request: pytest.FixtureRequest, root: Path) -> BlobStore:
    return FilesystemBlobStore(root / "data")


def s3(request: pytest.FixtureRequest, root: Path) -> BlobStore:
    server: MotoServer = request.getfixturevalue("moto_server")
    return S3BlobStore(  # S3's smallest parts, so a few MiB cross part boundaries
        BUCKET, prefix=f"bc-{uuid.uuid4().hex[:12]}/", endpoint_url=server.endpoint, part_size=5 * MiB,
        file_part_size=5 * MiB, sse_algorithm="AES256",
    )


# Every implementation, one line each.
BLOB_STORES = [
    pytest.param(memory, id="memory"),
    pytest.param(filesystem, id="filesystem"),
    pytest.param(s3, id="s3"),
]

# Bigger than any backend's part, so writers and uploads here use more than one.
SPANNING = 6 * MiB + 12345


@pytest.fixture(params=BLOB_STORES)
async def blobs(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[BlobStore]:
    make: MakeBlobs = request.param
    store = make(request, tmp_path)
    await store.open()
    try:
        yield store
    finally:
        await store.close()


def data(size: int, seed: int = 1) -> bytes:
    return random.Random(seed).randbytes(size)


async def read_all(blobs: BlobStore, key: str, size: int | None = None, chunk: int = 1 << 20) -> bytes:
    reader = await blobs.reader(key, size)
    try:
        out = bytearray()
        while piece := await reader.read(len(out), chunk):
            out += piece
        return bytes(out)
    finally:
        await reader.close()


async def absent(blobs: BlobStore, key: str) -> bool:
    """Whether ``key`` holds no blob: a reader of it is refused as not found."""
    try:
        await read_all(blobs, key)
    except ArtifactNotFoundError:
        return True
    return False


def write_at(path: Path, offset: int, chunk: bytes) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        f.write(chunk)


async def listed(blobs: BlobStore, prefix: str = "") -> set[str]:
    return {key async for key in blobs.keys(prefix)}


# -- round trips


async def test_a_put_reads_back_whole_and_in_ranges(blobs: BlobStore) -> None:
    payload = data(300_000)
    await blobs.put("grid/box/users/alice/a1.v1", payload)
    assert await read_all(blobs, "grid/box/users/alice/a1.v1") == payload
    assert await read_all(blobs, "grid/box/users/alice/a1.v1", size=len(payload), chunk=7777) == payload
    reader = await blobs.reader("grid/box/users/alice/a1.v1")
    try:
        rng = random.Random(3)
        for _ in range(10):
            offset, length = rng.randrange(len(payload)), rng.randrange(1, 50_000)
            assert await reader.read(offset, length) == payload[offset : offset + length]
        assert await reader.read(len(payload) - 10, 100) == payload[-10:]  # cut at the end
        assert await reader.read(len(payload), 1) == b""  # at and past the end: nothing
        assert await reader.read(len(payload) + 99, 10) == b""
    finally:
        await reader.close()


async def test_an_empty_blob(blobs: BlobStore) -> None:
    await blobs.put("empty", b"")
    assert await read_all(blobs, "empty") == b""
    assert "empty" in await listed(blobs)


async def test_a_put_keeps_the_bytes_it_was_given(blobs: BlobStore) -> None:
    buffer = bytearray(b"original")
    await blobs.put("copy", buffer)  # type: ignore[arg-type]
    buffer[:] = b"scribble"  # the caller reuses its buffer
    assert await read_all(blobs, "copy") == b"original"


async def test_a_put_without_durability_is_visible_at_once_and_sync_keeps_it(blobs: BlobStore) -> None:
    await blobs.put("fast/x.v1", b"first", durable=False)
    await blobs.put("fast/y.v1", b"second", durable=False)
    assert await read_all(blobs, "fast/x.v1") == b"first"  # published whole before any sync
    await blobs.delete("fast/y.v1")  # gone before the sync: nothing to make durable, and no error
    await blobs.sync()
    await blobs.sync()  # nothing pending: a no-op
    assert await read_all(blobs, "fast/x.v1") == b"first" and await absent(blobs, "fast/y.v1")


# -- a blob appears all at once, and never changes once committed


async def test_a_writer_publishes_everything_at_commit(blobs: BlobStore) -> None:
    payload = data(SPANNING, seed=2)
    writer = await blobs.writer("streamed")
    for start in range(0, len(payload), MiB):
        await writer.write(payload[start : start + MiB])
    assert await absent(blobs, "streamed")  # nothing under the key before the commit
    await writer.commit()
    assert hashlib.sha256(await read_all(blobs, "streamed")).digest() == hashlib.sha256(payload).digest()


async def test_an_aborted_writer_leaves_nothing(blobs: BlobStore) -> None:
    writer = await blobs.writer("aborted")
    await writer.write(data(SPANNING, seed=4))  # enough that a part may have gone out already
    await writer.abort()
    assert await absent(blobs, "aborted")
    assert await listed(blobs) == set()


async def test_put_file_consumes_the_file(blobs: BlobStore, tmp_path: Path) -> None:
    for durable, size in ((True, 1000), (False, SPANNING)):
        spool = tmp_path / f"spool-{durable}"
        payload = data(size, seed=size)
        spool.write_bytes(payload)
        await blobs.put_file(f"file-{durable}", spool, durable=durable)
        assert not spool.exists()  # the file is the blob now (or was sent and dropped)
        spool.write_bytes(b"a new file at the same path")  # changes nothing published
        assert await read_all(blobs, f"file-{durable}") == payload
    await blobs.sync()


async def test_a_committed_blob_never_changes_under_its_reader(blobs: BlobStore) -> None:
    v1, v2 = data(200_000, seed=5), data(200_000, seed=6)
    await blobs.put("doc.v1", v1)
    reader = await blobs.reader("doc.v1", size=len(v1))
    try:
        assert await reader.read(0, 1000) == v1[:1000]
        await blobs.put("doc.v2", v2)  # the next version is a new key
        writer = await blobs.writer("doc.v3")
        await writer.write(b"in the making")
        assert await reader.read(1000, len(v1)) == v1[1000:]
        await writer.abort()
    finally:
        await reader.close()
    assert await read_all(blobs, "doc.v1") == v1 and await read_all(blobs, "doc.v2") == v2


# -- missing blobs, deleting, listing


async def test_a_missing_blob_is_not_found(blobs: BlobStore) -> None:
    with pytest.raises(ArtifactNotFoundError):
        await blobs.reader("never-written")
    with pytest.raises(ArtifactNotFoundError):  # given a size, a store may find out at the first read instead
        reader = await blobs.reader("never-written", size=10)
        try:
            await reader.read(0, 10)
        finally:
            await reader.close()
    await blobs.delete("never-written")  # deleting what is not there is fine


async def test_delete_removes_the_blob(blobs: BlobStore) -> None:
    await blobs.put("a/doomed", b"x")
    await blobs.put("a/kept", b"y")
    await blobs.delete("a/doomed")
    await blobs.delete("a/doomed")  # again: still fine
    assert await absent(blobs, "a/doomed") and await read_all(blobs, "a/kept") == b"y"
    assert await listed(blobs) == {"a/kept"}


async def test_keys_lists_exactly_a_prefix(blobs: BlobStore) -> None:
    keys = {"grid/b1/users/u/a.v1", "grid/b1/users/u/b.v1", "grid/b1/shared/c.v1", "grid/b2/users/u/d.v1", "top"}
    for key in keys:
        await blobs.put(key, key.encode())
    assert await listed(blobs) == keys
    assert await listed(blobs, "grid/b1/") == {"grid/b1/users/u/a.v1", "grid/b1/users/u/b.v1", "grid/b1/shared/c.v1"}
    assert await listed(blobs, "grid/b1/users/u/") == {"grid/b1/users/u/a.v1", "grid/b1/users/u/b.v1"}
    assert await listed(blobs, "grid/b3/") == set()


# -- reading ahead


async def test_reads_ahead_may_arrive_in_any_order(blobs: BlobStore) -> None:
    payload = data(4 * MiB + 17, seed=7)
    await blobs.put("ahead", payload)
    reader = await blobs.reader("ahead", size=len(payload))
    got: dict[int, bytes] = {}

    async def chunk(index: int) -> None:
        got[index] = await reader.read(index * MiB, MiB, ahead=True)

    try:
        async with anyio.create_task_group() as tg:
            for index in (3, 1, 4, 0, 2):  # later chunks first, as overtaking requests arrive
                tg.start_soon(chunk, index)
                await anyio.lowlevel.checkpoint()
    finally:
        await reader.close()
    assert b"".join(got[i] for i in range(5)) == payload


# -- a file sent while it grows


async def test_a_file_upload_makes_one_blob_of_its_parts(blobs: BlobStore, tmp_path: Path) -> None:
    upload = blobs.file_upload("uploaded")
    if upload is None:  # a local store takes the finished file instead (put_file, above)
        return
    assert upload.key == "uploaded" and upload.part_size > 0 and upload.max_parts > 1
    spool = tmp_path / "growing"
    first = data(upload.part_size, seed=8)
    spool.write_bytes(first)
    await upload.send(0, str(spool), len(first))  # the first part goes while the file still grows
    tail = data(1234, seed=9)
    write_at(spool, 10, b"rewritten")  # a part written into after it went out ...
    write_at(spool, len(first), tail)
    await upload.send(0, str(spool), len(first))  # ... is sent again
    await upload.send(1, str(spool), len(tail))
    assert await absent(blobs, "uploaded")  # nothing until complete
    await upload.complete(2, len(first) + len(tail))
    assert await read_all(blobs, "uploaded") == spool.read_bytes()


async def test_an_aborted_file_upload_leaves_nothing(blobs: BlobStore, tmp_path: Path) -> None:
    upload = blobs.file_upload("dropped")
    if upload is None:
        return
    spool = tmp_path / "dropped"
    spool.write_bytes(data(upload.part_size, seed=10))
    await upload.send(0, str(spool), upload.part_size)
    await upload.abort()
    await upload.abort()  # twice: still fine
    assert await absent(blobs, "dropped") and await listed(blobs) == set()


async def test_a_healthy_store_passes_its_check(blobs: BlobStore) -> None:
    await blobs.check()
