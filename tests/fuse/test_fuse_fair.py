"""A large directory through the kernel while it changes (issue #16): listings come a page at a
time from the store, and still list every entry present throughout exactly once."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest
from mounting import Mount

STABLE = 2_000  # eight pages of the mount's listing (fusefs.dirhandles.PAGE_SIZE = 256)


def churn(where: Path, stop: threading.Event, rounds: list[int]) -> None:
    """Make and remove entries all over the name range (before, among and after the stable ones)."""
    made: list[Path] = []
    i = 0
    while not stop.is_set():
        path = where / f"s{(i * 7919) % STABLE:05d}-{i}"  # sorts right after a stable name, anywhere
        path.write_bytes(b"")
        made.append(path)
        if len(made) > 20:
            made.pop(0).unlink()
        i += 1
        rounds[0] = i


@pytest.mark.semantics("S-readdir-offsets")
def test_ls_of_a_changing_directory_lists_every_stable_entry_once(mount: Mount) -> None:
    big = mount.user_dir("alice") / "big"
    big.mkdir()
    stable = [f"s{i:05d}" for i in range(STABLE)]
    mount.sh(f"cd users/alice/big && printf '%s\\n' {' '.join(stable)} | xargs touch")
    stop, rounds = threading.Event(), [0]
    worker = threading.Thread(target=churn, args=(big, stop, rounds))
    worker.start()
    try:
        for _ in range(3):
            before = rounds[0]
            listed = mount.run_bounded(["ls", "-f", str(big)], timeout=120).stdout.decode().split("\n")[:-1]
            assert len(listed) == len(set(listed)), "an entry listed twice"
            assert set(stable) <= set(listed), sorted(set(stable) - set(listed))[:5]
            assert all(name in (".", "..") or name.startswith("s") for name in listed)
        assert rounds[0] > before, "nothing changed while ls ran"  # the churn did run alongside
    finally:
        stop.set()
        worker.join(timeout=60)
    assert sorted(name for name in os.listdir(big) if "-" not in name) == stable
