"""Per-arm request statistics: cumulative counters, a latency window and a restartable epoch.

Recorded on the event loop by the servicer after each routed request (a few integer bumps and a
dict update); read by /metrics, the admin status and the canary gates.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping
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

    __slots__ = ("_clock", "_counts", "_e_errors", "_e_requests", "_e_start", "errors",
                 "latency", "requests", "version")

    def __init__(self, version: int | None = None, *, window_s: float = 60.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        #: The version that answered these requests (the router keeps one ArmStats per arm
        #: and version).
        self.version = version
        self.requests = 0
        self.errors = 0
        self.latency = LatencyWindow(window_s, clock=clock)
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
        us = int(seconds * 1e6)
        if us >= 256:  # 8 significant bits, as LatencyWindow keeps (bounded distinct keys)
            shift = us.bit_length() - 8
            us = us >> shift << shift
        self._counts[us] = self._counts.get(us, 0) + 1

    def start_epoch(self) -> None:
        """Start counting a new epoch (the cumulative counters are untouched)."""
        self._e_requests = 0
        self._e_errors = 0
        self._counts: dict[int, int] = {}
        self._e_start = self._clock()

    def epoch(self) -> EpochStats:
        requests, errors = self._e_requests, self._e_errors
        p50, p99 = _quantiles(self._counts, (0.50, 0.99))
        return EpochStats(
            requests, errors, errors / requests if requests else 0.0, p50, p99,
            self._clock() - self._e_start,
        )


def _quantiles(counts: Mapping[int, int], fractions: tuple[float, ...]) -> list[float | None]:
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
