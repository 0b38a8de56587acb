"""Presigned URLs through a real mount: ``getfattr -n user.artifact.presign`` then curl.

The mount signs; ``artifactfs serve`` on the same data dir answers; a library
store on that data dir registers a presigned upload, and the file appears in
the mount. Three processes, one data dir, one key.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from mounting import REPO, Mount

MiB = 1 << 20
MountFactory = Callable[..., Mount]


@pytest.fixture
def service(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """``artifactfs serve`` on a fresh data dir: (its URL, the data dir)."""
    data_dir = tmp_path / "data"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ARTIFACT_", "SESSION_", "S3_"))}
    proc = subprocess.Popen(
        [sys.executable, "-m", "fusefs", "serve", "--data-dir", str(data_dir), "--port", "0"],
        cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        line = proc.stdout.readline()
        assert line.startswith("artifactfs serve: http://"), proc.stderr.read() if not line else line
        yield line.split()[2], data_dir
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0, proc.stderr.read()


def curl(*args: str) -> bytes:
    return subprocess.run(["curl", "-sSf", *args], capture_output=True, check=True, timeout=60).stdout


@pytest.mark.semantics("S-xattr-presign")
@pytest.mark.embedded_only("artifactfs serve answers for a data dir; on S3 the URLs are S3's own")
async def test_getfattr_presign_then_curl(
    mount_factory: MountFactory, service: tuple[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    url, data_dir = service
    monkeypatch.setenv("ARTIFACT_PRESIGN_URL", url)  # for the library store below
    env = {**os.environ, "ARTIFACT_PRESIGN_URL": url}
    mount = mount_factory(data_dir=data_dir, env=env)
    data = os.urandom(3 * MiB + 17)
    path = mount.user_dir("alice") / "report.bin"
    path.write_bytes(data)

    presigned = subprocess.run(
        ["getfattr", "--only-values", "-n", "user.artifact.presign", str(path)], capture_output=True, text=True,
        check=True,
    ).stdout
    assert presigned.startswith(f"{url}/v1/objects/")
    assert curl(presigned) == data
    assert curl("-r", "1000-1999", presigned) == data[1000:2000]

    # A presigned PUT, registered through the library, appears in the mount.
    async with mount.store() as store:
        put_url, artifact_id = await store.presign_upload(user_id="alice", scope="user", filename="inbox/upload.bin")
        assert put_url.startswith(url)
        uploaded = os.urandom(MiB + 1)
        source = mount.mountpoint.parent / "upload-source.bin"
        source.write_bytes(uploaded)
        curl("-T", str(source), put_url)
        assert not (mount.user_dir("alice") / "inbox" / "upload.bin").exists()
        await store.register_uploaded_artifact(artifact_id)
    assert (mount.user_dir("alice") / "inbox" / "upload.bin").read_bytes() == uploaded
    xattr_id = subprocess.run(
        ["getfattr", "--only-values", "-n", "user.artifact.id", str(mount.user_dir("alice") / "inbox" / "upload.bin")],
        capture_output=True, text=True, check=True,
    ).stdout
    assert xattr_id == artifact_id


@pytest.mark.semantics("S-xattr-presign")
@pytest.mark.embedded_only("the mount's own service answers for its data dir; on S3 the URLs are S3's own")
async def test_mount_serve_answers_its_own_presigned_urls(mount_factory: MountFactory) -> None:
    """``artifactfs mount --serve``: getfattr hands out a URL that curl downloads, with no other process."""
    env = {k: v for k, v in os.environ.items() if k != "ARTIFACT_PRESIGN_URL"}
    mount = mount_factory(args=["--serve", "127.0.0.1:0"], env=env)
    data = os.urandom(2 * MiB + 5)
    path = mount.user_dir("alice") / "served.bin"
    path.write_bytes(data)

    url = subprocess.run(
        ["getfattr", "--only-values", "-n", "user.artifact.presign", str(path)], capture_output=True, text=True,
        check=True,
    ).stdout
    assert url.startswith("http://127.0.0.1:") and ":0/" not in url  # the bound port, not the one asked for
    assert curl(url) == data
    assert curl("-r", "1000-1999", url) == data[1000:2000]
    assert subprocess.run(["curl", "-sS", "-o", "/dev/null", "-w", "%{http_code}", url[:-1] + ("A" if url[-1] != "A" else "B")],
                          capture_output=True, text=True, timeout=60).stdout == "403"


def test_mount_serve_refuses_a_bad_address(tmp_path: Path) -> None:
    from mounting import artifactfs

    done = artifactfs("mount", tmp_path / "mnt", "--data-dir", tmp_path / "data", "--serve", "nonsense")
    assert done.returncode == 2 and "HOST:PORT" in done.stderr and "Traceback" not in done.stderr


@pytest.mark.semantics("S-presign-service-connections")
@pytest.mark.embedded_only("the mount's own service answers for its data dir; on S3 the URLs are S3's own")
def test_a_flood_of_idle_connections_leaves_the_mount_answering(mount_factory: MountFactory, tmp_path: Path) -> None:
    """1,100 connections that send nothing to ``mount --serve`` with 1,024 descriptors: files still work.

    The service keeps at most its cap of them (a quarter of the descriptors
    at most), answers the rest 503 and closes them; the mount's own files
    are not the service's to use up.
    """
    import resource
    import socket

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, 4096)), hard))  # this test's own sockets
    env = {k: v for k, v in os.environ.items() if k != "ARTIFACT_PRESIGN_URL"}
    env["ARTIFACT_SERVE_IDLE_TIMEOUT"] = "600"  # the idle ones stay for the whole test: the worst case
    mount = mount_factory(args=["--serve", "127.0.0.1:0"], env=env)
    subprocess.run(["prlimit", f"--pid={mount.process.pid}", "--nofile=1024:1024"], check=True)
    first = mount.user_dir("alice") / "first.bin"
    first.write_bytes(b"before")
    url = subprocess.run(["getfattr", "--only-values", "-n", "user.artifact.presign", str(first)],
                         capture_output=True, text=True, check=True).stdout
    host, port = url.removeprefix("http://").split("/")[0].rsplit(":", 1)
    held = []
    try:
        for _ in range(1100):
            held.append(socket.create_connection((host, int(port)), timeout=30))
        source = tmp_path / "source.bin"
        source.write_bytes(os.urandom(3 * MiB))
        for n in range(20):
            subprocess.run(["cp", str(source), str(mount.user_dir("alice") / f"copy-{n}.bin")], check=True, timeout=120)
        assert all((mount.user_dir("alice") / f"copy-{n}.bin").read_bytes() == source.read_bytes() for n in range(20))
        assert first.read_bytes() == b"before"
        assert _sockets(mount.process.pid) < 512
    finally:
        for sock in held:
            sock.close()
    assert "Traceback" not in mount.log_text()


def _sockets(pid: int) -> int:
    count = 0
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            count += os.readlink(fd).startswith("socket:")
        except FileNotFoundError:
            pass  # closed meanwhile
    return count
