"""Prometheus metrics and health checks of the library (issue #11).

Counters are process-wide, so each test reads them before and after what it
does and checks the difference.
"""

from __future__ import annotations

import prometheus_client
import pytest
from storekit import make_store

from core import ArtifactNotFoundError, ArtifactStore, Scope
from core.infra import metrics
from core.infra.clock import ManualClock
from core.settings import Limits


def sample(name: str, **labels: str) -> float:
    return metrics.REGISTRY.get_sample_value(name, labels) or 0.0


@pytest.mark.semantics("S-metrics")
async def test_operations_are_timed_and_counted_by_name_and_status(store: ArtifactStore) -> None:
    before = {
        "store": sample("artifact_operations_total", operation="store", status="ok"),
        "missing": sample("artifact_operations_total", operation="retrieve", status="error"),
        "errors": sample("artifact_operation_errors_total", operation="retrieve", error="ArtifactNotFoundError"),
        "timed": sample("artifact_operation_duration_seconds_count", operation="store"),
        "bytes": sample("artifact_bytes_stored_total"),
        "count": sample("artifact_count_total"),
    }
    artifact_id = await store.store(b"12345", filename="m.txt", user_id="alice", scope=Scope.USER)
    await store.update_file(artifact_id, data=b"1234567", user_id="alice")
    with pytest.raises(ArtifactNotFoundError):
        await store.retrieve("0" * 32, user_id="alice")
    assert sample("artifact_operations_total", operation="store", status="ok") == before["store"] + 1
    assert sample("artifact_operations_total", operation="retrieve", status="error") == before["missing"] + 1
    assert sample("artifact_operation_errors_total", operation="retrieve",
                  error="ArtifactNotFoundError") == before["errors"] + 1
    assert sample("artifact_operation_duration_seconds_count", operation="store") == before["timed"] + 1
    assert sample("artifact_bytes_stored_total") == before["bytes"] + 5 + 7  # both versions
    assert sample("artifact_count_total") == before["count"] + 1  # one artifact


@pytest.mark.semantics("S-metrics")
async def test_backend_requests_are_counted_by_backend_and_outcome(
    request: pytest.FixtureRequest, tmp_path, clock: ManualClock, limits: Limits
) -> None:
    request.getfixturevalue("redis_server")
    request.getfixturevalue("moto_server")
    async with make_store("redis-s3", tmp_path / "data", clock, limits) as store:
        redis_ok, s3_ok = sample("artifactfs_backend_requests_total", backend="redis", outcome="ok"), sample(
            "artifactfs_backend_requests_total", backend="s3", outcome="ok")
        artifact_id = await store.store(b"x" * 100, filename="b.txt", user_id="alice", scope=Scope.USER)
        assert await store.retrieve(artifact_id, user_id="alice") == b"x" * 100
        assert sample("artifactfs_backend_requests_total", backend="redis", outcome="ok") > redis_ok
        assert sample("artifactfs_backend_requests_total", backend="s3", outcome="ok") > s3_ok


@pytest.mark.semantics("S-metrics")
def test_an_application_adds_the_metrics_to_its_own_registry() -> None:
    theirs = prometheus_client.CollectorRegistry()
    metrics.register(theirs)
    exported = prometheus_client.generate_latest(theirs).decode()
    for name in ("artifact_operation_duration_seconds", "artifact_operations_total", "artifact_bytes_stored_total",
                 "artifact_count_total", "artifact_operation_errors_total", "artifactfs_fuse_requests_total",
                 "artifactfs_backend_requests_total"):
        assert f"# TYPE {name.removesuffix('_total')}" in exported, name
    assert "artifact_operations_total" not in prometheus_client.generate_latest(prometheus_client.REGISTRY).decode()


@pytest.mark.semantics("S-health")
async def test_health_check_answers_whether_both_backends_answer(store: ArtifactStore) -> None:
    assert await store.health_check() is True
    parts = await store.health()
    assert set(parts) == {"metadata", "blobs"} and all(part.ok and part.error is None for part in parts.values())


@pytest.mark.semantics("S-health")
async def test_health_check_is_false_in_time_when_a_backend_is_gone(tmp_path, clock: ManualClock) -> None:
    """A Redis that does not answer: the probe says so within its timeout, and never raises."""
    import socket

    with socket.socket() as closed:  # a port nobody listens on
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    async with ArtifactStore(storage_provider="memory", session_provider="memory", clock=clock) as store:
        await store.store(b"x", filename="x", user_id="alice", scope=Scope.USER)  # opened on a working backend
        from core.backends.meta.redis.store import RedisMetaStore
        from core.infra.signing import RecordSigner

        dead = RedisMetaStore(f"redis://127.0.0.1:{port}/0", RecordSigner(b"k" * 32))
        dead._open = True  # its connections are made on first use: open() would fail here already
        store.ns.meta = dead  # type: ignore[assignment]
        parts = await store.health(timeout=1.0)
        assert not parts["metadata"].ok and parts["metadata"].error and parts["blobs"].ok
        assert parts["metadata"].seconds < 10
        assert await store.health_check(timeout=1.0) is False
