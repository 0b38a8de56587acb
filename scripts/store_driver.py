"""One artifact store under the core bench, in a process of its own, measured one round per request.

Why a process: chuk-artifacts runs from a side venv whose packages must never
mix with ours, and the peak RSS of a 256 MiB upload is a figure of a whole
process. Our store runs through the same driver, so both sides are timed by
the same loop code, with the same sizes and concurrency. The driver uses the
standard library only (plus trio for ``--loop trio`` and the store measured),
so it runs in either venv; ``bench_core`` imports its names (``Op``, sizes).

Protocol, one JSON object per line. After setup (store opened, 64 warm
items, the listing corpus) the driver prints ``{"ready": ...}``. Each line
read on stdin is a round, ``{"round": n, "rates": [[op, conc], ...],
"streams": true}``, answered by ``{"figures": [{"op", "conc", "value",
"error"}, ...]}``. An empty line or EOF closes the store and ends it. The
answers go to the original stdout; whatever the libraries print goes to
stderr, so it cannot break the protocol.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import importlib.metadata
import itertools
import json
import os
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any, TextIO

KiB, MiB, MB = 1 << 10, 1 << 20, 1_000_000
ITEM = KiB
STREAM = 256 * MiB
BLOCK = MiB
WARM_ITEMS = 64  # at least the highest concurrency, so workers never share an item
LIST_ITEMS = 1_000  # the listed session holds these ...
LIST_SESSIONS = 10  # ... among this many sessions of as many items each
# The limit list_by_session is given. chuk's filesystem provider keeps a second copy of each file under its
# filename beside the object, and its listing counts those against the limit (then drops them): with a limit
# of 1,000 it returns 500 items. Twice the items lets it return all 1,000; ours returns 1,000 either way.
LIST_LIMIT = 2 * LIST_ITEMS
SETUP_CONCURRENCY = 64
TTL = 6 * 3600  # seconds, given to every store: chuk's default (15 min) could expire the corpus mid-run
REPO = Path(__file__).resolve().parents[1]


class Impl(str, Enum):
    ARTIFACTFS = "artifactfs"
    CHUK = "chuk"


class Provider(str, Enum):
    MEMORY = "memory"
    FILESYSTEM = "filesystem"  # ours: filesystem blobs + SQLite in --root; chuk: its filesystem provider at --root
    ENV = "env"  # whatever the environment configures (the peers section: Redis + S3)


class Loop(str, Enum):
    ASYNCIO = "asyncio"
    TRIO = "trio"


class Op(str, Enum):
    STORE = "store"
    RETRIEVE = "retrieve"
    METADATA = "metadata"
    UPDATE = "update_file"
    UPDATE_META = "update_file meta-only"
    LIST = "list_by_session"
    STREAM_UPLOAD = "stream_upload"
    UPLOAD_PEAK_RSS = "stream_upload peak RSS"
    UPLOAD_START_RSS = "RSS before stream_upload"
    STREAM_DOWNLOAD = "stream_download"
    STREAM_DOWNLOAD_RAW = "stream_download verify=False"
    RETRIEVE_BIG = "retrieve whole"


RATE_OPS = (Op.STORE, Op.RETRIEVE, Op.METADATA, Op.UPDATE, Op.UPDATE_META, Op.LIST)


# -- the event loop, either kind


class Runner:
    """The few things the driver needs from an event loop, on asyncio or trio alike."""

    def __init__(self, loop: Loop) -> None:
        self.loop = loop

    def run(self, main: Callable[[], Awaitable[None]]) -> None:
        if self.loop is Loop.TRIO:
            import trio

            trio.run(main)
        else:
            asyncio.run(main())  # type: ignore[arg-type]

    async def gather(self, jobs: list[Callable[[], Awaitable[object]]]) -> None:
        """Run every job concurrently: a trio nursery, or asyncio.gather of as many tasks."""
        if self.loop is Loop.TRIO:
            import trio

            async with trio.open_nursery() as nursery:
                for job in jobs:
                    nursery.start_soon(job)
        else:
            await asyncio.gather(*(job() for job in jobs))

    async def readline(self) -> str:
        if self.loop is Loop.TRIO:
            import trio

            return await trio.to_thread.run_sync(sys.stdin.readline)
        return await asyncio.to_thread(sys.stdin.readline)


# -- the process's memory


def _status_kib(field_name: str) -> float | None:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(f"{field_name}:"):
            return int(line.split()[1]) * KiB / MiB
    return None


def reset_peak_rss() -> None:
    Path("/proc/self/clear_refs").write_text("5\n")  # VmHWM starts again from the current RSS


# -- the store under test


@dataclass
class Api:
    """The store's class and request models: the same names in both libraries."""

    store_cls: Any
    upload_request: Any
    download_request: Any
    version: str

    def download_fields(self) -> set[str]:
        return set(getattr(self.download_request, "model_fields", {}))


