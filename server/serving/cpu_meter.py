"""CPU seconds one model version's batches cost, per instance, measured where they run.

:class:`CpuMeter` wraps a backend's ``run`` (and ``run_background``): the calling thread's CPU
clock (``time.thread_time``, CLOCK_THREAD_CPUTIME_ID) is read before and after each batch, and the
difference is added to that instance's total; the wall time (``perf_counter``) too. The wrapper
is the only cost on the request path: two thread-clock reads (about 0.5 us each, a system call)
and two ``perf_counter`` reads per batch, no lock (each instance runs one batch at a time, and an
inline run on the event loop counts as instance 0 only when no instance is busy).

What it sees is the CPU of the thread that called ``run``: the instance thread, the event loop
for an inline run, the background thread for shadow-only batches. Work a runtime hands to threads
of its own (ONNX Runtime's intra-op pool) is not in it; the cost accountant
(``monitoring/cost.py``) charges the process's remaining CPU to versions by their compute time.

Promises:
- Every call of the wrapped function, returning or raising, adds its thread CPU and wall time.
- Totals only grow; readers on other threads see each batch's time once it has returned.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np

Arrays = dict[str, np.ndarray]
RunFn = Callable[[int, Arrays], Arrays]
BackgroundFn = Callable[[Arrays], Arrays]


class CpuMeter:
    """CPU and wall seconds spent in one version's ``run`` calls, per instance."""

    def __init__(
        self,
        instances: int,
        *,
        cpu_clock: Callable[[], float] = time.thread_time,
        wall_clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        #: CPU seconds of the calling thread in ``run``, per instance index.
        self.instance_cpu_s = [0.0] * max(1, instances)
        #: CPU seconds in ``run_background`` (shadow-only batches, one thread).
        self.background_cpu_s = 0.0
        #: Wall seconds in ``run`` and ``run_background`` together.
        self.wall_s = 0.0
        self._cpu = cpu_clock
        self._wall = wall_clock

    @property
    def cpu_s(self) -> float:
        """CPU seconds of every instance and the background thread together."""
        return sum(self.instance_cpu_s) + self.background_cpu_s

    def timed(self, run: RunFn) -> RunFn:
        """``run`` with each call's thread CPU added to its instance's total."""
        cpu, wall, totals = self._cpu, self._wall, self.instance_cpu_s

        def run_timed(instance: int, inputs: Arrays) -> Arrays:
            started, cpu_started = wall(), cpu()
            try:
                return run(instance, inputs)
            finally:
                totals[instance % len(totals)] += cpu() - cpu_started
                self.wall_s += wall() - started

        return run_timed

    def timed_background(self, run: BackgroundFn) -> BackgroundFn:
        """``run_background`` with each call's thread CPU added to the background total."""
        cpu, wall = self._cpu, self._wall

        def run_timed(inputs: Arrays) -> Arrays:
            started, cpu_started = wall(), cpu()
            try:
                return run(inputs)
            finally:
                self.background_cpu_s += cpu() - cpu_started
                self.wall_s += wall() - started

        return run_timed
