"""A full disk under the embedded store: a typed error, nothing partial, nothing lost (issue #13)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from core import ArtifactStore, Limits, Scope, StoreFullError
from core.infra.clock import ManualClock


async def test_a_store_on_a_full_disk_raises_store_full_and_keeps_what_it_had(
    small_disk: Path, clock: ManualClock
) -> None:
    async with ArtifactStore(
        storage_provider="filesystem", session_provider="sqlite", fs_root=small_disk / "data",
        clock=clock, limits=Limits(),
    ) as store:
        piece = os.urandom(1 << 20)
        stored: list[str] = []
        with pytest.raises(StoreFullError):
            for i in range(64):
                stored.append(await store.store(piece, filename=f"f{i}.bin", user_id="alice", scope=Scope.USER))
        assert stored, "nothing fitted"
        for artifact_id in stored:
            assert await store.retrieve(artifact_id, user_id="alice") == piece
        found = await store.search(user_id="alice", scope=Scope.USER)
        assert sorted(meta.artifact_id for meta in found) == sorted(stored)  # the refused store left nothing
