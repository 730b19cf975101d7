"""Dynamic batching, one batcher per model version.

Requests are queued with their rows; each model instance has one worker that, whenever it is
free, cuts the next batch from the head of the queue (by rows, up to ``max_batch_size``) and runs
it. Nothing waits when an instance is idle: while one batch computes, the queue grows into the
next one, so batch size follows load by itself. ``max_queue_delay_s`` bounds an optional wait for
a preferred (or full) batch, as Triton defines it.

The queue has one FIFO lane per priority level (see :mod:`server.core.queues`); batches are cut
from level 1 first. Admission (:mod:`server.core.admission`) decides before a request is queued;
the batcher only enforces its request bound, drops the dead when cutting, and, with CoDel on,
sheds from the lowest level while a standing queue persists.

Promises:
- Every submitted request gets exactly one answer: its rows of the outputs, or an exception.
- Requests whose caller went away or whose deadline passed are dropped before compute.
- A failing batch fails only its own members.
- ``submit`` never blocks: a full queue raises :class:`Overloaded` at once.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

import numpy as np

from server.core.queues import CoDel, PriorityQueue, QueueItem, ServiceRate
from server.core.worker import settle
from server.errors import BackendError, DeadlineExceeded, InvalidInput, Overloaded, SluiceError

Arrays = dict[str, np.ndarray]
#: run(instance_index, batched_inputs) -> outputs (every output's first dim = batch rows).
RunFn = Callable[[int, Arrays], Awaitable[Arrays]]


@dataclass(slots=True)
class BatchReport:
    """What one executed batch cost; handed to the batcher's observer."""

    rows: int
    #: Seconds each member waited in the queue, in batch order.
    queue_s: list[float]
    gather_s: float
    run_s: float
    scatter_s: float
    failed: bool


