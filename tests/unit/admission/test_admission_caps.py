"""Caps: queued rows, queued bytes, requests per level and the in-flight bytes shared by all
models. A full cap evicts lower priorities before refusing; a request larger than any cap
is RESOURCE_EXHAUSTED naming the limit; shadow copies get at most half the in-flight bytes.

Each test runs a batcher and its admission on a fake clock, over a fake backend whose batches
take fake time (no server, no sleeps; tests/support/admission_model.py). The backend can be held
at a ``threading.Event`` gate to let the queue build up; tests wait for the state they rely on
(``computing``, ``queued``) instead of counting loop turns.
"""

from __future__ import annotations

import asyncio
import threading

import pytest

from sluice.server.config.model import OverloadPolicy, QueuePolicy
from sluice.server.config.settings import RequestLimits
from sluice.server.errors import Overloaded, ResourceExhausted
from sluice.server.serving.budget import InflightBudget, check_request_limits
from tests.support.admission_model import (
    Model,
    computing,
    queued,
)

# -- caps ---------------------------------------------------------------------------------------


async def test_row_cap_evicts_lower_priority_then_refuses(clock, backend):
    overload = OverloadPolicy(max_queue_rows=4)
    model = Model(clock, backend, max_batch=2, levels=2, default_level=2, overload=overload)
    backend.gate = threading.Event()
    blocker = model.send(0, level=1)
    await computing(backend, 1)
    low = [model.send(20 + i, level=2) for i in range(4)]
    await queued(model, 4)
    with pytest.raises(Overloaded) as info:
        model.send(30, level=2)  # nothing below level 2 to make room with
    assert info.value.reason == "queue_full" and "max_queue_rows" in info.value.message
    high = model.send(10, rows=2, level=1)  # evicts the two last-served level-2 requests
    # Two level-2 requests left, the level-1 one queued; the evicted callers were woken first.
    await queued(model, 3)
    assert low[3].done() and low[2].done()
    for task in low[2:]:
        error = task.exception()
        assert isinstance(error, Overloaded) and error.reason == "priority"
    backend.gate.set()
    await asyncio.gather(blocker, high, *low[:2])
    assert sorted(backend.seen) == [0, 10, 10, 20, 21]
    assert model.batcher.stats()["peak_queued_rows"] <= 4
    await model.batcher.close()


async def test_byte_cap_and_per_level_request_cap(clock, backend):
    overload = OverloadPolicy(max_queue_bytes=64)
    policies = {1: QueuePolicy(max_queue_size=1)}
    model = Model(clock, backend, levels=2, default_level=2, policies=policies, overload=overload)
    backend.gate = threading.Event()
    blocker = model.send(0)
    await computing(backend, 1)
    first = model.send(1, level=1, nbytes=16)
    await queued(model, 1)
    with pytest.raises(Overloaded) as info:
        model.send(2, level=1, nbytes=16)
    assert info.value.reason == "queue_full" and "1 requests at priority 1" in info.value.message
    low = [model.send(20 + i, level=2, nbytes=16) for i in range(3)]
    await queued(model, 4)
    with pytest.raises(Overloaded) as info:
        model.send(30, level=2, nbytes=16)
    assert info.value.reason == "queue_full" and "max_queue_bytes" in info.value.message
    backend.gate.set()
    await asyncio.gather(blocker, first, *low)
    assert model.batcher.stats()["peak_queued_bytes"] <= 64
    await model.batcher.close()


async def test_a_request_larger_than_any_cap_is_resource_exhausted(clock, backend):
    budget = InflightBudget(1000)
    model = Model(clock, backend, max_batch=8, budget=budget,
                  overload=OverloadPolicy(max_queue_rows=4, max_queue_bytes=500))
    with pytest.raises(ResourceExhausted, match=r"5 rows exceeds .*max_queue_rows \(4\)"):
        model.send(1, rows=5)
    with pytest.raises(ResourceExhausted, match=r"max_queue_bytes \(500\)"):
        model.send(1, nbytes=501)
    roomy = Model(clock, backend, budget=budget)
    with pytest.raises(ResourceExhausted, match=r"max_inflight_bytes \(1000\)"):
        roomy.send(1, nbytes=1001)
    assert budget.bytes == 0
    await model.batcher.close()
    await roomy.batcher.close()


async def test_the_inflight_budget_is_shared_and_released(clock, backend):
    budget = InflightBudget(100)
    a = Model(clock, backend, budget=budget)
    b = Model(clock, backend, budget=budget)
    backend.gate = threading.Event()
    held = [a.send(1, nbytes=60)]
    with pytest.raises(Overloaded) as info:
        b.send(2, nbytes=60)
    assert info.value.reason == "queue_full" and "max_inflight_bytes" in info.value.message
    held.append(b.send(3, nbytes=40))
    assert budget.bytes == 100 and budget.peak_bytes == 100
    backend.gate.set()
    await asyncio.gather(*held)
    assert budget.bytes == 0
    await a.batcher.close()
    await b.batcher.close()


async def test_shadow_copies_use_at_most_half_the_inflight_bytes(clock, backend):
    budget = InflightBudget(64)
    model = Model(clock, backend, max_batch=4, levels=2, default_level=2, budget=budget)
    backend.gate = threading.Event()
    shadow = model.admission.policy.shadow_level
    waiting = [model.send(1, level=shadow, nbytes=16), model.send(2, level=shadow, nbytes=16)]
    with pytest.raises(Overloaded) as info:
        model.send(3, level=shadow, nbytes=16)  # 48 > 64 / 2
    assert info.value.reason == "queue_full" and "shadow" in info.value.message
    waiting.append(model.send(4, level=1, nbytes=32))  # live traffic still fits: 64
    backend.gate.set()
    await asyncio.gather(*waiting)
    await model.batcher.close()


def test_request_limits_name_the_limit():
    limits = RequestLimits(max_inputs=2, max_outputs=1, max_rank=3)
    check_request_limits(limits, 2, 1, 3)
    for args, needle in (((3, 0, 1), "max_request_inputs"), ((1, 2, 1), "max_request_outputs"),
                         ((1, 1, 4), "max_tensor_rank")):
        with pytest.raises(ResourceExhausted, match=needle):
            check_request_limits(limits, *args)
