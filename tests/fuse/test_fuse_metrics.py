"""``--metrics HOST:PORT``: a mount's Prometheus metrics and health probe (issue #11)."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest
from mounting import Mount, artifactfs, scrape

MountFactory = Callable[..., Mount]


@pytest.mark.semantics("S-metrics", "S-health")
def test_the_mount_serves_its_metrics_and_health(mount_factory: MountFactory) -> None:
    mount = mount_factory(args=["--metrics", "127.0.0.1:0"])
    url = mount.metrics_url()
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


@pytest.mark.semantics("S-status")
def test_status_shows_the_store_and_the_mount_on_it(mount_factory: MountFactory) -> None:
    mount = mount_factory()
    (mount.user_dir("alice") / "a.txt").write_bytes(b"x" * 3000)
    (mount.user_dir("alice") / "b.txt").write_bytes(b"y" * 72)
    done = artifactfs("status", mount.mountpoint, env=mount.world.mount_env(mount.data_dir))
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].startswith("store: blobs on ") and "sandbox app: user 2 artifacts (3.0 KiB)" in done.stdout
    assert f"mount: pid {mount.process.pid} at {mount.mountpoint}, up " in done.stdout, done.stdout
    assert "files open for writing: 0" in done.stdout and "last errors: none" in done.stdout
    mount.stop()
    after = artifactfs("status", "--data-dir", mount.data_dir, env=mount.world.mount_env(mount.data_dir))
    assert after.returncode == 0 and f"mount: none on {mount.data_dir}" in after.stdout, after.stdout
