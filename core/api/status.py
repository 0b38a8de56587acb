"""The store describing itself: its sandbox, its totals, and whether its backends answer."""

from __future__ import annotations

from typing import Any

from core.api.base import StoreBase
from core.models import BackendHealth
from core.tree.namespace import HEALTH_TIMEOUT
from core.errors import (
    ArtifactStoreError,
    StoreClosedError,
)


class StatusApi(StoreBase):
    """The store describing itself, and probing its backends."""

    async def get_sandbox_info(self) -> dict[str, Any]:
        await self._ready()
        return {
            "sandbox_id": self.sandbox_id,
            "grid_prefix_pattern": f"grid/{self.sandbox_id}/",
            "session_prefix_pattern": f"grid/{self.sandbox_id}/sessions/{{session_id}}/",
            "user_prefix_pattern": f"grid/{self.sandbox_id}/users/{{user_id}}/",
            "shared_prefix": f"grid/{self.sandbox_id}/shared/",
            "storage_provider": self.settings.storage_provider,
            "session_provider": self.settings.session_provider,
        }

    async def get_stats(self) -> dict[str, Any]:
        ns = await self._ready()
        totals = await ns.totals()
        return {
            "storage_provider": self.settings.storage_provider,
            "session_provider": self.settings.session_provider,
            "bucket": self.settings.bucket,
            "sandbox_id": self.sandbox_id,
            "artifacts": totals.files,
            "bytes": totals.bytes,
            "session_manager": {"default_session_ttl": ns.limits.session_ttl, "default_ttl": ns.limits.default_ttl},
            "limits": ns.limits.model_dump(),
        }

    async def health_check(self, timeout: float = HEALTH_TIMEOUT) -> bool:
        """Whether both backends answer within ``timeout`` seconds (the reference's health check)."""
        return all(part.ok for part in (await self.health(timeout)).values())

    async def health(self, timeout: float = HEALTH_TIMEOUT) -> dict[str, BackendHealth]:
        """Each backend's probe: answered or not, how fast, and why not (``/healthz`` answers this)."""
        ns = await self._ready()
        return await ns.health(timeout)

    async def validate_configuration(self) -> dict[str, Any]:
        """Probe both backends; never raises for a backend fault, reports it."""
        result: dict[str, Any] = {}
        try:
            ns = await self._ready()
        except StoreClosedError:
            raise
        except ArtifactStoreError as exc:
            error = {"status": "error", "message": str(exc)}
            return {"storage": error, "session": error, "session_manager": error}
        try:
            await ns.check_blobs()
            result["storage"] = {"status": "ok", "provider": self.settings.storage_provider}
        except ArtifactStoreError as exc:
            result["storage"] = {"status": "error", "provider": self.settings.storage_provider, "message": str(exc)}
        try:
            await ns.check_meta()
            result["session"] = {"status": "ok", "provider": self.settings.session_provider}
        except ArtifactStoreError as exc:
            result["session"] = {"status": "error", "provider": self.settings.session_provider, "message": str(exc)}
        result["session_manager"] = {"status": result["session"]["status"], "sandbox_id": self.sandbox_id}
        return result
