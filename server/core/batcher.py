"""Dynamic batching, one batcher per model version.

Requests are queued with their rows; each model instance has one worker that, whenever it is
free, cuts the next batch from the head of the queue (by rows, up to ``max_batch_size``) and runs
it. Nothing waits when an instance is idle: while one batch computes, the queue grows into the
next one, so batch size follows load by itself. ``max_queue_delay_s`` bounds an optional wait for
a preferred (or full) batch, as Triton defines it.

Promises:
- Every submitted request gets exactly one answer: its rows of the outputs, or an exception.
- Requests whose caller went away or whose deadline passed are dropped before compute.
- A failing batch fails only its own members.
- ``submit`` never blocks: a full queue raises :class:`Overloaded` at once.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

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


class _Item:
    __slots__ = ("deadline", "enqueued", "future", "inputs", "rows", "signature")

    def __init__(
        self,
        inputs: Arrays,
        rows: int,
        signature: tuple[Any, ...],
        future: asyncio.Future[Arrays],
        deadline: float | None,
        enqueued: float,
    ) -> None:
        self.inputs = inputs
        self.rows = rows
        self.signature = signature
        self.future = future
        self.deadline = deadline
        self.enqueued = enqueued


def settle(future: asyncio.Future[Any], result: Any = None, error: BaseException | None = None):
    """Resolve ``future`` once; a future already done (caller left) is left alone."""
    if future.done():
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)


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
        clock: Callable[[], float] = time.monotonic,
        observer: Observer | None = None,
    ) -> None:
        self.name = name
        self._run = run
        self._instances = instances
        #: 0 means unbatched: every request runs alone, shapes as sent.
        self._max_batch = max_batch_size
        self._preferred = tuple(sorted(set(preferred_batch_sizes)))
        self._delay_s = max_queue_delay_s
        self._max_queue = max_queue_size
        self._clock = clock
        self._observer = observer
        self._queue: deque[_Item] = deque()
        self._queued_rows = 0
        self._busy = 0
        self._wake = asyncio.Event()
        self._workers: list[asyncio.Task[None]] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closing = False
        #: Recent rows/s of completed batches (EWMA), for pushback estimates.
        self._rows_per_s = 0.0

    # -- public -------------------------------------------------------------------------------

    def start(self) -> None:
        """Start one worker task per instance; the batcher owns them until :meth:`close`."""
        if not self._workers:
            self._loop = asyncio.get_running_loop()
            self._workers = [
                asyncio.create_task(self._worker(i), name=f"batcher:{self.name}:{i}")
                for i in range(self._instances)
            ]

    async def submit(
        self, inputs: Arrays, rows: int = 1, deadline: float | None = None
    ) -> Arrays:
        """Queue one request and wait for its outputs (its own rows only).

        Raises Overloaded when the queue is full or the batcher is draining, DeadlineExceeded
        when ``deadline`` (a clock instant) passes before compute, BackendError when the batch
        fails. Cancelling the awaiting task withdraws the request if it has not started.
        """
        if self._closing:
            raise Overloaded(f"model '{self.name}' is shutting down", reason="draining")
        if self._max_batch and rows > self._max_batch:
            raise InvalidInput(
                f"model '{self.name}': batch of {rows} rows exceeds max_batch_size "
                f"{self._max_batch}"
            )
        if len(self._queue) >= self._max_queue:
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
        self._queue.append(_Item(inputs, rows, signature, future, deadline, now))
        self._queued_rows += rows
        self._wake.set()
        return await future

    def stats(self) -> dict[str, float]:
        """Queue depth and throughput now."""
        return {
            "queued_requests": len(self._queue),
            "queued_rows": self._queued_rows,
            "busy_instances": self._busy,
            "rows_per_s": self._rows_per_s,
        }

    def drain_estimate_ms(self) -> int:
        """Roughly how long the queued rows take to drain at the recent rate (ms, >= 1)."""
        if self._rows_per_s <= 0:
            return 100
        return max(1, int(1000 * self._queued_rows / self._rows_per_s))

    async def close(self) -> None:
        """Stop accepting, finish everything queued, then end the workers."""
        self._closing = True
        self._wake.set()
        if self._workers:
            await asyncio.gather(*self._workers, return_exceptions=True)

    def abort(self, reason: str) -> None:
        """Fail everything still queued with UNAVAILABLE and cancel the workers (no drain)."""
        self._closing = True
        while self._queue:
            item = self._queue.popleft()
            settle(item.future, error=Overloaded(reason, reason="draining"))
        self._queued_rows = 0
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

    async def _next_batch(self) -> list[_Item] | None:
        while True:
            if not self._queue:
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

    def _cut(self, now: float) -> tuple[list[_Item], float | None]:
        """Take the next batch from the head, or say how long to wait for a better one."""
        queue = self._queue
        limit = self._max_batch or 1
        batch: list[_Item] = []
        rows = 0
        full = False
        while queue:
            item = queue[0]
            if item.future.done():  # caller left
                queue.popleft()
                self._queued_rows -= item.rows
                continue
            if item.deadline is not None and item.deadline <= now:
                queue.popleft()
                self._queued_rows -= item.rows
                settle(item.future, error=DeadlineExceeded(
                    f"model '{self.name}': deadline passed after {now - item.enqueued:.3f}s "
                    "in the queue"
                ))
                continue
            if batch and (rows + item.rows > limit or item.signature != batch[0].signature):
                full = True
                break
            queue.popleft()
            batch.append(item)
            rows += item.rows
            if not self._max_batch or rows >= limit:
                full = True
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
            waited = now - batch[0].enqueued
            if waited < self._delay_s:
                self._put_back(batch)
                return [], self._delay_s - waited
        self._queued_rows -= sum(item.rows for item in batch)
        return batch, None

    def _preferred_cut(self, batch: list[_Item]) -> int:
        """Length of the longest prefix whose rows equal a preferred batch size (0: none)."""
        best = 0
        rows = 0
        for i, item in enumerate(batch, 1):
            rows += item.rows
            if rows in self._preferred:
                best = i
        return best

    def _put_back(self, items: list[_Item]) -> None:
        self._queue.extendleft(reversed(items))

    async def _execute(self, index: int, batch: list[_Item]) -> None:
        start = self._clock()
        queue_s = [start - item.enqueued for item in batch]
        rows = sum(item.rows for item in batch)
        failed = True
        gathered = run_done = start
        try:
            inputs = self._gather(batch)
            gathered = self._clock()
            outputs = await self._run(index, inputs)
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
            if not failed and end > start:
                rate = rows / (end - start)
                self._rows_per_s = rate if not self._rows_per_s else (
                    0.8 * self._rows_per_s + 0.2 * rate
                )
            if self._observer is not None:
                self._observer(BatchReport(
                    rows=rows,
                    queue_s=queue_s,
                    gather_s=gathered - start,
                    run_s=run_done - gathered,
                    scatter_s=end - run_done if not failed else 0.0,
                    failed=failed,
                ))

    def _gather(self, batch: list[_Item]) -> Arrays:
        if len(batch) == 1:
            return batch[0].inputs
        names = batch[0].inputs.keys()
        return {name: np.concatenate([item.inputs[name] for item in batch]) for name in names}

    def _scatter(self, batch: list[_Item], outputs: Arrays, rows: int) -> None:
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
