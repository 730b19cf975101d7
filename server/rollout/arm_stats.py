"""Per-arm request statistics: cumulative counters, a latency window and a restartable epoch.

Recorded on the event loop by the servicer after each routed request (a few integer bumps and a
dict update); read by /metrics, the admin status and the canary gates. The cumulative latency
counts (:attr:`ArmStats.latency_counts`, microseconds kept to 8 significant bits) are what a
fleet sums: published through etcd and exported as Prometheus histogram buckets (issue 15).
"""

from __future__ import annotations

import math
import time
from bisect import bisect_left
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from sluice.server.serving.stats import LatencyWindow


@dataclass(frozen=True, slots=True)
class EpochStats:
    """One arm's numbers since its epoch started (a canary step)."""

    requests: int
    errors: int
    #: errors / requests; 0.0 when there were no requests.
    error_rate: float
    #: Latency quantiles of successful requests, seconds; None when there were none.
    p50_s: float | None
    p99_s: float | None
    #: Seconds since the epoch started.
    duration_s: float


class ArmStats:
    """Requests, errors and latency of one (model, arm); cheap to record on the event loop.

    ``requests``/``errors`` are cumulative (Prometheus counters), ``latency`` is a sliding
    window of successful requests, and the epoch (restarted by :meth:`start_epoch`) gives a
    canary step its own counts and quantiles. Latency counts successes only: fast failures must
    not make a broken candidate look quick.
    """

    __slots__ = ("_clock", "_e_counts", "_e_errors", "_e_requests", "_e_start", "errors",
                 "latency", "latency_counts", "latency_sum_s", "requests", "version")

    def __init__(self, version: int | None = None, *, window_s: float = 60.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        #: The version that answered these requests (the router keeps one ArmStats per arm
        #: and version).
        self.version = version
        self.requests = 0
        self.errors = 0
        self.latency = LatencyWindow(window_s, clock=clock)
        #: Successful requests by latency (microseconds, 8 significant bits), since creation.
        self.latency_counts: dict[int, int] = {}
        #: Sum of the successful requests' latencies, seconds, since creation.
        self.latency_sum_s = 0.0
        self._clock = clock
        self.start_epoch()

    def record(self, seconds: float, ok: bool) -> None:
        self.requests += 1
        self._e_requests += 1
        if not ok:
            self.errors += 1
            self._e_errors += 1
            return
        self.latency.record(seconds)
        self.latency_sum_s += seconds
        us = int(seconds * 1e6)
        if us >= 256:  # 8 significant bits, as LatencyWindow keeps (bounded distinct keys)
            shift = us.bit_length() - 8
            us = us >> shift << shift
        self.latency_counts[us] = self.latency_counts.get(us, 0) + 1

    def start_epoch(self) -> None:
        """Start counting a new epoch (the cumulative counters are untouched)."""
        self._e_requests = 0
        self._e_errors = 0
        self._e_counts = dict(self.latency_counts)
        self._e_start = self._clock()

    def epoch(self) -> EpochStats:
        counts = count_difference(self.latency_counts, self._e_counts)
        return epoch_stats(self._e_requests, self._e_errors, counts,
                           self._clock() - self._e_start)

    def histogram(self, bounds: Sequence[float]) -> list[tuple[str, int]]:
        """Cumulative (upper bound, count) buckets of :attr:`latency_counts` over ``bounds``
        (seconds, increasing), ending with +Inf: Prometheus histogram buckets, computed at
        scrape time so that recording stays one dict update."""
        counts = [0] * (len(bounds) + 1)
        for us, count in self.latency_counts.items():
            counts[bisect_left(bounds, us / 1e6)] += count
        out, running = [], 0
        for bound, count in zip((*(repr(float(b)) for b in bounds), "+Inf"), counts,
                                strict=True):
            running += count
            out.append((bound, running))
        return out


def count_difference(now: Mapping[int, int], before: Mapping[int, int]) -> dict[int, int]:
    """Latency counts added between ``before`` and ``now`` (both cumulative)."""
    return {us: n - before.get(us, 0) for us, n in now.items() if n > before.get(us, 0)}


def epoch_stats(requests: int, errors: int, counts: Mapping[int, int],
                duration_s: float) -> EpochStats:
    """An epoch's numbers from its counts (``counts``: successes by latency in microseconds)."""
    p50, p99 = quantiles(counts, (0.50, 0.99))
    return EpochStats(requests, errors, errors / requests if requests else 0.0, p50, p99,
                      duration_s)


def quantiles(counts: Mapping[int, int], fractions: tuple[float, ...]) -> list[float | None]:
    total = sum(counts.values())
    if not total:
        return [None] * len(fractions)
    ordered = sorted(counts.items())
    out: list[float | None] = []
    for fraction in fractions:
        rank, running = max(1, math.ceil(fraction * total)), 0
        for us, count in ordered:
            running += count
            if running >= rank:
                out.append(us / 1e6)
                break
    return out
