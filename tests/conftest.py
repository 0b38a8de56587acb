"""Shared fixtures: a store on every embedded backend, with a clock tests can move."""

from __future__ import annotations

import json
import subprocess
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from redis_cluster import own_redis_cluster, redis_cluster  # noqa: F401 (fixtures)
from servers import moto_server, own_moto, own_redis, redis_server  # noqa: F401 (fixtures)
from storekit import BACKENDS, make_store

from core import ArtifactStore, Limits
from core.infra.clock import ManualClock

CLAIMS_OPTION = "--semantics-claims"


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        CLAIMS_OPTION, metavar="FILE",
        help="write, as JSON, the docs/SEMANTICS.md statements each collected test claims (tests/test_semantics_doc.py)",
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # The longest tests first: workers hand out tests in this order, and one started last would
    # hold the whole run open for minutes after the others are done.
    items.sort(key=lambda item: not (item.get_closest_marker("slow") or item.get_closest_marker("heavy")))
    target = config.getoption(CLAIMS_OPTION)
    if target:
        claims = {item.nodeid: [i for mark in item.iter_markers("semantics") for i in mark.args] for item in items}
        Path(target).write_text(json.dumps(claims, indent=0))


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
def limits() -> Limits:
    return Limits()


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


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 24 MiB file system for a data dir to fill up (a tmpfs: the tests run as root).

    Listed before a mount's fixture, it is unmounted after that mount stops.
    """
    disk = tmp_path / "small-disk"
    disk.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=24m,mode=0700", "tmpfs", str(disk)], check=True)
    try:
        yield disk
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=False)
