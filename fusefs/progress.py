"""A one-line progress bar with an ETA, for the long commands (``fsck``, ``gc``), on a terminal only.

Redrawn at most ten times a second on stderr; when stderr is not a terminal
(cron, a pipe, a log) it writes nothing, so the commands' output stays the
lines of their report.
"""

from __future__ import annotations

import sys
import time
from typing import TextIO

WIDTH = 30  # characters of bar
REDRAW_S = 0.1


class Progress:
    def __init__(self, label: str, stream: TextIO | None = None) -> None:
        self.label = label
        self.stream = stream if stream is not None else sys.stderr
        self.enabled = self.stream.isatty()
        self._start = time.monotonic()
        self._drawn = 0.0
        self._shown = False

    def __call__(self, done: int, total: int | None = None) -> None:
        """``done`` of ``total`` (None: not known, a count alone) so far."""
        now = time.monotonic()
        if not self.enabled or (now - self._drawn < REDRAW_S and done != total):
            return
        self._drawn = now
        if total:
            filled = WIDTH * done // total
            elapsed = now - self._start
            left = elapsed * (total - done) / done if done else 0.0
            line = f"{self.label} [{'#' * filled}{' ' * (WIDTH - filled)}] {done}/{total} ETA {_clock(left)}"
        else:
            line = f"{self.label}: {done}"
        self.stream.write(f"\r\x1b[K{line}")
        self.stream.flush()
        self._shown = True

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()  # before the command prints anything

    def close(self) -> None:
        """End the bar's line, if one was drawn."""
        if self._shown:
            self.stream.write("\r\x1b[K")
            self.stream.flush()
            self._shown = False


def _clock(seconds: float) -> str:
    minutes, secs = divmod(int(seconds + 0.5), 60)
    return f"{minutes // 60}:{minutes % 60:02d}:{secs:02d}" if minutes >= 60 else f"{minutes}:{secs:02d}"
