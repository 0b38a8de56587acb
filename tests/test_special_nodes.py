"""Special files (FIFOs, devices, sockets) made through a mount are nodes, never artifacts (issue #13)."""

from __future__ import annotations

import os
import stat

import pytest

from core import ArtifactStore, Scope
from core.nodes import NodeKind


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
