"""Exactly one answer per request when things go wrong: expired and cancelled requests are
dropped before compute, a failing batch (an exception, SystemExit, the wrong row count) fails
only its members and the batcher goes on, and a full queue sheds with pushback.

DynamicBatcher driven by a fake backend, on the batcher's own instance threads (no server). The
backend can be held at a ``threading.Event`` gate to let the queue build up; tests wait for the
state they need (``until``) instead of counting loop turns (tests/support/batcher_fakes.py).
"""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from sluice.server.errors import BackendError, DeadlineExceeded, Overloaded
from sluice.server.serving.batcher import DynamicBatcher
from tests.support.batcher_fakes import computing, make, queued, rows
from tests.support.fake_clock import FakeClock
from tests.support.threads import until


async def test_expired_requests_are_dropped_before_compute(backend):
    clock = FakeClock()
    gate = backend.hold()
    batcher = make(backend, clock=clock)
    blocker = asyncio.create_task(batcher.submit({"x": rows(0)}, 1))
    await computing(backend, 1)
    doomed = asyncio.create_task(batcher.submit({"x": rows(7)}, 1, deadline=clock.now + 1.0))
    alive = asyncio.create_task(batcher.submit({"x": rows(8)}, 1, deadline=clock.now + 10.0))
    await queued(batcher, 2)
    clock.now += 2.0
    gate.set()
    await blocker
    with pytest.raises(DeadlineExceeded):
        await doomed
    np.testing.assert_array_equal((await alive)["y"], rows(16))
    seen = np.concatenate(backend.batches)[:, 0]
    assert 7 not in seen  # never computed
    await batcher.close()


async def test_already_expired_request_is_refused_at_the_door(backend):
    clock = FakeClock()
    batcher = make(backend, clock=clock)
    with pytest.raises(DeadlineExceeded):
        await batcher.submit({"x": rows(1)}, 1, deadline=clock.now - 0.001)
    assert backend.batches == []
    await batcher.close()


async def test_cancelled_callers_are_dropped_before_compute(backend):
    gate = backend.hold()
    batcher = make(backend)
    blocker = asyncio.create_task(batcher.submit({"x": rows(0)}, 1))
    await computing(backend, 1)
    leaving = asyncio.create_task(batcher.submit({"x": rows(5)}, 1))
    staying = asyncio.create_task(batcher.submit({"x": rows(6)}, 1))
    await queued(batcher, 2)
    leaving.cancel()
    await until(leaving.done, what="the cancelled caller to leave")
    gate.set()
    await blocker
    np.testing.assert_array_equal((await staying)["y"], rows(12))
    assert leaving.cancelled()
    assert 5 not in np.concatenate(backend.batches)[:, 0]
    await batcher.close()


async def test_a_failing_batch_fails_only_its_members(backend):
    gate = backend.hold()
    backend.fail_if = lambda x: bool((x == 13).any())
    batcher = make(backend, max_batch_size=2)
    blocker = asyncio.create_task(batcher.submit({"x": rows(0)}, 1))
    await computing(backend, 1)
    tasks = [asyncio.create_task(batcher.submit({"x": rows(v)}, 1)) for v in (13, 1, 2, 3)]
    await queued(batcher, 4)
    gate.set()
    await blocker
    results = await asyncio.gather(*tasks, return_exceptions=True)
    assert isinstance(results[0], BackendError) and isinstance(results[1], BackendError)
    assert "poisoned batch" in str(results[0])
    np.testing.assert_array_equal(results[2]["y"], rows(4))
    np.testing.assert_array_equal(results[3]["y"], rows(6))
    # and the batcher keeps serving
    np.testing.assert_array_equal((await batcher.submit({"x": rows(4)}, 1))["y"], rows(8))
    await batcher.close()


async def test_a_backend_raising_system_exit_fails_its_batch_and_the_thread_goes_on():
    calls = []

    def exiting_run(instance, inputs):
        calls.append(inputs["x"].shape[0])
        if len(calls) == 1:
            raise SystemExit(3)
        return {"y": inputs["x"] * 2}

    batcher = DynamicBatcher("m:1", exiting_run, max_batch_size=8)
    batcher.start()
    with pytest.raises(BackendError, match="inference failed"):
        await asyncio.wait_for(batcher.submit({"x": rows(1)}, 1), 10)
    out = await asyncio.wait_for(batcher.submit({"x": rows(2)}, 1), 10)
    np.testing.assert_array_equal(out["y"], rows(4))
    await batcher.close()


async def test_outputs_with_the_wrong_row_count_fail_the_batch():
    def bad_run(instance, inputs):
        return {"y": np.zeros((inputs["x"].shape[0] + 1, 2), np.float32)}

    batcher = DynamicBatcher("m:1", bad_run, max_batch_size=8)
    batcher.start()
    with pytest.raises(BackendError, match="expected 1 rows"):
        await batcher.submit({"x": rows(1)}, 1)
    await batcher.close()


async def test_full_queue_sheds_with_pushback(backend):
    gate = backend.hold()
    batcher = make(backend, max_queue_size=2)
    blocker = asyncio.create_task(batcher.submit({"x": rows(0)}, 1))
    await computing(backend, 1)
    waiting = [asyncio.create_task(batcher.submit({"x": rows(i)}, 1)) for i in (1, 2)]
    await queued(batcher, 2)
    with pytest.raises(Overloaded) as info:
        await batcher.submit({"x": rows(3)}, 1)
    assert info.value.reason == "queue_full" and info.value.retry_after_ms >= 1
    gate.set()
    await asyncio.gather(blocker, *waiting)
    await batcher.close()
