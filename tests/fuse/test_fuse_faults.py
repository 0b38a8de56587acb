"""A mount on Redis + S3 while its services fail, in the middle of writes and reads.

A writer and a reader work through the mount the whole time (threads of
this test, real system calls). Then Redis goes away, or the S3 endpoint
does, long enough for the mount's bounded retries to give up; then it comes
back. What must hold:

- every call returns: it succeeds, or fails with EIO once its retries are
  spent; nothing hangs, nothing fails with another error;
- no read ever returns bytes other than a committed version's;
- every artifact in the store matches its SHA-256 (the library reads each
  whole, which checks it), every write the writer saw succeed is there
  whole, and one that failed left the file empty (as created) or absent;
- once the service is back, the same mount process works again.

The S3 endpoint is cut with a TCP proxy in front of moto (connections
reset, new ones refused), because a stopped moto forgets every object: a
real S3 endpoint that was unreachable still has them. A moto restarted empty
is the other fault: the bytes of old versions are gone, and reading them is
EIO, never wrong bytes.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import random
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Self

import pytest
from mounting import Mount, start_mount, wait_for
from servers import MotoServer, RedisServer, free_port
from worlds import StoreWorld, WorldKind

KiB = 1 << 10
EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()
ABSENT = "absent"  # a file whose create failed
CALL_BOUND = 60.0  # a call that takes longer than this has hung: the test fails
PHASE_TIMEOUT = 60.0  # bounded waits for the workload to reach each phase


# -- a workload of real system calls through the mount


@dataclass
class Tally:
    ok_writes: dict[str, str] = field(default_factory=dict)  # name -> sha256 of what was written
    failed_writes: dict[str, str] = field(default_factory=dict)  # name -> sha256 of what was being written
    ok_reads: int = 0
    errors: list[tuple[str, int]] = field(default_factory=list)  # (call, errno)
    wrong: list[str] = field(default_factory=list)  # reads of bytes no committed version had

    def errnos(self) -> set[int]:
        return {code for _, code in self.errors}


class Workload:
    """A writer and a reader thread; each call's outcome is tallied."""

    def __init__(self, root: Path, committed: dict[str, bytes]) -> None:
        self.root = root
        self.known = {name: {hashlib.sha256(data).hexdigest()} for name, data in committed.items()}
        self.tally = Tally()
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._run, args=(fn,), daemon=True) for fn in (self._writer, self._reader)]
        self.crashed: list[BaseException] = []  # anything but OSError out of a call: the test fails
        self.slowest = 0.0  # seconds: the longest single call, EIO answers included

    def __enter__(self) -> Self:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(CALL_BOUND)
            assert not thread.is_alive(), f"a call through the mount hung for over {CALL_BOUND:.0f} s"
        assert not self.crashed, self.crashed
        assert self.slowest < CALL_BOUND, f"a call took {self.slowest:.0f} s: retries must be bounded"

    def _run(self, fn) -> None:
        try:
            fn()
        except BaseException as exc:  # noqa: BLE001 - reported by __exit__
            self.crashed.append(exc)

    def _timed(self, fn, *args):
        start = time.monotonic()
        try:
            return fn(*args)
        finally:
            self.slowest = max(self.slowest, time.monotonic() - start)

    def _writer(self) -> None:
        rng = random.Random(1)
        for i in range(10**6):
            if self._stop.is_set():
                return
            name = f"w{i:05d}.bin"
            data = rng.randbytes(rng.choice([3 * KiB, 70 * KiB, 300 * KiB]))
            digest = hashlib.sha256(data).hexdigest()
            try:
                self._timed(Path.write_bytes, self.root / name, data)
            except OSError as exc:
                with self._lock:
                    self.tally.failed_writes[name] = digest
                    self.tally.errors.append(("write", exc.errno or 0))
                    self.known[name] = {ABSENT, EMPTY_SHA256, digest}  # not created, created empty, or whole
                continue
            with self._lock:
                self.tally.ok_writes[name] = digest
                self.known[name] = {digest}

    def _reader(self) -> None:
        rng = random.Random(2)
        while not self._stop.is_set():
            with self._lock:
                name = rng.choice(sorted(self.known))
                allowed = set(self.known[name])
            try:
                data = self._timed(Path.read_bytes, self.root / name)
            except FileNotFoundError:
                if ABSENT in allowed:  # its create failed
                    continue
                with self._lock:
                    self.tally.wrong.append(f"{name} is missing")
                continue
            except OSError as exc:
                with self._lock:
                    self.tally.errors.append(("read", exc.errno or 0))
                continue
            with self._lock:
                if hashlib.sha256(data).hexdigest() in allowed:
                    self.tally.ok_reads += 1
                else:
                    self.tally.wrong.append(name)

    def counts(self) -> tuple[int, int, int]:
        with self._lock:
            return len(self.tally.ok_writes), self.tally.ok_reads, len(self.tally.errors)

    def wait(self, what: str, condition) -> None:
        wait_for(lambda: condition(*self.counts()), PHASE_TIMEOUT, what)


