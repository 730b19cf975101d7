"""The peers benchmark's summary on hand-made runs: medians over rounds, ratios per round, the
c=1 overhead, and the tables (no server, no perf_analyzer)."""

from __future__ import annotations

import pytest

from loadtests.peer_report import latency_table, summarize, throughput_table


def ok(round_no: int, server: str, req_s: float, p50_ms: float, concurrency: int = 1) -> dict:
    return {"round": round_no, "server": server, "model": "identity",
            "concurrency": concurrency, "req_s": req_s, "p50_ms": p50_ms, "p99_ms": 2 * p50_ms}


def failed(round_no: int, server: str, concurrency: int = 1) -> dict:
    return {"round": round_no, "server": server, "model": "identity",
            "concurrency": concurrency, "error": f"{server} round {round_no} unstable"}


RUNS = [
    ok(1, "bare", 1000, 0.500), ok(1, "inline_ort", 800, 0.600), ok(1, "sluice", 600, 0.700),
    ok(2, "bare", 1200, 0.400), ok(2, "inline_ort", 900, 0.550), ok(2, "sluice", 900, 0.520),
    failed(3, "bare"), ok(3, "inline_ort", 1000, 0.500), ok(3, "sluice", 700, 0.650),
    # c=8: Sluice never produced a figure, inline-ORT once a non-positive one.
    ok(1, "bare", 2000, 4.0, 8), failed(1, "sluice", 8), ok(1, "inline_ort", 0.0, 9.0, 8),
]
ORT = [{"round": 1, "model": "identity", "p50_ms": 0.010},
       {"round": 2, "model": "identity", "p50_ms": 0.020},
       {"round": 3, "model": "identity", "p50_ms": 0.030}]


@pytest.fixture
def summary() -> dict:
    return summarize(RUNS, ORT, ["identity"], [1, 8])


def test_figures_are_medians_over_the_rounds_that_produced_one(summary):
    c1, c8 = summary["rows"]
    assert c1["req_s"] == {"bare": 1100, "inline_ort": 900, "sluice": 700, "mlserver": None}
    assert c1["p50_us"]["bare"] == pytest.approx(450.0)  # round 3 failed: median of 2
    assert c1["p50_us"]["sluice"] == pytest.approx(650.0)
    assert c1["errors"] == {"bare": "bare round 3 unstable"}
    assert c8["req_s"] == {"bare": 2000, "inline_ort": None, "sluice": None, "mlserver": None}
    assert summary["ort_p50_us"]["identity"] == pytest.approx(20.0)


def test_ratios_are_taken_per_round_then_their_median(summary):
    c1, c8 = summary["rows"]
    # Sluice/bare: rounds 1 and 2 only (0.6, 0.75) -> 0.675, not 700 / 1100 = 0.636.
    assert c1["sluice_over_bare"] == pytest.approx(0.675)
    # Sluice/inline: 0.75, 1.0, 0.7 -> 0.75.
    assert c1["sluice_over_inline"] == pytest.approx(0.75)
    assert c8["sluice_over_bare"] is None and c8["sluice_over_inline"] is None


def test_overhead_is_sluice_minus_bare_minus_ort_per_round(summary):
    over = summary["overhead_us"]["identity"]
    # Round 1: 700 - 500 - 10 = 190 us; round 2: 520 - 400 - 20 = 100 us; round 3: no bare.
    assert over["per_round"] == pytest.approx([190.0, 100.0])
    assert over["value"] == pytest.approx(145.0)
    assert over["met"] is False and over["target"] == "<= 60"


def test_the_tables_show_the_medians_and_mark_missing_figures(summary):
    lines = throughput_table(summary).splitlines()
    assert lines[0].split("|")[1].split() == [
        "bare", "req/s", "inline-ORT", "req/s", "Sluice", "req/s", "MLServer", "req/s"]
    assert lines[2].split() == [
        "identity", "1", "|", "1100", "900", "700", "-", "|", "0.675", "0.750"]
    assert lines[3].split() == [
        "identity", "8", "|", "2000", "-", "error", "-", "|", "-", "-"]
    latency = latency_table(summary).splitlines()
    assert len(latency) == 4  # title, head, rule, the one c=1 row
    assert latency[3].split() == [
        "identity", "|", "450", "550", "650", "-", "|", "20.0", "+145", "MISSED"]
