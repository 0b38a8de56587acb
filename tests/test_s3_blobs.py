"""S3BlobStore against moto in server mode: streaming multipart, ranged reads, SSE, faults.

The core suite already runs the whole API on Redis + S3 (backend "redis-s3"),
and tests/contract/test_blob_contract.py what every blob store promises;
these tests look at what only this backend has. Data stays small, since
moto answers slowly (DESIGN §9), except the one 64 MiB stream that shows the
upload's memory is bounded.
"""

from __future__ import annotations

import hashlib
import os
import random
import tracemalloc
import uuid
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import anyio
import pytest
from servers import BUCKET, SIGNING_KEY, MotoServer, RedisServer, redis_s3_settings

from core import ArtifactStore, StreamUploadRequest
from core.backends.blobs.s3.store import MiB, S3BlobStore
from core.config import Settings, build_backends
from core.errors import InvalidArgumentError, ProviderError
from core.infra import aio_bridge
from core.infra.retry import RetryPolicy

FAST_RETRY = RetryPolicy(attempts=3, first_delay=0.01, max_delay=0.05)


def s3_store(server: MotoServer, **kw) -> S3BlobStore:
    kw.setdefault("part_size", 5 * MiB)
    kw.setdefault("file_part_size", 5 * MiB)
    kw.setdefault("sse_algorithm", "AES256")
    return S3BlobStore(BUCKET, prefix=f"s3t-{uuid.uuid4().hex[:12]}/", endpoint_url=server.endpoint, **kw)


@pytest.fixture
async def blobs(moto_server: MotoServer) -> AsyncIterator[S3BlobStore]:
    store = s3_store(moto_server)
    await store.open()
    yield store
    await store.close()


def head(server: MotoServer, store: S3BlobStore, key: str) -> dict:
    return server.client().head_object(Bucket=BUCKET, Key=store.object_key(key))


def uploads_under(server: MotoServer, prefix: str) -> list[dict]:
    return server.client().list_multipart_uploads(Bucket=BUCKET, Prefix=prefix).get("Uploads", [])


def body(server: MotoServer, store: S3BlobStore, key: str) -> bytes:
    return server.client().get_object(Bucket=BUCKET, Key=store.object_key(key))["Body"].read()


async def get_calls(store: S3BlobStore) -> list[str]:
    """Every GetObject the store's client sends from now on, by its Range."""
    calls: list[str] = []
    http = await aio_bridge.run(store._https.get)
    get_range = http.get_range

    async def counted(key: str, start: int, end: int) -> Any:
        calls.append(f"bytes={start}-{end - 1}")
        return await get_range(key, start, end)

    http.get_range = counted  # type: ignore[method-assign]
    return calls


# -- writing


async def test_a_small_blob_is_one_encrypted_put(blobs: S3BlobStore, moto_server: MotoServer) -> None:
    writer = await blobs.writer("small")
    for _ in range(10):
        await writer.write(b"x" * 100_000)
    await writer.commit()
    await blobs.put("put", b"y" * 1000)
    for key, size in (("small", 1_000_000), ("put", 1000)):
        info = head(moto_server, blobs, key)
        assert info["ContentLength"] == size and info["ServerSideEncryption"] == "AES256"
        assert "-" not in info["ETag"]  # not a multipart object
    assert uploads_under(moto_server, blobs.prefix) == []


async def test_no_encryption_header_unless_configured(moto_server: MotoServer) -> None:
    plain = s3_store(moto_server, sse_algorithm=None)
    await plain.open()
    try:
        await plain.put("k", b"plain")
    finally:
        await plain.close()
    assert "ServerSideEncryption" not in head(moto_server, plain, "k")


async def test_keys_s3_must_decode_land_where_botocore_finds_them(blobs: S3BlobStore, moto_server: MotoServer) -> None:
    """Our requests encode the key themselves; botocore (another client) must find each object by its name."""
    keys = ["with space/and+plus=equals&.txt", "naïve résumé ✓", "tilde~star*paren(1)quote'colon:comma,at@"]
    for n, key in enumerate(keys):
        await blobs.put(key, b"small %d" % n)
        await blobs.put(key + ".big", b"b" * (blobs.part_size + n))  # multipart
    for n, key in enumerate(keys):
        assert body(moto_server, blobs, key) == b"small %d" % n
        assert len(body(moto_server, blobs, key + ".big")) == blobs.part_size + n
        reader = await blobs.reader(key)
        try:
            assert await reader.read(0, 100) == b"small %d" % n
        finally:
            await reader.close()
        await blobs.delete(key)
    assert sorted([k async for k in blobs.keys()]) == sorted(key + ".big" for key in keys)