def load_api(impl: Impl) -> Api:
    if impl is Impl.CHUK:
        import chuk_artifacts as lib

        version = importlib.metadata.version("chuk-artifacts")
    else:
        sys.path.insert(0, str(REPO))
        import core as lib

        version = "worktree " + str(REPO)
    return Api(lib.ArtifactStore, lib.StreamUploadRequest, lib.StreamDownloadRequest, version)


def open_store(api: Api, impl: Impl, provider: Provider, root: Path) -> Any:
    if provider is Provider.ENV:
        return api.store_cls()
    if provider is Provider.MEMORY:
        return api.store_cls(storage_provider="memory", session_provider="memory")
    root.mkdir(parents=True, exist_ok=True)
    if impl is Impl.CHUK:  # its root: ARTIFACT_FS_ROOT, set before the import (see main)
        return api.store_cls(storage_provider="filesystem", session_provider="memory")
    return api.store_cls(storage_provider="filesystem", session_provider="sqlite", fs_root=root)


# -- the measurements


@dataclass
class Bench:
    store: Any
    api: Api
    runner: Runner
    seconds: float
    payload: bytes = field(default_factory=lambda: os.urandom(ITEM))
    payload2: bytes = field(default_factory=lambda: os.urandom(ITEM))
    session: str = ""
    listed: str = ""
    ids: list[str] = field(default_factory=list)
    names: itertools.count = field(default_factory=itertools.count)

    async def put(self, session: str, prefix: str = "item") -> str:
        return await self.store.store(self.payload, mime="application/octet-stream", summary="bench",
                                      filename=f"{prefix}-{next(self.names)}.bin", session_id=session, ttl=TTL)

    async def setup(self) -> None:
        """What every round reads: warm items to read and update, and a session to list among many."""
        self.session = await self.store.create_session(user_id="bench")
        self.ids = [await self.put(self.session) for _ in range(WARM_ITEMS)]
        sessions = [await self.store.create_session(user_id="bench") for _ in range(LIST_SESSIONS)]
        self.listed = sessions[0]
        todo = iter([(s, i) for s in sessions for i in range(LIST_ITEMS)])

        async def filler() -> None:
            for session, _ in todo:
                await self.put(session, "listed")

        await self.runner.gather([filler] * SETUP_CONCURRENCY)
        listed = await self.store.list_by_session(self.listed, limit=LIST_LIMIT)
        if len(listed) != LIST_ITEMS:
            raise RuntimeError(f"list_by_session gave {len(listed)} items, not {LIST_ITEMS}")

    def op(self, op: Op, conc: int) -> Callable[[int, int], Awaitable[object]]:
        """``op(worker, n)``: each worker keeps to its own share of the items, so no two touch one."""
        shares = [self.ids[w::conc] for w in range(conc)]

        def mine(w: int, n: int) -> str:
            return shares[w][n % len(shares[w])]

        calls: dict[Op, Callable[[int, int], Awaitable[object]]] = {
            Op.STORE: lambda w, n: self.put(self.session),
            Op.RETRIEVE: lambda w, n: self.store.retrieve(mine(w, n)),
            Op.METADATA: lambda w, n: self.store.metadata(mine(w, n)),
            Op.UPDATE: lambda w, n: self.store.update_file(mine(w, n), data=self.payload2),
            Op.UPDATE_META: lambda w, n: self.store.update_file(mine(w, n), meta={"n": n}),
            Op.LIST: lambda w, n: self.store.list_by_session(self.listed, limit=LIST_LIMIT),
        }
        return calls[op]

    async def rate(self, op: Op, conc: int) -> float:
        """Calls per second of ``conc`` workers for ``seconds``, after one untimed call per worker."""
        call = self.op(op, conc)
        await self.runner.gather([lambda w=w: call(w, -1) for w in range(conc)])  # warm-up, not counted
        deadline = time.perf_counter() + self.seconds
        total = 0

        async def worker(w: int) -> None:
            nonlocal total
            n = 0
            while time.perf_counter() < deadline:
                await call(w, n)
                n += 1
            total += n

        start = time.perf_counter()
        await self.runner.gather([lambda w=w: worker(w) for w in range(conc)])
        return total / (time.perf_counter() - start)

    async def streams(self, round_no: int) -> dict[Op, float]:
        """A 256 MiB artifact uploaded (its peak RSS), streamed down, retrieved whole, deleted."""
        block = os.urandom(BLOCK)

        async def blocks() -> AsyncIterator[bytes]:
            for _ in range(STREAM // BLOCK):
                yield block

        got: dict[Op, float] = {}
        gc.collect()
        got[Op.UPLOAD_START_RSS] = _status_kib("VmRSS") or 0.0
        reset_peak_rss()
        start = time.perf_counter()
        artifact_id = await self.store.stream_upload(self.api.upload_request(
            data_stream=blocks(), mime="application/octet-stream", summary="bench", filename=f"big-{round_no}.bin",
            session_id=self.session, content_length=STREAM, ttl=TTL))
        got[Op.STREAM_UPLOAD] = STREAM / MB / (time.perf_counter() - start)
        got[Op.UPLOAD_PEAK_RSS] = _status_kib("VmHWM") or 0.0
        try:
            got[Op.STREAM_DOWNLOAD] = await self.download(artifact_id, {})
            if "verify" in self.api.download_fields():
                got[Op.STREAM_DOWNLOAD_RAW] = await self.download(artifact_id, {"verify": False})
            start = time.perf_counter()
            data = await self.store.retrieve(artifact_id)
            got[Op.RETRIEVE_BIG] = STREAM / MB / (time.perf_counter() - start)
            if len(data) != STREAM:
                raise RuntimeError(f"retrieve gave {len(data)} bytes, not {STREAM}")
            del data
        finally:
            await self.store.delete(artifact_id)
        return got

    async def download(self, artifact_id: str, extra: dict[str, Any]) -> float:
        start, got = time.perf_counter(), 0
        request = self.api.download_request(artifact_id=artifact_id, chunk_size=BLOCK, **extra)
        async for chunk in self.store.stream_download(request):
            got += len(chunk)
        if got != STREAM:
            raise RuntimeError(f"stream_download gave {got} bytes, not {STREAM}")
        return STREAM / MB / (time.perf_counter() - start)

    async def round(self, request: dict[str, Any]) -> list[dict[str, Any]]:
        figures: list[dict[str, Any]] = []
        for op_name, conc in request.get("rates", []):
            op = Op(op_name)
            try:
                figures.append({"op": op.value, "conc": conc, "value": await self.rate(op, conc)})
            except Exception as exc:  # noqa: BLE001 - one failed op must not lose the others
                figures.append({"op": op.value, "conc": conc, "value": None, "error": _said(exc)})
        if request.get("streams"):
            try:
                streamed = await self.streams(int(request.get("round", 0)))
                figures += [{"op": op.value, "conc": 1, "value": value} for op, value in streamed.items()]
            except Exception as exc:  # noqa: BLE001
                figures.append({"op": Op.STREAM_UPLOAD.value, "conc": 1, "value": None, "error": _said(exc)})
        return figures


def _said(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"[:300]


# -- the process


def _private_stdout() -> TextIO:
    """The protocol's channel; fd 1 (and print) now go to stderr, where a library's chatter can't hurt."""
    channel = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    return channel


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--impl", type=Impl, required=True)
    parser.add_argument("--provider", type=Provider, required=True)
    parser.add_argument("--loop", type=Loop, default=Loop.ASYNCIO)
    parser.add_argument("--root", type=Path, required=True, help="the data dir of a filesystem provider")
    parser.add_argument("--seconds", type=float, default=0.6, help="length of one timed run")
    args = parser.parse_args(argv)
    out = _private_stdout()
    runner = Runner(args.loop)
    if args.impl is Impl.CHUK and args.provider is Provider.FILESYSTEM:
        os.environ["ARTIFACT_FS_ROOT"] = str(args.root)  # chuk's filesystem provider reads it when imported

    async def serve() -> None:
        api = load_api(args.impl)
        started = time.perf_counter()
        async with open_store(api, args.impl, args.provider, args.root) as store:
            bench = Bench(store=store, api=api, runner=runner, seconds=args.seconds)
            await bench.setup()
            out.write(json.dumps({"ready": True, "version": api.version,
                                  "setup_seconds": time.perf_counter() - started}) + "\n")
            while line := (await runner.readline()).strip():
                out.write(json.dumps({"figures": await bench.round(json.loads(line))}) + "\n")

    try:
        runner.run(serve)
    except Exception as exc:
        out.write(json.dumps({"ready": False, "error": _said(exc)}) + "\n")
        raise
    return 0


if __name__ == "__main__":
    sys.exit(main())
