"""The supervisor's restart backoff, as a pure policy: lives in, waits out, no processes."""

from __future__ import annotations

import random

from sluice.server.workers.supervisor import RestartBackoff


def waits(backoff: RestartBackoff, lives_s: list[float]) -> list[float]:
    return [backoff.after_death(lived) for lived in lives_s]


def test_quick_deaths_double_the_wait_up_to_the_cap():
    backoff = RestartBackoff(base_s=0.2, max_s=2.0, stable_after_s=10.0)
    assert waits(backoff, [0.1] * 7) == [0.2, 0.4, 0.8, 1.6, 2.0, 2.0, 2.0]


def test_a_stable_life_resets_the_wait_and_the_threshold_is_inclusive():
    backoff = RestartBackoff(base_s=0.5, max_s=30.0, stable_after_s=60.0)
    assert waits(backoff, [1.0, 1.0, 1.0]) == [0.5, 1.0, 2.0]
    assert backoff.after_death(59.999) == 4.0  # just short of stable: still doubling
    assert backoff.after_death(60.0) == 0.5  # stable: from the start again
    assert waits(backoff, [0.0, 0.0]) == [1.0, 2.0]
    assert backoff.after_death(3600.0) == 0.5


def test_the_first_death_waits_the_base_even_after_a_long_life():
    assert RestartBackoff(base_s=0.5, max_s=30.0, stable_after_s=60.0).after_death(0.0) == 0.5
    assert RestartBackoff(base_s=0.5, max_s=30.0, stable_after_s=60.0).after_death(600.0) == 0.5


def test_a_base_above_the_cap_is_capped():
    backoff = RestartBackoff(base_s=5.0, max_s=1.0, stable_after_s=10.0)
    assert waits(backoff, [0.0, 0.0, 20.0]) == [1.0, 1.0, 1.0]


def test_a_crash_loop_of_any_length_keeps_the_cap():
    # base * 2**1100 is not a float: a wait computed from the death count would raise here
    backoff = RestartBackoff(base_s=0.5, max_s=30.0, stable_after_s=60.0)
    assert waits(backoff, [0.0] * 5000)[-3:] == [30.0, 30.0, 30.0]
    assert backoff.after_death(60.0) == 0.5


def test_waits_follow_the_documented_formula():
    """min(max, base * 2**(k - 1)), k the deaths since the last stable life (that one
    included), re-implemented by counting, over random lives around the threshold."""
    rng = random.Random(18)
    base_s, max_s, stable_s = 0.25, 8.0, 5.0
    backoff = RestartBackoff(base_s=base_s, max_s=max_s, stable_after_s=stable_s)
    k = 0
    for _ in range(2000):
        lived = rng.choice([0.0, 1.0, 4.999, 5.0, 7.0]) if rng.random() < 0.2 else 0.1
        k = 1 if lived >= stable_s else k + 1
        assert backoff.after_death(lived) == min(max_s, base_s * 2 ** min(k - 1, 60))
