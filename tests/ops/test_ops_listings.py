"""Lookups in name order answered from a page read ahead (fusefs.listings), on Redis.

Counted in round trips to Redis (core.infra.tally), never timed. The mount
is set up as on a store that follows notices (``attrs.handed``); a host that
changes the store elsewhere is a second Namespace on the same prefix, and
its notice is what the follower would turn into ``listings.drop()``.
"""

from __future__ import annotations

import errno
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from opskit import ROOT, SIGNER, Fields, Kernel, ctx, errno_of, kernel
from servers import RedisServer

from core.backends.meta.redis.store import RedisMetaStore
from core.infra.tally import tally
from fusefs.handed import Handed
from fusefs.listings import PAGE_NAMES

FILES = 300
DIR = "users/alice/d"


@pytest.fixture
async def k(tmp_path: Path, redis_server: RedisServer) -> AsyncIterator[Kernel]:
    meta = RedisMetaStore(redis_server.url, SIGNER, prefix=f"ls-{uuid.uuid4().hex[:12]}", notify=True)
    async with kernel(tmp_path, meta=meta) as made:
        made.ops.attrs.handed = Handed(made.ops.inodes.root_ino, 600.0, 1.0)  # as a mount that follows notices
        await made.directory(DIR)
        for i in range(FILES):
            fh, _ = await made.create(f"{DIR}/f{i:04d}")
            await made.close(fh)
        yield made


async def _walk(k: Kernel, names: list[str]) -> tuple[int, list[int]]:
    """Look each name up in ``DIR`` as ``stat`` would after the kernel forgot it: (round trips, inodes)."""
    parent = await k.ino(DIR)
    with tally() as counted:
        inos = [int((await k.ops.lookup(parent, name.encode(), ctx(ROOT))).st_ino) for name in names]
    return counted.round_trips, inos


NAMES = [f"f{i:04d}" for i in range(FILES)]


async def test_lookups_in_name_order_cost_a_round_trip_a_page(k: Kernel) -> None:
    expected = [int(n.ino) for n in sorted(await k.ns.list(await k.ns.get(k.ops.inodes.node(await k.ino(DIR)))),
                                           key=lambda n: n.name)]
    trips, inos = await _walk(k, NAMES)
    assert inos == expected
    pages = -(-FILES // PAGE_NAMES)
    assert trips <= 2 * (pages + 1) + 1, trips  # a lookup and a page each time the walk leaves a window; was 300


async def test_lookups_out_of_order_read_no_pages(k: Kernel) -> None:
    names = NAMES[::-1][:50]  # descending: no walk to read ahead for
    trips, _ = await _walk(k, names)
    assert trips == len(names)


@pytest.mark.semantics("S-consistency-cache")
async def test_a_change_through_the_mount_is_seen_by_the_next_lookup(k: Kernel) -> None:
    await _walk(k, NAMES[:10])  # a window over the first names
    parent = await k.ino(DIR)
    await k.unlink(f"{DIR}/f0011")
    assert await errno_of(k.ops.lookup(parent, b"f0011", ctx(ROOT))) == errno.ENOENT
    fh, _ = await k.create(f"{DIR}/f0011a")
    await k.close(fh)
    await _walk(k, ["f0010", "f0011a"])
    await k.setattr(f"{DIR}/f0012", Fields(update_mode=True), st_mode=0o100600)
    assert (await k.ops.lookup(parent, b"f0012", ctx(ROOT))).st_mode & 0o777 == 0o600
    await k.rename(f"{DIR}/f0013", f"{DIR}/f0013b")
    assert await errno_of(k.ops.lookup(parent, b"f0013", ctx(ROOT))) == errno.ENOENT
    assert (await k.ops.lookup(parent, b"f0013b", ctx(ROOT))).st_ino


@pytest.mark.semantics("S-consistency-cache")
async def test_a_change_elsewhere_is_seen_once_its_notice_drops_the_windows(k: Kernel) -> None:
    await _walk(k, NAMES[:10])
    other = k.ns  # the same store through another face: the change does not pass the handlers
    parent = await k.ino(DIR)
    await other.unlink((await other.entry(k.ops.inodes.node(parent), "f0011"))[1])  # type: ignore[arg-type]
    k.ops.listings.drop()  # what the follower does with the notice of that change
    assert await errno_of(k.ops.lookup(parent, b"f0011", ctx(ROOT))) == errno.ENOENT


@pytest.mark.semantics("S-consistency-cache")
async def test_while_notices_are_not_trusted_every_lookup_asks_the_store(k: Kernel) -> None:
    assert k.ops.attrs.handed is not None
    k.ops.attrs.handed.trusted = False  # a writer without notices is about
    trips, _ = await _walk(k, NAMES[:50])
    assert trips == 50

