"""A 1 GiB artifact streamed in and out of filesystem+SQLite with bounded memory; on the memory
backend, an upload that holds the artifact once, not twice.

The streaming runs in a child process of its own, so its peak RSS is not
polluted by whatever earlier tests left in this one. The child reports its
resident size just before each stream and the peak during it (sampled, and
the kernel's high-water mark); the test allows a few MiB of growth, nowhere
near the gigabyte that buffering would cost.

Run directly (``python tests/test_streaming_large.py DATA_DIR SIZE``, or ``memory SIZE``) it is the child.
"""

from __future__ import annotations

import hashlib
import json
import os
import resource
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

GiB = 1 << 30
MiB = 1 << 20
CHUNK = MiB
MAX_GROWTH = 64 * MiB  # per stream; buffering the artifact would cost 1024 MiB


def _pattern() -> bytes:
    """One MiB of incompressible-looking bytes, varied per chunk by its index."""
    seed = hashlib.sha256(b"artifactfs").digest()
    return b"".join(hashlib.sha256(seed + i.to_bytes(4, "big")).digest() for i in range(CHUNK // 32))


class PeakRss:
    """The highest resident set size seen while the block runs (sampled every 5 ms, plus the kernel's mark)."""

    def __init__(self) -> None:
        import psutil

        self._proc = psutil.Process()
        self.peak = 0
        self._stop = threading.Event()

    def rss(self) -> int:
        return self._proc.memory_info().rss

    def _sample(self) -> None:
        while not self._stop.wait(0.005):
            self.peak = max(self.peak, self.rss())

    def __enter__(self) -> "PeakRss":
        self.before = self.rss()
        self._maxrss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        if maxrss > self._maxrss_before:  # the kernel saw a new high-water mark during the block
            self.peak = max(self.peak, maxrss)
        self.peak = max(self.peak, self.rss())

    @property
    def growth(self) -> int:
        return max(0, self.peak - self.before)


async def _child(data_dir: Path, size: int) -> dict[str, object]:
    from core import ArtifactStore, StreamDownloadRequest, StreamUploadRequest
    from core.infra.clock import ManualClock

    pattern = _pattern()
    sent = hashlib.sha256()

    async def source(total: int, digest):
        for index in range(0, total // CHUNK):
            chunk = index.to_bytes(8, "big") + pattern[8:]
            digest.update(chunk)
            yield chunk

    async with ArtifactStore(storage_provider="filesystem", session_provider="sqlite", fs_root=data_dir,
                             clock=ManualClock()) as store:
        # Warm up every code path (imports, worker threads, SQLite pages) before measuring.
        warm = await store.stream_upload(StreamUploadRequest(data_stream=source(8 * CHUNK, hashlib.sha256()),
                                                             user_id="big", scope="user"))
        async for _ in store.stream_download(StreamDownloadRequest(artifact_id=warm, chunk_size=CHUNK)):
            pass
        await store.delete(warm)
        await store.ns.collect_garbage(now_ns=2**62)  # its blob waits out the grace period otherwise

        progress: list[int] = []
        started = time.monotonic()
        with PeakRss() as upload:
            artifact_id = await store.stream_upload(StreamUploadRequest(
                data_stream=source(size, sent), mime="application/octet-stream", filename="big/one-gib.bin",
                user_id="big", scope="user", ttl=None, content_length=size,
                progress_callback=lambda done, total: progress.append(done),
            ))
        upload_s = time.monotonic() - started
        meta = await store.metadata(artifact_id)

        got = hashlib.sha256()
        received = 0
        started = time.monotonic()
        with PeakRss() as download:
            async for chunk in store.stream_download(StreamDownloadRequest(artifact_id=artifact_id, user_id="big",
                                                                           chunk_size=CHUNK)):
                got.update(chunk)
                received += len(chunk)
        download_s = time.monotonic() - started
        blob_files = [p for p in (data_dir / "blobs").rglob("*") if p.is_file()]
        blob_bytes = sum(p.stat().st_size for p in blob_files)
        await store.delete(artifact_id)  # a GiB left in pytest's kept tmp dirs would pile up
        await store.ns.collect_garbage(now_ns=2**62)  # deleted now, not after the grace period
        left = [p for p in (data_dir / "blobs").rglob("*") if p.is_file()]

    return {
        "sent_sha256": sent.hexdigest(), "got_sha256": got.hexdigest(), "recorded_sha256": meta.sha256,
        "recorded_bytes": meta.bytes, "received": received, "blob_bytes": blob_bytes, "blobs_left": len(left),
        "progress_last": progress[-1] if progress else None, "progress_calls": len(progress),
        "upload_rss_before": upload.before, "upload_growth": upload.growth,
        "download_rss_before": download.before, "download_growth": download.growth,
        "upload_s": upload_s, "download_s": download_s,
    }


async def _memory_child(size: int) -> dict[str, object]:
    """The memory backend keeps the artifact in RAM: what an upload may cost is that, once."""
    from core import ArtifactStore, StreamUploadRequest

    pattern = _pattern()

    async def source(total: int):
        for index in range(0, total // CHUNK):
            yield index.to_bytes(8, "big") + pattern[8:]

    async with ArtifactStore(storage_provider="memory", session_provider="memory") as store:
        await store.stream_upload(StreamUploadRequest(data_stream=source(8 * CHUNK), user_id="big", scope="user"))
        with PeakRss() as upload:
            await store.stream_upload(StreamUploadRequest(data_stream=source(size), user_id="big", scope="user",
                                                          content_length=size))
    return {"upload_growth": upload.growth}


def _run_child(*args: object) -> dict:
    repo = Path(__file__).resolve().parent.parent
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(repo), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, __file__, *map(str, args)], cwd=repo, env=env,
                          capture_output=True, text=True, timeout=540)
    assert done.returncode == 0, done.stderr[-4000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_a_memory_upload_holds_the_artifact_once() -> None:
    """Was: the writer's buffer was copied into bytes at commit, 2x the artifact at the end of an upload."""
    size = 128 * MiB
    report = _run_child("memory", size)
    assert report["upload_growth"] <= 1.1 * size + 16 * MiB, report


@pytest.mark.slow
def test_one_gib_stream_in_and_out_with_bounded_memory(tmp_path: Path) -> None:
    size = GiB
    report = _run_child(tmp_path / "data", size)
    print(f"\n1 GiB stream, filesystem+SQLite: upload RSS growth {report['upload_growth'] / MiB:.1f} MiB "
          f"({size / report['upload_s'] / MiB:.0f} MiB/s), download RSS growth "
          f"{report['download_growth'] / MiB:.1f} MiB ({size / report['download_s'] / MiB:.0f} MiB/s)")

    assert report["sent_sha256"] == report["recorded_sha256"] == report["got_sha256"]
    assert report["recorded_bytes"] == report["received"] == report["blob_bytes"] == size
    assert report["progress_last"] == size and report["progress_calls"] >= size // CHUNK
    assert report["blobs_left"] == 0
    assert report["upload_growth"] < MAX_GROWTH, report
    assert report["download_growth"] < MAX_GROWTH, report


if __name__ == "__main__":
    import trio

    if sys.argv[1] == "memory":
        result = trio.run(_memory_child, int(sys.argv[2]))
    else:
        result = trio.run(_child, Path(sys.argv[1]), int(sys.argv[2]))
    print(json.dumps(result))
