"""One thread per model instance, with the cheapest hand-off asyncio allows.

``ThreadPoolExecutor`` + ``run_in_executor`` costs about 40 us of CPU per call here (work item,
concurrent Future, lock, chained asyncio future); a SimpleQueue in and one
``call_soon_threadsafe`` back costs about 28 us. Every batch pays this once, so it matters for
small models. The model runs on this thread, never on the event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import queue
import threading
from collections.abc import Callable
from typing import Any

_log = logging.getLogger(__name__)


def settle(future: asyncio.Future[Any], result: Any = None, error: BaseException | None = None):
    """Resolve ``future`` once; a future already done (its caller left) is left alone.

    The one way the core answers a request: every accepted request gets exactly one answer.
    """
    if future.done():
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)


class InstanceThread:
    """A daemon thread running submitted calls one at a time, in order.

    ``background=True`` is for work that must never slow live traffic (shadow copies): the
    thread runs under Linux's SCHED_IDLE policy, so it gets a core only when no normal thread
    wants it and is preempted the moment one wakes. (Measured on cnn, 2 cores: a busy
    background thread at nice 19 still raised a live model's p50 1.8x, because the kernel lets
    it finish its time slice first; under SCHED_IDLE the live p50 did not move.) Where
    SCHED_IDLE is refused, nice 19; where that is refused too, normal priority.
    """

    def __init__(self, name: str, *, background: bool = False) -> None:
        self._jobs: queue.SimpleQueue[tuple[Any, ...] | None] = queue.SimpleQueue()
        self._background = background
        self._thread = threading.Thread(target=self._main, name=name, daemon=True)
        self._thread.start()

    def _main(self) -> None:
        if self._background:
            _lowest_priority(threading.get_native_id())
        while (job := self._jobs.get()) is not None:
            loop, future, fn, args = job
            if loop is None:  # call(): fn delivers its own outcome
                try:
                    fn(*args)
                except Exception:  # a bug in fn: say so, and keep the thread serving
                    _log.exception("%s: a call failed", self._thread.name)
                continue
            try:
                result, error = fn(*args), None
            except BaseException as exc:  # handed to the awaiting task, never lost
                result, error = None, exc
            try:
                loop.call_soon_threadsafe(settle, future, result, error)
            except RuntimeError:  # the loop closed while we computed: nobody is waiting
                pass

    def run(self, loop: asyncio.AbstractEventLoop, fn: Callable[..., Any], *args: Any):
        """Run ``fn(*args)`` on this thread; returns an asyncio future for its result."""
        future = loop.create_future()
        self._jobs.put((loop, future, fn, args))
        return future

    def call(self, fn: Callable[..., None], *args: Any) -> None:
        """Run ``fn(*args)`` on this thread, after the calls before it; ``fn`` delivers its own
        outcome (an exception it lets out is logged, and the thread goes on)."""
        self._jobs.put((None, None, fn, args))

    def close(self, timeout_s: float | None = None) -> None:
        """Finish queued calls, then stop the thread."""
        self._jobs.put(None)
        self._thread.join(timeout_s)


def _lowest_priority(tid: int) -> None:
    """Move thread ``tid`` to SCHED_IDLE, else to nice 19 (best effort)."""
    try:
        os.sched_setscheduler(tid, os.SCHED_IDLE, os.sched_param(0))
        return
    except (OSError, AttributeError):  # not Linux, or not allowed
        pass
    with contextlib.suppress(OSError, AttributeError):
        os.setpriority(os.PRIO_PROCESS, tid, 19)
