"""Checkpoints of a workspace (issue #10): frozen copies of its records that share its blobs.

A checkpoint copies no byte. It is a read-only directory tree of records
(role FROZEN) made from the workspace's, one metadata write per node, whose
files name the very blobs the workspace's name (``Artifact.blob_of``). So

- a later write to the workspace makes a new blob and never changes what a
  checkpoint shows, and deleting a live file leaves its blob to the
  checkpoints that still name it: gc deletes a blob only once no record,
  live or frozen, names it (:meth:`Content.holders`);
- quotas count a shared blob once: a copy is made uncharged, and gc, when it
  finds the holder that was charged gone, charges one of those left
  (:meth:`Content._charge_once`); until then (the grace period) those bytes
  are counted nowhere.

Where they live: ``<scope>/namespaces/.checkpoints/<workspace entry>/<id>``.
The mount shows that directory as ``<workspace>/.checkpoints`` alone, as ZFS
shows ``.zfs/snapshot``: its real place is hidden there, so the kernel never
sees one directory under two parents. A checkpoint is made under a name no reader looks
at (``.incomplete-...``) and renamed into place when whole, so it is never
seen half made.

A restore copies a checkpoint's records into a new directory beside the
workspace, then exchanges the two in one metadata step (a reader sees the
tree before or after, never a mix), and removes the old tree, whose blobs
wait out the grace period like any superseded version: a descriptor open
across the restore reads on.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Collection, Iterable
from typing import Protocol

from core.backends.meta.base import MetaStore
from core.errors import (
    AlreadyExistsError,
    ArtifactNotFoundError,
    ArtifactStoreError,
    InvalidArgumentError,
    NotSupportedError,
)
from core.models import NamespaceType, Usage
from core.nodes import CheckpointRecord, Node, NodeKind, NodeRole, Space, new_node
from core.tree import grid

log = logging.getLogger("artifactfs.checkpoints")

HOLDER = ".checkpoints"  # in a scope's namespaces/ directory, and (as a view) in each workspace
INCOMPLETE = ".incomplete-"  # a checkpoint being made; one a crash left is removed with its workspace
RESTORING = ".restore-"  # a workspace's next tree, while a restore copies it
MAX_CHECKPOINTS = 1000  # per workspace


def _parents_first(nodes: Iterable[Node], root: int) -> list[Node]:
    """``nodes`` (a subtree of ``root``) ordered so that each comes after its directory."""
    by_parent: dict[int, list[Node]] = {}
    for node in nodes:
        by_parent.setdefault(node.parent, []).append(node)
    ordered: list[Node] = []
    pending = [root]
    while pending:
        for child in sorted(by_parent.get(pending.pop(), ()), key=lambda n: n.name):
            ordered.append(child)
            if child.is_dir:
                pending.append(child.ino)
    return ordered


class _Tree(Protocol):
    """What checkpoints need of the :class:`~core.tree.namespace.Namespace` they belong to."""

    meta: MetaStore

    def now(self) -> int: ...

    def visible(self, node: Node | None) -> bool: ...

    async def new_artifact_id(self, space: Space) -> str: ...

    async def get(self, ino: int) -> Node: ...

    async def purge(self, node: Node, into: Usage | None = None) -> int: ...

    async def exchange(self, a: Node, b: Node) -> None: ...

    async def hold_while_copied(self, keys: Collection[str]) -> None: ...


class Checkpoints:
    """Make, list, restore and drop the checkpoints of workspaces, over one :class:`Namespace`."""

    def __init__(self, ns: _Tree) -> None:
        self.ns = ns

    # -- where they are

    async def holder(self, workspace: Node, *, create: bool) -> Node | None:
        """The directory of ``workspace``'s checkpoints (made, with ``.checkpoints``, if ``create``)."""
        ns = self.ns
        top = await ns.meta.lookup(workspace.parent, HOLDER)
        if top is None:
            if not create:
                return None
            top = await self._fixed(workspace.parent, HOLDER, workspace)
        if top.role is not NodeRole.CHECKPOINTS:
            if not create:
                return None
            raise AlreadyExistsError(f"{HOLDER!r} in {workspace.space.usage_key if workspace.space else '?'}/"
                                     "namespaces is an ordinary entry: move it away to keep checkpoints")
        found = await ns.meta.lookup(top.ino, workspace.name)
        if found is None and create:
            found = await self._fixed(top.ino, workspace.name, workspace)
        return found

    async def _fixed(self, parent: int, name: str, like: Node) -> Node:
        node = new_node(parent=parent, name=name, kind=NodeKind.DIR, mode=0o755, now_ns=self.ns.now(),
                        role=NodeRole.CHECKPOINTS, space=like.space, uid=like.uid, gid=like.gid)
        try:
            node, _ = await self.ns.meta.insert(node)
        except AlreadyExistsError:  # made meanwhile by another writer
            found = await self.ns.meta.lookup(parent, name)
            if found is None:
                raise
            node = found
        return node

    async def workspace_of(self, holder: Node) -> Node:
        """The workspace whose checkpoints ``holder`` keeps."""
        ns = self.ns
        top = await ns.meta.get(holder.parent) if holder.role is NodeRole.CHECKPOINTS else None
        if top is not None and top.role is NodeRole.CHECKPOINTS:
            workspace = await ns.meta.lookup(top.parent, holder.name)
            if workspace is not None and workspace.namespace is not None:
                return workspace
        raise ArtifactNotFoundError(f"{holder.name!r} keeps the checkpoints of no workspace")

    async def listed(self, workspace: Node) -> list[Node]:
        """The checkpoints of ``workspace``, oldest first."""
        holder = await self.holder(workspace, create=False)
        if holder is None:
            return []
        found = [n for n in await self.ns.meta.children(holder.ino)
                 if n.checkpoint is not None and not n.name.startswith(INCOMPLETE)]
        return sorted(found, key=lambda n: (n.crtime_ns, n.name))

    async def find(self, workspace: Node, checkpoint_id: str) -> Node:
        holder = await self.holder(workspace, create=False)
        found = await self.ns.meta.lookup(holder.ino, checkpoint_id) if holder is not None else None
        if found is None or found.checkpoint is None or found.name.startswith(INCOMPLETE):
            raise ArtifactNotFoundError(f"Checkpoint not found: {checkpoint_id}")
        return found

    # -- make, drop

    async def create(self, workspace: Node, name: str | None = None, description: str = "") -> Node:
        """A checkpoint of ``workspace`` as it is now; its id is ``name`` if given."""
        self._workspace(workspace)
        checkpoint_id = name if name is not None else f"cp-{secrets.token_hex(4)}"
        grid.validate_name(checkpoint_id)
        if checkpoint_id.startswith((".", INCOMPLETE)):
            raise InvalidArgumentError(f"a checkpoint's name cannot start with '.': {checkpoint_id!r}")
        ns = self.ns
        holder = await self.holder(workspace, create=True)
        assert holder is not None
        if await ns.meta.lookup(holder.ino, checkpoint_id) is not None:
            raise AlreadyExistsError(f"checkpoint {checkpoint_id!r} exists")
        if len(await ns.meta.children(holder.ino)) >= MAX_CHECKPOINTS:
            raise InvalidArgumentError(f"a workspace keeps at most {MAX_CHECKPOINTS} checkpoints")
        nodes = [n for n in _parents_first(await ns.meta.subtree(workspace.ino), workspace.ino) if ns.visible(n)]
        files = [n for n in nodes if n.is_file]
        record = CheckpointRecord(checkpoint_id=checkpoint_id, name=name, description=description,
                                  files=len(files), bytes=sum(n.size for n in files))
        top = new_node(parent=holder.ino, name=f"{INCOMPLETE}{secrets.token_hex(6)}", kind=NodeKind.DIR,
                       mode=workspace.mode, now_ns=ns.now(), role=NodeRole.FROZEN, space=workspace.space,
                       uid=workspace.uid, gid=workspace.gid)
        top.checkpoint = record
        top, _ = await ns.meta.insert(top)
        try:
            await self._copy(nodes, {workspace.ino: top.ino}, NodeRole.FROZEN)
            await ns.meta.rename(top, holder.ino, checkpoint_id, replace=False)
        except BaseException:
            await ns.purge(top)
            raise
        return top

    async def drop(self, checkpoint: Node) -> None:
        """Remove a checkpoint; blobs only it held go to gc after the grace period."""
        if checkpoint.checkpoint is None:
            raise ArtifactNotFoundError(f"{checkpoint.name!r} is not a checkpoint")
        await self.ns.purge(checkpoint)

    # -- restore

    async def restore(self, workspace: Node, checkpoint: Node) -> Node:
        """Make ``workspace`` what ``checkpoint`` holds, in one step; returns the workspace's new node."""
        self._workspace(workspace)
        ns = self.ns
        frozen = _parents_first(await ns.meta.subtree(checkpoint.ino), checkpoint.ino)
        staging = new_node(parent=workspace.parent, name=f"{RESTORING}{secrets.token_hex(6)}", kind=NodeKind.DIR,
                           mode=workspace.mode, now_ns=ns.now(), space=workspace.space, uid=workspace.uid,
                           gid=workspace.gid)
        staging.namespace = workspace.namespace
        staging, _ = await ns.meta.insert(staging)
        try:
            await self._copy(frozen, {checkpoint.ino: staging.ino}, NodeRole.ENTRY)
            await ns.exchange(workspace, staging)  # the one step readers see
        except BaseException:
            await ns.purge(staging)
            raise
        try:
            await ns.purge(workspace)  # the old tree, now under the staging name
        except ArtifactStoreError as exc:  # a file made in it meanwhile: destroy_namespace sweeps it
            log.warning("restore of %s: the old tree stays as %s: %s", workspace.name, staging.name, exc)
        return await ns.get(staging.ino)

    async def leftovers(self, workspace: Node) -> list[Node]:
        """Trees a restore left beside ``workspace`` (the old tree, or a new one a crash cut short)."""
        assert workspace.namespace is not None
        return [n for n in await self.ns.meta.children(workspace.parent)
                if n.name.startswith(RESTORING) and n.namespace is not None
                and n.namespace.namespace_id == workspace.namespace.namespace_id]

    # -- the copying

    def _workspace(self, node: Node) -> None:
        if node.namespace is None:
            raise InvalidArgumentError(f"{node.name!r} is not a namespace")
        if node.namespace.type is not NamespaceType.WORKSPACE:
            raise NotSupportedError("checkpoints are of workspaces; a blob namespace keeps its versions in its file")

    async def _copy(self, nodes: list[Node], placed: dict[int, int], role: NodeRole) -> None:
        """Insert a copy of each of ``nodes`` (parents first) below the new inode of its parent.

        Files keep their blobs: the copy names the blob of the artifact it
        came from, uncharged (see the module's docs); a hard link becomes a
        file of its own that shares the blob. Copies are made with the
        store's own inserts, one write each: O(files) metadata, no byte.
        """
        ns = self.ns
        await ns.hold_while_copied([n.artifact.blob_key for n in nodes if n.artifact and n.artifact.blob_key])
        for node in nodes:
            parent = placed.get(node.parent)
            if parent is None:
                continue  # below something not copied (an expired directory)
            copy = node.model_copy(deep=True, update={
                "ino": 0, "rev": 0, "parent": parent, "links": [], "role": role, "namespace": None,
                "checkpoint": None, "expires_at_ns": None,
            })
            art = copy.artifact
            if art is not None:
                assert copy.space is not None  # a file is always in a scope
                shared = art.blob_key is not None
                art.blob_of = (art.blob_of or art.artifact_id) if shared else None
                art.artifact_id, art.ttl = await ns.new_artifact_id(copy.space), None
                # A blob's charge stays where it is; an empty live file counts as a file, a frozen one not.
                art.charged = not shared and role is NodeRole.ENTRY
            copy, _ = await ns.meta.insert(copy)
            placed[node.ino] = copy.ino
