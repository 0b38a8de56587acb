"""Shared fixtures: a store on every embedded backend, with a clock tests can move."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from core import ArtifactStore, Limits
from core.clock import ManualClock
from servers import moto_server, redis_server, redis_s3_settings  # noqa: F401 (session fixtures)

BACKENDS = ["memory", "fs-sqlite", "redis-s3"]


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
def limits() -> Limits:
    return Limits()


def make_store(backend: str, root: Path, clock: ManualClock, limits: Limits, **kw) -> ArtifactStore:
    """A store on ``backend`` ("memory" or "fs-sqlite") rooted at ``root``."""
    if backend == "memory":
        return ArtifactStore(storage_provider="memory", session_provider="memory", clock=clock, limits=limits, **kw)
    if backend == "fs-sqlite":
        return ArtifactStore(
            storage_provider="filesystem", session_provider="sqlite", fs_root=root, clock=clock, limits=limits, **kw
        )
    if backend == "redis-s3":  # the session's redis-server and moto, with key prefixes of this root's own
        return ArtifactStore(settings=redis_s3_settings(root), clock=clock, limits=limits, **kw)
    raise ValueError(backend)


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    if request.param == "redis-s3":
        request.getfixturevalue("redis_server")
        request.getfixturevalue("moto_server")
    return request.param


@pytest.fixture
async def store(backend: str, tmp_path: Path, clock: ManualClock, limits: Limits) -> AsyncIterator[ArtifactStore]:
    async with make_store(backend, tmp_path / "data", clock, limits) as s:
        yield s


@pytest.fixture
async def admin_store(backend: str, tmp_path: Path, clock: ManualClock, limits: Limits) -> AsyncIterator[ArtifactStore]:
    async with make_store(backend, tmp_path / "data", clock, limits, admin=True) as s:
        yield s
