"""``--metrics HOST:PORT``: a mount's Prometheus metrics and health probe (issue #11)."""

from __future__ import annotations

import json
import re
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest
from mounting import Mount, artifactfs
from prometheus_client.parser import text_string_to_metric_families

MountFactory = Callable[..., Mount]


def scrape(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    with urllib.request.urlopen(url + "/metrics", timeout=30) as answer:
        text = answer.read().decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text) for s in family.samples
    }


@pytest.mark.semantics("S-metrics", "S-health")
def test_the_mount_serves_its_metrics_and_health(mount_factory: MountFactory) -> None:
    mount = mount_factory(args=["--metrics", "127.0.0.1:0"])
    logged = (mount.data_dir / "mount.log").read_text()
    found = re.search(r"metrics at (http://127\.0\.0\.1:\d+)/metrics", logged)
    assert found, logged
    url = found.group(1)
    path = mount.user_dir("alice") / "f.bin"
    path.write_bytes(b"x" * 100_000)
    assert path.read_bytes() == b"x" * 100_000
    try:
        path.parent.joinpath("missing").stat()
    except FileNotFoundError:
        pass
    seen = scrape(url)
    assert seen[("artifactfs_fuse_requests_total", (("operation", "create"), ("outcome", "ok")))] >= 1
    assert seen[("artifactfs_fuse_requests_total", (("operation", "lookup"), ("outcome", "ENOENT")))] >= 1
    assert seen[("artifactfs_fuse_request_duration_seconds_count", (("operation", "write"),))] >= 1
    assert seen[("artifactfs_fuse_bytes_total", (("direction", "write"),))] >= 100_000
    assert seen[("artifactfs_fuse_bytes_total", (("direction", "read"),))] >= 100_000
    assert seen[("artifact_bytes_stored_total", ())] >= 100_000
    assert ("artifactfs_spool_bytes", ()) in seen
    with urllib.request.urlopen(url + "/healthz", timeout=30) as answer:
        assert answer.status == 200
        health = json.loads(answer.read())
    assert health["metadata"]["ok"] and health["blobs"]["ok"]
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(url + "/elsewhere", timeout=30)
    assert refused.value.code == 404


def test_a_bad_metrics_address_is_refused_before_anything(tmp_path: Path) -> None:
    done = artifactfs("mount", tmp_path / "mnt", "--data-dir", tmp_path / "data", "--metrics", "nonsense")
    assert done.returncode == 2 and "HOST:PORT" in done.stderr and "Traceback" not in done.stderr
