"""A progress line for batch jobs: rows done, rows/s, time left, on stderr.

On a terminal the line is redrawn in place (at most 4 times a second); elsewhere (a log, CI) a
line is printed at most every 10 seconds. Rates count the rows of this run only, so a resumed job
does not claim the earlier run's rows as its speed.
"""

from __future__ import annotations

import sys
import time
from typing import TextIO


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    if seconds >= 60:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds}s"


class Progress:
    """Counts rows and draws the line; ``clock`` is injectable (tests)."""

    def __init__(self, stream: TextIO | None = None, clock=time.monotonic) -> None:
        self.stream = stream if stream is not None else sys.stderr
        self.clock = clock
        self.live = bool(getattr(self.stream, "isatty", lambda: False)())
        self.every_s = 0.25 if self.live else 10.0
        self.total: int | None = None
        self.done = self.before = 0
        self._started = self._drawn = 0.0

    def start(self, total_rows: int | None, done_before: int) -> None:
        self.total, self.done, self.before = total_rows, done_before, done_before
        self._started = self._drawn = self.clock()

    def advance(self, rows: int) -> None:
        self.done += rows
        now = self.clock()
        if now - self._drawn >= self.every_s:
            self._drawn = now
            self.draw(now)

    def line(self, now: float) -> str:
        elapsed = max(now - self._started, 1e-9)
        rate = (self.done - self.before) / elapsed
        if self.total:
            left = (self.total - self.done) / rate if rate > 0 else float("inf")
            eta = _duration(left) if left != float("inf") else "?"
            return (f"{self.done:,}/{self.total:,} rows ({100 * self.done / self.total:.0f}%), "
                    f"{rate:,.0f} rows/s, {eta} left")
        return f"{self.done:,} rows, {rate:,.0f} rows/s"

    def draw(self, now: float) -> None:
        end = "\r" if self.live else "\n"
        self.stream.write("sluice batch: " + self.line(now) + end)
        self.stream.flush()

    def finish(self) -> None:
        self.draw(self.clock())
        if self.live:
            self.stream.write("\n")
