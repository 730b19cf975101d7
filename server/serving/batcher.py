"""Dynamic batching, one batcher per model version.

Requests are queued with their rows; each model instance has its own thread that, whenever it is
free, cuts the next batch from the head of the queue (by rows, up to ``max_batch_size``),
gathers it, runs it and splits the outputs back (:mod:`sluice.server.serving.instances`, which also
says why none of this waits for the event loop). Nothing waits when an instance is idle: while
one batch computes, the queue grows into the next one, so batch size follows load by itself.
``max_queue_delay_s`` bounds an optional wait for a preferred (or full) batch, as Triton
defines it. The event loop only queues requests (:meth:`DynamicBatcher.submit`) and settles
their futures, one ``call_soon_threadsafe`` per batch; except that a live request arriving
while nothing is queued or computing is computed right there on the loop when the backend
allows it and one-request batches of this model are measured cheaper than the hand-off to a
thread (:meth:`~sluice.server.serving.instances.InstancePool.try_inline`; tens of microseconds).

The queue has one FIFO lane per priority level (see :mod:`sluice.server.serving.queues`); which
requests make a batch is :mod:`sluice.server.serving.cutting`'s policy (level 1 first; it drops the
dead and, with CoDel on, sheds from the lowest level while a standing queue persists). Admission
(:mod:`sluice.server.serving.admission`) decides before a request is queued; the batcher only
enforces its request bound. The queue, the service-rate meter and the busy count change only under
the batcher's lock; admission reads their counters without it (a count one request stale is fine
for an estimate).

Promises:
- Every submitted request gets exactly one answer: its rows of the outputs, or an exception.
- Requests whose caller went away or whose deadline passed are dropped before compute.
- A failing batch fails only its own members.
- ``submit`` never blocks: a full queue raises :class:`Overloaded` at once.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Sequence

from sluice.server.errors import DeadlineExceeded, InvalidInput, Overloaded
from sluice.server.serving.cutting import BatchCutter
from sluice.server.serving.instance_thread import settle
from sluice.server.serving.instances import Arrays, BackgroundFn, InstancePool, Observer, RunFn
from sluice.server.serving.queues import CoDel, PriorityQueue, QueueItem, ServiceRate


class DynamicBatcher:
    """Batches requests by rows for one model version. See the module docstring."""

    def __init__(
        self,
        name: str,
        run: RunFn,
        *,
        instances: int = 1,
        max_batch_size: int = 0,
        preferred_batch_sizes: Sequence[int] = (),
        max_queue_delay_s: float = 0.0,
        max_queue_size: int = 4096,
        levels: int = 1,
        codel: CoDel | None = None,
        clock: Callable[[], float] = time.monotonic,
        observer: Observer | None = None,
        background_run: BackgroundFn | None = None,
        inline: bool = False,
    ) -> None:
        """``background_run``, when given, computes the batches made only of the lowest level
        (shadow copies) instead of ``run``: on a thread of its own at the lowest OS priority,
        one batch at a time, so they never take CPU time or an instance that live batches
        could use. ``inline``: ``run`` may be called on the event loop's thread, which the
        batcher does for a live request arriving when nothing is queued or computing if
        one-request batches are measured to compute faster than the hand-off to a thread
        (:meth:`InstancePool.try_inline`)."""
        self.name = name
        #: 0 means unbatched: every request runs alone, shapes as sent.
        self._max_batch = max_batch_size
        self._max_queue = max_queue_size
        self._clock = clock
        #: Priority lanes (level 1 served first); admission reads their counts.
        self.queue = PriorityQueue(levels)
        #: Measured speed of completed batches; admission estimates waits from it.
        self.rate = ServiceRate(instances, max_batch_size or 1)
        self._cutter = BatchCutter(
            name, self.queue, self.rate, max_batch_size=max_batch_size,
            preferred_batch_sizes=preferred_batch_sizes, max_queue_delay_s=max_queue_delay_s,
            codel=codel, retry_after_ms=self.drain_estimate_ms,
        )
        #: Guards the queue, the rate meter and the pool's busy counts and ``closing``; instance
        #: threads sleep on it while there is nothing to cut.
        self._lock = threading.Condition(threading.Lock())
        #: Set while nothing is queued or computing: background work (shadow copies of this
        #: version's requests) waits for it, so it runs in this version's idle time.
        self.idle = asyncio.Event()
        self.idle.set()
        self._pool = InstancePool(
            name, run, instances=instances, max_batch_size=max_batch_size, queue=self.queue,
            rate=self.rate, cutter=self._cutter, lock=self._lock, idle=self.idle, clock=clock,
            observer=observer, background_run=background_run, inline=inline,
        )
        #: Levels below this may run inline: with several levels the lowest (shadow copies,
        #: which wait for idle time anyway) never does.
        self._inline_below = levels if levels > 1 else 2
        self._loop: asyncio.AbstractEventLoop | None = None

    # -- public (event loop) ------------------------------------------------------------------

    @property
    def closing(self) -> bool:
        """True once :meth:`close` or :meth:`abort` began: new requests are refused."""
        return self._pool.closing

    def start(self) -> None:
        """Start one thread per instance; the batcher owns them until :meth:`close`."""
        if self._pool.started:
            return
        self._loop = asyncio.get_running_loop()
        self._pool.start(self._loop)

    async def submit(
        self,
        inputs: Arrays,
        rows: int = 1,
        deadline: float | None = None,
        *,
        level: int = 1,
        nbytes: int = 0,
        expire: float | None = None,
    ) -> Arrays:
        """Queue one request at priority ``level`` and wait for its outputs (its own rows).

        ``deadline`` (a clock instant) fails the request with DeadlineExceeded if it passes
        before compute; ``expire`` (Triton's DELAY timeout) only moves it behind its level.
        Raises Overloaded when the queue is full, the batcher is draining, or the request is
        shed while queued (standing queue, or evicted for a higher priority); BackendError when
        the batch fails. Cancelling the awaiting task withdraws the request if not started.
        """
        if self._pool.closing:
            raise Overloaded(f"model '{self.name}' is shutting down", reason="draining")
        if self._max_batch and rows > self._max_batch:
            raise InvalidInput(
                f"model '{self.name}': batch of {rows} rows exceeds max_batch_size "
                f"{self._max_batch}"
            )
        if len(self.queue) >= self._max_queue:
            raise Overloaded(
                f"model '{self.name}': queue full ({self._max_queue} requests)",
                reason="queue_full",
                retry_after_ms=self.drain_estimate_ms(),
            )
        now = self._clock()
        if deadline is not None and deadline <= now:
            raise DeadlineExceeded(f"model '{self.name}': deadline passed before queueing")
        if self._loop is None:
            raise RuntimeError(f"batcher {self.name} used before start()")
        if level < self._inline_below:
            outputs = self._pool.try_inline(inputs, rows, now)
            if outputs is not None:
                return outputs
        future: asyncio.Future[Arrays] = self._loop.create_future()
        batched = self._max_batch > 0
        signature = tuple((k, v.shape[1:] if batched else v.shape) for k, v in inputs.items())
        item = QueueItem(
            inputs, rows, signature, future, deadline, now,
            level=level, nbytes=nbytes, expire=expire,
        )
        self.idle.clear()
        pool = self._pool
        with self._lock:
            if pool.closing:  # close() began since the check above
                raise Overloaded(f"model '{self.name}' is shutting down", reason="draining")
            if level < self._inline_below and not pool.busy and not self.queue:
                pool.timed_item = item  # queued to an idle pool: its round trip times a hand-off
            self.queue.push(item)
            if pool.sleeping:
                self._lock.notify()
        return await future

    def inline_estimate_s(self) -> float | None:
        """Seconds a one-request batch computes in, when a live request arriving now would be
        computed inline (:meth:`try_inline`); None when it would be queued."""
        pool = self._pool
        if pool.closing or self.queue.requests or pool.busy:
            return None
        return pool.inline_estimate_s()

    def try_inline(self, inputs: Arrays, rows: int, now: float) -> Arrays | None:
        """Compute a live request at once on the event loop, as :meth:`submit` would when the
        model is idle (admission cleared it); None: it must be submitted."""
        if self._pool.closing:
            return None
        return self._pool.try_inline(inputs, rows, now)

    def stats(self) -> dict[str, float]:
        """Queue depth, its high-water marks, what is computing and throughput now."""
        queue = self.queue
        return {
            "queued_requests": len(queue),
            "queued_rows": queue.rows,
            "queued_bytes": queue.bytes,
            "peak_queued_rows": queue.peak_rows,
            "peak_queued_bytes": queue.peak_bytes,
            "busy_instances": self._pool.busy,
            "background_requests": self._pool.background_requests,
            "inline_batches": self._pool.inline_batches,
            "rows_per_s": self.rate.rows_per_s,
        }

    def wait_estimate_s(self, rows_ahead: int, now: float) -> float | None:
        """Expected seconds before a request behind ``rows_ahead`` queued rows starts, or None
        while no batch has completed (nothing measured yet)."""
        rate = self.rate
        if not rate.known:
            return None
        return rate.free_in_s(now) + rate.drain_s(rows_ahead)

    def drain_estimate_ms(self, level: int | None = None) -> int:
        """Roughly how long the rows queued at ``level`` or above (default: all) take to drain
        at the measured rate (ms, >= 1; 100 while nothing is measured)."""
        rows = self.queue.rows if level is None else self.queue.rows_ahead(level)
        wait = self.wait_estimate_s(rows, self._clock())
        if wait is None:
            return 100
        return max(1, int(1000 * wait))

    def evict(
        self, below: int, error: Callable[[QueueItem], BaseException]
    ) -> QueueItem | None:
        """Fail the last-served request of the lowest level below ``below`` with ``error(it)``,
        to make room for a higher-priority one. Returns it (None: nothing lower is queued)."""
        with self._lock:
            item = self.queue.pop_lowest(below)
        if item is not None and not item.future.done():
            settle(item.future, error=error(item))
        return item

    async def close(self) -> None:
        """Stop accepting, finish everything queued, then end the threads."""
        with self._lock:
            self._pool.stop_locked()
        if self._pool.has_threads:
            await asyncio.to_thread(self._pool.join)

    def abort(self, reason: str) -> None:
        """Fail everything still queued with UNAVAILABLE (no drain); batches already computing
        still answer their members. :meth:`close` then ends the threads."""
        with self._lock:
            self._pool.stop_locked()
            items = list(self.queue.drain())
        for item in items:
            settle(item.future, error=Overloaded(reason, reason="draining"))
