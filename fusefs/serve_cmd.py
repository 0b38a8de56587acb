"""``artifactfs serve``: the presign HTTP service for a data dir, as its own process.

It opens the same backends a mount of that data dir uses (filesystem blobs
and SQLite metadata by default, or what ``ARTIFACT_PROVIDER`` and friends
name) and serves presigned URLs that any store on that data dir signs: the
signing key lives in the data dir, so the application and this process agree
on it without configuration.

To run the service inside a mount instead (``artifactfs mount --serve``), the
mount starts :func:`core.transfers.service.serve` in its own trio nursery with
``build_transfers(namespace, settings)``; see :func:`run_service`.
"""

from __future__ import annotations

import argparse
import signal
import sys
from pathlib import Path

import trio

from core.config import backends_of, build_backends, build_transfers, checked
from core.errors import ArtifactStoreError
from core.infra.clock import SystemClock
from core.settings import Settings
from core.transfers import monitor
from core.transfers.service import serve
from core.tree.namespace import Namespace
from fusefs.defaults import COMMAND_DEFAULTS
from fusefs.options import default_data_dir


def settings_for(data_dir: Path | None, public_url: str | None = None, *, settings: Settings | None = None) -> Settings:
    """The store on ``data_dir``: ``settings`` (default: from the environment) with the data dir and public URL."""
    settings = settings or Settings.from_env(defaults=COMMAND_DEFAULTS)
    update: dict[str, object] = {"fs_root": data_dir or default_data_dir(settings)}
    if public_url:
        update["presign"] = settings.presign.model_copy(update={"base_url": public_url})
    return checked(settings.model_copy(update=update))


async def run_service(
    settings: Settings, host: str | None, port: int | None, metrics: str | None = None, *,
    task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Open the backends ``settings`` names and serve until cancelled; reports the URL once listening.

    ``metrics``: also serve ``/metrics`` and ``/healthz`` at that ``HOST:PORT``.
    """
    monitor_listener = monitor.listen(metrics) if metrics is not None else None  # before anything else
    blobs, meta = build_backends(settings)
    await blobs.open()
    await meta.open()
    try:
        ns = Namespace(meta, blobs, SystemClock(), settings.limits)
        transfers = build_transfers(ns, settings)
        async with trio.open_nursery() as nursery:
            if monitor_listener is not None:
                await nursery.start(monitor.serve, ns.health, monitor_listener)
            await serve(transfers, host, port, task_status=task_status)
    finally:
        with trio.CancelScope(shield=True):
            await meta.close()
            await blobs.close()


async def _main(args: argparse.Namespace) -> None:
    settings = settings_for(args.data_dir, args.public_url)
    blobs, _ = backends_of(settings)
    if blobs.in_memory:
        raise SystemExit(
            "artifactfs serve: the memory backend keeps artifacts inside one process; "
            "serve them from that process with core.transfers.service.serve(store.transfers)"
        )
    async with trio.open_nursery() as nursery:
        url = await nursery.start(run_service, settings, args.host, args.port, args.metrics)
        print(f"artifactfs serve: {url} (data dir {settings.fs_root})", flush=True)
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async for _ in signals:
                nursery.cancel_scope.cancel()
                break


def run(args: argparse.Namespace) -> int:
    """Run with already-parsed arguments (the ``artifactfs`` CLI's subcommand)."""
    try:
        trio.run(_main, args)
    except ArtifactStoreError as exc:
        print(f"artifactfs serve: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"artifactfs serve: {exc}", file=sys.stderr)
        return 1
    return 0
