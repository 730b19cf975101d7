"""The instance threads of one batcher: what each does between two batches.

:class:`InstancePool` starts one thread per model instance. Whenever its instance is free, a
thread cuts the next batch from the head of the queue (with
:class:`~sluice.server.serving.cutting.BatchCutter`, under the batcher's lock), gathers it, runs it,
splits the outputs back by rows, and asks the event loop to settle the members' futures. Batches
made only of the lowest level (shadow copies), when a ``background_run`` is given, go to one
background :class:`~sluice.server.serving.instance_thread.InstanceThread` instead, one at a time.

The event loop only settles futures, one ``call_soon_threadsafe`` per batch; cutting, gathering,
computing and splitting never wait for it. The one exception is :meth:`InstancePool.try_inline`:
a model whose one-request batches compute faster than a hand-off (:mod:`.inline`) is run on the
loop itself when every instance is free and nothing is queued. (When batches were cut on the
loop, each instance waited a pass of the busy loop between two batches: at 5x capacity they
computed 18-46% of the time, py-spy.)

The pool shares the batcher's lock, queue and service-rate meter (the batcher queues requests;
the pool takes them out). Its busy counts and ``closing`` change only under that lock.

Promises:
- Every batch taken from the queue answers each of its members exactly once: its own rows of
  the outputs, or the batch's exception; requests the cutter drops are failed, never lost.
- A failing batch fails only its own members; an output without one row per input row fails
  the batch with BackendError (nothing is split from it).
- An instance thread never blocks on the event loop; it ends once closing and nothing is left
  to cut.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from sluice.server.errors import BackendError, SluiceError
from sluice.server.serving.cutting import UNTIL_NOTIFIED, BatchCutter, Failures
from sluice.server.serving.inline import InlinePolicy
from sluice.server.serving.instance_thread import InstanceThread, settle
from sluice.server.serving.queues import PriorityQueue, QueueItem, ServiceRate

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


class InstancePool:
    """The threads that take batches from one batcher's queue and compute them. See the module
    docstring."""

    def __init__(
        self,
        name: str,
        run: RunFn,
        *,
        instances: int,
        max_batch_size: int,
        queue: PriorityQueue,
        rate: ServiceRate,
        cutter: BatchCutter,
        lock: threading.Condition,
        idle: asyncio.Event,
        clock: Callable[[], float],
        observer: Observer | None = None,
        background_run: BackgroundFn | None = None,
        inline: bool = False,
    ) -> None:
        """``lock`` guards ``queue``, ``rate`` and this pool's counts; threads sleep on it while
        there is nothing to cut. ``idle`` is set on the loop once nothing is queued or
        computing. ``inline``: ``run`` may also be called on the event loop's thread (see
        :meth:`try_inline`)."""
        self.name = name
        self._run = run
        self._background_run = background_run
        self._instances = instances
        #: 0 means unbatched: every request runs alone, shapes as sent.
        self._max_batch = max_batch_size
        self._queue = queue
        self._rate = rate
        self._cutter = cutter
        self._lock = lock
        # The lock's own acquire and release (a Condition exposes them): the inline path takes
        # the lock twice per request, and ``with`` a Condition adds two Python calls each time.
        self._acquire, self._release = lock.acquire, lock.release
        self._idle = idle
        self._clock = clock
        self._observer = observer
        #: Instances computing a batch now (under the lock).
        self.busy = 0
        #: Instance threads asleep on the lock (under the lock): a new request needs a notify
        #: only when one is (Condition.notify costs microseconds even with nobody to wake).
        self.sleeping = 0
        #: Requests in the background batch computing now (0: none; there is one at a time).
        self.background_requests = 0
        #: Set (under the lock) once the batcher stops accepting: threads finish what is
        #: queued, then end.
        self.closing = False
        self._threads: list[threading.Thread] = []
        self._background: InstanceThread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._inline = inline
        #: What one-request batches measure, and whether one may run inline now.
        self.inline_policy = InlinePolicy(clock)
        #: Batches run on the event loop so far (a share of all batches; the metric
        #: sluice_inline_batches_total).
        self.inline_batches = 0
        #: The request last queued while the pool was idle (set by the batcher under the lock):
        #: answered alone, it times a hand-off (:meth:`InlinePolicy.handed_off`).
        self.timed_item: QueueItem | None = None

    @property
    def started(self) -> bool:
        """True once :meth:`start` started the instance threads."""
        return bool(self._threads)

    @property
    def has_threads(self) -> bool:
        """True while there are threads for :meth:`join` to end."""
        return bool(self._threads) or self._background is not None

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        """Start one thread per instance, settling futures on ``loop``; the pool owns them
        until :meth:`join`."""
        self._loop = loop
        self._threads = [
            threading.Thread(target=self._main, args=(i,), name=f"{self.name}.{i}", daemon=True)
            for i in range(self._instances)
        ]
        for thread in self._threads:
            thread.start()

    def stop_locked(self) -> None:
        """Set ``closing`` and wake every thread; called with the lock held."""
        self.closing = True
        self._lock.notify_all()

    def join(self) -> None:
        """Wait for the instance threads to end (after :meth:`stop_locked`), then end the
        background thread. Blocks: call it off the event loop."""
        for thread in self._threads:
            thread.join()
        if self._background is not None:  # after the instances: nothing hands it work now
            self._background.close()

    # -- inline (event loop) -------------------------------------------------------------------

    def inline_estimate_s(self) -> float | None:
        """The smoothed compute time of one-request batches when it allows an inline run now
        (:meth:`InlinePolicy.estimate_s`); None when this pool never runs inline."""
        return self.inline_policy.estimate_s() if self._inline else None

    def try_inline(self, inputs: Arrays, rows: int, now: float) -> Arrays | None:
        """Compute one request here, on the loop, when allowed (``inline``), nothing is queued or
        computing, and the policy allows it (:class:`InlinePolicy`); None: queue it. It counts as
        a batch of instance 0; its time keeps the measurement current. Raises what the batch
        would (SluiceError, else BackendError)."""
        if not self._inline:
            return None
        allowed, probe = self.inline_policy.allows()
        if not allowed:
            return None
        self._acquire()
        try:
            if self._queue.requests or self.busy or self.closing:
                return None
            self.busy += 1
            self._rate.started(0, now, rows)
        finally:
            self._release()
        self.inline_batches += 1
        error: BaseException | None = None
        started = self._clock()
        try:
            outputs = self._run(0, inputs)
            run_done = self._clock()
            if self._max_batch:
                self._check_rows(outputs, rows)
        except BaseException as exc:
            error = self._batch_error(exc)
        end = self._clock()
        self._acquire()
        try:
            self._rate.finished(0, end, error is None)
            self.busy -= 1
        finally:
            self._release()
        if error is not None:
            if self._observer is not None:
                self._observer(BatchReport(rows, [started - now], 0.0, end - started, 0.0, True))
            raise error
        self.inline_policy.measured(run_done - started, inline=True, probe=probe)
        if self._observer is not None:
            self._observer(BatchReport(rows, [started - now], 0.0, run_done - started,
                                       end - run_done, False))
        return outputs

    # -- instance threads ---------------------------------------------------------------------

    def _main(self, index: int) -> None:
        while True:
            with self._lock:
                batch = self._next_locked(index)
                if batch is None:
                    return
                background = self._is_background(batch)
                if background:
                    self.background_requests = len(batch)
                else:
                    self.busy += 1
                    self._rate.started(index, self._clock(), sum(item.rows for item in batch))
            if background:
                if self._background is None:
                    self._background = InstanceThread(f"{self.name}.shadow", background=True)
                self._background.call(self._execute, -1, batch)
            else:
                self._execute(index, batch)
            # Asleep until the next batch, hold none of this one's arrays (a request's inputs
            # may be views of a client's shared memory, kept mapped while a view lives).
            batch = None

    def _next_locked(self, index: int) -> list[QueueItem] | None:
        """The next batch for instance ``index``, sleeping on the lock until there is one;
        None once closing with nothing left to cut. Called with the lock held."""
        while True:
            if self._queue:
                cut = self._cutter.cut(
                    self._clock(), closing=self.closing, held=self._background_held
                )
                if cut.failures:
                    self._post(self._fail, cut.failures)
                if cut.batch:
                    return cut.batch
                if cut.wait_s is None:
                    continue  # everything at the head was dead; look again
                wait_s = cut.wait_s
            elif self.closing:
                return None
            else:
                wait_s = UNTIL_NOTIFIED
            self.sleeping += 1
            try:
                self._lock.wait(None if wait_s == UNTIL_NOTIFIED else wait_s)
            finally:
                self.sleeping -= 1

    def _is_background(self, batch: list[QueueItem]) -> bool:
        return self._background_run is not None and batch[0].level == self._queue.levels

    def _background_held(self, batch: list[QueueItem]) -> bool:
        """One background batch at a time; live work arriving meanwhile still wakes us."""
        return self.background_requests > 0 and self._is_background(batch)

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
        except BaseException as exc:
            error = self._batch_error(exc)
        end = self._clock()
        if index >= 0 and len(batch) == 1 and error is None:
            self.inline_policy.measured(run_done - gathered, inline=False)
        with self._lock:
            if index < 0:
                self.background_requests = 0
                self._lock.notify()  # an instance may be waiting to cut the next such batch
            else:
                self._rate.finished(index, end, error is None)
                self.busy -= 1
        report = BatchReport(
            rows=rows,
            queue_s=queue_s,
            gather_s=gathered - start,
            run_s=run_done - gathered,
            scatter_s=end - run_done if error is None else 0.0,
            failed=error is not None,
        )
        self._post(self._deliver, batch, results, error, report)

    def _batch_error(self, exc: BaseException) -> SluiceError:
        """What the members of a batch that raised ``exc`` are answered: the backend's own
        SluiceError, else BackendError; the batch fails alone, whatever it raised (even a
        SystemExit from a model's code must not end an instance thread, or the event loop)."""
        if isinstance(exc, SluiceError):
            return exc
        return BackendError(f"model '{self.name}': inference failed: {exc}")

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
        if batch[0] is self.timed_item:
            self.timed_item = None
            if len(batch) == 1 and error is None and self._inline:
                self.inline_policy.handed_off(
                    self._clock() - batch[0].enqueued - report.run_s
                )
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
        if not self.busy and not self.background_requests and not self._queue:
            self._idle.set()

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
