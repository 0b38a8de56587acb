"""``gc``: reclaim what nothing needs any more, or say what that would be (issue #11)."""

from __future__ import annotations

from core.api.base import StoreBase
from core.models import GcReport, Reclaimed


class MaintenanceApi(StoreBase):
    """Garbage collection over the whole store (every sandbox, every scope)."""

    async def gc(self, *, dry_run: bool = False) -> GcReport:
        """Remove expired artifacts and sessions, blobs past their grace period that no record
        names, and expired uploads (with the backend's incomplete multipart uploads older than a
        day); ``dry_run`` only counts them.

        Never what a live record, an open upload or a reader within the grace period still
        needs: each step is the store's own collection, conditional on the records as they are
        when it acts, so it is safe beside writers and from every host at once.
        """
        ns = await self._ready()
        report = GcReport(dry_run=dry_run)
        if dry_run:
            report.expired = await ns.expired_now()
            report.blobs = await ns.due_blobs()
            report.uploads = await self.transfers.expired_uploads()
            return report
        expired = Reclaimed()
        await ns.collect_expired(expired)
        report.expired = expired
        report.uploads = await self.transfers.collect_expired()
        report.blobs = await ns.collect_garbage()  # last: what the steps above queued may be due already
        return report
