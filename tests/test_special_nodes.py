"""Special files (FIFOs, devices, sockets) made through a mount are nodes, never artifacts; directories
count their subdirectories (issue #13)."""

from __future__ import annotations

import os
import sqlite3
import stat
from pathlib import Path

import pytest

from core import ArtifactStore, Limits, Scope
from core.backends.blobs.memory import MemoryBlobStore
from core.backends.meta.sqlite import SQLiteMetaStore
from core.infra.clock import SystemClock
from core.infra.signing import RecordSigner
from core.nodes import NodeKind, Space
from core.tree.namespace import Namespace

SIGNER = RecordSigner(b"k" * 32)


@pytest.mark.semantics("S-special")
async def test_special_files_stay_out_of_the_library_s_listings(store: ArtifactStore) -> None:
    artifact_id = await store.store(b"data", filename="dir/a.txt", session_id="s1", user_id="alice")
    await store.store(b"mine", filename="b.txt", user_id="alice", scope=Scope.USER)
    ns = store.ns
    session_dir = (await ns.artifact_node(artifact_id)).parent
    user_root = (await ns.artifact_node((await store.search(user_id="alice", scope=Scope.USER))[0].artifact_id)).parent
    made = []
    for parent_ino in (session_dir, user_root):
        parent = await ns.get(parent_ino)
        for kind in (NodeKind.FIFO, NodeKind.CHAR_DEVICE, NodeKind.BLOCK_DEVICE, NodeKind.SOCKET):
            made.append(await ns.special(parent, f"{kind.value}-node", kind, 0o600, os.makedev(1, 3)))
    for node in made:
        again = await ns.get(node.ino)  # read back through the backend: the record keeps type and device
        assert again.kind is node.kind and again.artifact is None
        assert stat.S_IFMT(again.st_mode) != stat.S_IFREG
        expected_rdev = os.makedev(1, 3) if node.kind in (NodeKind.CHAR_DEVICE, NodeKind.BLOCK_DEVICE) else 0
        assert again.rdev == expected_rdev
    assert [m.filename for m in await store.list_by_session("s1")] == ["dir/a.txt"]
    assert [m.filename for m in await store.get_directory_contents("s1", "dir")] == ["dir/a.txt"]
    assert [m.filename for m in await store.search(user_id="alice", scope=Scope.USER)] == ["b.txt"]
    assert {m.filename for m in await store.search(user_id="alice")} == {"dir/a.txt", "b.txt"}


async def test_a_sqlite_store_made_before_the_subdirectory_count_is_counted_once(tmp_path: Path) -> None:
    """The count is a column the triggers keep; a database without it gets it, counted, at open."""
    path = tmp_path / "meta.sqlite3"
    meta = SQLiteMetaStore(path, SIGNER)
    await meta.open()
    ns = Namespace(meta, MemoryBlobStore(), SystemClock(), Limits())
    root = await ns.scope_root(Space(sandbox_id="app", scope=Scope.USER, user_id="alice"))
    top = await ns.mkdir(root, "top")
    for name in ("a", "b", "c"):
        await ns.mkdir(top, name)
    await meta.close()
    with sqlite3.connect(path) as db:  # as an older version left it
        for trigger in ("subdir_added", "subdir_removed", "subdir_moved"):
            db.execute(f"DROP TRIGGER {trigger}")
        db.execute("ALTER TABLE node DROP COLUMN subdirs")
    meta = SQLiteMetaStore(path, SIGNER)
    await meta.open()
    try:
        assert (await meta.get(top.ino)).subdirs == 3  # type: ignore[union-attr]
        assert (await meta.get(root.ino)).subdirs == 1  # type: ignore[union-attr]
        ns = Namespace(meta, MemoryBlobStore(), SystemClock(), Limits())
        await ns.rmdir(await ns.get((await meta.lookup(top.ino, "a")).ino))  # type: ignore[union-attr]
        assert (await meta.get(top.ino)).subdirs == 2  # type: ignore[union-attr]  # and kept from then on
    finally:
        await meta.close()
