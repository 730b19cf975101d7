"""Priority lanes: the highest level is cut into batches first and FIFO within a level, levels
follow Triton's rules, and a lower level is shed at its share of the latency budget, never
making a higher level's batch late.

Each test runs a batcher and its admission on a fake clock, over a fake backend whose batches
take fake time (no server, no sleeps; tests/support/admission_model.py). The backend can be held
at a ``threading.Event`` gate to let the queue build up; tests wait for the state they rely on
(``computing``, ``queued``) instead of counting loop turns.
"""

from __future__ import annotations

import asyncio
import threading

import pytest

from sluice.server.config.model import OverloadPolicy
from sluice.server.errors import Overloaded
from sluice.server.serving.admission import SHADOW_PRIORITY
from tests.support.admission_model import (
    Model,
    computing,
    measure,
    queued,
)

# -- priorities ---------------------------------------------------------------------------------


async def test_higher_priority_is_cut_first_and_fifo_within_a_level(clock, backend):
    model = Model(clock, backend, levels=3, default_level=2)
    backend.gate = threading.Event()
    blocker = model.send(0, level=1)
    await computing(backend, 1)
    order = [(3, 31), (2, 21), (1, 11), (3, 32), (1, 12), (2, 22)]
    tasks = [model.send(tag, level=level) for level, tag in order]
    shadow = model.send(99, level=model.admission.level(SHADOW_PRIORITY))
    await queued(model, 7)
    backend.gate.set()
    await asyncio.gather(blocker, *tasks, shadow)
    assert backend.seen == [0, 11, 12, 21, 22, 31, 32, 99]
    await model.batcher.close()


async def test_a_preferred_cut_puts_the_rest_back_in_priority_order(clock, backend):
    model = Model(clock, backend, max_batch=8, levels=2, default_level=2, preferred=(2,))
    backend.gate = threading.Event()
    blocker = model.send(0)
    await computing(backend, 1)
    tasks = [model.send(21, level=2), model.send(11, level=1), model.send(22, level=2)]
    await queued(model, 3)
    backend.gate.set()
    await asyncio.gather(blocker, *tasks)
    assert backend.batches == [[0], [11, 21], [22]]
    await model.batcher.close()


async def test_priority_levels_follow_tritons_rules(clock, backend):
    model = Model(clock, backend, levels=3, default_level=2)
    level = model.admission.level
    assert [level(p) for p in (1, 2, 3)] == [1, 2, 3]
    assert level(0) == 2 and level(7) == 2  # unset or out of range: the default level
    assert level(SHADOW_PRIORITY) == 4
    plain = Model(clock, backend)
    assert [plain.admission.level(p) for p in (0, 1, 5)] == [1, 1, 1]
    assert plain.admission.level(SHADOW_PRIORITY) == 2
    await model.batcher.close()
    await plain.batcher.close()


async def test_lower_levels_are_shed_at_their_share_of_the_budget(clock, backend):
    overload = OverloadPolicy(latency_budget_ms=100)
    model = Model(clock, backend, levels=2, default_level=2, overload=overload)
    await measure(model, backend)
    backend.gate = threading.Event()
    waiting = [model.send(i, level=2) for i in range(7)]  # ~70 ms of work ahead
    await computing(backend, 1)
    await queued(model, 6)
    # level 2 of 2 may use half the budget: 50 ms without a deadline
    with pytest.raises(Overloaded) as info:
        model.send(20, level=2)
    assert info.value.reason == "priority" and info.value.retry_after_ms >= 1
    # ... and half the time to its deadline with one
    with pytest.raises(Overloaded) as info:
        model.send(21, level=2, deadline=clock.now + 0.150)
    assert info.value.reason == "priority"
    ok = [model.send(22, level=2, deadline=clock.now + 0.5)]
    # level 1 cuts ahead of level 2: nothing is ahead of it, whatever level 2 has queued
    ok.append(model.send(10, level=1))
    ok.append(model.send(11, level=1, deadline=clock.now + 0.030))
    await queued(model, 9)  # all queued before the running batch ends and the next is cut
    backend.gate.set()
    await asyncio.gather(*waiting, *ok)
    assert 20 not in backend.seen and 21 not in backend.seen
    assert backend.seen[1:3] == [10, 11]
    await model.batcher.close()


async def test_lower_levels_do_not_make_a_higher_levels_batch_late(clock, backend):
    model = Model(clock, backend, max_batch=8, levels=2, default_level=2)
    await measure(model, backend)  # 10 ms per row
    backend.gate = threading.Event()
    blocker = model.send(0, level=1)
    await computing(backend, 1)
    low = [model.send(20 + i, rows=2, level=2) for i in range(3)]
    # Starts when the blocker is done (t+10 ms); 1 row + 2 rows of level 2 end at t+40 ms,
    # inside its deadline; 2 more rows would end at t+60 ms, past it.
    high = model.send(10, level=1, deadline=clock.now + 0.045)
    await queued(model, 4)
    backend.gate.set()
    await asyncio.gather(blocker, high, *low)
    assert backend.batches == [[0], [10, 20, 20], [21, 21, 22, 22]]
    await model.batcher.close()


async def test_budget_fractions_are_configurable(clock, backend):
    overload = OverloadPolicy(latency_budget_ms=100, priority_budget_fractions=(1.0, 0.9))
    model = Model(clock, backend, levels=2, default_level=1, overload=overload)
    await measure(model, backend)
    backend.gate = threading.Event()
    waiting = [model.send(i, level=2) for i in range(7)]
    await computing(backend, 1)
    await queued(model, 6)
    waiting.append(model.send(20, level=2))  # 80 ms needed, 90 ms allowed
    backend.gate.set()
    await asyncio.gather(*waiting)
    assert model.policy.level_policies[3].budget_fraction == pytest.approx(0.45)  # shadow
    await model.batcher.close()
