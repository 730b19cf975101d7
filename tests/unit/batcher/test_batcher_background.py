"""The background path: batches made only of the lowest (shadow) level run on a background
thread at the lowest OS priority, one at a time, without holding a model instance.

DynamicBatcher driven by a fake backend, on the batcher's own instance threads (no server). The
backend can be held at a ``threading.Event`` gate to let the queue build up; tests wait for the
state they need (``until``) instead of counting loop turns (tests/support/batcher_fakes.py).
"""

from __future__ import annotations

import asyncio
import os
import threading

import numpy as np
import pytest

from tests.support.batcher_fakes import computing, make, queued, rows
from tests.support.threads import until


class Background:
    """A background path that records its batches and can be held at its own gate."""

    def __init__(self) -> None:
        self.batches: list[int] = []
        self.gate: threading.Event | None = None

    def run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        self.batches.append(inputs["x"].shape[0])
        if self.gate is not None:
            assert self.gate.wait(30), "test gate never opened"
        return {"y": inputs["x"] * 2}


async def test_shadow_only_batches_run_on_the_background_path(backend):
    """With levels 1..2, level 2 is the lowest (the shadow level): batches made only of it go to
    ``background_run``; a batch holding any level-1 request runs as usual."""
    background = Background()
    batcher = make(backend, max_batch_size=8, levels=2, background_run=background.run)

    def submit(tag: float, level: int) -> asyncio.Task:
        return asyncio.create_task(batcher.submit({"x": rows(tag)}, 1, level=level))

    gate = backend.hold()
    first = submit(0, 1)  # holds the instance while the next ones queue
    await computing(backend, 1)
    shadow = [submit(1, 2), submit(2, 2)]
    await queued(batcher, 2)
    gate.set()
    await asyncio.gather(first, *shadow)
    gate = backend.hold()
    blocker = submit(5, 1)
    await computing(backend, 2)
    mixed = [submit(3, 1), submit(4, 2)]
    await queued(batcher, 2)
    gate.set()
    await asyncio.gather(blocker, *mixed)
    assert background.batches == [2]  # the two shadow requests, together; not the mixed batch
    await batcher.close()


async def test_a_background_batch_does_not_hold_an_instance(backend):
    """While a shadow-only batch computes on the background thread, live requests still run on
    the model's only instance; the next shadow batch waits for the background one to finish."""
    background = Background()
    background.gate = threading.Event()
    batcher = make(backend, max_batch_size=1, levels=2, background_run=background.run)
    copy = asyncio.create_task(batcher.submit({"x": rows(1)}, 1, level=2))
    await until(lambda: background.batches == [1], what="the shadow batch to start")
    live = await asyncio.wait_for(batcher.submit({"x": rows(2)}, 1, level=1), 10)
    np.testing.assert_array_equal(live["y"], rows(4))
    second_copy = asyncio.create_task(batcher.submit({"x": rows(3)}, 1, level=2))
    await queued(batcher, 1)  # one background batch at a time: this one waits its turn
    assert background.batches == [1]
    background.gate.set()
    await asyncio.gather(copy, second_copy)
    assert background.batches == [1, 1] and len(backend.batches) == 1
    await batcher.close()


@pytest.mark.skipif(not hasattr(os, "SCHED_IDLE"), reason="Linux scheduling policies")
def test_a_background_thread_runs_at_the_lowest_os_priority():
    from sluice.server.serving.instance_thread import InstanceThread

    async def main():
        thread = InstanceThread("bg", background=True)
        try:
            loop = asyncio.get_running_loop()
            return await thread.run(
                loop, lambda: os.sched_getscheduler(threading.get_native_id())
            )
        finally:
            thread.close(5)

    assert asyncio.run(main()) == os.SCHED_IDLE
