"""Fixtures for tests against a real mount (see ``mounting.py`` for the machinery).

``mount`` is one fresh mount of a fresh data dir with ``--sandbox app``, so
``sessions/``, ``users/`` and ``shared/`` are at its root. Other options go
through indirect parametrization::

    @pytest.mark.parametrize("mount", [{"sandbox": None, "args": ["-o", "allow_other"]}], indirect=True)

``mount_factory`` makes more mounts (another data dir, the same one again
after a remount, ...); every mount it made is unmounted and checked at
teardown: the process must exit 0 and its log must be free of errors.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from mounting import Mount, start_mount

MountFactory = Callable[..., Mount]


@pytest.fixture
def mount_factory(tmp_path: Path) -> Iterator[MountFactory]:
    made: list[Mount] = []

    def make(name: str = "mnt", *, data_dir: Path | None = None, **options) -> Mount:
        mount = start_mount(tmp_path / name, data_dir or tmp_path / f"{name}-data", **options)
        made.append(mount)
        return mount

    yield make
    failures = []
    for mount in reversed(made):
        try:
            mount.stop()
        except AssertionError as exc:
            failures.append(exc)
    if failures:
        raise failures[0]


@pytest.fixture
def mount(request: pytest.FixtureRequest, mount_factory: MountFactory) -> Mount:
    return mount_factory(**getattr(request, "param", {}))


@pytest.fixture
def alice(mount: Mount) -> Path:
    """``users/alice`` in the mount: a user space for tests to write into."""
    return mount.user_dir("alice")
