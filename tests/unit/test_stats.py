"""Latency windows and cumulative histograms against numpy."""

from __future__ import annotations

import random

import numpy as np

from sluice.server.serving.instances import BatchReport
from sluice.server.serving.stats import CumulativeHistogram, LatencyWindow, ModelStats


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_window_quantiles_match_numpy_within_hdr_precision():
    rng = np.random.default_rng(0)
    samples = rng.lognormal(mean=-7, sigma=1.0, size=20_000)  # ~1 ms, long tail
    window = LatencyWindow(60.0, clock=Clock())
    for s in samples:
        window.record(float(s))
    got = window.quantiles((50, 95, 99))
    assert got is not None
    for p in (50, 95, 99):
        expected = np.percentile(samples, p)
        assert abs(got[p] - expected) / expected < 0.02, (p, got[p], expected)


def test_window_quantiles_are_the_value_at_hdr_rank():
    window = LatencyWindow(60.0, clock=Clock())
    for us in range(100, 0, -1):  # below 256 us every microsecond is its own bucket
        window.record(us / 1e6)
    window.record(0.0)  # counted as 1 us
    got = window.quantiles((1, 50, 95, 99, 100))
    # 101 values: 1, 1, 2, ..., 100; rank = max(1, round(p% of 101))
    assert got == {1: 1e-6, 50: 50e-6, 95: 95e-6, 99: 99e-6, 100: 100e-6}
    big = LatencyWindow(60.0, clock=Clock())
    big.record(0.0012345)  # 1234 us (11 bits): 8-us buckets, [1232, 1239]; its top reported
    assert big.quantiles((50,)) == {50: 1239e-6}


def test_window_forgets_old_samples():
    clock = Clock()
    window = LatencyWindow(60.0, slots=6, clock=clock)
    for _ in range(100):
        window.record(0.5)
    clock.now += 30
    for _ in range(100):
        window.record(0.001)
    both = window.quantiles((99,))
    assert both is not None and both[99] > 0.4
    clock.now += 45  # the 0.5 s samples are now more than a window old
    recent = window.quantiles((99,))
    assert recent is not None and recent[99] < 0.002
    clock.now += 120
    assert window.quantiles() is None


def test_cumulative_histogram_buckets():
    hist = CumulativeHistogram((0.001, 0.01, 0.1))
    for value in (0.0005, 0.001, 0.005, 0.05, 5.0):
        hist.observe(value)
    assert hist.buckets() == [("0.001", 2), ("0.01", 3), ("0.1", 4), ("+Inf", 5)]
    assert abs(hist.total - 5.0565) < 1e-9


def test_model_stats_follow_tritons_accounting():
    stats = ModelStats(clock=Clock())
    stats.on_batch(BatchReport(rows=5, queue_s=[0.001, 0.002], gather_s=0.0001, run_s=0.003,
                               scatter_s=0.0002, failed=False))
    stats.on_batch(BatchReport(rows=1, queue_s=[0.004], gather_s=0.0, run_s=0.0, scatter_s=0.0,
                               failed=True))
    stats.on_request(0.004, ok=True)
    stats.on_request(0.005, ok=True)
    stats.on_request(0.006, ok=False)
    assert (stats.success_count, stats.fail_count) == (2, 1)
    assert stats.inference_count == 5 and stats.execution_count == 1
    assert stats.queue_count == 3 and stats.queue_ns == 7_000_000
    assert stats.compute_infer_ns == 2 * 3_000_000  # each member saw the batch's compute
    assert stats.batch_stats[5].count == 1 and 1 not in stats.batch_stats


def test_model_stats_route_each_time_to_its_window_and_histogram():
    """on_batch / on_request feed each value where Triton's accounting puts it (every member's
    queue time; compute and rows of successful batches only; e2e of successful requests only):
    what they leave equals windows and histograms fed those values by hand, across sub-window
    turnovers."""
    clock = Clock()
    stats = ModelStats(window_s=60.0, clock=clock)
    ref = {name: LatencyWindow(60.0, clock=clock) for name in ("e2e", "queue", "compute")}
    hist = {
        "e2e": CumulativeHistogram(), "queue": CumulativeHistogram(),
        "compute": CumulativeHistogram(),
        "rows": CumulativeHistogram((1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)),
    }
    rng = random.Random(7)
    for step in range(400):
        clock.now += rng.choice((0.0, 0.5, 3.0, 11.0))  # sub-windows are 10 s long
        queue_s = [rng.uniform(0, 0.02) for _ in range(rng.randint(0, 4))]
        report = BatchReport(rows=rng.randint(1, 600), queue_s=queue_s,
                             gather_s=rng.uniform(0, 1e-4), run_s=rng.uniform(0, 0.05),
                             scatter_s=rng.uniform(0, 1e-4), failed=step % 9 == 0)
        stats.on_batch(report)
        for waited in queue_s:
            ref["queue"].record(waited)
            hist["queue"].observe(waited)
        if not report.failed:
            compute = report.gather_s + report.run_s + report.scatter_s
            ref["compute"].record(compute)
            hist["compute"].observe(compute)
            hist["rows"].observe(report.rows)
        seconds = rng.uniform(0, 0.1)
        stats.on_request(seconds, ok=step % 5 != 0)
        if step % 5:
            ref["e2e"].record(seconds)
            hist["e2e"].observe(seconds)
    for name, window in (("e2e", stats.e2e), ("queue", stats.queue), ("compute", stats.compute)):
        assert window.quantiles((1, 50, 90, 99, 100)) == ref[name].quantiles((1, 50, 90, 99, 100))
        assert window._slots == ref[name]._slots and window._epochs == ref[name]._epochs
    for name, mine in (("e2e", stats.e2e_hist), ("queue", stats.queue_hist),
                       ("compute", stats.compute_hist), ("rows", stats.batch_size_hist)):
        assert mine.counts == hist[name].counts and mine.total == hist[name].total, name
