"""Which queued requests make the next batch: the batching policy, apart from the threads.

:class:`BatchCutter` takes a batch from the head of a
:class:`~sluice.server.serving.queues.PriorityQueue` (level 1 first, FIFO within a level) by rows,
up to ``max_batch_size``, of one input signature, and applies Triton's ``preferred_batch_size`` and
``max_queue_delay_microseconds``, the rule that lower-priority rows never make a higher level's
batch late, and CoDel against a standing queue. Requests found dead on the way (caller gone,
deadline passed) are dropped; DELAY-expired ones move behind their level. The caller (an instance
thread of :class:`~sluice.server.serving.instances.InstancePool`) holds the batcher's lock around
:meth:`BatchCutter.cut`; the failures it reports are answered on the event loop.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from sluice.server.errors import DeadlineExceeded, Overloaded
from sluice.server.serving.queues import CoDel, PriorityQueue, QueueItem, ServiceRate

#: Requests to fail, each with its exception (the caller settles them on the event loop).
Failures = list[tuple[QueueItem, BaseException]]

#: :attr:`Cut.wait_s` meaning "nothing to cut until the queue changes" (sleep until notified).
UNTIL_NOTIFIED = math.inf


@dataclass(slots=True)
class Cut:
    """One attempt: a batch (possibly empty), how long to wait before the next attempt when it
    is empty (None: look again at once; :data:`UNTIL_NOTIFIED`), and the requests to fail."""

    batch: list[QueueItem]
    wait_s: float | None
    failures: Failures = field(default_factory=list)


class BatchCutter:
    """The batching policy of one model version over its queue. See the module docstring."""

    def __init__(
        self,
        name: str,
        queue: PriorityQueue,
        rate: ServiceRate,
        *,
        max_batch_size: int = 0,
        preferred_batch_sizes: Sequence[int] = (),
        max_queue_delay_s: float = 0.0,
        codel: CoDel | None = None,
        retry_after_ms: Callable[[], int] = lambda: 100,
    ) -> None:
        """``retry_after_ms`` gives the pushback for requests CoDel sheds."""
        self.name = name
        self.queue = queue
        self.rate = rate
        #: 0 means unbatched: every request runs alone, shapes as sent.
        self._max_batch = max_batch_size
        self._preferred = tuple(sorted(set(preferred_batch_sizes)))
        self._delay_s = max_queue_delay_s
        self._codel = codel
        self._retry_after_ms = retry_after_ms

    def cut(
        self, now: float, *, closing: bool = False,
        held: Callable[[list[QueueItem]], bool] | None = None,
    ) -> Cut:
        """Take the next batch from the head, or say how long to wait for a better one.

        ``closing``: do not wait for a fuller batch. ``held(batch)``: this batch may not run
        yet (it goes back and the cut waits until notified)."""
        queue = self.queue
        limit = self._max_batch or 1
        batch: list[QueueItem] = []
        failures: Failures = []
        rows = 0
        full = False
        # The earliest deadline among the batch's higher-priority members: lower-priority rows
        # that would make the batch run past it stay queued, so a priority-1 request is not
        # made late by the level-2 rows that would fill its batch. (Only across levels: within
        # one level, shrinking batches as they run late would cut throughput exactly when the
        # queue is behind, and make it later still.)
        earliest: float | None = None
        rate = self.rate if self.rate.known else None
        for lane in queue.lanes:
            while lane:
                item = lane[0]
                if item.future.done():  # caller left (or evicted)
                    queue.take(lane)
                    continue
                if item.deadline is not None and item.deadline <= now:
                    queue.take(lane)
                    failures.append((item, DeadlineExceeded(
                        f"model '{self.name}': deadline passed after "
                        f"{now - item.enqueued:.3f}s in the queue"
                    )))
                    continue
                if item.expire is not None and not item.delayed and item.expire <= now:
                    queue.delay(lane)
                    continue
                if batch and (
                    rows + item.rows > limit
                    or item.signature != batch[0].signature
                    or (earliest is not None and rate is not None
                        and item.level > batch[0].level
                        and now + rate.batch_s(rows + item.rows) > earliest)
                ):
                    full = True
                    break
                batch.append(queue.take(lane))
                rows += item.rows
                if item.deadline is not None and item.level == batch[0].level and (
                    earliest is None or item.deadline < earliest
                ):
                    earliest = item.deadline
                if not self._max_batch or rows >= limit:
                    full = True
                    break
            if full:
                break
        batch, wait_s = self._settle(now, batch, full, closing, held, failures)
        return Cut(batch, wait_s, failures)

    def _settle(
        self, now: float, batch: list[QueueItem], full: bool, closing: bool,
        held: Callable[[list[QueueItem]], bool] | None, failures: Failures,
    ) -> tuple[list[QueueItem], float | None]:
        """Apply the preferred sizes, the queue delay, ``held`` and CoDel to a batch just taken
        from the head."""
        if not batch:
            return [], None
        if not full and self._preferred:
            cut = self._preferred_cut(batch)
            if cut:
                full = True
                self._put_back(batch[cut:])
                batch = batch[:cut]
        if not full and self._delay_s > 0 and not closing:
            waited = now - min(item.enqueued for item in batch)
            if waited < self._delay_s:
                self._put_back(batch)
                return [], self._delay_s - waited
        if held is not None and held(batch):
            self._put_back(batch)
            return [], UNTIL_NOTIFIED
        if self._codel is not None:
            self._standing_queue(now, batch, failures)
        return batch, None

    def _standing_queue(self, now: float, batch: list[QueueItem], failures: Failures) -> None:
        """CoDel: shed the head of the lowest queued level while a standing queue persists."""
        assert self._codel is not None
        sojourn = now - max(item.enqueued for item in batch)
        if not self._codel.should_drop(now, sojourn, backlog=bool(self.queue)):
            return
        while (victim := self.queue.pop_lowest(0, head=True)) is not None:
            if not victim.future.done():
                failures.append((victim, Overloaded(
                    f"model '{self.name}': shed from a standing queue (queueing delay above "
                    f"{1000 * self._codel.target_s:g} ms for {1000 * self._codel.interval_s:g} ms)",
                    reason="standing_queue",
                    retry_after_ms=self._retry_after_ms(),
                )))
                return

    def _preferred_cut(self, batch: list[QueueItem]) -> int:
        """Length of the longest prefix whose rows equal a preferred batch size (0: none)."""
        best = 0
        rows = 0
        for i, item in enumerate(batch, 1):
            rows += item.rows
            if rows in self._preferred:
                best = i
        return best

    def _put_back(self, items: list[QueueItem]) -> None:
        for item in reversed(items):
            self.queue.put_back(item)
