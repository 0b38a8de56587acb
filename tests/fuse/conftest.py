"""Fixtures for tests against a real mount (see ``mounting.py`` for the machinery).

``mount`` is one fresh mount of a fresh data dir with ``--sandbox app``, so
``sessions/``, ``users/`` and ``shared/`` are at its root. Other options go
through indirect parametrization::

    @pytest.mark.parametrize("mount", [{"sandbox": None, "args": ["-o", "allow_other"]}], indirect=True)

``mount_factory`` makes more mounts (another data dir, the same one again
after a remount, ...); every mount it made is unmounted and checked at
teardown: the process must exit 0 and its log must be free of errors.

Both run every test twice: on the embedded default and on Redis + S3 (the
session's redis-server and moto, a key prefix per data dir; see
``worlds.py``). A test marked ``embedded_only`` (or ``slow``) runs on the
embedded default alone: the multi-GiB and many-example tests, whose cost on
moto would be moto's, and tests about the data dir's own files.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from mounting import Mount, start_mount, stop_mounts
from worlds import EMBEDDED, StoreWorld, WorldKind

MountFactory = Callable[..., Mount]
EMBEDDED_ONLY = ("embedded_only", "slow")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "embedded_only(reason): mount tests run on the embedded default alone")


# Modules whose mount tests run on a Redis Cluster too (issue #17): mounts sharing a store, the tools
# users run, the xattrs (presign). The others run on the embedded default and on one Redis.
ON_CLUSTER_TOO = ("test_fuse_multimount", "test_fuse_tools", "test_fuse_xattrs")


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "world" in metafunc.fixturenames:
        pinned = any(metafunc.definition.get_closest_marker(name) for name in EMBEDDED_ONLY)
        kinds = [WorldKind.EMBEDDED] if pinned else [WorldKind.EMBEDDED, WorldKind.REDIS_S3]
        if not pinned and metafunc.module.__name__.rpartition(".")[2] in ON_CLUSTER_TOO:
            kinds.append(WorldKind.REDIS_CLUSTER_S3)
        metafunc.parametrize("world", kinds, indirect=True, ids=[k.value for k in kinds])


@pytest.fixture
def world(request: pytest.FixtureRequest) -> Iterator[StoreWorld]:
    """Where the mounts of this test keep their store."""
    kind = getattr(request, "param", WorldKind.EMBEDDED)
    if kind is WorldKind.EMBEDDED:
        yield EMBEDDED
        return
    server = request.getfixturevalue("redis_cluster" if kind is WorldKind.REDIS_CLUSTER_S3 else "redis_server")
    made = StoreWorld(kind, redis=server, moto=request.getfixturevalue("moto_server"))
    try:
        yield made
    finally:
        made.cleanup()


@pytest.fixture
def mount_factory(tmp_path: Path, world: StoreWorld) -> Iterator[MountFactory]:
    made: list[Mount] = []

    def make(name: str = "mnt", *, data_dir: Path | None = None, **options) -> Mount:
        options.setdefault("world", world)
        mount = start_mount(tmp_path / name, data_dir or tmp_path / f"{name}-data", **options)
        made.append(mount)
        return mount

    yield make
    stop_mounts(made)


@pytest.fixture
def mount(request: pytest.FixtureRequest, mount_factory: MountFactory) -> Mount:
    return mount_factory(**getattr(request, "param", {}))


@pytest.fixture
def alice(mount: Mount) -> Path:
    """``users/alice`` in the mount: a user space for tests to write into."""
    return mount.user_dir("alice")
