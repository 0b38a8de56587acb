"""One uid's flood of requests queues behind itself, not in front of other uids (issue #16).

Counted, not timed: uid A's requests are held in the store, and what is counted is how many of
them the mount lets run at once, and whether uid B's request gets through meanwhile.
"""

from __future__ import annotations

import errno
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing
from opskit import ROOT, Caller, ctx, errno_of, kernel

from core.nodes import Node

ALICE, BOB = Caller(uid=1001, gid=1001), Caller(uid=1002, gid=1002)


class Gate:
    """Holds every ``entry`` read of a store until opened, counting how many are held at once."""

    def __init__(self, meta: Any) -> None:
        self.meta, self.original = meta, meta.entry
        self.open = trio.Event()
        self.held = self.most = 0
        meta.entry = self.entry

    async def entry(self, parent: int, name: str) -> tuple[Node | None, Node | None]:
        self.held += 1
        self.most = max(self.most, self.held)
        try:
            await self.open.wait()
            return await self.original(parent, name)
        finally:
            self.held -= 1


@pytest.mark.semantics("S-fair-uids")
async def test_a_flooding_uid_runs_at_most_its_share_and_others_still_get_through(tmp_path: Path) -> None:
    async with kernel(tmp_path) as k:
        await k.write_file("users/alice/f", b"x")
        home = await k.ino("users/alice")
        f = await k.ino("users/alice/f")
        k.ops.fair.per_uid = 3
        gate = Gate(k.ns.meta)
        answered: list[int] = []

        async def alice_looks_up() -> None:
            answered.append((await k.ops.lookup(home, b"f", ctx(ALICE))).st_ino)

        async with trio.open_nursery() as nursery:
            for _ in range(40):
                nursery.start_soon(alice_looks_up)
            await trio.testing.wait_all_tasks_blocked()
            assert gate.held == 3  # before: all 40 ran at once, each taking its turn on the loop and the store
            assert k.ops.fair.running(ALICE.uid) == 3 and k.ops.fair.waiting(ALICE.uid) == 37
            # Bob's stat is not queued behind Alice's flood: it is answered while all of hers are held.
            assert (await k.ops.getattr(f, ctx(BOB))).st_ino == f
            assert (await k.ops.getattr(f, ctx(ROOT))).st_ino == f
            assert answered == []
            gate.open.set()
        assert answered == [f] * 40 and gate.most == 3
        assert k.ops.fair.running(ALICE.uid) == 0 and k.ops.fair._limiters == {}  # nothing kept for idle uids


@pytest.mark.semantics("S-fair-uids")
async def test_requests_on_open_handles_are_not_queued(tmp_path: Path) -> None:
    """A read or a close carries no caller: it rides on the turn its open took, so a flood of
    lookups never stands between a uid and the close of a file it already has open."""
    async with kernel(tmp_path) as k:
        await k.write_file("users/alice/f", b"hello")
        home = await k.ino("users/alice")
        fh = await k.open("users/alice/f", caller=ALICE)
        k.ops.fair.per_uid = 1
        gate = Gate(k.ns.meta)
        async with trio.open_nursery() as nursery:
            for _ in range(5):
                nursery.start_soon(k.ops.lookup, home, b"f", ctx(ALICE))
            await trio.testing.wait_all_tasks_blocked()
            assert gate.held == 1
            assert await k.read(fh, 0, 5) == b"hello"
            await k.close(fh)
            gate.open.set()


@pytest.mark.semantics("S-fair-uids")
async def test_requests_queued_for_their_turn_are_called_off_at_unmount(tmp_path: Path) -> None:
    """The watchdog calls off every running request at unmount; one still waiting for its uid's turn
    then must not start afresh and hold the unmount up."""
    async with kernel(tmp_path) as k:
        await k.write_file("users/alice/f", b"x")
        home = await k.ino("users/alice")
        k.ops.fair.per_uid = 1
        gate = Gate(k.ns.meta)
        codes: list[int | None] = []

        async def alice_looks_up() -> None:
            codes.append(await errno_of(k.ops.lookup(home, b"f", ctx(ALICE))))

        async with trio.open_nursery() as nursery:
            for _ in range(3):
                nursery.start_soon(alice_looks_up)
            await trio.testing.wait_all_tasks_blocked()
            assert gate.held == 1 and k.ops.fair.waiting(ALICE.uid) == 2
            k.ops.watchdog.stop()
            await trio.testing.wait_all_tasks_blocked()
            gate.open.set()  # what still waits in the store now would be answered, not called off
        assert codes == [errno.EIO] * 3 and gate.most == 1