async def test_parts_go_out_while_writing_and_memory_stays_bounded(blobs: S3BlobStore, moto_server: MotoServer) -> None:
    """96 MiB in 1 MiB writes, 5 MiB parts, at most 2 in flight: a few parts in memory, never the blob.

    The bound counts the buffer, the part waiting for room, and the two in flight
    with the copy the HTTP stack makes of each: 6 parts, plus slack.
    """
    digest = hashlib.sha256()
    rng = random.Random(7)
    s3 = moto_server.client()  # made before measuring: a client's service model alone weighs megabytes
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        writer = await blobs.writer("big")
        for i in range(96):
            chunk = rng.randbytes(MiB)
            digest.update(chunk)
            await writer.write(chunk)
            del chunk
            if i == 24:  # five parts handed over: at least three are done while the writer goes on
                (upload,) = s3.list_multipart_uploads(Bucket=BUCKET, Prefix=blobs.prefix)["Uploads"]
                parts = s3.list_parts(
                    Bucket=BUCKET, Key=blobs.object_key("big"), UploadId=upload["UploadId"]
                )
                assert len(parts.get("Parts", [])) >= 3
        await writer.commit()
        peak = tracemalloc.get_traced_memory()[1] - base
    finally:
        tracemalloc.stop()
    assert peak < 40 * MiB, f"the upload held {peak / MiB:.1f} MiB"
    info = head(moto_server, blobs, "big")
    assert info["ContentLength"] == 96 * MiB and info["ETag"].endswith('-20"')
    assert info["ServerSideEncryption"] == "AES256"
    assert hashlib.sha256(body(moto_server, blobs, "big")).hexdigest() == digest.hexdigest()
    assert uploads_under(moto_server, blobs.prefix) == []


async def test_put_file_streams_a_local_file_up(blobs: S3BlobStore, moto_server: MotoServer, tmp_path: Path) -> None:
    """Parts go out as regions of the file: memory holds a chunk per part in flight, not the parts."""
    data = random.Random(3).randbytes(12 * MiB + 5)
    path = tmp_path / "spool"
    path.write_bytes(data)
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        await blobs.put_file("from-file", path)
        peak = tracemalloc.get_traced_memory()[1] - base
    finally:
        tracemalloc.stop()
    assert peak < 10 * MiB, f"sending 12 MiB from a file held {peak / MiB:.1f} MiB"  # 3 parts x (1 MiB + its copy)
    assert not path.exists()  # consumed, as the protocol says
    assert head(moto_server, blobs, "from-file")["ETag"].endswith('-3"')
    assert body(moto_server, blobs, "from-file") == data


async def test_an_aborted_write_leaves_no_upload(blobs: S3BlobStore, moto_server: MotoServer) -> None:
    writer = await blobs.writer("half")
    await writer.write(b"z" * (11 * MiB))  # two parts out, one in the buffer
    assert len(uploads_under(moto_server, blobs.prefix)) == 1
    await writer.abort()
    assert uploads_under(moto_server, blobs.prefix) == []
    assert [k async for k in blobs.keys()] == []


async def test_a_failing_stream_publishes_nothing(redis_server: RedisServer, moto_server: MotoServer,
                                                  tmp_path: Path) -> None:
    async def stream() -> AsyncIterator[bytes]:
        for _ in range(12):
            yield b"q" * MiB
        raise RuntimeError("the producer died")

    async with ArtifactStore(settings=redis_s3_settings(tmp_path / "data")) as store:
        with pytest.raises(RuntimeError, match="producer died"):
            await store.stream_upload(StreamUploadRequest(data_stream=stream(), filename="doomed.bin", user_id="u",
                                                          scope="user"))
        assert await store.search(user_id="u") == []
        blob_store = store.ns.blobs
        assert isinstance(blob_store, S3BlobStore)
        assert [k async for k in blob_store.keys()] == []
        assert uploads_under(moto_server, blob_store.prefix) == []


