"""How requests become batches: the first goes alone, the queue grows into the next batch while
one computes, batches are cut by rows (or a preferred size) and split back exactly, shapes are
never mixed, instances run side by side, and the next batch starts without the event loop.

DynamicBatcher driven by a fake backend, on the batcher's own instance threads (no server). The
backend can be held at a ``threading.Event`` gate to let the queue build up; tests wait for the
state they need (``until``) instead of counting loop turns (tests/support/batcher_fakes.py).
"""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from sluice.server.errors import InvalidInput
from tests.support.batcher_fakes import computing, make, queued, rows
from tests.support.threads import block_until


async def test_idle_request_dispatches_at_once(backend):
    batcher = make(backend, max_queue_delay_s=0.0)
    out = await asyncio.wait_for(batcher.submit({"x": rows(3)}, 1), 1)
    np.testing.assert_array_equal(out["y"], rows(6))
    assert len(backend.batches) == 1
    await batcher.close()


async def test_queue_grows_into_next_batch_while_one_computes(backend):
    gate = backend.hold()
    batcher = make(backend)
    first = asyncio.create_task(batcher.submit({"x": rows(0)}, 1))
    await computing(backend, 1)  # the first request went alone, no waiting
    later = [asyncio.create_task(batcher.submit({"x": rows(i)}, 1)) for i in range(1, 6)]
    await queued(batcher, 5)
    gate.set()
    results = await asyncio.gather(first, *later)
    assert [b.shape[0] for b in backend.batches] == [1, 5]
    for i, out in enumerate(results):
        np.testing.assert_array_equal(out["y"], rows(2 * i))
    await batcher.close()


async def test_batches_are_cut_by_rows_and_split_back_exactly(backend):
    gate = backend.hold()
    batcher = make(backend, max_batch_size=8)
    blocker = asyncio.create_task(batcher.submit({"x": rows(-1)}, 1))
    await computing(backend, 1)
    sizes = [3, 3, 3, 1, 5]
    tasks = [
        asyncio.create_task(batcher.submit({"x": rows(i, n)}, n)) for i, n in enumerate(sizes)
    ]
    await queued(batcher, len(sizes))
    gate.set()
    await blocker
    results = await asyncio.gather(*tasks)
    assert [b.shape[0] for b in backend.batches] == [1, 6, 4, 5]
    for i, (n, out) in enumerate(zip(sizes, results, strict=True)):
        np.testing.assert_array_equal(out["y"], rows(2 * i, n))
    await batcher.close()


async def test_the_next_batch_starts_without_the_event_loop(backend):
    """An instance that finishes a batch cuts and computes the next one on its own thread: a
    busy event loop (here: blocked outright) does not stand between two batches."""
    gate = backend.hold()
    batcher = make(backend)
    first = asyncio.create_task(batcher.submit({"x": rows(1)}, 1))
    await computing(backend, 1)
    second = asyncio.create_task(batcher.submit({"x": rows(2)}, 1))
    await queued(batcher, 1)
    gate.set()
    # No await from here on: the loop runs nothing while we wait.
    assert block_until(lambda: len(backend.batches) == 2), "the second batch waited for the loop"
    np.testing.assert_array_equal((await second)["y"], rows(4))
    np.testing.assert_array_equal((await first)["y"], rows(2))
    await batcher.close()


async def test_request_over_max_batch_is_invalid(backend):
    batcher = make(backend, max_batch_size=4)
    with pytest.raises(InvalidInput, match="exceeds max_batch_size 4"):
        await batcher.submit({"x": rows(1, 5)}, 5)
    await batcher.close()


async def test_preferred_size_dispatches_when_reached_and_delay_bounds_the_wait(backend):
    batcher = make(backend, preferred_batch_sizes=(4,), max_queue_delay_s=0.2)
    first = [asyncio.create_task(batcher.submit({"x": rows(i)}, 1)) for i in range(2)]
    await asyncio.sleep(0.02)
    assert backend.batches == []  # waiting for a preferred size
    second = [asyncio.create_task(batcher.submit({"x": rows(i)}, 1)) for i in range(2, 4)]
    await asyncio.gather(*first, *second)
    assert [b.shape[0] for b in backend.batches] == [4]
    loop = asyncio.get_running_loop()
    started = loop.time()
    await batcher.submit({"x": rows(9)}, 1)  # alone: goes after the delay
    assert loop.time() - started >= 0.15
    assert [b.shape[0] for b in backend.batches] == [4, 1]
    await batcher.close()


async def test_unbatched_models_run_each_request_alone(backend):
    gate = backend.hold()
    batcher = make(backend, max_batch_size=0)
    tasks = [asyncio.create_task(batcher.submit({"x": rows(i, 3)}, 1)) for i in range(3)]
    await computing(backend, 1)  # unbatched: one request per run, however many are queued
    await queued(batcher, 2)
    gate.set()
    await asyncio.gather(*tasks)
    assert [b.shape[0] for b in backend.batches] == [3, 3, 3]
    await batcher.close()


async def test_requests_with_different_shapes_are_not_mixed(backend):
    gate = backend.hold()
    batcher = make(backend)
    blocker = asyncio.create_task(batcher.submit({"x": rows(0)}, 1))
    await computing(backend, 1)
    tasks = [
        asyncio.create_task(batcher.submit({"x": rows(1, width=2)}, 1)),
        asyncio.create_task(batcher.submit({"x": rows(2, width=3)}, 1)),
        asyncio.create_task(batcher.submit({"x": rows(3, width=3)}, 1)),
    ]
    await queued(batcher, 3)
    gate.set()
    await asyncio.gather(blocker, *tasks)
    assert [b.shape for b in backend.batches] == [(1, 2), (1, 2), (2, 3)]
    await batcher.close()


async def test_instances_run_batches_in_parallel(backend):
    gate = backend.hold()
    batcher = make(backend, instances=2, max_batch_size=1)
    tasks = [asyncio.create_task(batcher.submit({"x": rows(i)}, 1)) for i in range(3)]
    await computing(backend, 2)  # both instances hold a batch at the gate at once
    await queued(batcher, 1)
    assert batcher.stats()["busy_instances"] == 2
    gate.set()
    await asyncio.gather(*tasks)
    await batcher.close()
