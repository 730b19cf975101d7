"""Time spent queued: queue timeouts (reject drops a timed-out request before compute, delay
moves it behind its level) and CoDel, which sheds a standing queue from the head of the lowest
level once the queue delay stayed above target for a whole interval.

Each test runs a batcher and its admission on a fake clock, over a fake backend whose batches
take fake time (no server, no sleeps; tests/support/admission_model.py). The backend can be held
at a ``threading.Event`` gate to let the queue build up; tests wait for the state they rely on
(``computing``, ``queued``) instead of counting loop turns.
"""

from __future__ import annotations

import asyncio
import threading

import pytest

from sluice.server.config.model import OverloadPolicy, QueuePolicy, TimeoutAction
from sluice.server.errors import DeadlineExceeded, InvalidInput, Overloaded
from sluice.server.serving.queues import CoDel
from tests.support.admission_model import (
    Model,
    TimedBackend,
    computing,
    queued,
)

# -- queue timeouts -----------------------------------------------------------------------------


async def test_queue_timeouts_reject_or_delay(clock, backend):
    reject = Model(clock, backend, default_policy=QueuePolicy(default_timeout_us=50_000))
    adm = reject.admission
    assert adm.deadlines(1, None, None, clock.now) == (clock.now + 0.05, None)
    assert adm.deadlines(1, clock.now + 0.01, None, clock.now) == (clock.now + 0.01, None)
    # the request's timeout may only shorten the default
    assert adm.deadlines(1, None, 20_000, clock.now) == (clock.now + 0.02, None)
    assert adm.deadlines(1, None, 90_000, clock.now) == (clock.now + 0.05, None)
    with pytest.raises(InvalidInput, match="'timeout'"):
        adm.deadlines(1, None, "soon", clock.now)
    fixed = Model(clock, backend, default_policy=QueuePolicy(
        default_timeout_us=50_000, allow_timeout_override=False))
    assert fixed.admission.deadlines(1, None, 20_000, clock.now) == (clock.now + 0.05, None)
    delay = Model(clock, backend, default_policy=QueuePolicy(
        default_timeout_us=50_000, timeout_action=TimeoutAction.DELAY))
    assert delay.admission.deadlines(1, clock.now + 1, None, clock.now) == (
        clock.now + 1, clock.now + 0.05)
    for model in (reject, fixed, delay):
        await model.batcher.close()


async def test_delay_moves_timed_out_requests_behind_their_level(clock, backend):
    model = Model(clock, backend, levels=2, default_level=1)
    backend.gate = threading.Event()
    blocker = model.send(0)
    await computing(backend, 1)
    late = model.send(1, expire=clock.now + 1.0)
    rest = [model.send(2), model.send(3), model.send(20, level=2)]
    await queued(model, 4)
    clock.now += 2.0  # request 1's queue timeout passes while it waits
    backend.gate.set()
    await asyncio.gather(blocker, late, *rest)
    # computed after the rest of level 1, before level 2; never failed
    assert backend.seen == [0, 2, 3, 1, 20]
    await model.batcher.close()


async def test_reject_drops_timed_out_requests_before_compute(clock, backend):
    model = Model(clock, backend)
    backend.gate = threading.Event()
    blocker = model.send(0)
    await computing(backend, 1)
    doomed = model.send(1, deadline=clock.now + 1.0)
    alive = model.send(2)
    await queued(model, 2)
    clock.now += 2.0
    backend.gate.set()
    await asyncio.gather(blocker, alive)
    with pytest.raises(DeadlineExceeded):
        await doomed
    assert backend.seen == [0, 2]
    await model.batcher.close()


# -- CoDel --------------------------------------------------------------------------------------


def test_codel_sheds_only_after_a_whole_interval_above_target():
    codel = CoDel(target_s=0.005, interval_s=0.100)
    t = 0.0
    assert not codel.should_drop(t, 0.050, backlog=True)  # first time above: start the clock
    assert not codel.should_drop(t + 0.050, 0.050, backlog=True)
    assert not codel.should_drop(t + 0.060, 0.001, backlog=True)  # dipped below: reset
    assert not codel.should_drop(t + 0.070, 0.050, backlog=True)
    assert not codel.should_drop(t + 0.169, 0.050, backlog=True)
    assert codel.should_drop(t + 0.171, 0.050, backlog=True)  # a whole interval above
    # then faster and faster: interval / sqrt(count)
    assert not codel.should_drop(t + 0.200, 0.050, backlog=True)
    assert codel.should_drop(t + 0.272, 0.050, backlog=True)
    assert codel.should_drop(t + 0.272 + 0.0708, 0.050, backlog=True)
    # an empty queue behind the batch is no standing queue
    assert not codel.should_drop(t + 0.5, 0.050, backlog=False)
    assert not codel.should_drop(t + 0.6, 0.050, backlog=True)


async def test_a_standing_queue_is_shed_from_the_lowest_level_head(clock):
    backend = TimedBackend(clock, per_row_s=0.020)
    overload = OverloadPolicy(codel_target_ms=5, codel_interval_ms=100)
    model = Model(clock, backend, levels=2, default_level=1, overload=overload)
    outcomes: list[str] = []

    async def call(tag: float, level: int) -> None:
        try:
            await model.send(tag, level=level)
            outcomes.append("ok")
        except Overloaded as exc:
            outcomes.append(f"{exc.reason}:{level}:{tag}")

    # keep three requests at each level queued: every request waits > 5 ms for 100+ ms
    backend.gate = threading.Event()
    tasks = []
    for i in range(10):
        tasks += [asyncio.create_task(call(10 + i, 1)), asyncio.create_task(call(20 + i, 2))]
    # all arrive at once: the first batch is held until the other 19 are queued, so the
    # instance thread cannot advance the fake clock between their arrivals
    await computing(backend, 1)
    await queued(model, 19)
    backend.gate.set()
    await asyncio.gather(*tasks)
    shed = [o for o in outcomes if o != "ok"]
    assert shed and all(o.startswith("standing_queue:2:") for o in shed)
    # victims come from the head of level 2: the oldest low-priority requests first
    tags = [float(o.rsplit(":", 1)[1]) for o in shed]
    assert tags == sorted(tags) and tags[0] == 20
    assert len(backend.seen) + len(shed) == 20
    await model.batcher.close()
