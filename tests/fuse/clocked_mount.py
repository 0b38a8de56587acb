"""``python tests/fuse/clocked_mount.py CLOCK_FILE ARGS...``: ``artifactfs ARGS...`` on a clock a test moves.

The mount runs in a process of its own, so a test cannot hand it a
:class:`~core.infra.clock.ManualClock`. This wrapper runs the real command
line (:func:`fusefs.cli.run`) with the store's clock injected: the system
clock plus an offset in seconds that the test writes into ``CLOCK_FILE``
(read again whenever the file's mtime changes). The production mount knows
nothing of it: the clock is an ordinary parameter of its entry point.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

# This checkout's core and fusefs, as `python -m fusefs` run from the repository would import.
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from fusefs.cli import run  # after the path is set


class OffsetFileClock:
    """The system clock plus an offset in seconds read from a file."""

    def __init__(self, path: str) -> None:
        self._path = path
        self._stamp: int | None = None
        self._offset_ns = 0

    def now_ns(self) -> int:
        stamp = os.stat(self._path).st_mtime_ns
        if stamp != self._stamp:
            with open(self._path, encoding="ascii") as f:
                self._offset_ns = int(float(f.read().strip() or 0) * 1_000_000_000)
            self._stamp = stamp
        return time.time_ns() + self._offset_ns


if __name__ == "__main__":
    sys.exit(run(sys.argv[2:], clock=OffsetFileClock(sys.argv[1])))
