"""Admission by deadline feasibility: a request whose deadline the queue ahead of it makes
unreachable is shed at arrival and never computed, once the batcher has measured its speed;
the estimate grows with the batch sizes measured and is calibrated by how late answers come.

Each test runs a batcher and its admission on a fake clock, over a fake backend whose batches
take fake time (no server, no sleeps; tests/support/admission_model.py). The backend can be held
at a ``threading.Event`` gate to let the queue build up; tests wait for the state they rely on
(``computing``, ``queued``) instead of counting loop turns.
"""

from __future__ import annotations

import asyncio
import threading

import pytest

from sluice.server.errors import DeadlineExceeded, Overloaded
from tests.support.admission_model import (
    Model,
    TimedBackend,
    computing,
    measure,
    one_held_one_queued,
    queued,
)

# -- deadline feasibility -----------------------------------------------------------------------


async def test_everything_is_admitted_until_a_rate_is_measured(clock, backend):
    model = Model(clock, backend)
    backend.gate = threading.Event()
    tasks = [model.send(i, deadline=clock.now + 0.001) for i in range(5)]
    await computing(backend, 1)
    await queued(model, 4)
    assert len(model.batcher.queue) == 4  # one running, four queued: none shed
    backend.gate.set()
    await asyncio.gather(*tasks, return_exceptions=True)
    await model.batcher.close()


async def test_an_infeasible_deadline_is_shed_at_arrival_and_never_computed(clock, backend):
    model = Model(clock, backend)  # 10 ms per row, one row per batch
    await measure(model, backend)
    backend.gate = threading.Event()
    waiting = [model.send(i) for i in range(5)]  # 1 running + 4 queued = about 50 ms of work
    await computing(backend, 1)
    await queued(model, 4)
    with pytest.raises(Overloaded) as info:
        model.send(99, deadline=clock.now + 0.030)
    assert info.value.reason == "deadline"
    assert "cannot finish by its deadline" in info.value.message
    # pushback: the queue ahead drains in ~50 ms, jittered by +-25%
    assert 0.75 * 50 - 1 <= info.value.retry_after_ms <= 1.25 * 50 + 1
    fits = model.send(100, deadline=clock.now + 1.0)
    backend.gate.set()
    await asyncio.gather(*waiting, fits)
    assert 99 not in backend.seen and 100 in backend.seen
    await model.batcher.close()


async def test_an_expired_request_is_refused_before_queueing(clock, backend):
    model = Model(clock, backend)
    with pytest.raises(DeadlineExceeded):
        model.send(1, deadline=clock.now - 0.001)
    assert backend.batches == [] and len(model.batcher.queue) == 0
    await model.batcher.close()


async def test_the_estimate_uses_large_batches_once_they_were_measured(clock):
    backend = TimedBackend(clock, per_batch_s=0.010, per_row_s=0.0001)
    model = Model(clock, backend, max_batch=64)
    await measure(model, backend)  # only batch 1 known: 10.1 ms per row, pessimistic
    assert model.batcher.wait_estimate_s(128, clock.now) == pytest.approx(128 * 0.0101)
    backend.gate = threading.Event()
    blocker = model.send(0)
    await computing(backend, 1)
    big = [model.send(i, rows=8) for i in range(8)]  # one batch of 64 rows
    await queued(model, 8)
    backend.gate.set()
    await asyncio.gather(blocker, *big)
    # a batch of 64 took 16.4 ms: 128 queued rows now drain in two such batches
    assert model.batcher.wait_estimate_s(128, clock.now) == pytest.approx(2 * 0.0164)
    await model.batcher.close()


# -- calibration --------------------------------------------------------------------------------


async def test_estimates_are_calibrated_by_what_was_measured(clock, backend):
    model = Model(clock, backend, levels=2, default_level=1)
    await measure(model, backend)  # 10 ms per batch of one row
    admission = model.admission
    for _ in range(300):  # answers come 10 ms after the estimate (e.g. a busy event loop)
        admission.observe(1, 0.010, 0.020, clock.now)
    assert 0.009 < admission.error[1] <= 0.0105 and admission.error[2] == 0.0
    waiting = await one_held_one_queued(model, backend)
    # raw estimate ~30 ms fits 40 ms x 0.9, the calibrated ~40 ms does not
    with pytest.raises(Overloaded) as info:
        model.send(9, level=1, deadline=clock.now + 0.040)
    assert info.value.reason == "deadline"
    backend.gate.set()
    await asyncio.gather(*waiting)
    for _ in range(600):  # and faster answers bring it back down, never below 0
        admission.observe(1, 0.010, 0.005, clock.now)
    assert admission.error[1] == 0.0
    # with nothing admitted there is nothing to learn from: the error decays by itself, so a
    # pessimistic estimate cannot lock the model out for good
    for _ in range(300):
        admission.observe(1, 0.010, 0.020, clock.now)
    waiting = await one_held_one_queued(model, backend)
    with pytest.raises(Overloaded):
        model.send(8, level=1, deadline=clock.now + 0.040)
    clock.now += 1.0  # four half-lives without an answer
    waiting.append(model.send(9, level=1, deadline=clock.now + 0.040))
    await queued(model, 2)
    backend.gate.set()
    await asyncio.gather(*waiting)
    assert 9 in backend.seen
    await model.batcher.close()


async def test_a_level_with_nothing_learnt_borrows_the_error_of_the_others(clock, backend):
    model = Model(clock, backend, levels=2, default_level=2)
    await measure(model, backend)  # 10 ms per batch of one row
    admission = model.admission
    clock.now += 1.0  # level 1 has been quiet for long, while level 2 learns that answers
    for _ in range(300):  # come 10 ms late (a busy event loop)
        admission.observe(2, 0.010, 0.020, clock.now)
    waiting = await one_held_one_queued(model, backend)
    # level 1's own error is 0; with level 2's ~10 ms, ~30 ms + 10 ms does not fit 40 ms x 0.9
    with pytest.raises(Overloaded) as info:
        model.send(9, level=1, deadline=clock.now + 0.040)
    assert info.value.reason == "deadline" and admission.error[1] == 0.0
    backend.gate.set()
    await asyncio.gather(*waiting)
    await model.batcher.close()
