"""The asyncio bridge: direct under asyncio, one background loop under trio, cancellation carried over."""

from __future__ import annotations

import asyncio
import threading

import anyio
import anyio.to_thread
import pytest

from core.infra import aio_bridge


async def where() -> tuple[asyncio.AbstractEventLoop, int]:
    return asyncio.get_running_loop(), threading.get_ident()


async def test_under_trio_calls_run_on_the_bridge_loop() -> None:
    loop, thread = await aio_bridge.run(where)
    assert loop is aio_bridge.bridge_loop() and thread != threading.get_ident()
    assert await aio_bridge.run(where) == (loop, thread)  # one loop for every call


def test_under_asyncio_calls_go_straight_to_the_callers_loop() -> None:
    async def main() -> None:
        assert await aio_bridge.run(where) == (asyncio.get_running_loop(), threading.get_ident())

    asyncio.run(main())


async def test_errors_cross_with_their_type() -> None:
    async def fail(message: str) -> None:
        raise KeyError(message)

    with pytest.raises(KeyError, match="lost"):
        await aio_bridge.run(fail, "lost")


async def test_cancelling_the_caller_cancels_the_asyncio_side() -> None:
    started, ended = threading.Event(), threading.Event()
    seen: list[str] = []

    async def slow() -> None:
        started.set()
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            seen.append("cancelled")
            raise
        finally:
            ended.set()

    async with anyio.create_task_group() as tg:
        tg.start_soon(aio_bridge.run, slow)
        assert await anyio.to_thread.run_sync(started.wait, 10)
        tg.cancel_scope.cancel()
    assert ended.wait(10) and seen == ["cancelled"]


async def test_loop_local_values_live_and_die_on_their_loop() -> None:
    made: list[asyncio.AbstractEventLoop] = []
    disposed: list[tuple[str, asyncio.AbstractEventLoop]] = []

    async def make() -> str:
        made.append(asyncio.get_running_loop())
        return f"client-{len(made)}"

    async def dispose(value: str) -> None:
        disposed.append((value, asyncio.get_running_loop()))

    local: aio_bridge.LoopLocal[str] = aio_bridge.LoopLocal(make, dispose)
    assert await aio_bridge.run(local.get) == await aio_bridge.run(local.get) == "client-1"

    def from_asyncio() -> str:
        async def main() -> str:
            value = await local.get()
            await local.dispose_all()  # the asyncio caller's own, and the bridge's through the bridge
            return value

        return asyncio.run(main())

    assert await anyio.to_thread.run_sync(from_asyncio) == "client-2"
    assert made[0] is aio_bridge.bridge_loop() and made[1] is not made[0]
    assert sorted(disposed, key=lambda d: d[0]) == [("client-1", made[0]), ("client-2", made[1])]
    await local.dispose_all()
    assert len(disposed) == 2  # nothing left to dispose of twice
