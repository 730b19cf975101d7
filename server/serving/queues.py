"""The batcher's building blocks: the priority queue, the service-rate meter and CoDel.

Plain data structures with no awaits and no locks of their own: the batcher changes them under
its lock, and admission reads their counters without it. Every operation is O(1) (or O(priority
levels), a small constant).
"""

from __future__ import annotations

import asyncio
import math
from collections import deque
from collections.abc import Iterator
from typing import Any

import numpy as np

Arrays = dict[str, np.ndarray]


class QueueItem:
    """One queued request: its inputs, its future and what admission decided about it."""

    __slots__ = (
        "deadline", "delayed", "enqueued", "expire", "future", "inputs", "level", "nbytes",
        "rows", "signature",
    )

    def __init__(
        self,
        inputs: Arrays,
        rows: int,
        signature: tuple[Any, ...],
        future: asyncio.Future[Arrays],
        deadline: float | None,
        enqueued: float,
        *,
        level: int = 1,
        nbytes: int = 0,
        expire: float | None = None,
    ) -> None:
        self.inputs = inputs
        self.rows = rows
        self.signature = signature
        self.future = future
        #: Clock instant after which the request fails with DEADLINE_EXCEEDED (never computed).
        self.deadline = deadline
        self.enqueued = enqueued
        #: Priority level, 1 = highest.
        self.level = level
        self.nbytes = nbytes
        #: Queue timeout with Triton's DELAY action: once passed, the item goes behind its level.
        self.expire = expire
        self.delayed = False


class PriorityQueue:
    """FIFO lanes per priority level, served level 1 first.

    Each level has two lanes: its live requests, then the ones whose DELAY timeout passed
    (Triton's order: a delayed request waits for every non-delayed one of its level). Counts of
    requests, rows and bytes are kept per level and in total, with high-water marks.
    """

    def __init__(self, levels: int) -> None:
        #: Number of levels, 1..levels.
        self.levels = levels
        #: Lanes in service order: live(1), delayed(1), live(2), delayed(2), ...
        self.lanes: list[deque[QueueItem]] = [deque() for _ in range(2 * levels)]
        self._requests = [0] * (levels + 1)
        self._rows = [0] * (levels + 1)
        self._bytes = [0] * (levels + 1)
        self.requests = 0
        self.rows = 0
        self.bytes = 0
        self.peak_rows = 0
        self.peak_bytes = 0

    def __len__(self) -> int:
        return self.requests

    def requests_at(self, level: int) -> int:
        return self._requests[level]

    def rows_ahead(self, level: int) -> int:
        """Rows queued at ``level`` or above (served before a new request at ``level``)."""
        if level >= self.levels:
            return self.rows
        return sum(self._rows[1 : level + 1])

    def rows_below(self, level: int) -> int:
        """Rows queued at levels lower (numerically greater) than ``level``."""
        return self.rows - self.rows_ahead(level)

    def bytes_below(self, level: int) -> int:
        """Bytes queued at levels lower (numerically greater) than ``level``."""
        return sum(self._bytes[level + 1 :])

    def push(self, item: QueueItem) -> None:
        self.lanes[2 * (item.level - 1)].append(item)
        self._count(item, 1)

    def put_back(self, item: QueueItem) -> None:
        """Return an item taken from a lane's head to that head."""
        self.lanes[2 * (item.level - 1) + item.delayed].appendleft(item)
        self._count(item, 1)

    def take(self, lane: deque[QueueItem]) -> QueueItem:
        """Remove and return the head of ``lane``."""
        item = lane.popleft()
        self._count(item, -1)
        return item

    def delay(self, lane: deque[QueueItem]) -> None:
        """Move the head of a live lane to the tail of its level's delayed lane."""
        item = lane.popleft()
        item.delayed = True
        self.lanes[2 * (item.level - 1) + 1].append(item)

    def pop_lowest(self, below: int, *, head: bool = False) -> QueueItem | None:
        """Remove an item of the lowest non-empty level numerically greater than ``below``:
        the last one it would serve, or with ``head`` the first one. None if there is none."""
        for level in range(self.levels, below, -1):
            if not self._requests[level]:
                continue
            live, delayed = self.lanes[2 * (level - 1)], self.lanes[2 * (level - 1) + 1]
            if head:
                lane = live if live else delayed
                item = lane.popleft()
            else:
                lane = delayed if delayed else live
                item = lane.pop()
            self._count(item, -1)
            return item
        return None

    def drain(self) -> Iterator[QueueItem]:
        """Remove and yield every item."""
        for lane in self.lanes:
            while lane:
                yield self.take(lane)

    def _count(self, item: QueueItem, sign: int) -> None:
        self._requests[item.level] += sign
        self._rows[item.level] += sign * item.rows
        self._bytes[item.level] += sign * item.nbytes
        self.requests += sign
        self.rows += sign * item.rows
        self.bytes += sign * item.nbytes
        if sign > 0:
            if self.rows > self.peak_rows:
                self.peak_rows = self.rows
            if self.bytes > self.peak_bytes:
                self.peak_bytes = self.bytes


