"""``fsck`` (issue #11): a clean store is clean; each kind of damage is found, with its path."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from storeprobe import drop_redis_entry, redis_client, redis_inode, rewrite_redis_inode

from core import ArtifactStore, Scope, shards
from core.backends.meta.sqlite import SQLiteMetaStore
from core.models import ProblemKind, Usage
from core.nodes import Node, Space

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def seed(data: Path) -> None:
    """One 50-byte artifact of alice's in an embedded store at ``data``, stored by another process."""
    script = (
        "import asyncio, sys\n"
        "from core import ArtifactStore, Scope\n"
        "async def main():\n"
        "    async with ArtifactStore(storage_provider='filesystem', session_provider='sqlite', fs_root=sys.argv[1]) as s:\n"
        "        await s.store(b'x' * 50, filename='f.bin', user_id='alice', scope=Scope.USER)\n"
        "asyncio.run(main())\n"
    )
    subprocess.run([sys.executable, "-c", script, str(data)], check=True, cwd=REPO, timeout=120)


def skew_usage(store: ArtifactStore, key: str, add_bytes: int) -> None:
    """Move a usage counter behind the store's back, as a crash between two writes once could."""
    meta = store.ns.meta
    if isinstance(meta, SQLiteMetaStore):
        meta.db.execute("UPDATE usage SET bytes = bytes + ? WHERE key = ?", (add_bytes, key))
    else:
        client, redis_meta = redis_client(store)
        with client:
            client.hincrby(redis_meta.key("ub", shard=shards.of_usage_key(key)), key, add_bytes)


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


def drop_directory_record(store: ArtifactStore, directory: Node) -> None:
    """Lose a directory's record with its entries still pointing up at it, as damage would."""
    meta = store.ns.meta
    if isinstance(meta, SQLiteMetaStore):
        meta.db.execute("DELETE FROM node WHERE ino = ?", (directory.ino,))
        return
    client, redis_meta = redis_client(store)
    with client:
        client.delete(redis_meta.key("i", directory.ino))
        assert drop_redis_entry(client, redis_meta, directory.parent, directory.name)
        parent = redis_meta.key("i", directory.parent)
        rewrite_redis_inode(client, parent, sd=int(redis_inode(client, parent).get("sd") or 0) - 1)


def skew_subdirs(store: ArtifactStore, directory: Node, add: int) -> None:
    meta = store.ns.meta
    if isinstance(meta, SQLiteMetaStore):
        meta.db.execute("UPDATE node SET subdirs = subdirs + ? WHERE ino = ?", (add, directory.ino))
    else:
        client, redis_meta = redis_client(store)
        with client:
            key = redis_meta.key("i", directory.ino)
            rewrite_redis_inode(client, key, sd=int(redis_inode(client, key).get("sd") or 0) + add)


async def node_at(store: ArtifactStore, *names: str) -> Node:
    space = Space(sandbox_id=store.sandbox_id, scope=Scope.USER, user_id="alice")
    path = await store.ns.walk(space, names)
    assert len(path) == len(names) + 1
    return path[-1]


@pytest.mark.semantics("S-fsck")
async def test_fsck_repair_moves_orphans_to_lost_and_found_and_resets_counters(store: ArtifactStore) -> None:
    deep = await store.store(b"a" * 100, filename="dir/sub/deep.bin", user_id="alice", scope=Scope.USER)
    await store.store(b"b" * 50, filename="dir/side.bin", user_id="alice", scope=Scope.USER)
    await store.store(b"c" * 10, filename="keep.bin", user_id="alice", scope=Scope.USER)
    account = f"{store.sandbox_id}/user/alice"
    directory, sub, side = [await node_at(store, *path) for path in (["dir"], ["dir", "sub"], ["dir", "side.bin"])]
    drop_directory_record(store, directory)
    skew_usage(store, account, 7)
    skew_subdirs(store, await node_at(store), 2)

    found = await store.fsck()
    assert sorted((p.kind.value, p.ino) for p in found.problems if p.kind is not ProblemKind.SUBDIRS) == [
        ("orphan", sub.ino), ("orphan", side.ino), ("usage", None),
    ], found.problems
    assert [p.kind for p in found.problems].count(ProblemKind.SUBDIRS) == 1
    assert found.files == 3 and all(p.repair is None for p in found.problems)

    fixed = await store.fsck(repair=True)
    assert fixed.repaired == 4, fixed.problems
    assert (await store.fsck()).problems == []
    moved = await store.metadata(deep)
    assert moved.filename == f"lost+found/#{sub.ino}-sub/deep.bin"
    assert await store.retrieve(deep) == b"a" * 100
    names = sorted(m.filename for m in await store.search(user_id="alice", scope=Scope.USER))
    assert names == sorted(["keep.bin", f"lost+found/#{side.ino}-side.bin", f"lost+found/#{sub.ino}-sub/deep.bin"])
    assert await store.ns.meta.usage(account) == Usage(files=3, bytes=160)


@pytest.mark.semantics("S-fsck")
async def test_fsck_repair_leaves_a_counter_a_write_raced(store: ArtifactStore) -> None:
    await store.store(b"a" * 100, filename="a.bin", user_id="alice", scope=Scope.USER)
    account = f"{store.sandbox_id}/user/alice"
    skew_usage(store, account, 7)
    search = store.ns.meta.search
    raced = []

    async def search_then_store(*args, **kw):
        found = await search(*args, **kw)
        if not raced:  # a store lands between the count and the reset
            raced.append(await store.store(b"b" * 30, filename="b.bin", user_id="alice", scope=Scope.USER))
        return found

    store.ns.meta.search = search_then_store  # type: ignore[method-assign]
    report = await store.fsck(repair=True)
    (usage,) = report.problems
    assert not usage.repaired and "changed while it was counted" in (usage.repair or "")
    assert await store.ns.meta.usage(account) == Usage(files=2, bytes=137)  # the skew left, the store kept
    again = await store.fsck(repair=True)
    assert again.repaired == 1 and await store.ns.meta.usage(account) == Usage(files=2, bytes=130)


@pytest.mark.semantics("S-fsck")
def test_artifactfs_fsck_exits_0_clean_1_damaged_2_unable(tmp_path) -> None:
    data = tmp_path / "data"

    def fsck(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "fusefs", "fsck", "--data-dir", str(data), *args],
                              capture_output=True, text=True, cwd=REPO, check=False, timeout=120, env=env)

    seed(data)
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
    seed(data)
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


@pytest.mark.semantics("S-fsck")
def test_artifactfs_fsck_repair_says_what_it_did_and_a_second_run_is_clean(tmp_path) -> None:
    data = tmp_path / "data"
    seed(data)
    with sqlite3.connect(data / "meta.sqlite3") as db:
        db.execute("UPDATE usage SET bytes = bytes + 9")

    def fsck(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "fusefs", "fsck", "--data-dir", str(data), *args],
                              capture_output=True, text=True, cwd=REPO, check=False, timeout=120)

    looked = fsck()
    assert looked.returncode == 1 and "[" not in looked.stdout.splitlines()[0], looked.stdout
    repaired = fsck("--repair")
    assert repaired.returncode == 1, repaired.stdout + repaired.stderr
    assert "default/user/alice: usage: counts 1 files, 59 bytes; the records hold 1 files, 50 bytes " \
           "[repaired: set to 1 files, 50 bytes]" in repaired.stdout
    assert "1 problem(s), 1 repaired" in repaired.stdout
    again = fsck()
    assert again.returncode == 0 and "clean" in again.stdout, again.stdout
