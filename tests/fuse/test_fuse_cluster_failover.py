"""A Redis Cluster master dies under two writing mounts (issue #17): nothing acknowledged is lost.

Three masters with a replica each. Two mounts of one store write files
(write, fsync, close: each acknowledged only when all three returned) into
the scope whose shard the killed master holds, while that master is killed.
Its replica takes over; the mounts wait the failover out (their calls retry)
and go on. Every acknowledged file must then read back whole on both mounts:
a change is acknowledged only once a replica has it (``WAIT``), so the
replica that took over holds it. The stall each writer saw is printed;
nothing is timed against a bound but the generous one of waiting at all.
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

from mounting import start_mount, wait_for
from redis_cluster import RedisCluster
from servers import MotoServer
from worlds import StoreWorld, WorldKind

from core import shards
from core.models import Scope
from core.nodes import Space

RESUME = 120  # seconds the writers may take to resume after the kill: generous, it is not a speed test
AFTER = 20  # files each writer acknowledges after the failover before it stops


class Writer(threading.Thread):
    """Writes ``<dir>/<name>-<i>`` one after another, recording each one acknowledged and its time."""

    def __init__(self, directory: Path, name: str) -> None:
        super().__init__(daemon=True)
        self.directory, self.name = directory, name
        self.acknowledged: dict[str, bytes] = {}
        self.times: list[float] = []
        self.errors: list[str] = []
        self.stop_after: int | None = None  # once set: acknowledged files to stop at
        self.done = threading.Event()

    def run(self) -> None:
        i = 0
        try:
            while self.stop_after is None or len(self.acknowledged) < self.stop_after:
                path = self.directory / f"{self.name}-{i}"
                data = f"{self.name} {i}\n".encode() * 50
                try:
                    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
                    try:
                        os.write(fd, data)
                        os.fsync(fd)
                    finally:
                        os.close(fd)
                except OSError as exc:  # refused while the master was away: not acknowledged, written again
                    self.errors.append(f"{path.name}: {exc}")
                    time.sleep(0.05)
                    continue
                self.acknowledged[path.name] = data
                self.times.append(time.monotonic())
                i += 1
        finally:
            self.done.set()

    def stall(self) -> float:
        """The longest wait between two acknowledged files."""
        return max((b - a for a, b in zip(self.times, self.times[1:])), default=0.0)


def test_a_master_killed_under_two_writing_mounts_loses_nothing_acknowledged(
    tmp_path: Path, own_redis_cluster: RedisCluster, moto_server: MotoServer
) -> None:
    cluster = own_redis_cluster
    world = StoreWorld(WorldKind.REDIS_CLUSTER_S3, redis=cluster, moto=moto_server).shared(tmp_path / "store")
    a = start_mount(tmp_path / "a", tmp_path / "a-data", world=world, check_log=False)
    b = start_mount(tmp_path / "b", tmp_path / "b-data", world=world, check_log=False)
    try:
        on_a, on_b = a.user_dir("alice"), b / "users" / "alice"
        wait_for(on_b.is_dir, 30, "alice's directory on the second mount")
        shard = shards.of_space(Space(sandbox_id=a.sandbox or "default", scope=Scope.USER, user_id="alice"))
        victim = cluster.node_of_key(f"{world.prefix(tmp_path / 'store')}:{{{shard}}}:ino")
        writers = [Writer(on_a, "a"), Writer(on_b, "b")]
        for writer in writers:
            writer.start()
        wait_for(lambda: all(len(w.acknowledged) >= 5 for w in writers), 60, "writes before the kill")
        before = [len(w.acknowledged) for w in writers]
        cluster.kill(victim)
        heir = cluster.wait_failover(victim)
        for writer, count in zip(writers, before):
            writer.stop_after = len(writer.acknowledged) + AFTER
        for writer in writers:
            assert writer.done.wait(RESUME), f"writer {writer.name} did not resume: {writer.errors[-3:]}"
        print(f"\nmaster {victim} killed, {heir} took over; longest stall per writer: "
              + ", ".join(f"{w.name} {w.stall():.2f} s ({len(w.errors)} refused)" for w in writers))
        for writer in writers:
            for name, data in writer.acknowledged.items():
                assert (on_a / name).read_bytes() == data, name
                assert (on_b / name).read_bytes() == data, name
        listed = set(os.listdir(on_a))
        assert all(set(w.acknowledged) <= listed for w in writers)
    finally:
        b.stop()
        a.stop()
        world.cleanup()
