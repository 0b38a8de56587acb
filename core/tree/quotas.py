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
from core.nodes import Space, account_of
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

    async def recount_usage(self, usage_key: str) -> Usage | None:
        """Reset an account's counters to what its signed records hold; None if a change raced the count.

        The records are found through the account's own index, whose members
        come and go only with changes that move its counters, and the reset
        is conditional on the account's generation as read before the count
        (``MetaStore.reset_usage``): a store or delete that races it is never
        overwritten. A key that names no space (a forged row) can hold nothing.
        """
        generation = await self.meta.usage_generation(usage_key)
        counted = Usage()
        space = _space_of(usage_key)
        if space is not None:
            found = await self.meta.search(
                space.sandbox_id, scope=space.scope, session_id=space.session_id, user_id=space.user_id
            )
            for node in {node.ino: node for node in found}.values():
                if account_of(node) == usage_key:
                    counted.add(1, node.size)
        return counted if await self.meta.reset_usage(usage_key, counted, generation=generation) else None

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


def _space_of(usage_key: str) -> Space | None:
    """The space an account key (``<sandbox>/<scope>/<owner>``) stands for, if it is one."""
    sandbox_id, _, rest = usage_key.partition("/")
    scope_name, _, owner = rest.partition("/")
    try:
        scope = Scope(scope_name)
        if scope is Scope.SESSION:
            return Space(sandbox_id=sandbox_id, scope=scope, session_id=owner)
        if scope is Scope.USER:
            return Space(sandbox_id=sandbox_id, scope=scope, user_id=owner)
        return Space(sandbox_id=sandbox_id, scope=scope) if not owner else None
    except ValueError:  # pydantic's ValidationError is one
        return None
