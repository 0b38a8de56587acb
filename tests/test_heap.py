"""The mount's collector settings (fusefs.heap), applied in a process of their own."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

PROBE = """
import gc
from fusefs import heap
before = gc.get_freeze_count()
frozen = heap.settle()
made_later = [[] for _ in range(10)]
print(before, frozen, gc.get_freeze_count(), *gc.get_threshold())
"""


def test_settle_freezes_what_exists_and_spaces_collections_out() -> None:
    done = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, check=True, cwd=REPO)
    before, frozen, after, *threshold = map(int, done.stdout.split())
    assert before == 0 and frozen > 1_000 and after == frozen  # objects made later are not frozen
    assert threshold == [20_000, 20, 20]
