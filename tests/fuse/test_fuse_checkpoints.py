"""Checkpoints in the mount (issue #10): ``<workspace>/.checkpoints``, made with mkdir, read-only, restored
with an xattr (what ``artifactfs checkpoint`` does), and the seed 004 flow read back with ``cat``."""

from __future__ import annotations

import errno
import os
import shutil
import sys

import anyio
import pytest
from mounting import REPO, Mount, wait_for

from core import NamespaceType, Scope
from core.nodes import Space


def checkpoint_cli(*args: str) -> anyio.abc.Process:
    return anyio.run_process([sys.executable, "-m", "fusefs", "checkpoint", *args], cwd=REPO, check=False)


@pytest.mark.semantics("S-checkpoints")
async def test_the_seed_004_flow_end_to_end(mount: Mount) -> None:
    """A user's project workspace, files through the VFS object, checkpoint "v1.0", changes, restore,
    and the old bytes read back through the API and through cat in the mount."""
    async with mount.store() as store:
        project = await store.create_namespace(NamespaceType.WORKSPACE, name="my_video", scope=Scope.USER,
                                               user_id="alice")
        vfs = store.get_namespace_vfs(project.namespace_id)
        await vfs.write_file("/src/Main.tsx", b"export const v = 1;\n")
        await vfs.write_file("/composition.json", b'{"fps": 30}')
        checkpoint = await store.checkpoint_namespace(project.namespace_id, name="v1.0", description="Ready")
        await vfs.write_file("/src/Main.tsx", b"export const v = 2;\n")
        await vfs.rm("/composition.json")
        await vfs.write_file("/render.mp4", b"\x00" * 1000)
        assert await store.restore_namespace(project.namespace_id, checkpoint.checkpoint_id)
        assert await store.read_namespace(project.namespace_id, path="/src/Main.tsx") == b"export const v = 1;\n"
        assert await vfs.read_binary("/composition.json") == b'{"fps": 30}' and not await vfs.exists("/render.mp4")
        workspace = mount.mountpoint / project.path
        wait_for(lambda: (workspace / "composition.json").exists(), 30, "the restored workspace in the mount")
        assert (await anyio.run_process(["cat", str(workspace / "src" / "Main.tsx")])).stdout == b"export const v = 1;\n"
        assert sorted(os.listdir(workspace)) == ["composition.json", "src"]


@pytest.mark.semantics("S-checkpoints")
async def test_checkpoints_through_the_shell_and_the_api(mount: Mount) -> None:
    async with mount.store() as store:
        info = await store.create_namespace(NamespaceType.WORKSPACE, name="project", scope=Scope.USER, user_id="alice")
        workspace = mount.mountpoint / info.path
        await store.write_namespace(info.namespace_id, b"v1 main", path="/src/main.py")
        wait_for(lambda: (workspace / "src" / "main.py").exists(), 30, "the workspace in the mount")

        os.mkdir(workspace / ".checkpoints" / "v1.0")  # as on ZFS
        assert os.listdir(workspace) == ["src"]  # hidden from a plain ls, reachable by name
        assert os.listdir(workspace / ".checkpoints") == ["v1.0"]
        assert [c.checkpoint_id for c in await store.list_checkpoints(info.namespace_id)] == ["v1.0"]
        frozen = workspace / ".checkpoints" / "v1.0" / "src" / "main.py"
        for attempt in (lambda: frozen.write_bytes(b"x"), frozen.unlink, lambda: os.chmod(frozen, 0o600),
                        lambda: os.truncate(frozen, 0), lambda: os.setxattr(frozen, "user.x", b"1"),
                        lambda: (frozen.parent / "new").write_bytes(b"x"), lambda: os.mkdir(frozen.parent / "d"),
                        lambda: os.rename(frozen, workspace / "stolen"), lambda: os.link(frozen, frozen.parent / "l")):
            with pytest.raises(OSError) as refused:
                attempt()
            assert refused.value.errno == errno.EROFS

        (workspace / "src" / "main.py").write_bytes(b"v2 main")
        (workspace / "notes.txt").write_bytes(b"added after")
        assert (await anyio.run_process(["cat", str(frozen)])).stdout == b"v1 main"
        reader = open(workspace / "src" / "main.py", "rb")  # noqa: ASYNC230, SIM115 - held open across the restore
        try:
            done = await checkpoint_cli("restore", str(workspace), "v1.0")
            assert done.returncode == 0, done.stderr
            assert reader.read() == b"v2 main"  # the version it opened, whole
        finally:
            reader.close()
        assert (await anyio.run_process(["cat", str(workspace / "src" / "main.py")])).stdout == b"v1 main"
        assert not (workspace / "notes.txt").exists()
        assert await store.read_namespace(info.namespace_id, path="/src/main.py") == b"v1 main"

        made = await checkpoint_cli("create", str(workspace), "v2")
        assert made.returncode == 0, made.stderr
        listed = await checkpoint_cli("list", str(workspace))
        assert listed.stdout.decode().split() == ["v1.0", "v2"], listed.stdout
        assert (await checkpoint_cli("delete", str(workspace), "v1.0")).returncode == 0
        assert os.listdir(workspace / ".checkpoints") == ["v2"]
        missing = await checkpoint_cli("restore", str(workspace), "nope")
        assert missing.returncode == 1 and b"nope" in missing.stderr and b"Traceback" not in missing.stderr

        # The checkpoints are reached through their workspace alone: a directory the kernel sees with one parent.
        namespaces = workspace.parent
        assert ".checkpoints" not in os.listdir(namespaces) and not (namespaces / ".checkpoints").exists()
        shutil.rmtree(workspace)  # removed by hand: its checkpoints go with it
        space = Space(sandbox_id=store.sandbox_id, scope=Scope.USER, user_id="alice")
        found = await store.ns.walk(space, ["namespaces", ".checkpoints", workspace.name])
        assert [n.name for n in found[1:]] == ["namespaces", ".checkpoints"]  # and no holder for the workspace
