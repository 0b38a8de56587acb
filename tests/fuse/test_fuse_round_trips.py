"""Metadata round trips per mount operation, counted at a real redis-server.

Every call from the mount to Redis crosses the trio -> asyncio bridge and
the network (~0.3 ms here), so for small files the number of round trips,
not Redis's work, bounds how many files a second a mount creates or reads.
The bounds below are what the mount needs today; a change that adds a round
trip back fails here. Nothing is timed.

The counter is Redis's own ``MONITOR``: it shows every command a client
sends, and, marked ``lua``, the calls a script makes inside its one round
trip, which are not counted. Only commands naming this store's key prefix
count, so the change feed's health checks and other tests on the server do
not. A marker (``ECHO``) sent before and after an operation delimits it:
every request the operation made was answered before it returned, so its
commands lie between the two. A pipeline would show as one command per
call, and count so: none of the operations here use one.

The kernel's caches are kept long (``--cache-timeout 600``) so a
directory looked up once stays cached while operations inside it are
counted. "Cold" operations run on a second mount of the same store, whose
kernel has seen nothing of the files.

What the kernel asks, per operation (each line one request, and what it costs):

- create (``open(O_CREAT)``, ``write``, ``close``): the directory's
  attributes (the last create in it made the kernel drop them: 1), the
  name (a miss: 1), ``create`` (the directory, then the insert, which sets
  the directory's times in the same script: 2), ``flush`` publishes (the
  open file's fresh node, then the conditional commit: 2). ``cp`` looks the
  name up twice.
- open and read of a file the kernel has not seen: the lookup (1, the
  directory and the entry in one script), ``open`` (the newest version:
  close-to-open, 1); the read goes to S3.
- stat of a file the kernel has not seen: the lookup (1).
- ``ls -l``: the directory's attributes (the last listing made the kernel
  drop them: 1), ``opendir`` (1), the listing with every record (1); the
  ``lstat`` of each entry is answered by the kernel.
- mkdir: the directory's attributes (1), the name (1), ``mkdir`` (the
  directory, then the insert: 2).
- rename within a directory: its attributes (1), the new name (1),
  ``rename`` (the directory and the entry, then the rename, which returns
  what it replaced: 2).
- rename to a name whose MIME type differs from the one guessed from the
  old name (a temporary name): the same, then the file's fresh node and
  its new type (2).
- unlink, rmdir: the directory's attributes (1), ``unlink`` (the directory
  and the entry, then the remove: 2).
"""

from __future__ import annotations

import os
import queue
import secrets
import subprocess
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from mounting import Mount, start_mount, stop_mounts
from redis.exceptions import RedisError
from servers import MotoServer, RedisServer
from worlds import StoreWorld, WorldKind

MARK_TIMEOUT = 10.0  # seconds for a marker to come through the monitor
RUNS = 3  # each operation is counted this many times, on distinct files
SMALL = os.urandom(4096)

# Round trips per operation, at most (see the module's docstring for what they are).
BOUNDS = {
    "create": 6,
    "create with cp": 7,
    "create in a session": 6,
    "mkdir": 4,
    "rename": 4,
    "rename to a name of another MIME type": 6,
    "unlink": 3,
    "rmdir": 3,
    "stat, cold": 1,
    "open+read+close, cold": 2,
    "open+read+close, name cached": 1,
    "ls -l": 3,
}


class RoundTrips:
    """The commands a store's clients send between two markers, as MONITOR reports them."""

    def __init__(self, server: RedisServer, prefix: str) -> None:
        self._server = server
        self._prefix = prefix
        self._seen: queue.Queue[str | None] = queue.Queue()
        self._stop = f"stop-{secrets.token_hex(8)}"  # the marker that ends the monitor's thread
        self._client = server.client()
        self._monitor = self._client.monitor()
        self._monitor.__enter__()
        self._thread = threading.Thread(target=self._follow, daemon=True)
        self._thread.start()

    def _follow(self) -> None:
        try:
            while True:
                seen = self._monitor.next_command()
                if seen is not None and seen["client_type"] != "lua":  # a script's calls are its one trip
                    self._seen.put(seen["command"])
                    if seen["command"] == f"ECHO {self._stop}":
                        return
        except (RedisError, OSError):
            self._seen.put(None)  # the monitor's connection closed

    def close(self) -> None:
        with self._server.client() as client:
            client.echo(self._stop)
        self._thread.join(MARK_TIMEOUT)
        self._monitor.__exit__()
        self._client.close()

    def _mark(self, token: str) -> list[str]:
        """Send a marker; the store's commands the monitor showed before it."""
        with self._server.client() as client:
            client.echo(token)
        seen: list[str] = []
        while True:
            command = self._seen.get(timeout=MARK_TIMEOUT)
            assert command is not None, "the MONITOR connection closed"
            if command == f"ECHO {token}":
                return seen
            if self._prefix in command:
                seen.append(command)

    def during(self, operation: Callable[[], object]) -> list[str]:
        token = secrets.token_hex(8)
        self._mark(f"{token}-before")
        operation()
        return self._mark(f"{token}-after")


