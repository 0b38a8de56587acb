"""Listing and searching: which artifacts a session, a user or a sandbox holds."""

from __future__ import annotations

from typing import Any

from core.api import rules
from core.api.base import StoreBase
from core.models import (
    ArtifactMetadata,
    GridKey,
    Scope,
)
from core.nodes import Node
from core.tree import grid

_MISSING = object()


class ListingApi(StoreBase):
    """What is stored where: a session's files, search across scopes, and grid keys."""

    async def _walk(self, root: Node) -> list[Node]:
        files: list[Node] = []
        stack = [root]
        while stack:
            for child in await self.ns.list(stack.pop()):
                if child.is_dir:
                    stack.append(child)
                elif child.is_file:
                    files.append(child)
        return files

    async def _session_files(self, session_id: str) -> list[ArtifactMetadata]:
        ns = await self._ready()
        grid.validate_id(session_id, "session id")
        root = await ns.session_root(self.sandbox_id, session_id)
        if not ns.visible(root):
            return []
        found = [await self._describe(n) for n in await self._walk(root)]  # type: ignore[arg-type]
        return sorted(found, key=lambda m: m.filename)

    async def list_by_session(self, session_id: str, limit: int | None = None) -> list[ArtifactMetadata]:
        return rules.limited(await self._session_files(session_id), limit)

    async def list_files(self, session_id: str, prefix: str = "", limit: int | None = None) -> list[ArtifactMetadata]:
        return rules.limited([m for m in await self._session_files(session_id) if m.filename.startswith(prefix)], limit)

    async def get_directory_contents(
        self, session_id: str, directory_prefix: str = "", limit: int | None = None
    ) -> list[ArtifactMetadata]:
        """The files directly inside one directory of a session (not below it)."""
        prefix = directory_prefix.rstrip("/")
        prefix = f"{prefix}/" if prefix else ""
        found = [
            m for m in await self._session_files(session_id)
            if m.filename.startswith(prefix) and "/" not in m.filename[len(prefix):]
        ]
        return rules.limited(found, limit)

    async def search(
        self, *, user_id: str | None = None, scope: Scope | str | None = None, mime_prefix: str | None = None,
        meta_filter: dict[str, Any] | None = None, session_id: str | None = None, limit: int | None = None,
    ) -> list[ArtifactMetadata]:
        ns = await self._ready()
        scope = rules.scope(scope) if scope is not None else None
        if user_id is not None:
            grid.validate_id(user_id, "user id")
        if session_id is not None:
            grid.validate_id(session_id, "session id")
        meta_filter = rules.meta(meta_filter)
        now = ns.now()
        nodes = await ns.search(self.sandbox_id, scope=scope, session_id=session_id, user_id=user_id)
        found = []
        for node in nodes:
            art = node.artifact
            if node.expired(now) or art is None:
                continue
            if mime_prefix and not art.mime.startswith(mime_prefix):
                continue
            if any(art.meta.get(k, _MISSING) != v for k, v in meta_filter.items()):
                continue
            found.append(await self._describe(node))
        found.sort(key=lambda m: (m.stored_at, m.artifact_id))
        return rules.limited(found, limit)

    def parse_grid_key(self, key: str) -> GridKey:
        return grid.parse_grid_key(key)

    def get_canonical_prefix(self, session_id: str) -> str:
        return grid.scope_prefix(self.sandbox_id, Scope.SESSION, grid.validate_id(session_id, "session id")) + "/"

    def generate_artifact_key(self, session_id: str, artifact_id: str) -> str:
        return grid.grid_key(self.sandbox_id, Scope.SESSION, grid.validate_id(session_id, "session id"),
                             grid.validate_id(artifact_id, "artifact id"))
