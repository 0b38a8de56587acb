"""``fsck`` (issue #11): a clean store is clean; each kind of damage is found, with its path."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from storeprobe import redis_client

from core import ArtifactStore, Scope
from core.backends.meta.sqlite import SQLiteMetaStore
from core.models import ProblemKind

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def skew_usage(store: ArtifactStore, key: str, add_bytes: int) -> None:
    """Move a usage counter behind the store's back, as a crash between two writes once could."""
    meta = store.ns.meta
    if isinstance(meta, SQLiteMetaStore):
        meta.db.execute("UPDATE usage SET bytes = bytes + ? WHERE key = ?", (add_bytes, key))
    else:
        client, redis_meta = redis_client(store)
        with client:
            client.hincrby(redis_meta.key("ub"), key, add_bytes)


@pytest.mark.semantics("S-fsck")
async def test_fsck_finds_each_kind_of_damage_with_its_path(store: ArtifactStore) -> None:
    lost = await store.store(b"a" * 100, filename="dir/lost.bin", user_id="alice", scope=Scope.USER)
    damaged = await store.store(b"b" * 100, filename="damaged.bin", user_id="alice", scope=Scope.USER)
    await store.store(b"c" * 10, filename="fine.bin", user_id="alice", scope=Scope.USER)
    clean = await store.fsck(verify_data=True)
    assert clean.problems == [] and clean.files == 3 and clean.verified == 3

    for artifact_id, damage in ((lost, "delete"), (damaged, "overwrite")):
        node = await store.ns.meta.find_artifact(artifact_id)
        assert node is not None and node.artifact is not None and node.artifact.blob_key is not None
        if damage == "delete":
            await store.ns.blobs.delete(node.artifact.blob_key)
        else:
            await store.ns.blobs.put(node.artifact.blob_key, b"x" * 100)
    skew_usage(store, f"{store.sandbox_id}/user/alice", 7)

    quick = await store.fsck()
    assert {(p.kind, p.where) for p in quick.problems} == {
        (ProblemKind.MISSING_BLOB, f"{store.sandbox_id}/user/alice/dir/lost.bin"),
        (ProblemKind.USAGE, f"{store.sandbox_id}/user/alice"),
    }
    full = await store.fsck(verify_data=True)
    assert (ProblemKind.DAMAGED_BLOB, f"{store.sandbox_id}/user/alice/damaged.bin") in {
        (p.kind, p.where) for p in full.problems
    }
    assert len(full.problems) == 3 and full.verified == 1  # fine.bin


@pytest.mark.semantics("S-fsck")
def test_artifactfs_fsck_exits_0_clean_1_damaged_2_unable(tmp_path) -> None:
    data = tmp_path / "data"

    def fsck(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "fusefs", "fsck", "--data-dir", str(data), *args],
                              capture_output=True, text=True, cwd=REPO, check=False, timeout=120, env=env)

    script = (
        "import asyncio, sys\n"
        "from core import ArtifactStore, Scope\n"
        "async def main():\n"
        "    async with ArtifactStore(storage_provider='filesystem', session_provider='sqlite', fs_root=sys.argv[1]) as s:\n"
        "        await s.store(b'x' * 50, filename='f.bin', user_id='alice', scope=Scope.USER)\n"
        "asyncio.run(main())\n"
    )
    subprocess.run([sys.executable, "-c", script, str(data)], check=True, cwd=REPO, timeout=120)
    clean = fsck("--verify-data")
    assert clean.returncode == 0 and "1 files, 1 verified: clean" in clean.stdout, clean.stdout + clean.stderr
    blobs = [path for path in (data / "blobs").rglob("*") if path.is_file()]
    assert len(blobs) == 1
    blobs[0].write_bytes(b"y" * 50)
    damaged = fsck("--verify-data")
    assert damaged.returncode == 1 and "default/user/alice/f.bin: damaged-blob:" in damaged.stdout, damaged.stdout
    unable = fsck(env={**os.environ, "SESSION_PROVIDER": "nonsense"})
    assert unable.returncode == 2 and "could not run" in unable.stderr and "Traceback" not in unable.stderr


@pytest.mark.semantics("S-fsck")
def test_fsck_draws_a_progress_bar_on_a_terminal_only(tmp_path) -> None:
    import pty

    data = tmp_path / "data"
    data.mkdir()
    plain = subprocess.run([sys.executable, "-m", "fusefs", "fsck", "--data-dir", str(data)],
                           capture_output=True, text=True, cwd=REPO, timeout=120)
    assert plain.returncode == 0 and "\r" not in plain.stderr + plain.stdout
    script = (
        "import asyncio, sys\n"
        "from core import ArtifactStore, Scope\n"
        "async def main():\n"
        "    async with ArtifactStore(storage_provider='filesystem', session_provider='sqlite', fs_root=sys.argv[1]) as s:\n"
        "        await s.store(b'x', filename='f', user_id='alice', scope=Scope.USER)\n"
        "asyncio.run(main())\n"
    )
    subprocess.run([sys.executable, "-c", script, str(data)], check=True, cwd=REPO, timeout=120)
    leader, follower = pty.openpty()
    try:
        done = subprocess.run([sys.executable, "-m", "fusefs", "fsck", "--data-dir", str(data)], stderr=follower,
                              stdout=subprocess.PIPE, text=True, cwd=REPO, timeout=120)
        os.close(follower)
        drawn = b""
        while True:
            try:
                chunk = os.read(leader, 4096)
            except OSError:  # EIO: the terminal's other end is closed and drained
                break
            if not chunk:
                break
            drawn += chunk
    finally:
        os.close(leader)
    assert done.returncode == 0 and "clean" in done.stdout
    assert b"fsck [" in drawn and b"1/1 ETA" in drawn, drawn