Observer = Callable[[BatchReport], None]


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
        background_run: RunFn | None = None,
    ) -> None:
        """``background_run``, when given, computes the batches made only of the lowest level
        (shadow copies) instead of ``run``: at low OS priority, so they never take CPU time
        that live batches could use."""
        self.name = name
        self._run = run
        self._background_run = background_run
        self._instances = instances
        #: 0 means unbatched: every request runs alone, shapes as sent.
        self._max_batch = max_batch_size
        self._preferred = tuple(sorted(set(preferred_batch_sizes)))
        self._delay_s = max_queue_delay_s
        self._max_queue = max_queue_size
        self._clock = clock
        self._observer = observer
        #: Priority lanes (level 1 served first); admission reads their counts.
        self.queue = PriorityQueue(levels)
        #: Measured speed of completed batches; admission estimates waits from it.
        self.rate = ServiceRate(instances, max_batch_size or 1)
        self._codel = codel
        self._busy = 0
        self._wake = asyncio.Event()
        #: Set while nothing is queued or computing: background work (shadow copies of this
        #: version's requests) waits for it, so it runs in this version's idle time.
        self.idle = asyncio.Event()
        self.idle.set()
        self._workers: list[asyncio.Task[None]] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closing = False

    # -- public -------------------------------------------------------------------------------

    @property
    def closing(self) -> bool:
        """True once :meth:`close` or :meth:`abort` began: new requests are refused."""
        return self._closing

    def start(self) -> None:
        """Start one worker task per instance; the batcher owns them until :meth:`close`."""
        if not self._workers:
            self._loop = asyncio.get_running_loop()
            self._workers = [
                asyncio.create_task(self._worker(i), name=f"batcher:{self.name}:{i}")
                for i in range(self._instances)
            ]

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
        if self._closing:
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
        future: asyncio.Future[Arrays] = self._loop.create_future()
        batched = self._max_batch > 0
        signature = tuple((k, v.shape[1:] if batched else v.shape) for k, v in inputs.items())
        self.idle.clear()
        self.queue.push(QueueItem(
            inputs, rows, signature, future, deadline, now,
            level=level, nbytes=nbytes, expire=expire,
        ))
        self._wake.set()
        return await future

    def stats(self) -> dict[str, float]:
        """Queue depth, its high-water marks and throughput now."""
        queue = self.queue
        return {
            "queued_requests": len(queue),
            "queued_rows": queue.rows,
            "queued_bytes": queue.bytes,
            "peak_queued_rows": queue.peak_rows,
            "peak_queued_bytes": queue.peak_bytes,
            "busy_instances": self._busy,
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
        item = self.queue.pop_lowest(below)
        if item is not None and not item.future.done():
            settle(item.future, error=error(item))
        return item

    async def close(self) -> None:
        """Stop accepting, finish everything queued, then end the workers."""
        self._closing = True
        self._wake.set()
        if self._workers:
            await asyncio.gather(*self._workers, return_exceptions=True)

    def abort(self, reason: str) -> None:
        """Fail everything still queued with UNAVAILABLE and cancel the workers (no drain)."""
        self._closing = True
        for item in self.queue.drain():
            settle(item.future, error=Overloaded(reason, reason="draining"))
        for task in self._workers:
            task.cancel()

    # -- workers ------------------------------------------------------------------------------

    async def _worker(self, index: int) -> None:
        while True:
            batch = await self._next_batch()
            if batch is None:
                return
            self._busy += 1
            try:
                await self._execute(index, batch)
            finally:
                self._busy -= 1
                if not self._busy and not self.queue:
                    self.idle.set()

    async def _next_batch(self) -> list[QueueItem] | None:
        while True:
            if not self.queue:
                if self._closing:
                    return None
                self._wake.clear()
                await self._wake.wait()
                # Let the event loop run what is already ready (requests that have arrived and
                # are being decoded) so they join this batch: one loop pass, not a timed wait.
                await asyncio.sleep(0)
                continue
            batch, wait_s = self._cut(self._clock())
            if batch:
                return batch
            if wait_s is None:
                continue  # everything at the head was dead; look again
            self._wake.clear()
            try:
                await asyncio.wait_for(self._wake.wait(), wait_s)
            except TimeoutError:
                pass

    def _cut(self, now: float) -> tuple[list[QueueItem], float | None]:
        """Take the next batch from the head (level 1 first), or say how long to wait for a
        better one. Dead requests met on the way are dropped; DELAY-expired ones move back."""
        queue = self.queue
        limit = self._max_batch or 1
        batch: list[QueueItem] = []
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
                    settle(item.future, error=DeadlineExceeded(
                        f"model '{self.name}': deadline passed after "
                        f"{now - item.enqueued:.3f}s in the queue"
                    ))
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
        if not batch:
            return [], None
        if not full and self._preferred:
            cut = self._preferred_cut(batch)
            if cut:
                full = True
                self._put_back(batch[cut:])
                batch = batch[:cut]
        if not full and self._delay_s > 0 and not self._closing:
            waited = now - min(item.enqueued for item in batch)
            if waited < self._delay_s:
                self._put_back(batch)
                return [], self._delay_s - waited
        if self._codel is not None:
            self._standing_queue(now, batch)
        return batch, None

    def _standing_queue(self, now: float, batch: list[QueueItem]) -> None:
        """CoDel: shed the head of the lowest queued level while a standing queue persists."""
        assert self._codel is not None
        sojourn = now - max(item.enqueued for item in batch)
        if not self._codel.should_drop(now, sojourn, backlog=bool(self.queue)):
            return
        while (victim := self.queue.pop_lowest(0, head=True)) is not None:
            if not victim.future.done():
                settle(victim.future, error=Overloaded(
                    f"model '{self.name}': shed from a standing queue (queueing delay above "
                    f"{1000 * self._codel.target_s:g} ms for {1000 * self._codel.interval_s:g} ms)",
                    reason="standing_queue",
                    retry_after_ms=self.drain_estimate_ms(),
                ))
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

    async def _execute(self, index: int, batch: list[QueueItem]) -> None:
        start = self._clock()
        queue_s = [start - item.enqueued for item in batch]
        rows = sum(item.rows for item in batch)
        self.rate.started(index, start, rows)
        failed = True
        gathered = run_done = start
        try:
            inputs = self._gather(batch)
            gathered = self._clock()
            run = self._run
            if self._background_run is not None and all(
                item.level == self.queue.levels for item in batch
            ):
                run = self._background_run
            outputs = await run(index, inputs)
            run_done = self._clock()
            self._scatter(batch, outputs, rows)
            failed = False
        except SluiceError as exc:
            for item in batch:
                settle(item.future, error=exc)
        except Exception as exc:  # the backend's own failure: fail this batch only
            error = BackendError(f"model '{self.name}': inference failed: {exc}")
            for item in batch:
                settle(item.future, error=error)
        finally:
            end = self._clock()
            self.rate.finished(index, end, not failed)
            if self._observer is not None:
                self._observer(BatchReport(
                    rows=rows,
                    queue_s=queue_s,
                    gather_s=gathered - start,
                    run_s=run_done - gathered,
                    scatter_s=end - run_done if not failed else 0.0,
                    failed=failed,
                ))

    def _gather(self, batch: list[QueueItem]) -> Arrays:
        if len(batch) == 1:
            return batch[0].inputs
        names = batch[0].inputs.keys()
        return {name: np.concatenate([item.inputs[name] for item in batch]) for name in names}

    def _scatter(self, batch: list[QueueItem], outputs: Arrays, rows: int) -> None:
        if len(batch) == 1:
            if self._max_batch:
                self._check_rows(outputs, rows)
            settle(batch[0].future, outputs)
            return
        self._check_rows(outputs, rows)
        offset = 0
        for item in batch:
            end = offset + item.rows
            settle(item.future, {name: value[offset:end] for name, value in outputs.items()})
            offset = end

    def _check_rows(self, outputs: Arrays, rows: int) -> None:
        for name, value in outputs.items():
            if value.ndim == 0 or value.shape[0] != rows:
                raise BackendError(
                    f"model '{self.name}': output '{name}' has shape {list(value.shape)}, "
                    f"expected {rows} rows (one per input row)"
                )