class ServiceRate:
    """How fast a batcher computes, measured from its completed batches.

    Batch durations are tracked per batch-size class (powers of two, as an EWMA), because
    batching makes a large batch far cheaper per row than a small one: the time to drain ``n``
    queued rows is estimated from the duration of batches the size they will be cut at.
    Nothing is known until a batch has completed; callers then admit.
    """

    def __init__(self, instances: int, max_batch_rows: int, alpha: float = 0.2) -> None:
        self._instances = max(1, instances)
        self._max_rows = max(1, max_batch_rows)
        self._alpha = alpha
        #: Per size class (rows.bit_length()): EWMA of batch seconds and of batch rows.
        self._seconds: list[float] = [0.0] * (self._max_rows.bit_length() + 1)
        self._rows: list[float] = [0.0] * len(self._seconds)
        #: Per instance: (start instant, rows) of the batch it is running, or None. A list
        #: assigned in place, so a reader on another thread never sees it change size.
        self._running: list[tuple[float, int] | None] = [None] * self._instances
        #: Entries of ``_running`` that are not None (admission asks on every request).
        self._running_count = 0
        #: Whether any batch has completed yet.
        self.known = False

    def started(self, instance: int, now: float, rows: int) -> None:
        if self._running[instance] is None:
            self._running_count += 1
        self._running[instance] = (now, rows)

    def finished(self, instance: int, now: float, ok: bool) -> None:
        start, rows = self._running[instance] or (now, 0)
        if self._running[instance] is not None:
            self._running_count -= 1
        self._running[instance] = None
        seconds = now - start
        if not ok or seconds <= 0 or rows <= 0:
            return
        k = min(rows.bit_length(), len(self._seconds) - 1)
        if not self._rows[k]:
            self._seconds[k], self._rows[k] = seconds, float(rows)
            self.known = True
        else:
            a = self._alpha
            self._seconds[k] += a * (seconds - self._seconds[k])
            self._rows[k] += a * (rows - self._rows[k])

    def batch_s(self, rows: int) -> float:
        """Expected seconds to compute one batch of ``rows`` rows (0 while nothing is known)."""
        rows = max(1, min(rows, self._max_rows))
        k = rows.bit_length()
        # The nearest measured class, preferring smaller batches scaled up by rows: their cost
        # per row is higher, so the estimate errs long, never short. A larger class's time is
        # taken as it is (a smaller batch takes no longer).
        for j in range(k, 0, -1):
            if self._rows[j]:
                return self._seconds[j] * rows / self._rows[j]
        for j in range(k + 1, len(self._seconds)):
            if self._rows[j]:
                return self._seconds[j]
        return 0.0

    def drain_s(self, rows: int) -> float:
        """Expected seconds to compute ``rows`` queued rows, cut into full batches spread over
        the instances (one batch never runs faster than itself: as many batches as instances or
        fewer take as long as the largest of them)."""
        if rows <= 0:
            return 0.0
        if rows <= self._max_rows:  # one batch
            return self.batch_s(rows)
        full, rest = divmod(rows, self._max_rows)
        if full + (1 if rest else 0) <= self._instances:
            return self.batch_s(min(rows, self._max_rows))
        total = full * self.batch_s(self._max_rows) + (self.batch_s(rest) if rest else 0.0)
        return max(total / self._instances, self.batch_s(self._max_rows))

    def free_in_s(self, now: float) -> float:
        """Expected seconds until an instance is free to start the next batch."""
        if self._running_count < self._instances:
            return 0.0
        # Read without the batcher's lock: a batch may finish between the count and the list.
        running = [batch for batch in self._running if batch is not None]
        if len(running) < self._instances:
            return 0.0
        return min(max(0.0, self.batch_s(rows) - (now - start)) for start, rows in running)

    @property
    def rows_per_s(self) -> float:
        """Throughput at full batches, all instances busy (0 while nothing is known)."""
        seconds = self.batch_s(self._max_rows)
        return self._max_rows * self._instances / seconds if seconds > 0 else 0.0


class CoDel:
    """CoDel's control law (RFC 8289) on queueing delay, checked once per cut batch.

    When the queueing delay of what is dequeued stays above ``target_s`` for ``interval_s``
    (the minimum over the interval is above target: a standing queue, not a burst), one request
    is shed, then more at ``interval / sqrt(count)`` spacing until the delay falls below target.
    """

    def __init__(self, target_s: float, interval_s: float) -> None:
        self.target_s = target_s
        self.interval_s = interval_s
        self._first_above: float | None = None
        self._dropping = False
        self._drop_next = 0.0
        self._count = 0
        self._last_count = 0

    def should_drop(self, now: float, sojourn_s: float, backlog: bool) -> bool:
        """Whether to shed one request now; ``sojourn_s`` is the smallest queueing delay in the
        batch just cut and ``backlog`` whether requests are still queued behind it."""
        if sojourn_s < self.target_s or not backlog:
            self._first_above = None
            self._dropping = False
            return False
        if self._first_above is None:
            self._first_above = now + self.interval_s
            return False
        if self._dropping:
            if now < self._drop_next:
                return False
            self._count += 1
            self._drop_next += self.interval_s / math.sqrt(self._count)
            return True
        if now < self._first_above:
            return False
        self._dropping = True
        # Re-entering soon after the last dropping spell: resume near the rate that worked.
        delta = self._count - self._last_count
        recent = now - self._drop_next < 16 * self.interval_s
        self._count = delta if delta > 1 and recent else 1
        self._last_count = self._count
        self._drop_next = now + self.interval_s / math.sqrt(self._count)
        return True
