"""A real Redis Cluster for the tests: N masters (and optionally one replica each) on 127.0.0.1.

Every node is a :class:`servers.RedisServer` started with ``--cluster-enabled yes`` in a
directory of its own, on a free port, with its cluster bus on another free port
(``--cluster-port``: the default, port + 10000, is out of range for an ephemeral port).
``redis-cli --cluster create`` assigns the slots and the replicas; :meth:`RedisCluster.start`
then waits (polling) until every node sees the whole cluster and all agree on it:
``cluster_state:ok``, all 16384 slots assigned, every node known, none flagged failing, every
master with its replica(s) and every replica's link to its master up.

Like every server of :mod:`servers`, a node dies with the test process (``PR_SET_PDEATHSIG``).

Fixtures: ``redis_cluster`` (session, 3 masters, no replicas; tests share it, so they keep
to keys of their own) and ``own_redis_cluster`` (per test, 3 masters + 3 replicas, for tests
that kill nodes: :meth:`RedisCluster.kill` then :meth:`RedisCluster.wait_failover`).
A test module imports both from here (``from redis_cluster import redis_cluster``); a
session fixture is shared by all modules only once ``conftest.py`` imports it.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis
from servers import RedisServer, _die_with_parent, free_port, wait_until

SLOTS = 16384
HOST = "127.0.0.1"
START_TIMEOUT = 60.0  # generous: polled, so a quick start is not slowed down by it


class ClusterNodeServer(RedisServer):
    """One cluster node: a ``redis-server`` with cluster mode on, its bus on a port of its own."""

    name = "redis-node"

    def __init__(self, workdir: Path) -> None:
        super().__init__(workdir)
        self.bus_port = free_port()

    def command(self) -> list[str]:
        return [
            *super().command(),
            "--cluster-enabled", "yes", "--cluster-config-file", f"nodes-{self.port}.conf",
            "--cluster-node-timeout", "2000", "--cluster-port", str(self.bus_port),
            # A replica's first sync: diskless, at once (by default the master waits 5 s for more replicas)
            "--repl-diskless-sync", "yes", "--repl-diskless-sync-delay", "0",
        ]

    def client(self, *, text: bool = True) -> redis.Redis:
        # Plain strings: CLUSTER NODES/INFO are read raw (``execute_command("CLUSTER", ...)``
        # bypasses redis-py's parsers) and parsed here. Keys may hold any byte: moved with ``text=False``.
        return redis.Redis(host=HOST, port=self.port, socket_timeout=5, socket_connect_timeout=2, decode_responses=text)

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start_fresh(self, attempts: int = 5) -> None:
        """Start on new ports until one is free: another process may take a port ``free_port`` gave."""
        for attempt in range(attempts):
            try:
                self.start()
                return
            except RuntimeError:
                self.proc = None
                if attempt == attempts - 1:
                    raise
                self.port, self.bus_port = free_port(), free_port()


@dataclass(frozen=True)
class NodeView:
    """A line of ``CLUSTER NODES``."""

    node_id: str
    port: int
    flags: frozenset[str]
    master_id: str | None
    slots: tuple[tuple[int, int], ...]

    @property
    def is_master(self) -> bool:
        return "master" in self.flags and not self.flags & {"fail", "fail?", "handshake", "noaddr"}

    @property
    def is_replica(self) -> bool:
        return "slave" in self.flags


def _parse_nodes(text: str) -> list[NodeView]:
    views = []
    for line in text.splitlines():
        if not line.strip():
            continue
        fields = line.split()
        address = fields[1].split("@")[0]  # ip:port@cport[,hostname]
        slots = []
        for spec in fields[8:]:
            if spec.startswith("["):  # a slot being imported/migrated, not served
                continue
            first, _, last = spec.partition("-")
            slots.append((int(first), int(last or first)))
        views.append(NodeView(
            node_id=fields[0], port=int(address.rsplit(":", 1)[1]), flags=frozenset(fields[2].split(",")),
            master_id=None if fields[3] == "-" else fields[3], slots=tuple(slots),
        ))
    return views


def _info(text: str) -> dict[str, str]:
    return dict(line.split(":", 1) for line in text.splitlines() if ":" in line)


class RedisCluster:
    """A Redis Cluster of ``masters`` masters with ``replicas`` replicas each (0 or 1)."""

    def __init__(self, workdir: Path, masters: int = 3, replicas: int = 0) -> None:
        assert masters >= 3, "redis-cli --cluster create wants at least 3 masters"
        assert replicas in (0, 1)
        self.workdir = workdir
        self.replicas = replicas
        count = masters * (1 + replicas)
        # The cluster's order: redis-cli makes the first ``masters`` nodes masters
        self.nodes = [ClusterNodeServer(workdir / f"node-{i}") for i in range(count)]
        self._replicas_at_kill: dict[int, list[int]] = {}

    # -- life cycle

    def start(self) -> None:
        try:
            for node in self.nodes:
                node.start_fresh()
            self._create()
            self.wait_ok(START_TIMEOUT, with_replicas=True)
        except BaseException:
            self.stop()
            raise

    def _create(self) -> None:
        command = [
            "redis-cli", "--cluster", "create", *(f"{HOST}:{node.port}" for node in self.nodes),
            "--cluster-replicas", str(self.replicas), "--cluster-yes",
        ]
        with open(self.workdir / "cluster-create.log", "ab") as log:
            result = subprocess.run(
                command, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, timeout=START_TIMEOUT,
                preexec_fn=_die_with_parent,  # noqa: PLW1509 (only prctl runs before exec)
            )
        if result.returncode != 0:
            raise RuntimeError(f"redis-cli --cluster create failed ({result.returncode}); see {self.workdir}")

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()

    def kill(self, port: int) -> None:
        """SIGKILL the node on ``port``: it vanishes without a word, as a crashed host does."""
        node = self.node(port)
        assert node.proc is not None and node.alive, f"node {port} is not running"
        self._replicas_at_kill[port] = self.replicas_of(port)  # for wait_failover: they are its heirs
        os.kill(node.proc.pid, signal.SIGKILL)
        node.proc.wait(10)
        node.proc = None

    def restart(self, port: int) -> None:
        """Start a killed or stopped node again on its port; it rejoins (as a replica if it lost its slots)."""
        self.node(port).start()

    # -- what the cluster looks like

    def node(self, port: int) -> ClusterNodeServer:
        for node in self.nodes:
            if node.port == port:
                return node
        raise KeyError(f"no node on port {port}")

    def live_nodes(self) -> list[ClusterNodeServer]:
        return [node for node in self.nodes if node.alive]

    def addresses(self) -> list[tuple[str, int]]:
        """Every running node, for ``startup_nodes``."""
        return [(HOST, node.port) for node in self.live_nodes()]

    @property
    def url(self) -> str:
        """``redis://`` of the first running node among the first masters (a startup node for clients)."""
        node = next((n for n in self.nodes if n.alive), self.nodes[0])
        return f"redis://{HOST}:{node.port}/0"

    def _query(self, *args: str) -> str:
        """A ``CLUSTER ...`` reply from the first running node that answers."""
        error: Exception | None = None
        for node in self.live_nodes():
            try:
                with node.client() as client:
                    return client.execute_command("CLUSTER", *args)
            except redis.RedisError as e:
                error = e
        raise RuntimeError(f"no node answers CLUSTER {' '.join(args)}") from error

    def topology(self) -> list[NodeView]:
        return _parse_nodes(self._query("NODES"))

    def masters(self) -> list[tuple[str, int]]:
        """The nodes now master of some slots (failed ones left out), in slot order."""
        serving = [view for view in self.topology() if view.is_master and view.slots]
        return [(HOST, view.port) for view in sorted(serving, key=lambda view: min(view.slots))]

    def replicas_of(self, port: int) -> list[int]:
        views = self.topology()
        node_id = next(view.node_id for view in views if view.port == port)
        return [view.port for view in views if view.is_replica and view.master_id == node_id]

    def slot_of(self, key: str | bytes) -> int:
        return int(self._query("KEYSLOT", key))

    def node_of_key(self, key: str | bytes) -> int:
        """The port of the master serving ``key``'s slot."""
        slot = self.slot_of(key)
        for view in self.topology():
            if view.is_master and any(first <= slot <= last for first, last in view.slots):
                return view.port
        raise LookupError(f"no master serves slot {slot} of {key!r}")

    # -- waiting

    def migrate_slot(self, slot: int, to_port: int, *, batch: int = 2, pause: float = 0.02) -> int:
        """Move ``slot`` to master ``to_port`` as ``redis-cli --cluster reshard`` does (IMPORTING,
        MIGRATING, MIGRATE a few keys at a time, then the owner everywhere), slowly: ``pause`` seconds
        between batches, so clients meet the slot half moved. Answers the keys moved."""
        views = self.topology()
        target = next(v for v in views if v.port == to_port)
        source = next(v for v in views if v.is_master and any(a <= slot <= b for a, b in v.slots))
        if source.port == to_port:
            return 0
        with self.node(to_port).client() as dst, self.node(source.port).client(text=False) as src:
            dst.execute_command("CLUSTER", "SETSLOT", slot, "IMPORTING", source.node_id)
            src.execute_command("CLUSTER", "SETSLOT", slot, "MIGRATING", target.node_id)
            moved = 0
            while keys := src.execute_command("CLUSTER", "GETKEYSINSLOT", slot, batch):
                src.execute_command("MIGRATE", HOST, to_port, "", 0, 5000, "KEYS", *keys)
                moved += len(keys)
                time.sleep(pause)
            for view in views:
                if view.is_master:
                    with self.node(view.port).client() as node:
                        node.execute_command("CLUSTER", "SETSLOT", slot, "NODE", target.node_id)
        return moved

    def _node_view(self, node: ClusterNodeServer) -> tuple | None:
        """``node``'s view of the cluster (node, role, master, slots of each) if it reports a healthy one."""
        try:
            with node.client() as client:
                info = _info(client.execute_command("CLUSTER", "INFO"))
                if info.get("cluster_state") != "ok" or int(info.get("cluster_slots_assigned", 0)) != SLOTS:
                    return None
                if int(info.get("cluster_known_nodes", 0)) < len(self.nodes):
                    return None
                replication = client.info("replication")
                if replication["role"] != "master" and replication.get("master_link_status") != "up":
                    return None
                views = _parse_nodes(client.execute_command("CLUSTER", "NODES"))
        except redis.RedisError:
            return None
        live = {n.port for n in self.live_nodes()}
        if any(view.port in live and view.flags & {"fail", "fail?", "handshake", "noaddr"} for view in views):
            return None
        return tuple(sorted((view.node_id, view.port, view.is_replica, view.master_id, view.slots) for view in views))

    def is_ok(self, with_replicas: bool = False) -> bool:
        """Every running node reports ``cluster_state:ok`` and the same view of the whole cluster.

        ``with_replicas``: also every master serving slots has its replica(s) (running, linked up).
        """
        live = self.live_nodes()
        views = [self._node_view(node) for node in live]
        if not live or views[0] is None or any(view != views[0] for view in views):
            return False
        if with_replicas:
            ports = {node.port for node in live}
            for node_id, _, is_replica, _, slots in views[0]:
                if not is_replica and slots:
                    replicas = [v for v in views[0] if v[2] and v[3] == node_id and v[1] in ports]
                    if len(replicas) < self.replicas:
                        return False
        return True

    def wait_ok(self, timeout: float = START_TIMEOUT, with_replicas: bool = False) -> None:
        wait_until(
            lambda: self.is_ok(with_replicas), timeout, "every cluster node to report cluster_state:ok and agree",
            interval=0.05,
        )

    def wait_failover(self, old_port: int, timeout: float = START_TIMEOUT) -> int:
        """Wait until a replica of the (killed) master on ``old_port`` has taken over; return its port."""
        candidates = set(self._replicas_at_kill.get(old_port) or self.replicas_of(old_port))
        assert candidates, f"node {old_port} has no replica to fail over to"
        promoted: list[int] = []

        def taken_over() -> bool:
            try:
                now = self.topology()
            except RuntimeError:
                return False
            promoted[:] = [view.port for view in now if view.port in candidates and view.is_master and view.slots]
            return bool(promoted) and self.is_ok()

        wait_until(taken_over, timeout, f"a replica of {old_port} to take over", interval=0.05)
        return promoted[0]


# -- fixtures


@pytest.fixture(scope="session")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisCluster]:
    """3 masters, no replicas, for the session: keep to keys of the test's own."""
    cluster = RedisCluster(tmp_path_factory.mktemp("redis-cluster"))
    cluster.start()
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture
def own_redis_cluster(tmp_path: Path) -> Iterator[RedisCluster]:
    """3 masters with a replica each, for a test that kills nodes."""
    cluster = RedisCluster(tmp_path / "own-redis-cluster", replicas=1)
    cluster.start()
    try:
        yield cluster
    finally:
        cluster.stop()
