"""Dynamic batching, one batcher per model version.

Requests are queued with their rows; each model instance has its own thread that, whenever it is
free, cuts the next batch from the head of the queue (by rows, up to ``max_batch_size``),
gathers it, runs it and splits the outputs back. Nothing waits when an instance is idle: while
one batch computes, the queue grows into the next one, so batch size follows load by itself.
``max_queue_delay_s`` bounds an optional wait for a preferred (or full) batch, as Triton
defines it.

The event loop only queues requests (:meth:`DynamicBatcher.submit`) and settles their futures,
one ``call_soon_threadsafe`` per batch; cutting, gathering, computing and splitting never wait
for it. This matters on the worst day: under overload the loop is busy answering arrivals (on
the 2-core machine grpc.aio costs about 0.5 ms of CPU per call, shed or not). When batches were
cut on the loop, each instance waited a pass of that busy loop between two batches and, at 5x
capacity, computed only 18-46% of the time while the queue was full (py-spy).

The queue has one FIFO lane per priority level (see :mod:`server.serving.queues`); which requests
make a batch is :mod:`server.serving.cutting`'s policy (level 1 first; it drops the dead and, with
CoDel on, sheds from the lowest level while a standing queue persists). Admission
(:mod:`server.serving.admission`) decides before a request is queued; the batcher only enforces its
request bound. The queue, the service-rate meter and the busy count change only under the
batcher's lock; admission reads their counters without it (a count one request stale is fine
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
from dataclasses import dataclass

import numpy as np

from server.errors import BackendError, DeadlineExceeded, InvalidInput, Overloaded, SluiceError
from server.serving.cutting import UNTIL_NOTIFIED, BatchCutter, Failures
from server.serving.queues import CoDel, PriorityQueue, QueueItem, ServiceRate
from server.serving.worker import InstanceThread, settle

Arrays = dict[str, np.ndarray]
#: run(instance_index, batched_inputs) -> outputs (every output's first dim = batch rows); called
#: on that instance's thread, one call at a time per instance.
RunFn = Callable[[int, Arrays], Arrays]
#: background_run(batched_inputs) -> outputs, for batches made only of the lowest level.
BackgroundFn = Callable[[Arrays], Arrays]


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
        background_run: BackgroundFn | None = None,
    ) -> None:
        """``background_run``, when given, computes the batches made only of the lowest level
        (shadow copies) instead of ``run``: on a thread of its own at the lowest OS priority,
        one batch at a time, so they never take CPU time or an instance that live batches
        could use."""
        self.name = name
        self._run = run
        self._background_run = background_run
        self._instances = instances
        #: 0 means unbatched: every request runs alone, shapes as sent.
        self._max_batch = max_batch_size
        self._max_queue = max_queue_size
        self._clock = clock
        self._observer = observer
        #: Priority lanes (level 1 served first); admission reads their counts.
        self.queue = PriorityQueue(levels)
        #: Measured speed of completed batches; admission estimates waits from it.
        self.rate = ServiceRate(instances, max_batch_size or 1)
        self._cutter = BatchCutter(
            name, self.queue, self.rate, max_batch_size=max_batch_size,
            preferred_batch_sizes=preferred_batch_sizes, max_queue_delay_s=max_queue_delay_s,
            codel=codel, retry_after_ms=self.drain_estimate_ms,
        )
        #: Guards the queue, the rate meter, the busy counts and ``_closing``; instance threads
        #: sleep on it while there is nothing to cut.
        self._lock = threading.Condition(threading.Lock())
        self._busy = 0
        #: Requests in the background batch computing now (0: none; there is one at a time).
        self._background_requests = 0
        #: Set while nothing is queued or computing: background work (shadow copies of this
        #: version's requests) waits for it, so it runs in this version's idle time.
        self.idle = asyncio.Event()
        self.idle.set()
        self._threads: list[threading.Thread] = []
        self._background: InstanceThread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closing = False

    # -- public (event loop) ------------------------------------------------------------------

    @property
    def closing(self) -> bool:
        """True once :meth:`close` or :meth:`abort` began: new requests are refused."""
        return self._closing

    def start(self) -> None:
        """Start one thread per instance; the batcher owns them until :meth:`close`."""
        if self._threads:
            return
        self._loop = asyncio.get_running_loop()
        self._threads = [
            threading.Thread(
                target=self._instance_main, args=(i,), name=f"{self.name}.{i}", daemon=True
            )
            for i in range(self._instances)
        ]
        for thread in self._threads:
            thread.start()

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
        item = QueueItem(
            inputs, rows, signature, future, deadline, now,
            level=level, nbytes=nbytes, expire=expire,
        )
        self.idle.clear()
        with self._lock:
            if self._closing:  # close() began since the check above
                raise Overloaded(f"model '{self.name}' is shutting down", reason="draining")
            self.queue.push(item)
            self._lock.notify()
        return await future

    def stats(self) -> dict[str, float]:
        """Queue depth, its high-water marks, what is computing and throughput now."""
        queue = self.queue
        return {
            "queued_requests": len(queue),
            "queued_rows": queue.rows,
            "queued_bytes": queue.bytes,
            "peak_queued_rows": queue.peak_rows,
            "peak_queued_bytes": queue.peak_bytes,
            "busy_instances": self._busy,
            "background_requests": self._background_requests,
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
            self._closing = True
            self._lock.notify_all()
        if self._threads or self._background is not None:
            await asyncio.to_thread(self._join)

    def abort(self, reason: str) -> None:
        """Fail everything still queued with UNAVAILABLE (no drain); batches already computing
        still answer their members. :meth:`close` then ends the threads."""
        with self._lock:
            self._closing = True
            items = list(self.queue.drain())
            self._lock.notify_all()
        for item in items:
            settle(item.future, error=Overloaded(reason, reason="draining"))

    # -- instance threads ---------------------------------------------------------------------

    def _join(self) -> None:
        for thread in self._threads:
            thread.join()
        if self._background is not None:  # after the instances: nothing hands it work now
            self._background.close()

    def _instance_main(self, index: int) -> None:
        while True:
            with self._lock:
                batch = self._next_locked(index)
                if batch is None:
                    return
                background = self._is_background(batch)
                if background:
                    self._background_requests = len(batch)
                else:
                    self._busy += 1
                    self.rate.started(index, self._clock(), sum(item.rows for item in batch))
            if background:
                if self._background is None:
                    self._background = InstanceThread(f"{self.name}.shadow", background=True)
                self._background.call(self._execute, -1, batch)
            else:
                self._execute(index, batch)

    def _next_locked(self, index: int) -> list[QueueItem] | None:
        """The next batch for instance ``index``, sleeping on the lock until there is one;
        None once closing with nothing left to cut. Called with the lock held."""
        while True:
            if self.queue:
                cut = self._cutter.cut(
                    self._clock(), closing=self._closing, held=self._background_held
                )
                if cut.failures:
                    self._post(self._fail, cut.failures)
                if cut.batch:
                    return cut.batch
                if cut.wait_s is None:
                    continue  # everything at the head was dead; look again
                wait_s = cut.wait_s
            elif self._closing:
                return None
            else:
                wait_s = UNTIL_NOTIFIED
            self._lock.wait(None if wait_s == UNTIL_NOTIFIED else wait_s)

    def _is_background(self, batch: list[QueueItem]) -> bool:
        return self._background_run is not None and batch[0].level == self.queue.levels

    def _background_held(self, batch: list[QueueItem]) -> bool:
        """One background batch at a time; live work arriving meanwhile still wakes us."""
        return self._background_requests > 0 and self._is_background(batch)

    def _execute(self, index: int, batch: list[QueueItem]) -> None:
        """Gather, compute and split one batch on this thread; the loop settles the futures.
        ``index`` -1: a batch of the lowest level on the background thread."""
        start = self._clock()
        queue_s = [start - item.enqueued for item in batch]
        rows = sum(item.rows for item in batch)
        results: list[Arrays] = []
        error: BaseException | None = None
        gathered = run_done = start
        try:
            inputs = self._gather(batch)
            gathered = self._clock()
            if index < 0:
                assert self._background_run is not None
                outputs = self._background_run(inputs)
            else:
                outputs = self._run(index, inputs)
            run_done = self._clock()
            results = self._scatter(batch, outputs, rows)
        except SluiceError as exc:
            error = exc
        except BaseException as exc:  # the backend's own failure: fail this batch only (even a
            # SystemExit raised in a model's code must not end the thread with its batch unanswered)
            error = BackendError(f"model '{self.name}': inference failed: {exc}")
        end = self._clock()
        with self._lock:
            if index < 0:
                self._background_requests = 0
                self._lock.notify()  # an instance may be waiting to cut the next such batch
            else:
                self.rate.finished(index, end, error is None)
                self._busy -= 1
        report = BatchReport(
            rows=rows,
            queue_s=queue_s,
            gather_s=gathered - start,
            run_s=run_done - gathered,
            scatter_s=end - run_done if error is None else 0.0,
            failed=error is not None,
        )
        self._post(self._deliver, batch, results, error, report)

    def _post(self, fn: Callable[..., None], *args: object) -> None:
        assert self._loop is not None
        try:
            self._loop.call_soon_threadsafe(fn, *args)
        except RuntimeError:  # the loop closed while we computed: nobody is waiting
            pass

    # -- on the event loop: answers -----------------------------------------------------------

    def _deliver(
        self, batch: list[QueueItem], results: list[Arrays], error: BaseException | None,
        report: BatchReport,
    ) -> None:
        if error is None:
            for item, outputs in zip(batch, results, strict=True):
                settle(item.future, outputs)
        else:
            for item in batch:
                settle(item.future, error=error)
        if self._observer is not None:
            self._observer(report)
        self._check_idle()

    def _fail(self, failures: Failures) -> None:
        for item, error in failures:
            settle(item.future, error=error)
        self._check_idle()

    def _check_idle(self) -> None:
        if not self._busy and not self._background_requests and not self.queue:
            self.idle.set()

    # -- gather and scatter (instance threads, no lock) ---------------------------------------

    def _gather(self, batch: list[QueueItem]) -> Arrays:
        if len(batch) == 1:
            return batch[0].inputs
        names = batch[0].inputs.keys()
        return {name: np.concatenate([item.inputs[name] for item in batch]) for name in names}

    def _scatter(self, batch: list[QueueItem], outputs: Arrays, rows: int) -> list[Arrays]:
        """Each member's rows of ``outputs``, in batch order."""
        if len(batch) == 1:
            if self._max_batch:
                self._check_rows(outputs, rows)
            return [outputs]
        self._check_rows(outputs, rows)
        results = []
        offset = 0
        for item in batch:
            end = offset + item.rows
            results.append({name: value[offset:end] for name, value in outputs.items()})
            offset = end
        return results

    def _check_rows(self, outputs: Arrays, rows: int) -> None:
        for name, value in outputs.items():
            if value.ndim == 0 or value.shape[0] != rows:
                raise BackendError(
                    f"model '{self.name}': output '{name}' has shape {list(value.shape)}, "
                    f"expected {rows} rows (one per input row)"
                )
