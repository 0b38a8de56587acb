"""Real servers for the tests: a ``redis-server`` and ``moto`` in server mode on 127.0.0.1.

Each runs as its own process on a free port and can be stopped and started
again by a test (fault tests do exactly that). A server dies with the test
process even when that is killed (``PR_SET_PDEATHSIG``).

``moto`` keeps its buckets in memory, so a stopped moto has forgotten them
when it starts again; :meth:`MotoServer.start` re-creates the bucket. A test
that needs the objects to survive an outage freezes the server instead
(:meth:`Server.freeze`): clients then meet timeouts, as with a hung endpoint.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import boto3
import pytest
import redis
from botocore.config import Config

from core.config import Settings

BUCKET = "artifactfs-test"
AWS_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
}
_PR_SET_PDEATHSIG = 1


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _die_with_parent() -> None:
    ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def wait_until(condition, timeout: float, what: str, interval: float = 0.02) -> None:
    """Poll ``condition()`` until it is true; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} within {timeout} s")
        time.sleep(interval)


def _accepts(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
        return True
    except OSError:
        return False


class Server:
    """A server process on a fixed port that can be stopped, started, frozen and thawed."""

    name = "server"

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.port = free_port()
        self.proc: subprocess.Popen | None = None
        self.workdir.mkdir(parents=True, exist_ok=True)

    def command(self) -> list[str]:
        raise NotImplementedError

    def ready(self) -> bool:
        return _accepts(self.port)

    def start(self) -> None:
        assert self.proc is None, f"{self.name} is running"
        with open(self.workdir / f"{self.name}.log", "ab") as log:
            self.proc = subprocess.Popen(
                self.command(), cwd=self.workdir, stdout=log, stderr=subprocess.STDOUT,
                preexec_fn=_die_with_parent,  # noqa: PLW1509 (only prctl runs before exec)
            )
        wait_until(lambda: self.ready() or self.proc.poll() is not None, 30, f"{self.name} to start")
        if self.proc.poll() is not None:
            raise RuntimeError(f"{self.name} exited with {self.proc.returncode}; see {self.workdir}")

    def stop(self) -> None:
        """Stop the process; its port refuses connections until :meth:`start`."""
        if self.proc is None:
            return
        proc, self.proc = self.proc, None
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGCONT)  # a frozen server must be able to exit
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        wait_until(lambda: not _accepts(self.port), 10, f"{self.name} to stop listening")

    def freeze(self) -> None:
        """Hang the server: connections are accepted, nothing is answered."""
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGSTOP)

    def thaw(self) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGCONT)


class RedisServer(Server):
    """``redis-server`` with no automatic persistence; :meth:`restart` keeps the data."""

    name = "redis"

    def command(self) -> list[str]:
        return [
            "redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
            "--dir", str(self.workdir), "--dbfilename", "dump.rdb", "--protected-mode", "no", "--daemonize", "no",
        ]

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def client(self) -> redis.Redis:
        return redis.Redis.from_url(self.url, socket_timeout=5)

    def ready(self) -> bool:
        try:
            with self.client() as client:
                return bool(client.ping())
        except redis.exceptions.RedisError:
            return False

    def shutdown_saving(self) -> None:
        """``SHUTDOWN SAVE``: the server writes every key to its snapshot and exits; start() loads it."""
        assert self.proc is not None
        with self.client() as client:
            try:
                client.shutdown(save=True)
            except redis.exceptions.ConnectionError:
                pass  # the server closed the connection on its way out
        self.proc.wait(30)
        self.stop()

    def restart(self) -> None:
        """A restart that loses nothing."""
        self.shutdown_saving()
        self.start()


class MotoServer(Server):
    """``moto`` in server mode: S3 over HTTP, with the test bucket made at start."""

    name = "moto"

    def command(self) -> list[str]:
        return [str(Path(sys.executable).with_name("moto_server")), "-H", "127.0.0.1", "-p", str(self.port)]

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def client(self):
        return boto3.client(
            "s3", endpoint_url=self.endpoint, region_name="us-east-1",
            aws_access_key_id=AWS_ENV["AWS_ACCESS_KEY_ID"], aws_secret_access_key=AWS_ENV["AWS_SECRET_ACCESS_KEY"],
            config=Config(s3={"addressing_style": "path"}, retries={"total_max_attempts": 1}),
        )

    def start(self) -> None:
        super().start()
        self.client().create_bucket(Bucket=BUCKET)


# -- fixtures: one redis-server and one moto for the whole session, started on first use

_RUNNING: dict[str, Server] = {}
SIGNING_KEY = "artifactfs-test-signing-key-0123456789"


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    server.start()
    _RUNNING["redis"] = server
    try:
        yield server
    finally:
        _RUNNING.pop("redis", None)
        server.stop()


@pytest.fixture(scope="session")
def moto_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MotoServer]:
    with pytest.MonkeyPatch.context() as env:
        for name, value in AWS_ENV.items():
            env.setenv(name, value)
        server = MotoServer(tmp_path_factory.mktemp("moto"))
        server.start()
        _RUNNING["moto"] = server
        try:
            yield server
        finally:
            _RUNNING.pop("moto", None)
            server.stop()


def store_prefix(root: Path) -> str:
    """A key prefix of its own for every store root, so tests sharing the servers never meet."""
    return "t" + hashlib.sha1(str(Path(root).resolve()).encode()).hexdigest()[:16]


def redis_s3_settings(root: Path, **overrides: object) -> Settings:
    """Settings of a Redis + S3 store on the session's servers, keyed by ``root``."""
    def url(name: str, setting: str) -> object:
        if setting in overrides:
            return overrides[setting]
        server = _RUNNING.get(name)
        if server is None:
            raise RuntimeError(f"request the {name}_server fixture first (or pass {setting})")
        return server.url if isinstance(server, RedisServer) else server.endpoint  # type: ignore[attr-defined]

    prefix = store_prefix(root)
    values: dict[str, object] = {
        "storage_provider": "s3", "session_provider": "redis", "fs_root": root, "bucket": BUCKET,
        "redis_url": url("redis", "redis_url"), "redis_prefix": prefix,
        "s3_endpoint_url": url("moto", "s3_endpoint_url"), "s3_prefix": prefix + "/", "s3_sse_algorithm": "AES256",
    }
    if not os.environ.get("ARTIFACT_SIGNING_KEY"):  # Redis needs a configured key; a test may set its own
        values["signing_key"] = SIGNING_KEY
    values.update(overrides)
    return Settings.from_env(**values)


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[RedisServer]:
    """A redis-server of the test's own, for tests that stop it or read its command counts."""
    server = RedisServer(tmp_path / "own-redis")
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def own_moto(tmp_path: Path) -> Iterator[MotoServer]:
    """A moto server of the test's own, for tests that stop or freeze it."""
    with pytest.MonkeyPatch.context() as env:
        for name, value in AWS_ENV.items():
            env.setenv(name, value)
        server = MotoServer(tmp_path / "own-moto")
        server.start()
        try:
            yield server
        finally:
            server.stop()
