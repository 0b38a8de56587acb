"""Namespaces in the mount (issue #10): a workspace is a directory of ordinary files, a blob a file."""

from __future__ import annotations

import os

import anyio
import pytest
from mounting import Mount, wait_for

from core import NamespaceType, Scope


@pytest.mark.semantics("S-namespaces")
async def test_a_workspace_is_a_directory_every_tool_works_in(mount: Mount) -> None:
    async with mount.store() as store:
        info = await store.create_namespace(NamespaceType.WORKSPACE, name="project", scope=Scope.USER, user_id="alice")
        vfs = store.get_namespace_vfs(info.namespace_id)
        await vfs.write_file("/src/main.py", b"print('v1')\n")
        workspace = mount.mountpoint / info.path
        wait_for(lambda: (workspace / "src" / "main.py").exists(), 30, "the workspace in the mount")
        assert (await anyio.run_process(["cat", str(workspace / "src" / "main.py")])).stdout == b"print('v1')\n"
        assert os.listdir(mount.mountpoint / "users" / "alice" / "namespaces") == [workspace.name]

        (workspace / "notes.txt").write_bytes(b"written by a shell tool")  # and back: the library reads it
        assert await store.read_namespace(info.namespace_id, path="/notes.txt") == b"written by a shell tool"
        assert sorted(await vfs.ls("/")) == ["notes.txt", "src"]
        await anyio.run_process(["tar", "-C", str(workspace), "-cf", str(mount.data_dir.parent / "ws.tar"), "."])
        with pytest.raises(PermissionError):  # its id names its place: a namespace keeps its name
            os.rename(workspace, workspace.with_name("renamed"))

        blob = await store.create_namespace(NamespaceType.BLOB, scope=Scope.USER, user_id="alice")
        await store.write_namespace(blob.namespace_id, b"render bytes", mime="video/mp4")
        blob_path = mount.mountpoint / blob.path
        wait_for(lambda: blob_path.exists() and blob_path.read_bytes() == b"render bytes", 30, "the blob file")

        await store.destroy_namespace(info.namespace_id)
        wait_for(lambda: not workspace.exists(), 30, "the destroyed workspace to go")