# -- the S3 endpoint behind a proxy that can be cut


class CuttableEndpoint:
    """A TCP proxy in front of a server: :meth:`cut` resets every connection and refuses new ones."""

    def __init__(self, target_port: int) -> None:
        self.target = target_port
        self.port = free_port()
        self._listener: socket.socket | None = None
        self._conns: set[socket.socket] = set()
        self._lock = threading.Lock()

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def open(self) -> None:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(64)
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def cut(self) -> None:
        listener, self._listener = self._listener, None
        if listener is not None:
            with contextlib.suppress(OSError):
                listener.shutdown(socket.SHUT_RDWR)  # wakes the accept() in flight; close() alone would not
            listener.close()
        with self._lock:
            conns, self._conns = self._conns, set()
        for conn in conns:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)  # wakes the pump blocked in recv(); close() alone would not
            conn.close()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return  # cut
            try:
                upstream = socket.create_connection(("127.0.0.1", self.target))
            except OSError:
                client.close()
                continue
            with self._lock:
                self._conns |= {client, upstream}
            for src, dst in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(src, dst), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(1 << 16):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (src, dst):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)


class ProxiedMoto:
    """What the world needs of moto, with the endpoint behind a :class:`CuttableEndpoint`."""

    def __init__(self, moto: MotoServer, proxy: CuttableEndpoint) -> None:
        self.moto, self.proxy = moto, proxy

    @property
    def endpoint(self) -> str:
        return self.proxy.endpoint

    def client(self):
        return self.moto.client()


# -- helpers


def seed(root: Path) -> dict[str, bytes]:
    rng = random.Random(0)
    files = {f"seed{i}.bin": rng.randbytes(size) for i, size in enumerate([5 * KiB, 200 * KiB, 700 * KiB])}
    for name, data in files.items():
        (root / name).write_bytes(data)
    return files


async def check_store(mount: Mount, tally: Tally) -> None:
    """Every artifact matches its SHA-256; every acknowledged write is there whole; failed ones left nothing half.

    A write whose close answered EIO may still be there whole: the kernel's release, which
    comes after, publishes what the failed flush could not, once S3 answers again. POSIX
    leaves a file's state after a failed close unspecified; what never happens is a part.
    """
    async with mount.store() as store:
        found = {meta.filename: meta for meta in await store.search(user_id="alice")}
        for name, meta in found.items():
            data = await store.read_file(meta.artifact_id, user_id="alice")  # a whole read checks the SHA-256
            # A late release may publish a failed write's bytes between the search and the read.
            now = await store.metadata(meta.artifact_id, user_id="alice")
            assert hashlib.sha256(data).hexdigest() in (meta.sha256, now.sha256), name
            found[name] = now
    for name, digest in tally.ok_writes.items():
        assert found[name].sha256 == digest, f"{name} was acknowledged but holds another version"
    for name, digest in tally.failed_writes.items():
        if name in found:
            assert found[name].sha256 in (EMPTY_SHA256, digest), f"{name} failed, and holds neither nothing nor all"


