"""loadtests.monitoring_overhead's summary: per-round on/off ratios, then their medians."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

from loadtests.monitoring_overhead import (
    cpu_per_request,
    cpu_seconds,
    idle_cpu,
    median_ci,
    summarize,
)
from tests.support.threads import burn_cpu


def run(n: int, variant: str, req_s: float, p99_ms: float, model: str = "identity",
        **cpu: float) -> dict:
    return {"round": n, "model": model, "variant": variant, "req_s": req_s, "p99_ms": p99_ms,
            **cpu}


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
    low, high = row["p99_ratio_ci95"]
    assert 1.0 <= low <= row["p99_ratio"] <= high <= 1.5  # within the ratios' own range


def test_the_median_s_interval_holds_it_and_narrows_with_more_rounds():
    rng = np.random.default_rng(3)
    few = (1.05 + 0.1 * rng.standard_normal(8)).tolist()
    many = (1.05 + 0.1 * rng.standard_normal(128)).tolist()
    low, high = median_ci(few)
    assert low <= float(np.median(few)) <= high
    many_low, many_high = median_ci(many)
    assert many_low <= float(np.median(many)) <= many_high
    assert many_high - many_low < (high - low) / 2  # 16 times the rounds: about a quarter
    # the normal approximation of the median's spread: 1.96 * 1.2533 * sigma / sqrt(n)
    by_hand = 1.96 * 1.2533 * 0.1 / 128 ** 0.5
    assert 0.6 * by_hand <= (many_high - many_low) / 2 <= 1.3 * by_hand
    assert median_ci(few) == (low, high)  # a fixed seed: the same runs, the same interval
    assert median_ci([1.1] * 5) == pytest.approx((1.1, 1.1))


def test_the_idle_server_s_cpu_is_reported_at_its_highest():
    runs = [run(1, "off", 1000, 10, idle_cores=0.01), run(1, "on", 900, 11, idle_cores=0.002),
            run(2, "on", 950, 11, idle_cores=0.004), run(2, "off", 990, 10, idle_cores=0.03)]
    (row,) = summarize(runs)
    assert row["idle_cores_max"] == pytest.approx(0.03)


def test_cpu_per_request_divides_the_cores_used_by_the_rate():
    # 10 s in which the process used 12 CPU seconds and its main thread 9, at 2,000 req/s
    # and its worker processes 0.5
    figures = cpu_per_request((100.0, 50.0, 30.0, 1.0), (110.0, 62.0, 39.0, 1.5), 2000.0)
    assert figures["cpu_cores"] == pytest.approx(1.2)
    assert figures["loop_cores"] == pytest.approx(0.9)
    assert figures["cpu_us_per_req"] == pytest.approx(600.0)  # 1.2 / 2000 s
    assert figures["loop_us_per_req"] == pytest.approx(450.0)
    assert figures["workers_cores"] == pytest.approx(0.05)
    assert figures["workers_us_per_req"] == pytest.approx(25.0)


def test_cpu_seconds_reads_this_process_and_its_main_thread():
    at, total, loop, _ = cpu_seconds(os.getpid())
    worker = threading.Thread(target=burn_cpu, args=(0.2,))
    worker.start()
    burn_cpu(0.1)  # this (main) thread
    worker.join()
    at2, total2, loop2, _ = cpu_seconds(os.getpid())
    assert at2 > at
    assert loop2 - loop >= 0.08  # the main thread's own spin, not the worker's
    assert total2 - total >= 0.28  # both spins
    assert (total2 - total) - (loop2 - loop) >= 0.18


def test_cpu_seconds_counts_the_child_processes_apart():
    spin = "import time\nend = time.process_time() + 0.3\nwhile time.process_time() < end: pass\n"
    _, total, _, before = cpu_seconds(os.getpid())
    child = subprocess.Popen([sys.executable, "-c", spin + "time.sleep(30)"])
    try:
        workers, deadline = before, time.monotonic() + 20
        while workers - before < 0.25 and time.monotonic() < deadline:
            time.sleep(0.05)
            _, total2, _, workers = cpu_seconds(os.getpid())
        assert workers - before >= 0.25  # the child's spin (and its start)
        assert total2 - total < 0.2  # not this process's
    finally:
        child.kill()
        child.wait()


def test_cpu_medians_are_reported_when_both_variants_were_timed():
    runs = [
        run(1, "off", 1000, 10, cpu_us_per_req=400, loop_us_per_req=300, loop_cores=0.9),
        run(1, "on", 900, 11, cpu_us_per_req=450, loop_us_per_req=320, loop_cores=0.8),
        run(2, "off", 1000, 10, cpu_us_per_req=410, loop_us_per_req=310, loop_cores=0.95),
        run(2, "on", 900, 11, cpu_us_per_req=470, loop_us_per_req=330, loop_cores=0.85,
            workers_us_per_req=12),
        run(3, "off", 1000, 10), run(3, "on", 900, 11),  # an older run: no CPU figures
    ]
    (row,) = summarize(runs)
    assert row["rounds"] == 3
    assert row["off_cpu_us_per_req"] == pytest.approx(405)
    assert row["on_cpu_us_per_req"] == pytest.approx(460)
    assert row["on_loop_us_per_req"] == pytest.approx(325)
    assert row["off_loop_cores"] == pytest.approx(0.925)
    assert row["on_loop_cores"] == pytest.approx(0.825)
    assert "on_workers_us_per_req" not in row  # one round had it, not every timed one
    untimed = summarize([run(1, "off", 1000, 10), run(1, "on", 900, 11)])
    assert "off_cpu_us_per_req" not in untimed[0]


def test_an_idle_server_gone_is_no_figure_rather_than_an_error():
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    assert idle_cpu(child.pid) is None
    now, spent = idle_cpu(os.getpid())
    burn_cpu(0.2)
    later, more = idle_cpu(os.getpid())
    assert later > now and more - spent >= 0.1