async def test_gc_finds_and_aborts_uploads_left_behind(blobs: S3BlobStore, moto_server: MotoServer) -> None:
    s3 = moto_server.client()
    crashed = s3.create_multipart_upload(Bucket=BUCKET, Key=blobs.object_key("crashed"))["UploadId"]
    s3.upload_part(Bucket=BUCKET, Key=blobs.object_key("crashed"), UploadId=crashed, PartNumber=1, Body=b"p")
    elsewhere = f"other-{uuid.uuid4().hex[:8]}/k"
    foreign = s3.create_multipart_upload(Bucket=BUCKET, Key=elsewhere)["UploadId"]
    try:
        found = await blobs.incomplete_uploads()
        assert [(u.key, u.upload_id) for u in found] == [("crashed", crashed)]
        assert await blobs.abort_incomplete(older_than=timedelta(0)) == 1
        assert await blobs.incomplete_uploads() == []
        assert [u["UploadId"] for u in uploads_under(moto_server, elsewhere)] == [foreign]  # not this store's
    finally:
        s3.abort_multipart_upload(Bucket=BUCKET, Key=elsewhere, UploadId=foreign)


# -- reading


async def test_ranged_reads(blobs: S3BlobStore) -> None:
    data = random.Random(11).randbytes(3 * MiB + 123)
    await blobs.put("r", data)
    calls = await get_calls(blobs)
    reader = await blobs.reader("r")
    try:
        rng = random.Random(5)
        for _ in range(20):
            offset, length = rng.randrange(len(data)), rng.randrange(1, 300_000)
            assert await reader.read(offset, length) == data[offset : offset + length]
        assert await reader.read(len(data) - 10, 100) == data[-10:]  # cut at the end
        assert await reader.read(len(data), 1) == b""  # past the end: no request
        assert await reader.read(len(data) + 50, 10) == b""
    finally:
        await reader.close()
    assert len(calls) == 21  # one exact GET per read, none past the end


async def test_sequential_reads_stream_ahead(blobs: S3BlobStore) -> None:
    data = random.Random(12).randbytes(3 * MiB + 7)
    await blobs.put("s", data)
    calls = await get_calls(blobs)
    reader = await blobs.reader("s")
    try:
        got = bytearray()
        while chunk := await reader.read(len(got), 256 * 1024):
            got += chunk
    finally:
        await reader.close()
    assert bytes(got) == data
    # The first read is exact; the second opens one stream (to the end here) that serves every later read.
    assert calls == ["bytes=0-262143", f"bytes=262144-{len(data) - 1}"]


async def test_overlapping_reads_out_of_order_share_one_stream(blobs: S3BlobStore) -> None:
    """A prefetcher's chunk reads overlap and reach the reader in any order: one GET serves them all."""
    data = random.Random(14).randbytes(6 * MiB + 5)
    await blobs.put("o", data)
    calls = await get_calls(blobs)
    reader = await blobs.reader("o", size=len(data))
    got: dict[int, bytes] = {}

    async def chunk(index: int) -> None:
        got[index] = await reader.read(index * MiB, MiB, ahead=True)

    try:
        for batch in ([2, 0, 1], [5, 3, 4, 6]):  # later chunks first, as overtaking requests arrive
            async with anyio.create_task_group() as tg:
                for index in batch:
                    tg.start_soon(chunk, index)
                    await anyio.lowlevel.checkpoint()  # each queues on the reader before the next starts
    finally:
        await reader.close()
    assert b"".join(got[i] for i in range(7)) == data
    assert calls == [f"bytes=0-{8 * MiB - 1 if len(data) > 8 * MiB else len(data) - 1}"]


async def test_a_missing_bucket_is_a_provider_error(moto_server: MotoServer) -> None:
    store = S3BlobStore("no-such-bucket", endpoint_url=moto_server.endpoint, retry=FAST_RETRY)
    with pytest.raises(ProviderError, match="no-such-bucket does not exist"):
        await store.open()


async def test_keys_walks_every_page(blobs: S3BlobStore, moto_server: MotoServer) -> None:
    blobs.list_page_size = 2
    names = ["a/1", "a/2", "a/3", "b/1", "c"]
    for name in names:
        await blobs.put(name, b".")
    moto_server.client().put_object(Bucket=BUCKET, Key="not-this-store", Body=b".")
    assert [k async for k in blobs.keys()] == names
    assert [k async for k in blobs.keys("a/")] == ["a/1", "a/2", "a/3"]


# -- faults: bounded retries, a clear error, and the same store working again