def works_again(mount: Mount) -> None:
    """The same mount process: a new file, read back, listed; an old one read."""
    alice = mount / "users" / "alice"
    data = os.urandom(123 * KiB)
    (alice / "after.bin").write_bytes(data)
    assert (alice / "after.bin").read_bytes() == data
    assert "after.bin" in os.listdir(alice)
    assert (alice / "seed1.bin").stat().st_size == 200 * KiB


def clean_log(mount: Mount) -> None:
    """Failures are logged as errors (EIO answered); nothing unexpected is."""
    unexpected = [line for line in mount.log_text().splitlines() if "Traceback" in line or "unexpected" in line]
    assert not unexpected, mount.log_text()


@contextlib.contextmanager
def mounted(world: StoreWorld, tmp_path: Path) -> Iterator[Mount]:
    mount = start_mount(tmp_path / "mnt", tmp_path / "data", world=world, check_log=False)
    try:
        yield mount
    finally:
        mount.stop()
    clean_log(mount)


# -- the faults


@pytest.mark.semantics("S-errno-backend")
async def test_redis_restarted_in_the_middle(own_redis: RedisServer, moto_server: MotoServer, tmp_path: Path) -> None:
    world = StoreWorld(WorldKind.REDIS_S3, redis=own_redis, moto=moto_server)
    try:
        with mounted(world, tmp_path) as mount:
            alice = mount.user_dir("alice")
            with Workload(alice, seed(alice)) as load:
                load.wait("writes and reads before the outage", lambda w, r, e: w >= 3 and r >= 3)
                own_redis.shutdown_saving()  # the data survives in its snapshot, as with any persistence
                try:
                    load.wait("calls failing with EIO", lambda w, r, e: e >= 2)
                finally:
                    own_redis.start()
                writes, reads, _ = load.counts()
                load.wait("writes and reads after the restart", lambda w, r, e: w >= writes + 3 and r >= reads + 3)
            tally = load.tally
            assert tally.errnos() == {errno.EIO}, tally.errors
            assert not tally.wrong, f"reads returned bytes of no committed version: {tally.wrong}"
            works_again(mount)
            await check_store(mount, tally)
            # The feed of change notices comes back too; its reconnect backs off (at most 2 s a
            # step), so it may trail the data path, which recovers through the store's own pool.
            wait_for(lambda: "resumed" in mount.log_text(), 30, "the change feed to resume")
        assert "change notices from" in mount.log_text()
    finally:
        world.cleanup()


@pytest.mark.semantics("S-errno-backend")
async def test_s3_endpoint_unreachable_in_the_middle(redis_server: RedisServer, moto_server: MotoServer,
                                                      tmp_path: Path) -> None:
    proxy = CuttableEndpoint(moto_server.port)
    proxy.open()
    world = StoreWorld(WorldKind.REDIS_S3, redis=redis_server, moto=ProxiedMoto(moto_server, proxy))  # type: ignore[arg-type]
    try:
        with mounted(world, tmp_path) as mount:
            alice = mount.user_dir("alice")
            with Workload(alice, seed(alice)) as load:
                load.wait("writes and reads before the outage", lambda w, r, e: w >= 3 and r >= 3)
                proxy.cut()
                try:
                    load.wait("calls failing with EIO", lambda w, r, e: e >= 2)
                finally:
                    proxy.open()
                writes, reads, _ = load.counts()
                load.wait("writes and reads after the outage", lambda w, r, e: w >= writes + 3 and r >= reads + 3)
            tally = load.tally
            assert tally.errnos() == {errno.EIO}, tally.errors
            assert not tally.wrong, f"reads returned bytes of no committed version: {tally.wrong}"
            works_again(mount)
            await check_store(mount, tally)
    finally:
        proxy.cut()
        world.cleanup()


