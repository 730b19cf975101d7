"""The overload benchmark's C is the best goodput within the SLO: chosen from hand-made probe
results, and searched for against a fake closed loop whose p99 is known for every concurrency."""

from __future__ import annotations

import itertools
import math

from loadtests.capacity import (
    Capacity,
    Probe,
    capacity_lines,
    choose_capacity,
    next_concurrency,
    search,
)

SLO_MS = 50.0


def test_a_probe_over_the_slo_is_not_c_even_with_the_best_goodput():
    # The run the issue reports: at c=64 a p50 of 186 ms, yet the most requests per second
    # (and, here, even the most within the SLO). C must come from c=16, the best within it.
    probes = [
        Probe(8, req_s=150.0, good_req_s=150.0, p50_ms=22.0, p99_ms=41.0),
        Probe(16, req_s=190.0, good_req_s=188.0, p50_ms=38.0, p99_ms=49.5),
        Probe(64, req_s=340.0, good_req_s=200.0, p50_ms=186.0, p99_ms=240.0),
    ]
    assert choose_capacity(probes, SLO_MS) == Capacity(188.0, probes[1], True)


def test_the_slo_is_judged_on_the_p99_not_the_p50():
    probes = [
        Probe(8, req_s=150.0, good_req_s=150.0, p50_ms=22.0, p99_ms=41.0),
        Probe(16, req_s=190.0, good_req_s=185.0, p50_ms=30.0, p99_ms=50.5),
    ]
    assert choose_capacity(probes, SLO_MS) == Capacity(150.0, probes[0], True)


def test_a_probe_with_errors_is_not_within_the_slo():
    probes = [
        Probe(8, req_s=150.0, good_req_s=150.0, p50_ms=22.0, p99_ms=41.0),
        Probe(16, req_s=190.0, good_req_s=188.0, p50_ms=30.0, p99_ms=45.0, errors=3),
    ]
    assert choose_capacity(probes, SLO_MS).probe == probes[0]


def test_with_no_probe_within_the_slo_c_is_the_best_goodput_and_the_report_says_so():
    probes = [
        Probe(8, req_s=120.0, good_req_s=40.0, p50_ms=60.0, p99_ms=90.0),
        Probe(4, req_s=100.0, good_req_s=70.0, p50_ms=40.0, p99_ms=70.0),
        Probe(2, req_s=60.0, good_req_s=55.0, p50_ms=30.0, p99_ms=66.0),
    ]
    chosen = choose_capacity(probes, SLO_MS)
    assert chosen == Capacity(70.0, probes[1], False)
    head = capacity_lines(chosen, probes, SLO_MS).splitlines()[0]
    assert head == ("NO probe met the SLO (p99 <= 50 ms and no errors): C = 70 req/s is the "
                    "best goodput of any probe (c=4), NOT a capacity within the SLO; the "
                    "targets below are measured against it")


def test_with_nothing_answered_within_the_slo_there_is_no_c():
    probes = [Probe(1, req_s=10.0, good_req_s=0.0, p50_ms=80.0, p99_ms=95.0),
              Probe(2, req_s=0.0, good_req_s=0.0, p50_ms=math.nan, p99_ms=math.nan)]
    chosen = choose_capacity(probes, SLO_MS)
    assert chosen == Capacity(0.0, None, False)
    assert "C cannot be measured" in capacity_lines(chosen, probes, SLO_MS)


def test_the_report_names_the_rule_and_every_probe():
    probes = [Probe(8, 150.0, 150.0, 22.0, 41.0), Probe(16, 190.0, 60.0, 70.0, 120.0)]
    lines = capacity_lines(choose_capacity(probes, SLO_MS), probes, SLO_MS).splitlines()
    assert lines[0] == ("C = 150 req/s: the best goodput (OK within 50 ms, per s) of the "
                        "closed-loop probes within the SLO (p99 <= 50 ms and no errors), at c=8")
    assert lines[1].endswith("p50 22.0 ms, p99 41.0 ms: within the SLO")
    assert lines[2].endswith("p50 70.0 ms, p99 120.0 ms: over the SLO")
    assert capacity_lines(None, [], SLO_MS, 190.0) == (
        "C = 190 req/s given with --capacity (not measured here)")


def fake_closed_loop(p99_ms_per_in_flight: float):
    """A server that answers 20 req/s per request in flight, up to 250 req/s, with a p99
    proportional to the concurrency; every answer within the SLO counts as goodput."""
    def measure(concurrency: int) -> Probe:
        req_s = min(20.0 * concurrency, 250.0)
        p99 = p99_ms_per_in_flight * concurrency
        return Probe(concurrency, req_s, req_s if p99 <= SLO_MS else 0.0, p99 / 2, p99)
    return measure


def test_the_search_doubles_then_bisects_to_the_highest_concurrency_within_the_slo():
    probes = search(fake_closed_loop(5.0), SLO_MS)  # p99 within 50 ms up to c=10
    assert [p.concurrency for p in probes] == [8, 16, 12, 10]
    assert choose_capacity(probes, SLO_MS).probe == probes[-1]


def test_the_search_stops_at_the_highest_concurrency_allowed():
    probes = search(fake_closed_loop(0.5), SLO_MS)
    assert [p.concurrency for p in probes] == [8, 16, 32, 64]


def test_the_search_halves_down_to_one_when_nothing_is_within_the_slo():
    probes = search(fake_closed_loop(60.0), SLO_MS)
    assert [p.concurrency for p in probes] == [8, 4, 2, 1]
    assert not choose_capacity(probes, SLO_MS).within_slo


def test_the_search_ends_whatever_noisy_probes_say():
    # Every pattern of within/over for the first eight probes: never a concurrency twice,
    # never outside 1..64, and done within eight probes.
    for pattern in itertools.product((True, False), repeat=8):
        verdicts = iter(pattern)

        def measure(concurrency: int, verdicts=verdicts) -> Probe:
            p99 = 10.0 if next(verdicts) else 90.0
            return Probe(concurrency, 100.0, 100.0, p99 / 2, p99)

        probes = search(measure, SLO_MS)
        seen = [p.concurrency for p in probes]
        assert len(seen) == len(set(seen)) <= 8
        assert all(1 <= c <= 64 for c in seen)
        assert next_concurrency(probes, SLO_MS) is None
