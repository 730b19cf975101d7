"""The overload benchmark's capacity C: the best goodput *within the SLO*, from closed-loop probes.

A closed-loop probe at concurrency c keeps c requests in flight; its latency grows with c once
the model is busy (batching turns more in flight into bigger batches and longer waits), while
its throughput levels off. C used to be the throughput at c = 64: on ``cnn`` b8 that was a p50
of 186 ms against a 50 ms SLO, so the open loop shed 25% of its requests at "1x C". Now:

* a probe's **goodput** is its OK answers within the SLO per second, and it is **within the
  SLO** when it had no errors and its p99 latency is within the SLO (p99 is the quantile of the
  report's target "3x: accepted p99 <= SLO");
* C is the highest goodput among the probes within the SLO (:func:`choose_capacity`);
* the probes (:func:`search`) start at concurrency 8, double while within the SLO (up to 64),
  halve while not (down to 1), then bisect between the highest concurrency within the SLO and
  the lowest above it until they are within a quarter of each other.

When no probe is within the SLO, C is the best goodput of any probe and the report says plainly
that it is not a capacity within the SLO. Pure functions: :func:`search` is handed the function
that measures one probe.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

START_CONCURRENCY = 8
MAX_CONCURRENCY = 64


@dataclass(frozen=True)
class Probe:
    """One closed-loop run: c requests in flight for a fixed time."""

    concurrency: int
    #: OK answers per second, at any latency.
    req_s: float
    #: OK answers within the SLO per second.
    good_req_s: float
    p50_ms: float
    p99_ms: float
    #: Failed calls (a probe with any is not within the SLO).
    errors: int = 0


@dataclass(frozen=True)
class Capacity:
    """C and where it came from."""

    #: C in requests per second.
    req_s: float
    #: The probe C was taken from (None: no probe answered anything within the SLO).
    probe: Probe | None
    #: Whether that probe met the SLO (False: no probe did; C is the best goodput of any).
    within_slo: bool


def within_slo(probe: Probe, slo_ms: float) -> bool:
    """No errors and a p99 within the SLO (a probe with no answers has a NaN p99: never)."""
    return probe.errors == 0 and probe.p99_ms <= slo_ms


def choose_capacity(probes: list[Probe], slo_ms: float) -> Capacity:
    """The highest goodput among the probes within the SLO; when none is, the highest goodput
    of any probe, marked ``within_slo=False`` (``req_s`` 0 and no probe when nothing answered
    within the SLO at all)."""
    eligible = [p for p in probes if within_slo(p, slo_ms)]
    if eligible:
        best = max(eligible, key=lambda p: p.good_req_s)
        return Capacity(best.good_req_s, best, True)
    answered = [p for p in probes if p.good_req_s > 0]
    if not answered:
        return Capacity(0.0, None, False)
    best = max(answered, key=lambda p: p.good_req_s)
    return Capacity(best.good_req_s, best, False)


def next_concurrency(
    probes: list[Probe], slo_ms: float, *, start: int = START_CONCURRENCY,
    limit: int = MAX_CONCURRENCY,
) -> int | None:
    """The concurrency to probe next, or None when the search is done (see the module's
    docstring). Each probe narrows the interval between the highest concurrency within the SLO
    and the lowest one above it that is not, so the search ends whatever the probes say."""
    if not probes:
        return start
    tried = {p.concurrency for p in probes}
    ok = [p.concurrency for p in probes if within_slo(p, slo_ms)]
    low = max(ok, default=0)
    over = [p.concurrency for p in probes if p.concurrency > low and not within_slo(p, slo_ms)]
    high = min(over, default=None)
    if high is None:  # everything tried so far is within the SLO: go up
        step = min(2 * low, limit)
        return step if step not in tried else None
    if low == 0:  # nothing within the SLO yet: go down
        step = high // 2
        return step if step >= 1 and step not in tried else None
    if high - low <= max(1, low // 4):
        return None
    step = (low + high) // 2
    return step if step not in tried else None


def search(
    measure: Callable[[int], Probe], slo_ms: float, *, start: int = START_CONCURRENCY,
    limit: int = MAX_CONCURRENCY,
) -> list[Probe]:
    """Probe with ``measure(concurrency)`` until :func:`next_concurrency` is done; the probes in
    the order they ran."""
    probes: list[Probe] = []
    while (step := next_concurrency(probes, slo_ms, start=start, limit=limit)) is not None:
        probes.append(measure(step))
    return probes


def probe_line(probe: Probe, slo_ms: float) -> str:
    verdict = "within the SLO" if within_slo(probe, slo_ms) else "over the SLO"
    errors = f", {probe.errors} errors" if probe.errors else ""
    return (f"c={probe.concurrency:<3} {probe.req_s:>8,.0f} req/s, goodput "
            f"{probe.good_req_s:>8,.0f} req/s, p50 {probe.p50_ms:.1f} ms, p99 "
            f"{probe.p99_ms:.1f} ms{errors}: {verdict}")


def capacity_lines(capacity: Capacity | None, probes: list[Probe], slo_ms: float,
                   given_req_s: float | None = None) -> str:
    """What the report says about C: how it was chosen (or that it was given), and each probe."""
    if capacity is None:
        return f"C = {given_req_s or 0:,.0f} req/s given with --capacity (not measured here)"
    rule = f"p99 <= {slo_ms:g} ms and no errors"
    if capacity.within_slo:
        assert capacity.probe is not None
        head = (f"C = {capacity.req_s:,.0f} req/s: the best goodput (OK within {slo_ms:g} ms, "
                f"per s) of the closed-loop probes within the SLO ({rule}), at "
                f"c={capacity.probe.concurrency}")
    elif capacity.probe is None:
        head = (f"NO probe met the SLO ({rule}), and none answered anything within "
                f"{slo_ms:g} ms: C cannot be measured on this machine at this SLO")
    else:
        head = (f"NO probe met the SLO ({rule}): C = {capacity.req_s:,.0f} req/s is the best "
                f"goodput of any probe (c={capacity.probe.concurrency}), NOT a capacity within "
                f"the SLO; the targets below are measured against it")
    return "\n".join([head, *(f"  {probe_line(p, slo_ms)}" for p in probes)])
