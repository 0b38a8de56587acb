"""Open uploads in this process's memory: for memory stores and tests."""

from __future__ import annotations

from core.backends.meta.base import MetaStore
from core.backends.uploads.base import (
    PartRecord,
    UploadRecord,
    UploadState,
    check_open,
)
from core.errors import (
    UploadNotFoundError,
)
from core.infra.signing import RecordSigner
from core.settings import Settings


class MemoryUploadRegistry:
    """Open uploads of one process: for stores whose artifacts live in memory too.

    Each method runs without awaiting in between, so it is atomic on the loop.
    """

    def __init__(self) -> None:
        self._records: dict[str, UploadRecord] = {}
        self._parts: dict[str, list[PartRecord]] = {}

    async def create(self, record: UploadRecord) -> None:
        self._records[record.upload_id] = record.model_copy(deep=True)
        self._parts[record.upload_id] = []

    async def get(self, upload_id: str) -> UploadRecord | None:
        record = self._records.get(upload_id)
        return None if record is None else record.model_copy(deep=True)

    async def add_part(self, upload_id: str, part: PartRecord) -> bool:
        record = self._records.get(upload_id)
        if record is None or record.state is not UploadState.OPEN:
            return False
        part.seq = len(self._parts[upload_id]) + 1
        self._parts[upload_id].append(part.model_copy())
        return True

    async def parts(self, upload_id: str) -> list[PartRecord]:
        return [p.model_copy() for p in self._parts.get(upload_id, [])] if upload_id in self._records else []

    async def begin_complete(self, upload_id: str, now_ns: int) -> tuple[UploadRecord, list[PartRecord]]:
        record = self._records.get(upload_id)
        if record is None:
            raise UploadNotFoundError(f"upload {upload_id} does not exist")
        check_open(record)
        record.state, record.state_since_ns = UploadState.COMPLETING, now_ns
        return record.model_copy(deep=True), list(self._parts[upload_id])

    async def reopen(self, upload_id: str, now_ns: int) -> None:
        record = self._records.get(upload_id)
        if record is not None:
            record.state, record.state_since_ns = UploadState.OPEN, now_ns

    async def remove(self, upload_id: str, *, only_open: bool) -> tuple[UploadRecord, list[PartRecord]] | None:
        record = self._records.get(upload_id)
        if record is None:
            return None
        if only_open:
            check_open(record)
        del self._records[upload_id]
        return record, self._parts.pop(upload_id)

    async def discard(self, upload_id: str) -> None:
        self._records.pop(upload_id, None)
        self._parts.pop(upload_id, None)

    async def ids(self) -> list[str]:
        return list(self._records)

    async def sweep(self, made_before: float) -> None:
        pass


def from_settings(settings: Settings, meta: MetaStore, signer: RecordSigner) -> MemoryUploadRegistry:
    """Uploads of a store whose bytes live in this process: they cannot outlive it either."""
    return MemoryUploadRegistry()
