"""The batcher's lifecycle and what it reports: close drains the queue then refuses, abort
fails the queued and answers the computing, the observer sees every batch, and ``idle`` is set
only when nothing is queued or computing.

DynamicBatcher driven by a fake backend, on the batcher's own instance threads (no server). The
backend can be held at a ``threading.Event`` gate to let the queue build up; tests wait for the
state they need (``until``) instead of counting loop turns (tests/support/batcher_fakes.py).
"""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from sluice.server.errors import Overloaded
from sluice.server.serving.instances import BatchReport
from tests.support.batcher_fakes import computing, make, queued, rows
from tests.support.threads import until


async def test_close_drains_the_queue_then_refuses(backend):
    gate = backend.hold()
    batcher = make(backend)
    tasks = [asyncio.create_task(batcher.submit({"x": rows(0)}, 1))]
    await computing(backend, 1)
    tasks += [asyncio.create_task(batcher.submit({"x": rows(i)}, 1)) for i in range(1, 4)]
    await queued(batcher, 3)
    closing = asyncio.create_task(batcher.close())
    await until(lambda: batcher.closing, what="close() to begin")
    with pytest.raises(Overloaded) as info:
        await batcher.submit({"x": rows(9)}, 1)
    assert info.value.reason == "draining"
    gate.set()
    await closing
    assert [float(t.result()["y"][0, 0]) for t in tasks] == [0, 2, 4, 6]


async def test_abort_fails_the_queued_and_answers_the_computing(backend):
    gate = backend.hold()
    batcher = make(backend)
    computing_now = asyncio.create_task(batcher.submit({"x": rows(1)}, 1))
    await computing(backend, 1)
    waiting = [asyncio.create_task(batcher.submit({"x": rows(i)}, 1)) for i in (2, 3)]
    await queued(batcher, 2)
    batcher.abort("server stopping")
    for task in waiting:
        with pytest.raises(Overloaded, match="server stopping"):
            await task
    gate.set()
    np.testing.assert_array_equal((await computing_now)["y"], rows(2))
    await batcher.close()
    assert len(backend.batches) == 1


async def test_observer_sees_every_batch(backend):
    reports: list[BatchReport] = []
    batcher = make(backend, observer=reports.append)
    await batcher.submit({"x": rows(1, 3)}, 3)
    await batcher.close()
    assert len(reports) == 1 and reports[0].rows == 3 and not reports[0].failed
    assert reports[0].run_s >= 0 and len(reports[0].queue_s) == 1


async def test_idle_is_set_only_when_nothing_is_queued_or_computing(backend):
    gate = backend.hold()
    batcher = make(backend)
    assert batcher.idle.is_set()
    first = asyncio.create_task(batcher.submit({"x": rows(1)}, 1))
    await computing(backend, 1)
    assert not batcher.idle.is_set()
    gate.set()
    await first
    await until(batcher.idle.is_set, what="idle after the last answer")
    await batcher.close()
