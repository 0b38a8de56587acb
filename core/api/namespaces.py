"""Namespaces (issue #10): a blob (one file) or a workspace (a tree), kept in the tree itself.

The reference keeps namespaces in a dict of one process; here a namespace
is a node of its scope, ``<scope root>/namespaces/<entry>``: a workspace is
a directory, a blob a file, and the node's signed record carries what makes
it a namespace (:class:`~core.nodes.NamespaceRecord`). So every process and
every mount on every host sees the same namespaces at once, no cache can
make a listing stale, and a session's namespaces expire with the session.

A namespace id names its place: ``ns-<12 hex>`` (the entry) then ``.u.<user>``
or ``.s.<session>`` for a user's or a session's (nothing for the shared
scope), so finding one is one read of its path, with no index to keep.
The record is checked against the id, so a made-up id finds nothing.

Three methods are synchronous in the reference (``get_namespace_info``,
``list_namespaces``, ``get_namespace_vfs``) and are here too, so code
written for it runs unchanged; they read the store on the bridge's loop
(:func:`core.infra.aio_bridge.call_blocking`) while the caller waits.
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from typing import Any

from core.api import rules
from core.api.access import Principal, check_write
from core.api.base import iso_z
from core.api.files import FilesApi
from core.api.namespace_vfs import NamespaceVfs, path_parts
from core.api.sessions import SessionsApi
from core.errors import (
    ArtifactNotFoundError,
    InvalidArgumentError,
    NamespaceAccessError,
    NamespaceNotFoundError,
    shown,
)
from core.infra import aio_bridge
from core.models import CheckpointInfo, NamespaceInfo, NamespaceType, Scope
from core.nodes import NamespaceRecord, Node, Space
from core.tree import grid
from core.tree.base import EMPTY_SHA256
from core.tree.namespace import NS

NAMESPACES_DIR = "namespaces"  # in each scope root: one entry per namespace
MAX_LABEL_CHARS = 255  # a namespace's name, a provider type


def _label(value: Any, what: str) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not value or len(value) > MAX_LABEL_CHARS or "\0" in value:
        raise InvalidArgumentError(f"{what} must be text of 1 to {MAX_LABEL_CHARS} characters, got {shown(value)}")
    rules.summary(value)  # UTF-8 only
    return value


class NamespaceApi(FilesApi, SessionsApi):
    """create / write / read / info / list / destroy namespaces, and a file-system view of a workspace."""

    # -- where a namespace is

    def _space_of_id(self, namespace_id: Any) -> tuple[Space, str]:
        if not isinstance(namespace_id, str) or len(namespace_id) > 200:
            raise NamespaceNotFoundError(f"Namespace not found: {shown(namespace_id)}")
        entry, _, rest = namespace_id.partition(".")
        kind, _, owner = rest.partition(".")
        try:
            if not entry.startswith("ns-") or len(entry) != 15 or not all(c in "0123456789abcdef" for c in entry[3:]):
                raise ValueError(entry)
            if not rest:
                return Space(sandbox_id=self.sandbox_id, scope=Scope.SANDBOX), entry
            if kind == "u":
                return Space(sandbox_id=self.sandbox_id, scope=Scope.USER, user_id=grid.validate_id(owner)), entry
            if kind == "s":
                return Space(sandbox_id=self.sandbox_id, scope=Scope.SESSION, session_id=grid.validate_id(owner)), entry
            raise ValueError(kind)
        except ValueError:  # InvalidNameError is one
            raise NamespaceNotFoundError(f"Namespace not found: {shown(namespace_id)}") from None

    async def _located(self, namespace_id: str) -> tuple[Node, Node]:
        """The scope root and the namespace's node, as they are now."""
        root, node, _ = await self._located_along(namespace_id, ())
        return root, node

    async def _located_along(self, namespace_id: str, below: Sequence[str]) -> tuple[Node, Node, list[Node]]:
        """The scope root, the namespace's node, and the nodes along ``below`` in it: one read."""
        space, entry = self._space_of_id(namespace_id)
        ns = await self._ready()
        path = await ns.walk(space, [NAMESPACES_DIR, entry, *below])
        if len(path) >= 3 and all(ns.visible(node) for node in path[:3]):
            node = path[2]
            if node.namespace is not None and node.namespace.namespace_id == namespace_id:
                return path[0], node, path[3:]
        raise NamespaceNotFoundError(f"Namespace not found: {namespace_id}")

    def _info(self, root: Node, node: Node) -> NamespaceInfo:
        record, space = node.namespace, node.space
        assert record is not None and space is not None
        prefix = grid.scope_prefix(space.sandbox_id, space.scope, space.owner)
        return NamespaceInfo(
            namespace_id=record.namespace_id, type=record.type, name=record.name,
            provider_type=record.provider_type, scope=space.scope, session_id=record.session_id,
            sandbox_id=space.sandbox_id, user_id=space.user_id,
            owner_id=space.user_id if space.scope is Scope.USER else None,
            created_at=iso_z(node.crtime_ns) or "", expires_at=iso_z(root.expires_at_ns),
            ttl_seconds=record.ttl_seconds, grid_path=f"{prefix}/{node.name}",
            metadata=record.metadata, path=f"{prefix.removeprefix(f'grid/{space.sandbox_id}/')}/{NAMESPACES_DIR}/{node.name}",
        )

    # -- create

    async def create_namespace(
        self, type: NamespaceType | str, name: str | None = None, scope: Scope | str = Scope.SESSION,
        session_id: str | None = None, user_id: str | None = None, provider_type: str = "vfs-memory",
        provider_config: dict[str, Any] | None = None, ttl_hours: int = 24, metadata: dict[str, Any] | None = None,
    ) -> NamespaceInfo:
        """A new blob or workspace in ``scope``, persistent and seen by every process and mount.

        ``provider_type`` is kept as a label: the bytes live in this store's
        own backends, wherever it keeps its artifacts. ``provider_config`` is
        accepted and unused, for the same reason. A session is made when
        none is given (``ttl_hours`` long), as the reference does.
        """
        try:
            kind = NamespaceType(type)
        except ValueError:
            raise InvalidArgumentError(f"type must be one of {[t.value for t in NamespaceType]}, got {shown(type)}") from None
        scope = rules.scope(scope)
        name = _label(name, "name")
        provider = _label(provider_type, "provider_type") or "vfs-memory"
        if provider_config is not None and not isinstance(provider_config, dict):
            raise InvalidArgumentError(f"provider_config must be a dict, got {shown(provider_config)}")
        lifetime = rules.hours(ttl_hours, self.ns.limits)
        metadata = rules.meta(metadata, self.ns.limits)
        if scope is Scope.USER and user_id is None:
            raise InvalidArgumentError("user_id required for USER scope")
        if session_id is None:
            session_id = await self.create_session(user_id=user_id, ttl_hours=ttl_hours)
        else:
            await self._live_session(session_id)
        space = await self._writable_space(scope, session_id if scope is Scope.SESSION else None, user_id, "namespace")
        entry = f"ns-{secrets.token_hex(6)}"
        suffix = {Scope.SESSION: f".s.{space.session_id}", Scope.USER: f".u.{space.user_id}", Scope.SANDBOX: ""}
        record = NamespaceRecord(
            namespace_id=entry + suffix[scope], type=kind, name=name, provider_type=provider, session_id=session_id,
            ttl_seconds=lifetime // NS if scope is Scope.SESSION else 0, metadata=metadata,
        )
        ns = await self._ready()
        if kind is NamespaceType.WORKSPACE:
            _, parent = await ns.place(space, [NAMESPACES_DIR])
            await ns.mkdir(parent, entry, namespace=record)
        else:
            draft = await self._prepare(filename=f"{NAMESPACES_DIR}/{entry}", mime=None, summary="", meta=None,
                                        **await self.owner_args(space))
            draft.node.namespace = record
            await self._insert(draft, None, 0, EMPTY_SHA256)
        return self._info(*await self._located(record.namespace_id))

    # -- bytes

    def _workspace_path(self, node: Node, path: Any) -> list[str]:
        """The names of ``path`` (``/src/a.txt``) below a workspace's directory."""
        assert node.namespace is not None
        if node.namespace.type is not NamespaceType.WORKSPACE:
            raise InvalidArgumentError(f"namespace {node.namespace.namespace_id} is a blob: it has no paths")
        if path is None:
            raise InvalidArgumentError("path required for workspace namespaces")
        return path_parts(path)

    async def owner_args(self, space: Space) -> dict[str, Any]:
        """The store() arguments that put a file in ``space`` as its owner would (the VFS's writes too).

        In a session, a file takes the session's expiry rather than none: a
        file that never expires would keep its session alive for ever.
        """
        ttl: int | None = None
        if space.scope is Scope.SESSION:
            assert space.session_id is not None
            root = await self.ns.session_root(space.sandbox_id, space.session_id)
            if root is not None and root.expires_at_ns is not None:
                ttl = max(1, -(-(root.expires_at_ns - self.ns.now()) // NS))
        return {"scope": space.scope, "session_id": space.session_id if space.scope is Scope.SESSION else None,
                "user_id": space.user_id, "ttl": ttl}

    async def write_namespace(self, namespace_id: str, data: bytes, path: str | None = None, mime: str | None = None) -> None:
        """A blob's bytes (``path`` ignored), or the file at ``path`` of a workspace (made with its directories)."""
        data = rules.data(data)
        _, node = await self._located(namespace_id)
        assert node.namespace is not None and node.space is not None
        if node.namespace.type is NamespaceType.BLOB:
            assert node.artifact is not None
            await self.update_file(node.artifact.artifact_id, data=data, mime=mime)
            return
        parts = self._workspace_path(node, path)
        if not parts:
            raise InvalidArgumentError(f"path {path!r} is the workspace itself, not a file in it")
        await self.store(data, mime=mime, filename="/".join([NAMESPACES_DIR, node.name, *parts]),
                         **await self.owner_args(node.space))

    async def namespace_node(self, namespace_id: str, path: str | None = None) -> tuple[Node, Node | None]:
        """The namespace's node and, for a workspace, the node at ``path`` in it (None: nothing there).

        One read of the whole path; a blob has no paths, so ``path`` means nothing to it.
        """
        try:
            parts = path_parts(path) if path is not None else []
        except InvalidArgumentError:
            parts = []  # a workspace raises it below; a blob ignores its path
        _, node, along = await self._located_along(namespace_id, parts)
        assert node.namespace is not None
        if node.namespace.type is NamespaceType.BLOB:
            return node, node
        if self._workspace_path(node, path) != parts or not parts:
            return node, node
        if len(along) != len(parts) or not all(self.ns.visible(n) for n in along):
            return node, None
        return node, along[-1]

    async def read_namespace(self, namespace_id: str, path: str | None = None) -> bytes:
        """A blob's bytes, or those of the file at ``path`` of a workspace, checked against its SHA-256."""
        _, target = await self.namespace_node(namespace_id, path)
        if target is None or not target.is_file or target.artifact is None:
            raise NamespaceNotFoundError(f"{path!r} is not a file of namespace {namespace_id}")
        return await self.retrieve(target.artifact.artifact_id)

    # -- describe, list, destroy

    def get_namespace_info(self, namespace_id: str, session_id: str | None = None) -> NamespaceInfo:
        """Synchronous, as in the reference; a session namespace is another session's: NamespaceAccessError (a PermissionError)."""
        return aio_bridge.call_blocking(self.namespace_info, namespace_id, session_id)

    async def namespace_info(self, namespace_id: str, session_id: str | None = None) -> NamespaceInfo:
        """:meth:`get_namespace_info` for async callers, who should not block their loop."""
        root, node = await self._located(namespace_id)
        assert node.space is not None
        if session_id is not None and node.space.scope is Scope.SESSION and node.space.session_id != session_id:
            raise NamespaceAccessError(f"Access denied to namespace: {namespace_id}")
        return self._info(root, node)

    def list_namespaces(
        self, session_id: str | None = None, user_id: str | None = None, type: NamespaceType | str | None = None,
        include_all_scopes: bool = True,
    ) -> list[NamespaceInfo]:
        """Synchronous, as in the reference: that session's, that user's, and (``include_all_scopes``) the shared ones."""
        return aio_bridge.call_blocking(self.namespaces, session_id, user_id, type, include_all_scopes)

    async def namespaces(
        self, session_id: str | None = None, user_id: str | None = None, type: NamespaceType | str | None = None,
        include_all_scopes: bool = True,
    ) -> list[NamespaceInfo]:
        """:meth:`list_namespaces` for async callers: one read of a directory per scope, never a cache."""
        kind = NamespaceType(type) if type is not None else None
        spaces = []
        if session_id is not None:
            spaces.append(Space(sandbox_id=self.sandbox_id, scope=Scope.SESSION, session_id=grid.validate_id(session_id)))
        if user_id is not None:
            spaces.append(Space(sandbox_id=self.sandbox_id, scope=Scope.USER, user_id=grid.validate_id(user_id)))
        if include_all_scopes:
            spaces.append(Space(sandbox_id=self.sandbox_id, scope=Scope.SANDBOX))
        ns = await self._ready()
        found: list[NamespaceInfo] = []
        for space in spaces:
            path = await ns.walk(space, [NAMESPACES_DIR])
            if len(path) != 2 or not all(ns.visible(node) for node in path):
                continue
            for node in sorted(await ns.list(path[1]), key=lambda n: n.crtime_ns):
                record = node.namespace
                if record is None or not ns.visible(node) or (kind is not None and record.type is not kind):
                    continue
                where, entry = self._space_of_id(record.namespace_id)
                if node.space is not None and (where.usage_key, entry) == (node.space.usage_key, node.name):
                    found.append(self._info(path[0], node))  # a record in its own place, not a copy elsewhere
        return found

    async def destroy_namespace(self, namespace_id: str, session_id: str | None = None) -> None:
        """Remove a namespace and everything in it; its bytes go to gc after the grace period."""
        _, node = await self._located(namespace_id)
        assert node.space is not None and node.namespace is not None
        if session_id is not None and node.space.scope is Scope.SESSION and node.space.session_id != session_id:
            raise NamespaceAccessError(f"Access denied to namespace: {namespace_id}")
        check_write(Principal(trusted=True, admin=self.admin), node.space, f"namespace {namespace_id}")
        try:
            holder = await self.ns.checkpoints.holder(node, create=False)
            if holder is not None:
                await self.ns.purge(holder)  # its checkpoints first: they name its blobs
            for leftover in await self.ns.checkpoints.leftovers(node):
                await self.ns.purge(leftover)
            await self.ns.purge(node)
        except ArtifactNotFoundError:
            pass  # destroyed by another process meanwhile

    def get_namespace_vfs(self, namespace_id: str) -> NamespaceVfs:
        """A file-system view of a workspace (or a blob), with chuk-virtual-fs's method names."""
        aio_bridge.call_blocking(self._located, namespace_id)  # NamespaceNotFoundError now, as the reference
        return NamespaceVfs(self, namespace_id)

    # -- checkpoints (core.tree.checkpoints: records copied, no byte)

    async def _writable_namespace(self, namespace_id: str) -> Node:
        _, node = await self._located(namespace_id)
        assert node.space is not None
        check_write(Principal(trusted=True, admin=self.admin), node.space, f"namespace {namespace_id}")
        return node

    def _checkpoint_info(self, namespace_id: str, node: Node) -> CheckpointInfo:
        record = node.checkpoint
        assert record is not None
        return CheckpointInfo(
            checkpoint_id=record.checkpoint_id, workspace_id=namespace_id, name=record.name,
            description=record.description, created_at=iso_z(node.crtime_ns) or "",
            stats={"files": record.files, "bytes": record.bytes},
        )

    async def _checkpoint(self, namespace_id: str, checkpoint_id: str) -> tuple[Node, Node]:
        node = await self._writable_namespace(namespace_id)
        if not isinstance(checkpoint_id, str):
            raise NamespaceNotFoundError(f"Checkpoint not found: {shown(checkpoint_id)}")
        try:
            return node, await self.ns.checkpoints.find(node, checkpoint_id)
        except ArtifactNotFoundError:
            raise NamespaceNotFoundError(f"Checkpoint not found: {checkpoint_id}") from None

    async def checkpoint_namespace(self, namespace_id: str, name: str | None = None, description: str = "") -> CheckpointInfo:
        """A read-only copy of a workspace as it is now, made of records alone: no byte is copied.

        Its id is ``name`` when given (then unique in the workspace), else a
        new ``cp-...``; in the mount it is ``<workspace>/.checkpoints/<id>``.
        """
        node = await self._writable_namespace(namespace_id)
        name = _label(name, "name")
        description = rules.summary(description)
        return self._checkpoint_info(namespace_id, await self.ns.checkpoints.create(node, name, description))

    async def list_checkpoints(self, namespace_id: str) -> list[CheckpointInfo]:
        _, node = await self._located(namespace_id)
        return [self._checkpoint_info(namespace_id, cp) for cp in await self.ns.checkpoints.listed(node)]

    async def restore_namespace(self, namespace_id: str, checkpoint_id: str) -> bool:
        """Make the workspace what the checkpoint holds, in one step readers see whole."""
        node, checkpoint = await self._checkpoint(namespace_id, checkpoint_id)
        await self.ns.checkpoints.restore(node, checkpoint)
        return True

    async def delete_checkpoint(self, namespace_id: str, checkpoint_id: str) -> bool:
        """Remove a checkpoint; the bytes only it held go to gc after the grace period."""
        _, checkpoint = await self._checkpoint(namespace_id, checkpoint_id)
        await self.ns.checkpoints.drop(checkpoint)
        return True

