"""``/metrics`` and ``/healthz`` of a mount or a ``serve`` process (issue #11), on an address of their own.

Never on the presign service's port: that one may face the users, this one
is for the operator's scraper and probes. ``/metrics`` answers the
Prometheus exposition of :mod:`core.infra.metrics`; ``/healthz`` probes the
metadata and blob stores (:meth:`core.tree.namespace.Namespace.health`) and
answers 200 with each probe's result as JSON, or 503 if either failed. A few
connections at a time, each dropped after a few idle seconds: the port
cannot hold the process's file descriptors.
"""

from __future__ import annotations

import json
import logging
import socket
from collections.abc import Awaitable, Callable
from typing import Any

import anyio
import anyio.abc
import trio

from core.infra import metrics
from core.models import BackendHealth
from core.transfers.connections import bind, lifespan, serve_connections, url_of

log = logging.getLogger("artifactfs.monitor")

Health = Callable[[], Awaitable[dict[str, BackendHealth]]]
MAX_CONNECTIONS = 16
IDLE_SECONDS = 5.0


def listen(address: str) -> socket.socket:
    """The monitor's listening socket at ``HOST:PORT``, or a ConfigurationError naming it."""
    host, _, port = address.rpartition(":")
    return bind(host.strip("[]"), int(port), "the metrics endpoint", "the --metrics option")


class MonitorApp:
    """The ASGI application: two read-only paths."""

    def __init__(self, health: Health) -> None:
        self.health = health

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            await lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        if scope["method"] not in ("GET", "HEAD"):
            await _answer(send, 405, b"only GET\n", "text/plain; charset=utf-8")
        elif scope["path"] == "/metrics":
            body, content_type = metrics.exposition()
            await _answer(send, 200, body, content_type)
        elif scope["path"] == "/healthz":
            parts = await self.health()
            status = 200 if all(part.ok for part in parts.values()) else 503
            body = json.dumps({name: part.model_dump() for name, part in parts.items()}).encode() + b"\n"
            await _answer(send, status, body, "application/json")
        else:
            await _answer(send, 404, b"/metrics or /healthz\n", "text/plain; charset=utf-8")


async def _answer(send: Any, status: int, body: bytes, content_type: str) -> None:
    await send({"type": "http.response.start", "status": status, "headers": [
        (b"content-type", content_type.encode()), (b"content-length", str(len(body)).encode()),
    ]})
    await send({"type": "http.response.body", "body": body})


async def serve(
    health: Health, sock: socket.socket, *, task_status: anyio.abc.TaskStatus[str] = anyio.TASK_STATUS_IGNORED
) -> None:
    """Serve ``/metrics`` and ``/healthz`` on ``sock`` (from :func:`listen`) until cancelled."""
    from hypercorn.config import Config

    config = Config()
    config.accesslog = None
    config.errorlog = log
    config.keep_alive_timeout = IDLE_SECONDS
    config.h11_max_incomplete_size = 8192
    config.graceful_timeout = 1
    url = url_of(sock)
    task_status.started(url)
    log.info("metrics at %s/metrics, health at %s/healthz", url, url)
    await serve_connections(sock, MonitorApp(health), config, max_connections=MAX_CONNECTIONS,
                            io_timeout=IDLE_SECONDS, stopping=trio.Event())
