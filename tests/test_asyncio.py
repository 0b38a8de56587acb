"""The same store awaited from asyncio (FastAPI, MCP servers), on every embedded backend.

pytest runs async tests under trio here (trio_mode); these tests are plain
functions that drive their own asyncio loop with ``asyncio.run``.
"""

from __future__ import annotations

import asyncio
import hashlib
from pathlib import Path

import pytest
from storekit import make_store
from storeprobe import blob_key_of, blob_keys, flip_blob_byte, footprint

from core import (
    AccessDeniedError,
    ArtifactCorruptedError,
    ArtifactExpiredError,
    ArtifactStore,
    Limits,
    QuotaExceededError,
    StreamDownloadRequest,
    StreamUploadRequest,
)
from core.infra.clock import ManualClock


def run_on_asyncio(backend: str, root: Path, body, limits: Limits | None = None) -> None:
    clock = ManualClock()

    async def main() -> None:
        async with make_store(backend, root, clock, limits or Limits()) as store:
            await body(store, clock)

    asyncio.run(main())


def test_basic_api_under_asyncio(backend: str, tmp_path: Path) -> None:
    async def body(store: ArtifactStore, clock: ManualClock) -> None:
        assert asyncio.get_running_loop() is not None
        file_id = await store.store(b"Hello, world!", mime="text/plain", summary="greeting", filename="hello.txt",
                                    user_id="alice", ttl=900)
        assert await store.read_file(file_id, as_text=True) == "Hello, world!"
        await store.update_file(file_id, data=b"Hello, updated world!", summary="Updated greeting")
        meta = await store.metadata(file_id)
        assert (meta.version, meta.summary, meta["bytes"]) == (2, "Updated greeting", 21)
        copy = await store.copy_file(file_id, new_filename="copy.txt")
        moved = await store.move_file(copy, new_filename="dir/moved.txt")
        assert [m.filename for m in await store.list_by_session(meta.session_id)] == ["dir/moved.txt", "hello.txt"]
        assert [m.artifact_id for m in await store.get_directory_contents(meta.session_id, "dir/")] == [moved.artifact_id]
        await store.update_metadata(file_id, meta={"k": 1})
        assert [m.artifact_id for m in await store.search(meta_filter={"k": 1})] == [file_id]
        assert (await store.get_stats())["artifacts"] == 2
        assert (await store.validate_configuration())["storage"]["status"] == "ok"
        with pytest.raises(AccessDeniedError):
            await store.retrieve(file_id, user_id="bob")
        assert await store.delete(copy) is True
        clock.advance(900)
        with pytest.raises(ArtifactExpiredError):
            await store.retrieve(file_id)
        assert await store.cleanup_expired_sessions() == 1
        assert await blob_keys(store) == set()

    run_on_asyncio(backend, tmp_path / "data", body)


def test_concurrent_streaming_under_asyncio(backend: str, tmp_path: Path) -> None:
    payloads = [bytes([i]) * (300_000 + i) for i in range(5)]

    async def body(store: ArtifactStore, clock: ManualClock) -> None:
        async def upload(data: bytes) -> str:
            async def chunks():
                for at in range(0, len(data), 65536):
                    await asyncio.sleep(0)  # let the others interleave
                    yield data[at:at + 65536]

            seen: list[int] = []
            artifact_id = await store.stream_upload(StreamUploadRequest(
                data_stream=chunks(), mime="application/octet-stream", summary="upload", user_id="alice",
                content_length=len(data), progress_callback=lambda sent, total: seen.append(sent)))
            assert seen[-1] == len(data)
            return artifact_id

        ids = await asyncio.gather(*[upload(p) for p in payloads])

        async def download(artifact_id: str) -> str:
            digest = hashlib.sha256()
            async for chunk in store.stream_download(StreamDownloadRequest(artifact_id=artifact_id, user_id="alice")):
                digest.update(chunk)
            return digest.hexdigest()

        digests = await asyncio.gather(*[download(i) for i in ids])
        assert digests == [hashlib.sha256(p).hexdigest() for p in payloads]
        batch = await store.store_batch([{"data": p[:100]} for p in payloads], session_id="batch_asyncio")
        assert [await store.retrieve(i) for i in batch] == [p[:100] for p in payloads]

    run_on_asyncio(backend, tmp_path / "data", body)


def test_errors_and_cleanup_under_asyncio(backend: str, tmp_path: Path) -> None:
    async def body(store: ArtifactStore, clock: ManualClock) -> None:
        session = await store.create_session()
        file_id = await store.store(b"x" * 1000, session_id=session)
        flip_blob_byte(store, await blob_key_of(store, file_id), 3)
        with pytest.raises(ArtifactCorruptedError):
            await store.retrieve(file_id)
        before = await footprint(store)
        with pytest.raises(QuotaExceededError):
            await store.store(b"y" * 1001, session_id=session, filename="over/quota")

        async def failing():
            yield b"z" * 100
            raise ConnectionError("client gone")

        with pytest.raises(ConnectionError):
            await store.stream_upload(StreamUploadRequest(data_stream=failing(), session_id=session, filename="f/g"))
        assert await footprint(store) == before

    run_on_asyncio(backend, tmp_path / "data", body, Limits(session_quota_bytes=1500))


def test_cancelled_upload_under_asyncio_leaves_nothing(backend: str, tmp_path: Path) -> None:
    async def body(store: ArtifactStore, clock: ManualClock) -> None:
        session = await store.create_session()
        before = await footprint(store)
        started = asyncio.Event()

        async def endless():
            while True:
                yield b"e" * 65536
                started.set()
                await asyncio.sleep(0)

        task = asyncio.create_task(store.stream_upload(StreamUploadRequest(data_stream=endless(), session_id=session,
                                                                           filename="never/done.bin")))
        await asyncio.wait_for(started.wait(), timeout=10)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert await footprint(store) == before

    run_on_asyncio(backend, tmp_path / "data", body)
