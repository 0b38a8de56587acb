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
from fusefs.fairness import PerUid

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
        assert k.ops.fair.running(ALICE.uid) == 0 and k.ops.fair._shares == {}  # nothing kept for idle uids


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


async def test_a_waiter_called_off_leaves_no_slot_behind() -> None:
    """A queued request cancelled (its caller interrupted) gives up its place; one cancelled just
    before the slot was handed to it passes the slot on. Either way the uid keeps its whole share."""
    fair = PerUid(per_uid=1)
    release = trio.Event()
    entered: list[str] = []

    async def request(tag: str, task_status: trio.TaskStatus[trio.CancelScope] = trio.TASK_STATUS_IGNORED) -> None:
        with trio.CancelScope() as scope:
            task_status.started(scope)
            async with fair.turn(ALICE.uid):
                entered.append(tag)
                await release.wait()

    await fair._enter(ALICE.uid)  # this test holds the uid's one slot
    async with trio.open_nursery() as nursery:
        waiting = [await nursery.start(request, f"w{n}") for n in range(3)]
        await trio.testing.wait_all_tasks_blocked()
        assert fair.running(ALICE.uid) == 1 and fair.waiting(ALICE.uid) == 3
        waiting[0].cancel()  # called off while queued
        await trio.testing.wait_all_tasks_blocked()
        assert fair.running(ALICE.uid) == 1 and fair.waiting(ALICE.uid) == 2
        # Called off, and handed the slot before it ran again: it must pass the slot to w2.
        waiting[1].cancel()
        fair._leave(ALICE.uid)  # the slot goes to w1's Event
        await trio.testing.wait_all_tasks_blocked()
        assert entered == ["w2"]
        assert fair.running(ALICE.uid) == 1 and fair.waiting(ALICE.uid) == 0
        release.set()
    assert fair.running(ALICE.uid) == 0 and fair._shares == {}


async def test_a_finished_request_hands_its_slot_to_the_first_in_line() -> None:
    """Queued requests run in the order they came, and a newcomer does not overtake them."""
    fair = PerUid(per_uid=1)
    release = trio.Event()
    order: list[int] = []

    async def request(n: int) -> None:
        async with fair.turn(ALICE.uid):
            order.append(n)
            if n == 0:
                await release.wait()

    async with trio.open_nursery() as nursery:
        for n in range(5):
            nursery.start_soon(request, n)
            await trio.testing.wait_all_tasks_blocked()
        release.set()
    assert order == [0, 1, 2, 3, 4]
    assert fair._shares == {}
