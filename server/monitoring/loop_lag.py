"""How late the event loop runs what it was asked to run: ``sluice_event_loop_lag_seconds``.

Every request of the gRPC and REST doors is served by one asyncio loop; anything that keeps it
from its next iteration (a long callback, a full garbage collection, another thread holding the
GIL: the monitor hub's drains) delays every request in flight by as much. A probe task sleeps
``period_s`` and observes how much later than asked it woke up. It samples: a stall of length
``s`` is seen with probability about ``s / period_s``, at most its full length, so the histogram's
tail is a lower bound and a rate of observations over a bucket counts stalls in proportion.
At the default 50 ms the probe costs the loop 20 wake-ups a second.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterable

from prometheus_client.core import HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from sluice.server.serving.stats import CumulativeHistogram

#: Upper bounds (seconds) of the lag histogram.
LAG_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 1.0)


class LoopLag:
    """The probe: :meth:`start` on the loop to watch, :meth:`stop` before it closes."""

    def __init__(self, period_s: float = 0.05) -> None:
        self.period_s = period_s
        #: The lags observed, in seconds.
        self.lags = CumulativeHistogram(LAG_BUCKETS)
        self._task: asyncio.Task[None] | None = None

    def observe(self, lag_s: float) -> None:
        self.lags.observe(max(lag_s, 0.0))

    def start(self) -> None:
        """Start probing the running loop (idempotent)."""
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._probe(), name="loop-lag")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _probe(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            asked = loop.time() + self.period_s
            await asyncio.sleep(self.period_s)
            self.observe(loop.time() - asked)


class LoopLagCollector(Collector):
    """The probe's histogram, read at each scrape."""

    def __init__(self, lag: LoopLag) -> None:
        self._lag = lag

    def collect(self) -> Iterable[Metric]:
        family = HistogramMetricFamily(
            "sluice_event_loop_lag_seconds", "How much later than asked the serving event "
            f"loop woke a probe that sleeps {self._lag.period_s * 1000:g} ms at a time: every "
            "request in flight waited as long.")
        family.add_metric([], self._lag.lags.buckets(), self._lag.lags.total)
        yield family