@dataclass
class Measured:
    runs: dict[str, list[list[str]]]
    renamed_mimes: list[bytes]  # of the files renamed to *.pdf

    def report(self, what: str) -> str:
        counts = [len(run) for run in self.runs[what]]
        lines = [f"{what}: {counts} round trips (bound {BOUNDS[what]}); the last run's:"]
        lines += ["    " + command[:150] for command in self.runs[what][-1]]
        return "\n".join(lines)


def _mount(root: Path, name: str, world: StoreWorld) -> Mount:
    return start_mount(root / name, root / f"{name}-data", world=world, args=["--cache-timeout", "600"])


def _cp(source: Path, target: Path) -> None:
    subprocess.run(["cp", str(source), str(target)], check=True)


def _ls(directory: Path) -> None:
    subprocess.run(["ls", "-l", str(directory)], check=True, capture_output=True)


@pytest.fixture(scope="module")
def measured(tmp_path_factory: pytest.TempPathFactory, redis_server: RedisServer, moto_server: MotoServer
             ) -> Iterator[Measured]:
    root = tmp_path_factory.mktemp("round-trips")
    world = StoreWorld(WorldKind.REDIS_S3, redis=redis_server, moto=moto_server).shared(root / "store")
    trips = RoundTrips(redis_server, world.prefix(root / "store"))
    mounts: list[Mount] = []
    try:
        source = root / "f4k"
        source.write_bytes(SMALL)
        a = _mount(root, "a", world)
        mounts.append(a)
        home = a.user_dir("bench")
        session = a / "sessions" / "s1"
        session.mkdir()
        os.stat(home)

        def count(make: Callable[[int], Callable[[], object]]) -> list[list[str]]:
            return [trips.during(make(i)) for i in range(RUNS)]

        runs = {
            "create": count(lambda i: lambda: (home / f"py{i}").write_bytes(SMALL)),
            "create with cp": count(lambda i: lambda: _cp(source, home / f"cp{i}")),
            "create in a session": count(lambda i: lambda: (session / f"s{i}").write_bytes(SMALL)),
            "mkdir": count(lambda i: lambda: os.mkdir(home / f"dir{i}")),
            "rename": count(lambda i: lambda: os.rename(home / f"py{i}", home / f"moved{i}")),
            "rename to a name of another MIME type": count(
                lambda i: lambda: os.rename(home / f"cp{i}", home / f"cp{i}.pdf")
            ),
            "unlink": count(lambda i: lambda: os.unlink(home / f"moved{i}")),
            "rmdir": count(lambda i: lambda: os.rmdir(home / f"dir{i}")),
        }
        b = _mount(root, "b", world)  # a kernel that has seen nothing of the files
        mounts.append(b)
        cold = b / "users" / "bench"
        os.stat(cold)
        runs["stat, cold"] = count(lambda i: lambda: os.stat(cold / f"cp{i}.pdf"))
        runs["open+read+close, name cached"] = count(lambda i: lambda: (cold / f"cp{i}.pdf").read_bytes())
        b_session = b / "sessions" / "s1"
        os.stat(b_session)
        runs["open+read+close, cold"] = count(lambda i: lambda: (b_session / f"s{i}").read_bytes())
        runs["ls -l"] = count(lambda i: lambda: _ls(cold))
        mimes = [os.getxattr(cold / f"cp{i}.pdf", "user.artifact.mime") for i in range(RUNS)]
        yield Measured(runs, mimes)
    finally:
        try:
            stop_mounts(mounts)
        finally:
            trips.close()
            world.cleanup()


@pytest.mark.parametrize("what", sorted(BOUNDS))
def test_round_trips_within_bound(measured: Measured, what: str) -> None:
    counts = [len(run) for run in measured.runs[what]]
    assert max(counts) <= BOUNDS[what], measured.report(what)
    assert min(counts) >= 1, measured.report(what)  # the counter saw the operation at all


def test_the_counter_sees_what_it_should(measured: Measured) -> None:
    """A create shows its insert and its commit; a cold read, its lookup and the open's read of the node."""
    create = measured.runs["create"][-1]
    assert any(" insert " in c for c in create) and any(" update " in c for c in create), measured.report("create")
    read = measured.runs["open+read+close, cold"][-1]
    assert any(" lookup " in c for c in read) and any(c.startswith("HMGET") for c in read), measured.report(
        "open+read+close, cold"
    )


@pytest.mark.semantics("S-rename-mime")
def test_a_renamed_file_takes_the_mime_type_of_its_new_name(measured: Measured) -> None:
    assert measured.renamed_mimes == [b"application/pdf"] * RUNS