@pytest.mark.semantics("S-integrity-eio")
async def test_an_s3_endpoint_back_without_its_objects(redis_server: RedisServer, own_moto: MotoServer,
                                                        tmp_path: Path) -> None:
    """moto restarted empty: old versions' bytes are gone. Reading them is EIO, never other bytes; new writes work."""
    world = StoreWorld(WorldKind.REDIS_S3, redis=redis_server, moto=own_moto)
    try:
        with mounted(world, tmp_path) as mount:
            alice = mount.user_dir("alice")
            files = seed(alice)
            own_moto.stop()
            with pytest.raises(OSError) as failed:
                (alice / "during.bin").write_bytes(b"x" * 1000)
            assert failed.value.errno == errno.EIO
            own_moto.start()  # the bucket again, empty
            fresh = os.urandom(50 * KiB)
            (alice / "new.bin").write_bytes(fresh)  # the same mount writes again
            assert (alice / "new.bin").read_bytes() == fresh
        # Another mount of the same store, whose kernel holds no page of the old versions.
        with mounted(world, tmp_path) as again:
            alice = again / "users" / "alice"
            for name in files:
                with pytest.raises(OSError) as lost:
                    (alice / name).read_bytes()
                assert lost.value.errno == errno.EIO, name
            assert (alice / "new.bin").read_bytes() == fresh
            assert (alice / "during.bin").read_bytes() in (b"", b"x" * 1000)  # as created, or whole (check_store)
    finally:
        world.cleanup()



async def test_a_handle_released_while_another_publishes_slowly(tmp_path: Path) -> None:
    """Was: a reader's handle opened and released during a writer's slow, failing publish (S3 away)
    let the file go first; the writer's release then failed with KeyError ("unexpected error")."""
    from types import SimpleNamespace

    import trio
    import trio.testing

    from core.errors import ProviderError
    from core.nodes import Artifact, NodeKind, new_node
    from fusefs.openfiles import OpenFiles

    node = new_node(parent=1, name="f", kind=NodeKind.FILE, mode=0o644, now_ns=1)
    node.artifact = Artifact(artifact_id="a", sha256=EMPTY_SHA256)
    gate, lock, calls = trio.Event(), trio.Lock(), []

    class Staged:  # what a spool must do here: be discarded
        async def discard(self) -> None:
            calls.append("discard")

    async with trio.open_nursery() as nursery:
        files = OpenFiles(SimpleNamespace(), tmp_path, nursery.start_soon, lambda ino: None)  # type: ignore[arg-type]
        writer, file, _ = files.open(node, writable=True)
        file.spool = Staged()  # type: ignore[assignment]

        async def publish() -> None:  # the first waits for S3, then fails; the spool stays for a retry
            async with lock:
                if not gate.is_set():
                    await gate.wait()
                    raise ProviderError("s3: failed after 6 attempts")

        file.publish = publish  # type: ignore[method-assign]
        outcome: list[BaseException | None] = []

        async def release_writer() -> None:
            try:
                await files.release(writer)
                outcome.append(None)
            except BaseException as exc:  # noqa: BLE001
                outcome.append(exc)

        nursery.start_soon(release_writer)
        await trio.testing.wait_all_tasks_blocked()
        reader, same, _ = files.open(node, writable=False)
        assert same is file
        nursery.start_soon(files.release, reader)
        await trio.testing.wait_all_tasks_blocked()
        gate.set()
    assert isinstance(outcome[0], ProviderError)  # EIO for the writer's close, nothing unexpected
    assert files.get(node.ino) is None and calls == ["discard"]  # let go once


def test_a_connection_reset_under_a_client_task_is_one_line_in_the_log(caplog: pytest.LogCaptureFixture) -> None:
    """Was: each reset aiohttp met mid-request put an asyncio "never retrieved" traceback in the mount's log."""
    import asyncio
    import gc

    import trio

    from core.infra import aio_bridge

    async def spawn_and_forget() -> None:
        async def reset() -> None:
            raise ConnectionResetError("Cannot write to closing transport")

        asyncio.get_running_loop().create_task(reset())  # as aiohttp does with its request writer
        await asyncio.sleep(0.01)

    trio.run(aio_bridge.run, spawn_and_forget)
    wait_for(lambda: gc.collect() is not None and "never retrieved" in caplog.text, 10, "the report of the lost task")
    assert "Traceback" not in caplog.text and "ConnectionResetError" in caplog.text
    assert all(r.levelname == "WARNING" for r in caplog.records if "never retrieved" in r.getMessage())
