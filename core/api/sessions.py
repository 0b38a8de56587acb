"""The session half of the API: create, describe, extend, delete and collect sessions."""

from __future__ import annotations

from typing import Any

from core.api import rules
from core.api.base import StoreBase, as_datetime
from core.errors import (
    SessionError,
)
from core.models import (
    Scope,
    SessionInfo,
)
from core.nodes import Node, Space
from core.tree import grid


class SessionsApi(StoreBase):
    """Sessions: ephemeral spaces that expire, optionally owned by a user."""

    async def create_session(
        self, user_id: str | None = None, ttl_hours: float | None = None, custom_metadata: dict[str, Any] | None = None
    ) -> str:
        ns = await self._ready()
        if user_id is not None:
            grid.validate_id(user_id, "user id")
        custom_metadata = rules.meta(custom_metadata, self.ns.limits)
        lifetime = rules.hours(ttl_hours, self.ns.limits) if ttl_hours is not None else None
        session_id = self._new_session_id(user_id)
        root = await ns.scope_root(Space(sandbox_id=self.sandbox_id, scope=Scope.SESSION, session_id=session_id, user_id=user_id))

        def describe(root: Node) -> None:
            root.session_meta = {"user_id": user_id, "custom_metadata": custom_metadata}
            if lifetime is not None:
                root.expires_at_ns = ns.now() + lifetime

        await ns.update_node(root, describe, ctime=False)
        return session_id

    async def _live_session(self, session_id: str) -> Node:
        ns = await self._ready()
        grid.validate_id(session_id, "session id")
        root = await ns.session_root(self.sandbox_id, session_id)
        if root is None:
            raise SessionError(f"session {session_id} does not exist")
        if root.expired(ns.now()):
            raise SessionError(f"session {session_id} has expired")
        return root

    async def get_session_info(self, session_id: str) -> SessionInfo:
        root = await self._live_session(session_id)
        info = root.session_meta or {}
        assert root.space is not None
        return SessionInfo(
            session_id=session_id, sandbox_id=self.sandbox_id, user_id=root.space.user_id,
            created_at=as_datetime(root.crtime_ns), expires_at=as_datetime(root.expires_at_ns),
            custom_metadata=info.get("custom_metadata") or {},
        )

    async def extend_session_ttl(self, session_id: str, additional_hours: float = 1) -> bool:
        root = await self._live_session(session_id)
        if root.expires_at_ns is not None:
            more = rules.hours(additional_hours, self.ns.limits)
            self._extended(root.expires_at_ns, more)  # refused before anything is written

            def extend(root: Node) -> None:
                if root.expires_at_ns is not None:
                    root.expires_at_ns = self._extended(root.expires_at_ns, more)

            await self.ns.update_node(root, extend, ctime=False)
        return True

    async def delete_session(self, session_id: str) -> int:
        """Remove a session and everything in it; returns the artifacts removed."""
        root = await self._live_session(session_id)
        return await self.ns.purge(root)

    async def cleanup_expired_sessions(self) -> int:
        """Delete expired artifacts and sessions with their blobs; returns artifacts removed."""
        ns = await self._ready()
        removed = await ns.collect_expired()
        await self.transfers.collect_expired()  # uploads never registered or completed
        await ns.collect_garbage()  # blobs past their grace period, intents no commit met
        return removed

    async def collect_garbage(self) -> int:
        """Delete the blobs whose grace period (or upload intent) is over and that no record names.

        Returns the blobs deleted. :meth:`cleanup_expired_sessions` runs it
        too, as a mount does every few minutes.
        """
        ns = await self._ready()
        return await ns.collect_garbage()
