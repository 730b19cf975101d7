"""RetryCall's deadline rules, driven by a fake clock: which error a caller gets, and when.

A wait that oversleeps is simulated by moving the clock past the deadline between the failure
and the next attempt, so the rule "the last Overloaded, not DeadlineExceeded" is checked
exactly, with no sleeping and no timing luck.
"""

from __future__ import annotations

import random

import grpc
import pytest

from sluice.clients.errors import DeadlineExceeded, Overloaded
from sluice.clients.retry import RetryBudget, RetryPolicy
from tests.support.fake_clock import FakeClock


def shed(pushback_ms: int | None, reason: str = "queue_full") -> Overloaded:
    return Overloaded(
        grpc.StatusCode.UNAVAILABLE, "shed", retry_after_ms=pushback_ms, reason=reason
    )


def policy(clock: FakeClock, retries: int = 10) -> RetryPolicy:
    # No exponential backoff: every wait is the pushback, jittered by a seeded rng.
    return RetryPolicy(retries, backoff_base_s=0.0, rng=random.Random(7), clock=clock)


@pytest.mark.parametrize("late_s", [0.0, 0.001, 5.0], ids=["at", "just-past", "far-past"])
def test_deadline_passing_during_a_pushback_wait_raises_the_last_overloaded(late_s):
    clock = FakeClock()
    call = policy(clock).begin(timeout=1.0)
    errors = [shed(100), shed(200, reason="priority"), shed(300)]
    for attempt, error in enumerate(errors, start=1):
        assert call.time_left() == pytest.approx(call.deadline - clock.now)
        assert call.attempts == attempt
        wait = call.after_failure(error)
        assert error.retry_after_ms / 1000 <= wait <= 1.2 * error.retry_after_ms / 1000
        if attempt < len(errors):
            clock.advance(wait)
    # The last wait (<= 0.72 s in all) was started in time, but the sleep ends late.
    assert clock.now + wait < call.deadline
    clock.now = call.deadline + late_s
    with pytest.raises(Overloaded) as info:
        call.time_left()
    assert info.value is errors[-1]
    assert info.value.retry_after_ms == 300
    assert info.value.reason == "queue_full"
    assert info.value.attempts == 3
    assert call.attempts == 3  # the attempt that was never sent is not counted


@pytest.mark.parametrize("timeout", [0.0, 0.5])
def test_deadline_passed_before_any_attempt_raises_deadline_exceeded(timeout):
    clock = FakeClock()
    call = policy(clock).begin(timeout=timeout)
    clock.advance(timeout)
    with pytest.raises(DeadlineExceeded) as info:
        call.time_left()
    assert info.value.code == grpc.StatusCode.DEADLINE_EXCEEDED
    assert info.value.attempts == 0
    assert call.attempts == 0


def test_an_attempt_that_runs_out_of_time_on_the_wire_stays_deadline_exceeded():
    clock = FakeClock()
    call = policy(clock).begin(timeout=1.0)
    call.time_left()
    clock.advance(call.after_failure(shed(100)))
    assert call.time_left() > 0
    clock.now = call.deadline  # the second attempt is cut off by its gRPC deadline
    wire = DeadlineExceeded(grpc.StatusCode.DEADLINE_EXCEEDED, "Deadline Exceeded")
    with pytest.raises(DeadlineExceeded) as info:
        call.after_failure(wire)
    assert info.value is wire
    assert info.value.attempts == 2


def test_a_wait_that_would_reach_the_deadline_is_not_started():
    clock = FakeClock()
    call = policy(clock).begin(timeout=0.1)
    call.time_left()
    error = shed(100)  # every wait is >= 0.1 s: it would end at or after the deadline
    with pytest.raises(Overloaded) as info:
        call.after_failure(error)
    assert info.value is error
    assert info.value.attempts == 1
    assert clock.now == FakeClock().now  # decided without waiting


def test_no_deadline_never_raises_from_time_left():
    clock = FakeClock()
    call = policy(clock, retries=3).begin(timeout=None)
    for attempt in range(1, 4):
        assert call.time_left() is None
        clock.advance(call.after_failure(shed(1000)) + 3600)
        assert call.attempts == attempt
    assert call.time_left() is None
    error = shed(1000)
    with pytest.raises(Overloaded) as info:  # retries spent
        call.after_failure(error)
    assert info.value is error and info.value.attempts == 4


def test_budget_spent_raises_the_overloaded_at_once():
    clock = FakeClock()
    empty = RetryBudget(ratio=0.0, max_tokens=0.0)
    call = RetryPolicy(3, rng=random.Random(1), clock=clock, budget=empty).begin(timeout=10.0)
    call.time_left()
    error = shed(50)
    with pytest.raises(Overloaded) as info:
        call.after_failure(error)
    assert info.value is error and info.value.attempts == 1
