"""Prometheus metrics (issue #11): the reference's five, and what an operator of a mount needs.

Each figure is recorded in one place per layer: the library's public calls
(:func:`instrumented`, applied to ``ArtifactStore``), versions stored
(``core.tree``), the mount's requests (``fusefs.errnos.fuse_call``), its
bytes and readahead (``fusefs``), and every backend request with its
retries (``core.infra.retry.retrying``).

The metrics live in a registry of their own, :data:`REGISTRY`, never the
process's default one: importing the library changes nothing an
application exports until it calls :func:`register` with its registry.
prometheus-client is an optional dependency (the ``metrics`` extra): without
it every recorder here does nothing and :func:`exposition` says so.
"""

from __future__ import annotations

import functools
import inspect
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

try:
    import prometheus_client as prom
except ImportError:  # pragma: no cover - the extra is part of every install this repository makes
    prom = None

C = TypeVar("C", bound=type)

# Request latencies from a cached stat (~50 us) to a multi-GiB close on S3 (minutes).
_LATENCY_BUCKETS = (0.0001, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 120)


class _Nothing:
    """What every metric is without prometheus-client: accepts every recording, keeps nothing."""

    def labels(self, *args: Any, **kwargs: Any) -> _Nothing:
        return self

    def inc(self, amount: float = 1) -> None:
        pass

    def observe(self, amount: float) -> None:
        pass

    def set_function(self, fn: Callable[[], float]) -> None:
        pass


REGISTRY: Any = prom.CollectorRegistry(auto_describe=True) if prom is not None else None
_ALL: list[Any] = []  # every metric below, for register()


def _make(kind: str, name: str, doc: str, labels: tuple[str, ...] = (), **kw: Any) -> Any:
    if prom is None:
        return _Nothing()
    metric = getattr(prom, kind)(name, doc, labels, registry=REGISTRY, **kw)
    _ALL.append(metric)
    return metric


# -- the reference's five (names and labels as it gives them)
OPERATION_SECONDS = _make("Histogram", "artifact_operation_duration_seconds",
                          "Duration of the store's public operations, by operation", ("operation",),
                          buckets=_LATENCY_BUCKETS)
OPERATIONS = _make("Counter", "artifact_operations", "The store's public operations, by operation and status "
                   "(ok or error)", ("operation", "status"))
BYTES_STORED = _make("Counter", "artifact_bytes_stored", "Bytes of the versions stored (every face: library, "
                     "mount, presigned uploads)")
ARTIFACTS_CREATED = _make("Counter", "artifact_count", "Artifacts created (every face)")
OPERATION_ERRORS = _make("Counter", "artifact_operation_errors", "Failed public operations, by operation and "
                         "error type", ("operation", "error"))

# -- the mount
FUSE_REQUESTS = _make("Counter", "artifactfs_fuse_requests", "FUSE requests answered, by operation and outcome "
                      "(ok, or the errno's name)", ("operation", "outcome"))
FUSE_SECONDS = _make("Histogram", "artifactfs_fuse_request_duration_seconds", "Time to answer a FUSE request, "
                     "by operation", ("operation",), buckets=_LATENCY_BUCKETS)
FUSE_BYTES = _make("Counter", "artifactfs_fuse_bytes", "Bytes read and written through the mount, by direction",
                   ("direction",))
SPOOL_BYTES = _make("Gauge", "artifactfs_spool_bytes", "Bytes staged in the spool of files open for writing")
READAHEAD = _make("Counter", "artifactfs_readahead_reads", "Reads of closed-then-opened files by how readahead "
                  "served them: hit (prefetched), miss (fetched then), random (no readahead)", ("result",))

# -- the backends
BACKEND_REQUESTS = _make("Counter", "artifactfs_backend_requests", "Requests to a backend, by backend and outcome: "
                         "ok; error (answered with one, e.g. a missing key); retried (a transient fault, tried "
                         "again); gave_up (still failing when the retries were spent)", ("backend", "outcome"))
METADATA_LOCK_WAITS = _make("Counter", "artifactfs_metadata_lock_waits", "Metadata transactions that found "
                            "another process's write lock (SQLite) and waited for it, the other requests going on")


def register(registry: Any) -> None:
    """Add every artifactfs metric to ``registry`` (e.g. ``prometheus_client.REGISTRY``), once."""
    if prom is None:
        raise RuntimeError("prometheus-client is not installed (pip install 'artifactfs[metrics]')")
    for metric in _ALL:
        registry.register(metric)


def exposition() -> tuple[bytes, str]:
    """The metrics as a scrape answers them: the body and its content type."""
    if prom is None:
        return b"# prometheus-client is not installed\n", "text/plain; charset=utf-8"
    return prom.generate_latest(REGISTRY), prom.CONTENT_TYPE_LATEST


def instrumented(cls: C) -> C:
    """Time and count every public coroutine method of ``cls`` as an operation of that name."""
    for name, member in list(vars_of(cls).items()):
        if not name.startswith("_") and inspect.iscoroutinefunction(member):
            setattr(cls, name, _timed(name, member))
    return cls


def vars_of(cls: type) -> dict[str, Any]:
    """The attributes ``cls`` and its bases define, the nearest definition of each."""
    found: dict[str, Any] = {}
    for klass in reversed(cls.__mro__):
        found.update(vars(klass))
    return found


def _timed(operation: str, method: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
    seconds = OPERATION_SECONDS.labels(operation)
    succeeded = OPERATIONS.labels(operation, "ok")
    failed = OPERATIONS.labels(operation, "error")

    @functools.wraps(method)
    async def timed(*args: Any, **kwargs: Any) -> Any:
        start = time.perf_counter()
        try:
            result = await method(*args, **kwargs)
        except BaseException as exc:
            if isinstance(exc, Exception):
                failed.inc()
                OPERATION_ERRORS.labels(operation, type(exc).__name__).inc()
            raise
        finally:
            seconds.observe(time.perf_counter() - start)
        succeeded.inc()
        return result

    return timed


def stored(size: int, *, new: bool) -> None:
    """A version of ``size`` bytes was stored (``new``: the artifact's first)."""
    BYTES_STORED.inc(size)
    if new:
        ARTIFACTS_CREATED.inc()


def backend_request(what: str, outcome: str) -> None:
    """One request to a backend: ``what`` begins with the backend's name (``redis get``, ``s3 put``)."""
    BACKEND_REQUESTS.labels(what.split(" ", 1)[0], outcome).inc()
