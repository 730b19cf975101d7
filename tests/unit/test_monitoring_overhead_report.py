"""loadtests.monitoring_overhead's summary: per-round on/off ratios, then their medians."""

from __future__ import annotations

import pytest

from loadtests.monitoring_overhead import summarize


def run(n: int, variant: str, req_s: float, p99_ms: float, model: str = "identity") -> dict:
    return {"round": n, "model": model, "variant": variant, "req_s": req_s, "p99_ms": p99_ms}


def test_ratios_are_paired_per_round_and_errors_leave_their_round_out():
    runs = [
        run(1, "off", 1000, 10), run(1, "on", 900, 11),   # 0.90, 1.10
        run(2, "on", 1900, 12), run(2, "off", 2000, 12),  # 0.95, 1.00
        run(3, "off", 500, 20), run(3, "on", 480, 30),    # 0.96, 1.50
        run(4, "off", 999, 1), {"round": 4, "model": "identity", "variant": "on", "error": "x"},
    ]
    (row,) = summarize(runs)
    assert row["rounds"] == 3  # round 4 has no pair
    assert row["throughput_ratio"] == pytest.approx(0.95)
    assert row["p99_ratio"] == pytest.approx(1.10)
    assert row["off_req_s"] == 1000 and row["on_req_s"] == 900
    assert (row["model"], row["batch"]) == ("identity", 1)
