"""What the commands that work on a whole store share (``gc``, ``fsck``, ``status``): open it, run, close."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TypeVar

import trio

from core import ArtifactStore
from core.config import backends_of
from core.errors import ConfigurationError
from core.settings import Settings
from fusefs.serve_cmd import settings_for

T = TypeVar("T")


def on_store(data_dir: Path | None, work: Callable[[ArtifactStore], Awaitable[T]]) -> tuple[Settings, T]:
    """Run ``work`` on the store of ``data_dir`` (its settings from the environment, as a mount's).

    The memory backend is refused (ConfigurationError): its artifacts live in
    another process, out of reach.
    """
    settings = settings_for(data_dir)
    if backends_of(settings)[0].in_memory:
        raise ConfigurationError("the memory backend keeps artifacts inside one process, out of this command's reach")

    async def main() -> T:
        async with ArtifactStore(settings=settings) as store:
            return await work(store)

    return settings, trio.run(main)


def size_text(count: int) -> str:
    """A byte count as people read it: 2048 -> 2.0 KiB."""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if count < 1024 or unit == "GiB":
            return f"{count} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1024  # type: ignore[assignment]
    raise AssertionError("unreachable")
