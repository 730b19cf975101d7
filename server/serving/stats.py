"""Per model-version statistics: Triton's cumulative counters plus sliding-window quantiles.

Recording is cheap and lock-free (it happens on the event loop thread only). Readers — the
ModelStatistics RPC, the Prometheus collector, ``sluice stats`` — take snapshots; quantile
queries merge the window's sub-histograms, so their cost falls on the reader.
"""

from __future__ import annotations

import time
from bisect import bisect_left
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from sluice.server.serving.instances import BatchReport

#: Bucket bounds (seconds) of the cumulative latency histograms exported to Prometheus.
LATENCY_BUCKETS_S: tuple[float, ...] = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
    2.5, 5.0, 10.0,
)
#: Bucket bounds (seconds) of the time-to-reject histogram: shedding must take well under 1 ms.
REJECT_BUCKETS_S: tuple[float, ...] = (
    0.000025, 0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05,
)


class LatencyWindow:
    """Quantiles over roughly the last ``window_s`` seconds.

    The window is ``slots`` sub-windows, each covering ``window_s / slots`` seconds; the oldest
    is cleared as time moves on, so a quantile covers between (slots-1)/slots and all of the
    window. Recording is on the request path, so it only bumps a counter keyed by the value
    rounded to 8 significant bits (< 0.8% relative error); quantiles are counted from those
    keys when asked.
    """

    def __init__(
        self, window_s: float = 60.0, slots: int = 6, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._slot_s = window_s / slots
        self._clock = clock
        self._slots: list[dict[int, int]] = [{} for _ in range(slots)]
        self._epochs = [-1] * slots

    def _current(self) -> dict[int, int]:
        epoch = int(self._clock() / self._slot_s)
        index = epoch % len(self._slots)
        if self._epochs[index] != epoch:
            self._slots[index] = {}
            self._epochs[index] = epoch
        return self._slots[index]

    def record(self, seconds: float) -> None:
        counts = self._current()
        key = _key(seconds)
        counts[key] = counts.get(key, 0) + 1

    def record_many(self, values: Sequence[float]) -> None:
        counts = self._current()
        for seconds in values:
            key = _key(seconds)
            counts[key] = counts.get(key, 0) + 1

    def quantiles(self, percents: Sequence[float] = (50, 95, 99)) -> dict[float, float] | None:
        """Seconds at each percentile, or None when the window saw nothing.

        The value at rank ``max(1, round(p% of the count))`` (HdrHistogram's rank), reported as
        the highest value of its 8-bit bucket (at most 1/128 above the bucket's start). Counted
        straight from the keys (a few hundred distinct ones): merging into an HdrHistogram cost
        ~5 us per key in Python, milliseconds per call with the event loop blocked, and
        perf_analyzer asks at every measurement window."""
        newest = int(self._clock() / self._slot_s)
        merged: dict[int, int] = {}
        for counts, epoch in zip(list(self._slots), list(self._epochs), strict=True):
            if epoch >= 0 and newest - epoch < len(self._slots):
                for key, count in list(counts.items()):
                    merged[key] = merged.get(key, 0) + count
        total = sum(merged.values())
        if total == 0:
            return None
        keys = sorted(merged)
        out: dict[float, float] = {}
        for percent in percents:
            rank = max(1, int(percent * total / 100 + 0.5))
            seen = 0
            for key in keys:
                seen += merged[key]
                if seen >= rank:
                    break
            out[percent] = _bucket_top(key) / 1e6
        return out


def _key(seconds: float) -> int:
    """Microseconds (>= 1), rounded down to 8 significant bits."""
    us = int(seconds * 1e6)
    if us < 256:
        return us if us > 0 else 1
    shift = us.bit_length() - 8
    return us >> shift << shift


def _bucket_top(key: int) -> int:
    """The highest microsecond value that :func:`_key` rounds down to ``key``."""
    return key + (1 << max(0, key.bit_length() - 8)) - 1


class CumulativeHistogram:
    """Prometheus-style cumulative buckets (mergeable across replicas by summing)."""

    def __init__(self, bounds: Sequence[float] = LATENCY_BUCKETS_S) -> None:
        self.bounds = tuple(bounds)
        self.counts = [0] * (len(self.bounds) + 1)
        self.total = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1
        self.total += value

    def buckets(self) -> list[tuple[str, int]]:
        """(upper bound, cumulative count) pairs, ending with +Inf."""
        out, running = [], 0
        labels = (*(repr(float(b)) for b in self.bounds), "+Inf")
        for bound, count in zip(labels, self.counts, strict=True):
            running += count
            out.append((bound, running))
        return out


@dataclass(slots=True)
class BatchStat:
    """Triton's per-batch-size execution stats (cumulative nanoseconds)."""

    count: int = 0
    compute_input_ns: int = 0
    compute_infer_ns: int = 0
    compute_output_ns: int = 0


@dataclass
class ModelStats:
    """Everything measured for one model version."""

    window_s: float = 60.0
    clock: Callable[[], float] = time.monotonic
    success_count: int = 0
    success_ns: int = 0
    fail_count: int = 0
    fail_ns: int = 0
    queue_count: int = 0
    queue_ns: int = 0
    compute_input_ns: int = 0
    compute_infer_ns: int = 0
    compute_output_ns: int = 0
    #: Rows inferred (Triton's inference_count) and batches executed (execution_count).
    inference_count: int = 0
    execution_count: int = 0
    #: Wall-clock ms of the last completed request (Triton's last_inference).
    last_inference_ms: int = 0
    batch_stats: dict[int, BatchStat] = field(default_factory=dict)
    #: Requests shed (UNAVAILABLE), by (reason, priority level).
    shed: dict[tuple[str, int], int] = field(default_factory=dict)
    #: Requests this version shed that its fallback model then answered.
    fallback_count: int = 0
    #: Time from a request reaching the model to its shed status (server-side reject latency).
    reject: LatencyWindow = field(init=False)
    reject_hist: CumulativeHistogram = field(
        default_factory=lambda: CumulativeHistogram(REJECT_BUCKETS_S)
    )
    e2e: LatencyWindow = field(init=False)
    queue: LatencyWindow = field(init=False)
    compute: LatencyWindow = field(init=False)
    e2e_hist: CumulativeHistogram = field(default_factory=CumulativeHistogram)
    queue_hist: CumulativeHistogram = field(default_factory=CumulativeHistogram)
    compute_hist: CumulativeHistogram = field(default_factory=CumulativeHistogram)
    batch_size_hist: CumulativeHistogram = field(
        default_factory=lambda: CumulativeHistogram((1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024))
    )

    def __post_init__(self) -> None:
        self.e2e = LatencyWindow(self.window_s, clock=self.clock)
        self.queue = LatencyWindow(self.window_s, clock=self.clock)
        self.compute = LatencyWindow(self.window_s, clock=self.clock)
        self.reject = LatencyWindow(self.window_s, clock=self.clock)

    def on_request(self, seconds: float, ok: bool) -> None:
        """One request answered (ok) or failed, ``seconds`` after it arrived."""
        ns = int(seconds * 1e9)
        if ok:
            self.success_count += 1
            self.success_ns += ns
            self.e2e.record(seconds)
            self.e2e_hist.observe(seconds)
            self.last_inference_ms = int(time.time() * 1000)
        else:
            self.fail_count += 1
            self.fail_ns += ns

    def on_shed(self, reason: str, level: int, seconds: float) -> None:
        """One request shed for ``reason`` at priority ``level``, ``seconds`` after it reached
        the model (shed at the door or evicted from the queue later)."""
        key = (reason, level)
        self.shed[key] = self.shed.get(key, 0) + 1
        self.reject.record(seconds)
        self.reject_hist.observe(seconds)

    def on_batch(self, report: BatchReport) -> None:
        """One batch executed (see :class:`BatchReport`)."""
        members = len(report.queue_s)
        self.queue.record_many(report.queue_s)
        observe = self.queue_hist.observe
        for waited in report.queue_s:
            observe(waited)
        self.queue_count += members
        self.queue_ns += int(sum(report.queue_s) * 1e9)
        if report.failed:
            return
        compute = report.gather_s + report.run_s + report.scatter_s
        self.compute.record(compute)
        self.compute_hist.observe(compute)
        self.batch_size_hist.observe(report.rows)
        in_ns, infer_ns, out_ns = (
            int(report.gather_s * 1e9), int(report.run_s * 1e9), int(report.scatter_s * 1e9)
        )
        # Like Triton: every member of the batch experienced the batch's compute time.
        self.compute_input_ns += in_ns * members
        self.compute_infer_ns += infer_ns * members
        self.compute_output_ns += out_ns * members
        self.inference_count += report.rows
        self.execution_count += 1
        stat = self.batch_stats.get(report.rows)
        if stat is None:
            stat = self.batch_stats[report.rows] = BatchStat()
        stat.count += 1
        stat.compute_input_ns += in_ns
        stat.compute_infer_ns += infer_ns
        stat.compute_output_ns += out_ns
