"""The arithmetic of a fleet's canary gates (issue 15 item 2), on hand-computed numbers: a
step's numbers are each live replica's counts minus its baseline, summed; agreement and
accuracy are weighted by rows; an arm's latency buckets are what Prometheus sums."""

from __future__ import annotations

from sluice.server.fleet.fleet_counters import _accuracy, _agreements, _arm
from sluice.server.metrics import ARM_LATENCY_BUCKETS_S
from sluice.server.rollout.arm_stats import ArmStats
from sluice.server.rollout.gate_evidence import Agreement


def arm(requests: int, errors: int, latency_us: dict[int, int], *, name: str = "candidate",
        version: int = 3) -> dict:
    return {"arm": name, "version": version, "requests": requests, "errors": errors,
            "latency_us": {str(us): n for us, n in latency_us.items()}}


def test_a_step_sums_each_live_replica_since_its_baseline():
    base = {
        "a": {"arms": [arm(10, 1, {100: 9})]},
        "b": {"arms": [arm(50, 0, {300: 50})]},
        "gone": {"arms": [arm(99, 99, {})]},  # died: its counts left with it
        "restarted": {"arms": [arm(40, 0, {100: 40})]},
    }
    now = {
        "a": {"arms": [arm(30, 1, {100: 9, 200: 20}), arm(7, 0, {900: 7}, name="stable")]},
        "b": {"arms": [arm(50, 0, {300: 50})]},  # no candidate request since the step began
        "joined": {"arms": [arm(10, 10, {})]},  # joined during the step: all of it counts
        "restarted": {"arms": [arm(5, 1, {250: 4})]},  # counters went back: from zero
    }
    step = _arm(now, base, "candidate", 3, 2.5)
    # a: 20 requests, 0 errors, 20 at 200 us; joined: 10, 10; restarted: 5, 1, 4 at 250 us.
    assert (step.requests, step.errors, step.duration_s) == (35, 11, 2.5)
    assert step.error_rate == 11 / 35
    # 24 successes: 20 at 200 us then 4 at 250 us; p50 is rank 12 (200), p99 rank 24 (250).
    assert (step.p50_s, step.p99_s) == (200e-6, 250e-6)
    stable = _arm(now, base, "stable", 1, 2.5)
    assert (stable.requests, stable.p99_s) == (0, None)  # version 1, not 3: none


def test_agreement_and_accuracy_are_weighted_by_their_rows():
    readings = [
        {"shadows": [{"live_version": 1, "shadow_version": 3, "compared": 10,
                      "label_rows": 20, "agree": 19},
                     {"live_version": 1, "shadow_version": 2, "compared": 5,
                      "label_rows": 5, "agree": 0}],
         "quality": [{"arm": "candidate", "version": 3, "accuracy": 0.5, "labelled": 10}]},
        {"shadows": [{"live_version": 1, "shadow_version": 3, "compared": 30,
                      "label_rows": 60, "agree": 45}],
         "quality": [{"arm": "candidate", "version": 3, "accuracy": 0.9, "labelled": 30},
                     {"arm": "stable", "version": 1, "accuracy": 1.0, "labelled": 4}]},
    ]
    # (19 + 45) / (20 + 60) over 10 + 30 comparisons; the pairing against version 2 is not ours.
    assert _agreements(readings, 3) == (Agreement(64 / 80, 40),)
    # (0.5 * 10 + 0.9 * 30) / 40 = 32 / 40
    assert _accuracy(readings, "candidate", 3) == (32 / 40, 40)
    assert _accuracy(readings, "stable", 1) == (1.0, 4)
    assert _accuracy(readings, "stable", 2) == (None, 0)


def test_arm_latency_buckets_count_successes_at_or_below_each_bound():
    stats = ArmStats(3)
    for seconds in (0.00009, 0.0001, 0.0012, 0.0012, 0.004, 0.4, 20.0):
        stats.record(seconds, True)
    stats.record(0.0001, False)  # failures have no latency
    buckets = dict(stats.histogram(ARM_LATENCY_BUCKETS_S))
    assert buckets["0.0001"] == 2  # 90 us, 100 us
    assert buckets["0.001"] == 2 and buckets["0.0015"] == 4  # 1.2 ms twice
    assert buckets["0.003"] == 4 and buckets["0.005"] == 5
    assert buckets["0.3"] == 5 and buckets["0.5"] == 6
    assert buckets["10.0"] == 6 and buckets["+Inf"] == 7
    assert list(buckets) == [repr(float(b)) for b in ARM_LATENCY_BUCKETS_S] + ["+Inf"]
    assert abs(stats.latency_sum_s - 20.40659) < 1e-9  # the successes only
