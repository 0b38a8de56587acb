"""An unlink on Redis + S3 asks S3 nothing: the blob waits out its grace period in the gc queue.

The mount's S3 requests go through a counting front (:mod:`s3front`); the
unlinks of files whose bytes are in the bucket must make none (issue 12: a
synchronous DELETE per unlink would cost a round trip to S3 each). The
blobs stay where readers that opened them still find them (S-grace-delete).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from mounting import Mount, start_mount
from s3front import S3Front
from servers import MotoServer, RedisServer
from worlds import StoreWorld, WorldKind

FILES = 20


class _ViaFront:
    """moto, as reached through the front: what a world hands its mounts as the S3 endpoint."""

    def __init__(self, moto: MotoServer, front: S3Front) -> None:
        self._moto, self.endpoint = moto, front.endpoint

    def __getattr__(self, name: str) -> object:
        return getattr(self._moto, name)


@pytest.fixture
def front(moto_server: MotoServer) -> Iterator[S3Front]:
    with S3Front(moto_server.endpoint) as running:
        yield running


@pytest.fixture
def mount(tmp_path: Path, redis_server: RedisServer, moto_server: MotoServer, front: S3Front) -> Iterator[Mount]:
    world = StoreWorld(WorldKind.REDIS_S3, redis=redis_server, moto=_ViaFront(moto_server, front))  # type: ignore[arg-type]
    made = start_mount(tmp_path / "mnt", tmp_path / "data", world=world)
    try:
        yield made
    finally:
        made.stop()


@pytest.mark.semantics("S-grace-delete")
def test_an_unlink_makes_no_s3_request(mount: Mount, front: S3Front) -> None:
    home = mount.user_dir("alice")
    paths = [home / f"f{i:02d}" for i in range(FILES)]
    for path in paths:
        path.write_bytes(os.urandom(4096))
    assert len(front.puts()) >= FILES  # the bytes went through the front: it sees this mount's requests
    before = len(front.seen)
    for path in paths:
        os.unlink(path)
    assert front.seen[before:] == []
    assert os.listdir(home) == []
