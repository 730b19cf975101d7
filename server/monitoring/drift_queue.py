"""The queue between the hub's thread and a drift window's intake: sampled rows, bounded.

The hub's thread puts the rows of sampled records in (:meth:`RowQueue.add_many`: rows extracted
by :mod:`.drift_rows`, one block per drain when the records are batched alike, nothing
computed); the intake takes them all out (:meth:`RowQueue.take`). Rows that do not fit the
profile are counted as ``malformed``, rows beyond the bound as ``dropped_rows``: nothing is lost
silently.
"""

from __future__ import annotations

import threading
from collections import deque

import numpy as np

from sluice.server.monitoring.drift_rows import record_rows, rows_together
from sluice.server.monitoring.hub import Finished
from sluice.server.monitoring.profile import Profile

#: Float64 values the queue between two intakes may hold (64 MiB), unless told otherwise.
_PENDING_VALUES = 1 << 23

#: One queued block: when its rows came in, and the rows (float64 columns of the layout).
Block = tuple[float, np.ndarray]


class RowQueue:
    """Sampled rows of one model version waiting for the intake (see the module docstring)."""

    def __init__(self, profile: Profile, batched: bool, window_rows: int,
                 max_pending_rows: int | None = None) -> None:
        """``max_pending_rows``: rows queued between two intakes before more are dropped
        (default: ``window_rows`` or 10,000 if more, but no more than 64 MiB of float64 and no
        fewer than 1,000 rows)."""
        self.profile = profile
        self._batched = batched
        self._lock = threading.Lock()
        self._pending: deque[Block] = deque()
        self._pending_rows = 0
        columns = len(profile.features) + (profile.prediction is not None)  # as drift_layout's
        self.max_pending = max_pending_rows or min(
            max(window_rows, 10_000), max(1_000, _PENDING_VALUES // max(columns, 1)))
        self.dropped_rows = 0
        self.malformed = 0

    def add(self, record: Finished, now: float) -> None:
        """Queue the rows of ``record`` (quick: a reshape and a copy); counted when they do not
        fit the profile or the queue is full."""
        rows = record_rows(self.profile, self._batched, record)
        if rows is None:
            self.malformed += 1
        elif not self._offer(now, rows):
            self.dropped_rows += rows.shape[0]

    def add_many(self, records: list[Finished], now: float) -> None:
        """:meth:`add` of each of ``records``, as one block of rows when they are batched alike
        and fit the queue whole (a few numpy calls for the lot: one block per drain, coded into
        the ring at once), else one by one."""
        rows = rows_together(self.profile, records) if self._batched and len(records) > 1 else None
        if rows is not None and self._offer(now, rows):
            return
        for record in records:
            self.add(record, now)

    def _offer(self, now: float, rows: np.ndarray) -> bool:
        """Queue ``rows`` if they fit the bound; whether they did."""
        with self._lock:
            if self._pending_rows + rows.shape[0] > self.max_pending:
                return False
            self._pending.append((now, rows))
            self._pending_rows += rows.shape[0]
            return True

    def take(self) -> deque[Block]:
        """Every queued block, oldest first; the queue is empty after."""
        with self._lock:
            pending, self._pending = self._pending, deque()
            self._pending_rows = 0
        return pending
