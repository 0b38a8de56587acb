"""``artifactfs serve`` as its own process on a data dir, and an application process beside it.

The two agree on the signing key and on open uploads only through the data
dir, as they would in production; bytes move with curl and httpx.
"""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest
import trio

from core import ArtifactStore, MultipartUploadCompleteRequest, MultipartUploadInitRequest, MultipartUploadPart
from core.config import Settings
from core.errors import ArtifactNotFoundError

MiB = 1 << 20
REPO = Path(__file__).resolve().parent.parent


class Served:
    def __init__(self, proc: subprocess.Popen[str], url: str, data_dir: Path) -> None:
        self.proc, self.url, self.data_dir = proc, url, data_dir

    def peak_rss_kib(self) -> int:
        return _status_kib(self.proc.pid, "VmHWM")

    def rss_kib(self) -> int:
        return _status_kib(self.proc.pid, "VmRSS")


def _status_kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise AssertionError(f"no {field} for {pid}")


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ARTIFACT_", "SESSION_", "S3_"))}
    return {**env, **extra}


@pytest.fixture
def served(tmp_path: Path) -> Iterator[Served]:
    yield from serving(tmp_path / "data")


def serving(data_dir: Path, **env: str) -> Iterator[Served]:
    """``artifactfs serve`` on ``data_dir`` with these variables, stopped (and checked) afterwards."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "fusefs", "serve", "--data-dir", str(data_dir), "--port", "0"],
        cwd=REPO, env=_env(**env), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        line = proc.stdout.readline()  # printed once listening; EOF if it died
        assert line.startswith("artifactfs serve: http://127.0.0.1:"), (line, proc.stderr.read() if not line else "")
        yield Served(proc, line.split()[2], data_dir)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            status = proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            raise
    assert status == 0, proc.stderr.read()


@pytest.fixture
async def app_store(served: Served) -> AsyncIterator[ArtifactStore]:
    """The application's store on the service's data dir, signing URLs that point at it."""
    settings = Settings(storage_provider="filesystem", session_provider="sqlite", fs_root=served.data_dir)
    settings.presign.base_url = served.url
    async with ArtifactStore(settings=settings) as store:
        yield store


async def curl(*args: str) -> bytes:
    return (await trio.run_process(["curl", "-sSf", *args], capture_stdout=True)).stdout


async def test_curl_download_and_upload_across_processes(app_store: ArtifactStore, tmp_path: Path) -> None:
    data = os.urandom(3 * MiB + 1)
    artifact_id = await app_store.store(data, filename="report.bin", user_id="alice", scope="user")
    url = await app_store.presign(artifact_id, user_id="alice")
    assert await curl(url) == data
    assert await curl("-r", "100-", url) == data[100:]

    source = tmp_path / "upload.bin"
    source.write_bytes(os.urandom(2 * MiB + 5))
    put_url, uploaded = await app_store.presign_upload(user_id="alice", scope="user", filename="from-curl.bin")
    await curl("-T", str(source), put_url)
    await app_store.register_uploaded_artifact(uploaded, summary="via curl")
    meta = await app_store.metadata(uploaded)
    assert meta.sha256 == hashlib.sha256(source.read_bytes()).hexdigest() and meta.summary == "via curl"

    tampered = url.replace("exp=", "exp=1")
    response = await trio.run_process(["curl", "-sS", "-w", "%{http_code}", tampered], capture_stdout=True)
    assert response.stdout == b"403 bad signature\n403"


async def test_multipart_across_processes(app_store: ArtifactStore) -> None:
    info = await app_store.initiate_multipart_upload(MultipartUploadInitRequest(filename="mp.bin"))
    chunks = [os.urandom(5 * MiB), os.urandom(777)]
    parts = []
    async with httpx.AsyncClient(trust_env=False) as http:
        for n in (2, 1):
            response = await http.put(await app_store.get_part_upload_url(info["upload_id"], n), content=chunks[n - 1])
            parts.append(MultipartUploadPart(PartNumber=n, ETag=response.headers["etag"]))
    parts.reverse()
    artifact_id = await app_store.complete_multipart_upload(
        MultipartUploadCompleteRequest(upload_id=info["upload_id"], parts=parts))
    assert await app_store.retrieve(artifact_id) == b"".join(chunks)


async def test_open_upload_survives_a_restart_of_the_application(served: Served) -> None:
    settings = Settings(storage_provider="filesystem", session_provider="sqlite", fs_root=served.data_dir)
    settings.presign.base_url = served.url
    async with ArtifactStore(settings=settings) as store:
        put_url, artifact_id = await store.presign_upload(filename="later.txt", user_id="u", scope="user")
    async with httpx.AsyncClient(trust_env=False) as http:
        assert (await http.put(put_url, content=b"written while the app was down")).status_code == 200
    async with ArtifactStore(settings=settings) as store:
        await store.register_uploaded_artifact(artifact_id)
        assert await store.retrieve(artifact_id) == b"written while the app was down"


async def test_service_memory_stays_bounded(app_store: ArtifactStore, served: Served) -> None:
    """256 MiB up and down through the service; its peak RSS grows by a small fraction of that."""
    size, digest = 256 * MiB, hashlib.sha256()
    baseline = served.rss_kib()

    async def body() -> AsyncIterator[bytes]:
        for _ in range(size // MiB):
            chunk = os.urandom(MiB)
            digest.update(chunk)
            yield chunk

    url, artifact_id = await app_store.presign_upload(filename="big.bin", user_id="u", scope="user")
    async with httpx.AsyncClient(trust_env=False, timeout=120) as http:
        assert (await http.put(url, content=body())).status_code == 200
        await app_store.register_uploaded_artifact(artifact_id)
        down = hashlib.sha256()
        async with http.stream("GET", await app_store.presign(artifact_id)) as response:
            async for chunk in response.aiter_raw():
                down.update(chunk)
    assert down.hexdigest() == digest.hexdigest() == (await app_store.metadata(artifact_id)).sha256
    grown_mib = (served.peak_rss_kib() - baseline) / 1024
    print(f"service peak RSS grew by {grown_mib:.1f} MiB")
    assert grown_mib < 48, f"the service grew by {grown_mib:.0f} MiB while moving 256 MiB"


def test_serve_refuses_the_memory_backend(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "fusefs", "serve", "--data-dir", str(tmp_path), "--port", "0"],
        cwd=REPO, env=_env(ARTIFACT_PROVIDER="memory"), capture_output=True, text=True, timeout=60,
    )
    assert proc.returncode != 0 and "memory backend" in proc.stderr


# -- the limits of the store, in the service's own process

LIMITS = {"ARTIFACT_MAX_BYTES": "10000", "ARTIFACT_USER_QUOTA_BYTES": "20000"}


@pytest.fixture
def limited(tmp_path: Path) -> Iterator[Served]:
    yield from serving(tmp_path / "data", **LIMITS)


@pytest.mark.semantics("S-presign-service-limits")
async def test_serve_enforces_the_limits_the_application_has(limited: Served) -> None:
    """One environment, two processes: the service refuses what the application would (413, 507)."""
    settings = Settings.from_env(environ={
        **LIMITS, "ARTIFACT_PROVIDER": "filesystem", "SESSION_PROVIDER": "sqlite",
        "ARTIFACT_FS_ROOT": str(limited.data_dir), "ARTIFACT_PRESIGN_URL": limited.url,
    })
    async with ArtifactStore(settings=settings) as store, httpx.AsyncClient(trust_env=False) as http:
        url, too_big = await store.presign_upload(filename="big.bin", user_id="alice", scope="user")
        assert (await http.put(url, content=os.urandom(50_000))).status_code == 413
        info = await store.initiate_multipart_upload(
            MultipartUploadInitRequest(filename="mp.bin", user_id="alice", scope="user"))
        part_url = await store.get_part_upload_url(info["upload_id"], 1)
        assert (await http.put(part_url, content=os.urandom(50_000))).status_code == 413

        url, first = await store.presign_upload(filename="one.bin", user_id="alice", scope="user")
        assert (await http.put(url, content=os.urandom(9_000))).status_code == 200
        await store.register_uploaded_artifact(first)
        url, second = await store.presign_upload(filename="two.bin", user_id="alice", scope="user")
        assert (await http.put(url, content=os.urandom(9_000))).status_code == 200
        await store.register_uploaded_artifact(second)
        url, over = await store.presign_upload_and_register(filename="three.bin", user_id="alice", scope="user")
        assert (await http.put(url, content=os.urandom(9_000))).status_code == 507
        url, staged = await store.presign_upload(filename="four.bin", user_id="alice", scope="user")
        assert (await http.put(url, content=os.urandom(9_000))).status_code == 507
        assert [(await store.metadata(a)).bytes for a in (first, second)] == [9_000, 9_000]
        for missing in (too_big, over, staged):
            with pytest.raises(ArtifactNotFoundError):
                await store.metadata(missing)
    assert not any(p.stat().st_size >= 9_000 for p in (limited.data_dir / "uploads").rglob("*") if p.is_file())


# -- slow and idle clients: connections closed by the server, counted (never timed)

SHORT = {"ARTIFACT_SERVE_IDLE_TIMEOUT": "1", "ARTIFACT_SERVE_IO_TIMEOUT": "1"}
PATIENCE_S = 90  # generous: each of these closes within a few seconds when it works


@pytest.fixture
def impatient(tmp_path: Path) -> Iterator[Served]:
    yield from serving(tmp_path / "data", **SHORT)


def _sockets(pid: int) -> int:
    """Sockets the process holds open."""
    count = 0
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            count += os.readlink(fd).startswith("socket:")
        except FileNotFoundError:
            pass
    return count


async def _closed_by_server(stream: trio.SocketStream) -> bytes:
    """Everything the server sends until it closes the connection (the test fails if it never does)."""
    got = bytearray()
    with trio.fail_after(PATIENCE_S):
        while True:
            try:
                chunk = await stream.receive_some(1 << 16)
            except trio.BrokenResourceError:
                break
            if not chunk:
                break
            got += chunk
    return bytes(got)


def _target(url: str) -> tuple[str, int, str]:
    parsed = httpx.URL(url)
    return parsed.host, parsed.port or 80, parsed.raw_path.decode()


async def _app_store(served: Served, **env: str) -> ArtifactStore:
    return ArtifactStore(settings=Settings.from_env(environ={
        **env, "ARTIFACT_PROVIDER": "filesystem", "SESSION_PROVIDER": "sqlite",
        "ARTIFACT_FS_ROOT": str(served.data_dir), "ARTIFACT_PRESIGN_URL": served.url,
    }))


@pytest.mark.semantics("S-presign-service-connections")
async def test_stalled_headers_and_bodies_are_dropped(impatient: Served) -> None:
    async with await _app_store(impatient, **SHORT) as store:
        host, port, path = _target((await store.presign_upload(filename="s.bin", user_id="u", scope="user"))[0])
        streams = []
        for n in range(20):
            stream = await trio.open_tcp_stream(host, port)
            if n % 2:  # complete headers, then 100 of the 50,000 bytes announced
                await stream.send_all(f"PUT {path} HTTP/1.1\r\nHost: x\r\nContent-Length: 50000\r\n\r\n".encode()
                                      + b"x" * 100)
            else:  # headers that never end
                await stream.send_all(f"PUT {path} HTTP/1.1\r\nHost: x\r\n".encode())
            streams.append(stream)
        answers = [await _closed_by_server(s) for s in streams]
        for s in streams:
            await s.aclose()
    assert sum(a.startswith(b"HTTP/1.1 408") for a in answers[1::2]) == 10, answers[1::2]
    async with httpx.AsyncClient(trust_env=False) as http:  # and it still serves
        assert (await http.get(impatient.url + "/v1/objects/x")).status_code == 403


@pytest.mark.semantics("S-presign-service-connections")
async def test_oversized_headers_are_refused_and_closed(impatient: Served) -> None:
    host, port, _ = _target(impatient.url)
    stream = await trio.open_tcp_stream(host, port)
    try:
        await stream.send_all(b"GET /v1/objects/x HTTP/1.1\r\nHost: x\r\nX-Pad: " + b"a" * (64 * 1024) + b"\r\n\r\n")
    except trio.BrokenResourceError:
        pass  # refused before all of it was sent
    answer = await _closed_by_server(stream)
    await stream.aclose()
    assert answer == b"" or answer.startswith(b"HTTP/1.1 431"), answer[:80]


@pytest.mark.semantics("S-presign-service-connections")
async def test_downloads_nobody_reads_or_finished_are_closed(impatient: Served) -> None:
    async with await _app_store(impatient, **SHORT) as store:
        artifact_id = await store.store(os.urandom(16 * MiB), filename="big.bin", user_id="u", scope="user")
        host, port, path = _target(await store.presign(artifact_id, user_id="u"))
        baseline = _sockets(impatient.proc.pid)
        unread = []
        for _ in range(10):  # a GET whose body is never read
            sock = trio.socket.socket()
            sock.setsockopt(trio.socket.SOL_SOCKET, trio.socket.SO_RCVBUF, 4096)
            await sock.connect((host, port))
            stream = trio.SocketStream(sock)
            await stream.send_all(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
            unread.append(stream)
        finished = []
        for n in range(10):  # whole 206 answers, read to the end; half of them said Connection: close
            stream = await trio.open_tcp_stream(host, port)
            close = "Connection: close\r\n" if n % 2 else ""
            await stream.send_all(f"GET {path} HTTP/1.1\r\nHost: x\r\nRange: bytes=0-99\r\n{close}\r\n".encode())
            finished.append(stream)
        answers = [await _closed_by_server(s) for s in finished]
        assert all(a.startswith(b"HTTP/1.1 206") for a in answers)
        with trio.fail_after(PATIENCE_S):
            while _sockets(impatient.proc.pid) > baseline:
                await trio.sleep(0.2)
        for s in unread + finished:
            await s.aclose()


@pytest.mark.semantics("S-presign-service-connections")
async def test_connections_beyond_the_cap_are_refused(tmp_path: Path) -> None:
    for served in serving(tmp_path / "data", ARTIFACT_SERVE_MAX_CONNECTIONS="8", ARTIFACT_SERVE_IDLE_TIMEOUT="600"):
        host, port, _ = _target(served.url)
        baseline = _sockets(served.proc.pid)
        idle = [await trio.open_tcp_stream(host, port) for _ in range(8)]
        with trio.fail_after(PATIENCE_S):  # the eight are accepted before any more arrive
            while _sockets(served.proc.pid) < baseline + 8:
                await trio.sleep(0.1)
        extra = [await trio.open_tcp_stream(host, port) for _ in range(30)]
        refusals = [await _closed_by_server(s) for s in extra]
        assert all(r.startswith(b"HTTP/1.1 503") for r in refusals), refusals
        assert _sockets(served.proc.pid) <= baseline + 8
        for s in idle + extra:
            await s.aclose()
        async with httpx.AsyncClient(trust_env=False) as http:
            with trio.fail_after(PATIENCE_S):
                while (await http.get(served.url + "/v1/objects/x")).status_code == 503:
                    await trio.sleep(0.1)


# -- bytes PUT but not (yet) registered

def _staged(data_dir: Path, size: int) -> int:
    """Files of exactly ``size`` bytes in the data dir: the copies of one body kept on disk."""
    return sum(1 for p in data_dir.rglob("*") if p.is_file() and p.stat().st_size == size)


@pytest.mark.semantics("S-presign-service-limits")
async def test_unregistered_uploads_are_bounded_and_reclaimed(limited: Served) -> None:
    async with await _app_store(limited, **LIMITS) as store, httpx.AsyncClient(trust_env=False) as http:
        url, first = await store.presign_upload(filename="a.bin", user_id="alice", scope="user")
        codes = [(await http.put(url, content=os.urandom(9_000))).status_code for _ in range(8)]
        assert codes == [200] * 8
        assert _staged(limited.data_dir, 9_000) == 1  # the last PUT replaced the ones before

        codes = []
        for n in range(5):  # the quota is 20,000 B: one more 9,000 B upload fits beside the first
            url, _ = await store.presign_upload(filename=f"b{n}.bin", user_id="alice", scope="user")
            codes.append((await http.put(url, content=os.urandom(9_000))).status_code)
        assert codes == [200, 507, 507, 507, 507]
        assert _staged(limited.data_dir, 9_000) == 2
        other = await store.store(b"x" * 100, filename="c.bin", user_id="bob", scope="user")
        assert other  # another user's space is not charged for alice's uploads

        await store.register_uploaded_artifact(first)
        assert (await store.metadata(first)).bytes == 9_000


@pytest.mark.semantics("S-presign-service-limits")
async def test_abandoned_uploads_are_reclaimed_by_cleanup(served: Served) -> None:
    async with await _app_store(served) as store, httpx.AsyncClient(trust_env=False) as http:
        store.settings.presign.register_grace = 0
        # Expiring soon, not at once: a PUT sent more than a second later (a loaded machine) got 403.
        url, _ = await store.presign_upload(filename="gone.bin", user_id="u", scope="user", expires=10)
        assert (await http.put(url, content=os.urandom(7_777))).status_code == 200
        assert _staged(served.data_dir, 7_777) == 1
        with trio.fail_after(PATIENCE_S):
            while _staged(served.data_dir, 7_777):
                await trio.sleep(0.5)
                await store.cleanup_expired_sessions()


@pytest.mark.semantics("S-presign-range-verified")
async def test_a_block_map_the_service_made_is_trusted_by_the_application(app_store: ArtifactStore) -> None:
    """Both processes derive the map's key from the one signing key in the data dir."""
    from core.tree.blockmap import BlockMap

    data = os.urandom(2 * MiB + 9)
    artifact_id = await app_store.store(data, filename="ranged.bin")
    url = await app_store.presign(artifact_id)
    assert await curl("-r", f"{MiB - 1}-{MiB}", url) == data[MiB - 1 : MiB + 1]  # the service makes the map
    node = await app_store.ns.artifact_node(artifact_id)
    key, sha256 = node.artifact.blob_key, node.artifact.sha256  # type: ignore[union-attr]
    stored = await app_store.ns.read_block_map(key, BlockMap.max_bytes(key, len(data), sha256))
    assert stored is not None
    assert BlockMap.decode(stored, app_store.transfers.block_maps.signer, key, len(data), sha256) is not None
