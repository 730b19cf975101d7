"""Admission.clear_inline: when a parameter-less request on an idle model may skip admit's
estimates and be computed inline. Every case it clears, admit admits too; every case it refuses
is one where admit has something to say (or a rule clear_inline does not evaluate).

Runs a batcher and its admission on a fake clock (tests/support/admission_model.py); the model
is measured first, so admit's estimates are live (10 ms of fake time per row).
"""

from __future__ import annotations

import pytest

from sluice.server.config.model import OverloadPolicy, QueuePolicy
from sluice.server.errors import Overloaded, ResourceExhausted
from sluice.server.serving.budget import InflightBudget
from tests.support.admission_model import Model, measure

COMPUTE_S = 0.01  # one row's fake time: what the pool's inline estimate would say


async def test_a_plain_model_is_cleared_and_admit_agrees(clock, backend):
    model = Model(clock, backend)
    await measure(model, backend)
    now = clock()
    for deadline in (None, now + 1.0, now + 0.02):
        assert model.admission.clear_inline(1, 8, deadline, now, COMPUTE_S)
        model.admission.admit(1, 8, model.policy.default_level, deadline, now)  # no raise
        model.admission.release(8)


async def test_a_deadline_nearer_than_the_estimate_is_left_to_admit(clock, backend):
    model = Model(clock, backend)
    await measure(model, backend)
    now = clock()
    deadline = now + COMPUTE_S  # 10 ms needed, 9 ms of it usable (DEADLINE_SAFETY)
    assert not model.admission.clear_inline(1, 8, deadline, now, COMPUTE_S)
    with pytest.raises(Overloaded) as info:
        model.admission.admit(1, 8, model.policy.default_level, deadline, now)
    assert info.value.reason == "deadline"
    assert not model.admission.clear_inline(1, 8, now, now, COMPUTE_S)  # already passed


@pytest.mark.parametrize("setup", ["queue timeout", "budget share"])
async def test_levels_with_rules_of_their_own_are_left_to_admit(clock, backend, setup):
    if setup == "queue timeout":
        model = Model(clock, backend, default_policy=QueuePolicy(default_timeout_us=50_000))
    else:  # level 2 of 2 may use half of the budget
        model = Model(clock, backend, levels=2, default_level=2)
    await measure(model, backend)
    assert not model.admission.clear_inline(1, 8, None, clock(), COMPUTE_S)


async def test_caps_are_left_to_admit(clock, backend):
    model = Model(clock, backend, max_batch=8, overload=OverloadPolicy(max_queue_rows=4))
    await measure(model, backend)
    now = clock()
    assert model.admission.clear_inline(4, 8, None, now, COMPUTE_S)
    assert not model.admission.clear_inline(5, 8, None, now, COMPUTE_S)
    with pytest.raises(ResourceExhausted, match="max_queue_rows"):
        model.admission.admit(5, 8, 1, None, now)


async def test_a_full_in_flight_budget_is_left_to_admit(clock, backend):
    budget = InflightBudget(100)
    model = Model(clock, backend, budget=budget)
    await measure(model, backend)
    now = clock()
    budget.acquire(96)  # another model's requests hold most of it
    assert model.admission.clear_inline(1, 4, None, now, COMPUTE_S)
    assert not model.admission.clear_inline(1, 8, None, now, COMPUTE_S)
    with pytest.raises(Overloaded) as info:
        model.admission.admit(1, 8, 1, None, now)
    assert info.value.reason == "queue_full"
