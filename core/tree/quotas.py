"""Quotas: how many bytes and files a session or a user may hold.

Usage is kept by the metadata store in the same transaction as the change
that alters it, so it never drifts; this part only compares it with the
limits, before a write that would cross them.
"""

from __future__ import annotations

from core.errors import (
    QuotaExceededError,
)
from core.models import Scope, Usage
from core.nodes import Space
from core.tree.base import TreeBase


class Quotas(TreeBase):
    """The limits of each space, checked before bytes are committed."""

    async def _usage(self, space: Space):
        return await self.meta.usage(space.usage_key)

    async def ensure_room(self, space: Space, add_bytes: int, add_files: int) -> None:
        """Raise QuotaExceededError unless ``space`` can take this much more.

        Expired artifacts are charged until collected; when they stand in the
        way they are collected first, so an invisible file never holds a quota.
        """
        if not self.has_quota(space.scope):
            return  # nothing to check: save the usage read (two per store)
        try:
            self.check_quota(space, await self._usage(space), add_bytes, add_files)
        except QuotaExceededError:
            if not await self.collect_expired():
                raise
            self.check_quota(space, await self._usage(space), add_bytes, add_files)

    def has_quota(self, scope: Scope) -> bool:
        """Whether a quota applies to ``scope``: if not, no write needs to read what it replaces."""
        limits = self.limits
        if scope is Scope.SESSION:
            return limits.session_quota_bytes is not None or limits.session_quota_files is not None
        if scope is Scope.USER:
            return limits.user_quota_bytes is not None or limits.user_quota_files is not None
        return False

    def check_quota(self, space: Space, usage, add_bytes: int, add_files: int) -> None:
        if space.scope is Scope.SESSION:
            max_bytes, max_files, who = self.limits.session_quota_bytes, self.limits.session_quota_files, "session"
        elif space.scope is Scope.USER:
            max_bytes, max_files, who = self.limits.user_quota_bytes, self.limits.user_quota_files, "user"
        else:
            return
        if max_bytes is not None and add_bytes > 0 and usage.bytes + add_bytes > max_bytes:
            raise QuotaExceededError(f"{who} {space.owner} would use {usage.bytes + add_bytes} of {max_bytes} bytes")
        if max_files is not None and add_files > 0 and usage.files + add_files > max_files:
            raise QuotaExceededError(f"{who} {space.owner} would hold {usage.files + add_files} of {max_files} files")

    async def headroom(self, space: Space) -> tuple[Usage, int | None, int | None]:
        """What ``space`` uses, and the bytes and files its quota still allows (None: no quota)."""
        usage = await self._usage(space)
        if space.scope is Scope.SESSION:
            max_bytes, max_files = self.limits.session_quota_bytes, self.limits.session_quota_files
        elif space.scope is Scope.USER:
            max_bytes, max_files = self.limits.user_quota_bytes, self.limits.user_quota_files
        else:
            return usage, None, None
        return (
            usage,
            None if max_bytes is None else max(0, max_bytes - usage.bytes),
            None if max_files is None else max(0, max_files - usage.files),
        )