async def test_endpoint_gone_then_back(own_moto: MotoServer) -> None:
    store = s3_store(own_moto, retry=FAST_RETRY)
    await store.open()
    try:
        await store.put("before", b"1")
        own_moto.stop()
        with pytest.raises(ProviderError, match="after 3 attempts"):
            await store.put("during", b"2")
        with pytest.raises(ProviderError):
            await store.reader("before")
        writer = await store.writer("streamed")
        with pytest.raises(ProviderError):
            await writer.write(b"w" * (6 * MiB))  # the first part cannot start
        await writer.abort()
        own_moto.start()  # moto forgets its objects when stopped; the bucket is made again
        await store.put("after", b"3")
        reader = await store.reader("after")
        assert await reader.read(0, 10) == b"3"
        await reader.close()
    finally:
        await store.close()


async def test_endpoint_hung_mid_read_then_thawed(own_moto: MotoServer) -> None:
    store = s3_store(own_moto, retry=FAST_RETRY, read_timeout=0.5, connect_timeout=0.5)
    await store.open()
    data = random.Random(13).randbytes(MiB)
    try:
        await store.put("kept", data)
        reader = await store.reader("kept")
        assert await reader.read(0, 1000) == data[:1000]
        own_moto.freeze()
        try:
            with pytest.raises(ProviderError):
                await reader.read(1000, 1000)
        finally:
            own_moto.thaw()
        assert await reader.read(1000, len(data)) == data[1000:]  # the same reader carries on
        await reader.close()
    finally:
        await store.close()


async def test_endpoint_gone_mid_upload_publishes_nothing(redis_server: RedisServer, own_moto: MotoServer,
                                                          tmp_path: Path) -> None:
    blob_store = s3_store(own_moto, retry=FAST_RETRY)
    settings = redis_s3_settings(tmp_path / "data", s3_endpoint_url=own_moto.endpoint)
    async with ArtifactStore(settings=settings, blob_store=blob_store) as store:
        kept = await store.store(b"kept before", user_id="u", scope="user")

        async def stream() -> AsyncIterator[bytes]:
            for i in range(16):
                if i == 12:  # two parts are out: now the endpoint goes away
                    own_moto.stop()
                yield os.urandom(MiB)

        with pytest.raises(ProviderError):
            await store.stream_upload(StreamUploadRequest(data_stream=stream(), filename="cut.bin", user_id="u",
                                                          scope="user"))
        own_moto.start()
        assert [m.artifact_id for m in await store.search(user_id="u")] == [kept]  # nothing half-written shows
        fresh = await store.store(b"after the outage", user_id="u", scope="user")
        assert await store.retrieve(fresh, user_id="u") == b"after the outage"


async def test_concurrent_reads_of_one_reader(blobs: S3BlobStore) -> None:
    """Was: two reads of one range at once read one streaming body together, and one waited forever
    or left its connection unclosed (the mount's readahead reads a file's chunks concurrently, a
    chunk sometimes twice)."""
    data = random.Random(13).randbytes(6 * MiB)
    await blobs.put("c", data)
    for _ in range(5):
        reader = await blobs.reader("c")
        got: list[tuple[int, bytes]] = []
        try:
            assert await reader.read(0, MiB) == data[:MiB]
            assert await reader.read(MiB, MiB) == data[MiB : 2 * MiB]  # a stream now stands at 2 MiB
            with anyio.fail_after(60):
                async with anyio.create_task_group() as tasks:
                    for chunk in (2, 2, 2, 3, 2, 5, 4):

                        async def read(offset: int = chunk * MiB) -> None:
                            got.append((offset, await reader.read(offset, MiB)))

                        tasks.start_soon(read)
        finally:
            await reader.close()
        assert len(got) == 7 and all(part == data[offset : offset + MiB] for offset, part in got)


def test_timeouts_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """A hung endpoint costs each attempt the read timeout: operators set it (S3_READ_TIMEOUT, S3_CONNECT_TIMEOUT)."""
    monkeypatch.setenv("ARTIFACT_PROVIDER", "s3")
    monkeypatch.setenv("S3_READ_TIMEOUT", "2.5")
    monkeypatch.setenv("S3_CONNECT_TIMEOUT", "0.75")
    blobs, _ = build_backends(Settings.from_env(signing_key=SIGNING_KEY))
    assert isinstance(blobs, S3BlobStore)
    assert (blobs._http_args["read_timeout"], blobs._http_args["connect_timeout"]) == (2.5, 0.75)
    monkeypatch.setenv("S3_READ_TIMEOUT", "0")
    with pytest.raises(InvalidArgumentError, match="s3_read_timeout"):
        Settings.from_env()
