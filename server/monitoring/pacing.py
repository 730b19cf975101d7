"""Background monitor work in short stretches, so that the event loop is never kept off the GIL
for long.

Why: CPython gives the GIL to a waiting thread whenever its holder releases it, and takes it back
from a busy holder only after the switch interval (5 ms). A monitor thread that computes for
200 ms in Python (drift's per-feature statistics; the prediction log's Arrow tables when its
writer built them) gets the GIL each time the event loop releases it, which the loop does at
every poll of its selector; for those 200 ms the loop runs in slivers of one iteration per
switch interval, and every request in flight waits: with the whole feedback loop on, that and
the full garbage collections (:mod:`sluice.server.heap`) multiplied identity's p99 at c=64
(x2.7). A thread that sleeps a little after each short stretch leaves the loop whole stretches
of GIL: the same work, spread out.

:class:`Pacer` is that rhythm: call :meth:`Pacer.tick` between small units of work; once the
current stretch is ``stretch_s`` long it sleeps ``pause_s`` (the GIL released) and starts the
next. ``pause_s`` 0 turns it off (benchmarks of a monitor alone).
"""

from __future__ import annotations

import time
from collections.abc import Callable

#: Defaults: at most ~2 ms of a monitor thread's work at once, then 1 ms for the loop.
STRETCH_S = 0.002
PAUSE_S = 0.001


class Pacer:
    """Sleeps ``pause_s`` once each stretch of work reaches ``stretch_s`` (wall time). Used by
    one thread."""

    def __init__(
        self, *, stretch_s: float = STRETCH_S, pause_s: float = PAUSE_S,
        clock: Callable[[], float] = time.perf_counter, sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.stretch_s = stretch_s
        self.pause_s = pause_s
        self._clock = clock
        self._sleep = sleep
        self._since = clock()
        #: Pauses taken so far.
        self.pauses = 0

    def start(self) -> None:
        """A stretch starts now (after the thread waited for work: that was a pause already)."""
        self._since = self._clock()

    def tick(self) -> None:
        """Between two units of work: pause when the stretch is long enough."""
        if self.pause_s <= 0:
            return
        if self._clock() - self._since >= self.stretch_s:
            self._sleep(self.pause_s)
            self.pauses += 1
            self._since = self._clock()


#: Default share of one CPU that drift's GIL-free kernels take when paced (see DutyCycle).
KERNEL_SHARE = 0.15


class DutyCycle:
    """Runs units of GIL-free work (Numba kernels) so that they take at most ``share`` of one
    CPU: after a unit that took ``t`` seconds it sleeps ``t * (1 / share - 1)``.

    Why: a kernel without the GIL does not stop the event loop, but it holds a CPU. Drift's
    compute of cnn's window (3,072 features) is ~1 s of kernels every 10 s; on 2 cores that
    second was taken from the model's ONNX Runtime threads, and p99 at c=64 with everything on
    was 190 / 200 / 191 ms against 151 / 143 / 133 off; at 15% of a CPU, in chunks, it was
    170 / 165 / 163 (perf_analyzer, measured from 5 s after ready, side by side). The compute
    then takes ~6x as long, well inside drift's 10 s interval. (Drift now codes each sampled
    value once, as it comes in, every second: for cnn at ~500 requests/s, ~40 ms of kernels a
    second, in chunks of a few milliseconds.)"""

    def __init__(
        self, share: float = KERNEL_SHARE, *, clock: Callable[[], float] = time.perf_counter,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.share = share
        self._clock = clock
        self._sleep = sleep
        #: Units run so far.
        self.units = 0

    def run(self, work: Callable[..., None], *args: object) -> None:
        """``work(*args)``, then the rest its share asks for."""
        started = self._clock()
        work(*args)
        self.units += 1
        if 0.0 < self.share < 1.0:
            self._sleep((self._clock() - started) * (1.0 / self.share - 1.0))
