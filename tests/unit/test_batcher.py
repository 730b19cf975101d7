"""DynamicBatcher driven by a fake backend and a fake clock (no server, no threads)."""

from __future__ import annotations

import asyncio
import os
import threading

import numpy as np
import pytest

from server.core.batcher import BatchReport, DynamicBatcher
from server.errors import BackendError, DeadlineExceeded, InvalidInput, Overloaded


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class FakeBackend:
    """Records each batch; output = input * 2; can be held to let the queue build up."""

    def __init__(self) -> None:
        self.batches: list[np.ndarray] = []
        self.gate: asyncio.Event | None = None
        self.fail_if = None

    async def run(self, instance: int, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        x = inputs["x"]
        self.batches.append(x.copy())
        if self.gate is not None:
            await self.gate.wait()
        if self.fail_if is not None and self.fail_if(x):
            raise RuntimeError("poisoned batch")
        return {"y": x * 2}


def rows(tag: float, n: int = 1, width: int = 2) -> np.ndarray:
    return np.full((n, width), tag, dtype=np.float32)


async def settle_loop() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


@pytest.fixture
def backend() -> FakeBackend:
    return FakeBackend()


def make(backend: FakeBackend, **kw) -> DynamicBatcher:
    kw.setdefault("max_batch_size", 8)
    batcher = DynamicBatcher("m:1", backend.run, **kw)
    batcher.start()
    return batcher


async def test_idle_request_dispatches_at_once(backend):
    batcher = make(backend, max_queue_delay_s=0.0)
    out = await asyncio.wait_for(batcher.submit({"x": rows(3)}, 1), 1)
    np.testing.assert_array_equal(out["y"], rows(6))
    assert len(backend.batches) == 1
    await batcher.close()


async def test_queue_grows_into_next_batch_while_one_computes(backend):
    backend.gate = asyncio.Event()
    batcher = make(backend)
    first = asyncio.create_task(batcher.submit({"x": rows(0)}, 1))
    await settle_loop()
    assert len(backend.batches) == 1  # the first request went alone, no waiting
    later = [asyncio.create_task(batcher.submit({"x": rows(i)}, 1)) for i in range(1, 6)]
    await settle_loop()
    backend.gate.set()
    results = await asyncio.gather(first, *later)
    assert [b.shape[0] for b in backend.batches] == [1, 5]
    for i, out in enumerate(results):
        np.testing.assert_array_equal(out["y"], rows(2 * i))
    await batcher.close()


async def test_batches_are_cut_by_rows_and_split_back_exactly(backend):
    backend.gate = asyncio.Event()
    batcher = make(backend, max_batch_size=8)
    blocker = asyncio.create_task(batcher.submit({"x": rows(-1)}, 1))
    await settle_loop()
    sizes = [3, 3, 3, 1, 5]
    tasks = [
        asyncio.create_task(batcher.submit({"x": rows(i, n)}, n)) for i, n in enumerate(sizes)
    ]
    await settle_loop()
    backend.gate.set()
    await blocker
    results = await asyncio.gather(*tasks)
    assert [b.shape[0] for b in backend.batches] == [1, 6, 4, 5]
    for i, (n, out) in enumerate(zip(sizes, results, strict=True)):
        np.testing.assert_array_equal(out["y"], rows(2 * i, n))
    await batcher.close()


async def test_request_over_max_batch_is_invalid(backend):
    batcher = make(backend, max_batch_size=4)
    with pytest.raises(InvalidInput, match="exceeds max_batch_size 4"):
        await batcher.submit({"x": rows(1, 5)}, 5)
    await batcher.close()


async def test_expired_requests_are_dropped_before_compute(backend):
    clock = FakeClock()
    backend.gate = asyncio.Event()
    batcher = make(backend, clock=clock)
    blocker = asyncio.create_task(batcher.submit({"x": rows(0)}, 1))
    await settle_loop()
    doomed = asyncio.create_task(batcher.submit({"x": rows(7)}, 1, deadline=clock.now + 1.0))
    alive = asyncio.create_task(batcher.submit({"x": rows(8)}, 1, deadline=clock.now + 10.0))
    await settle_loop()
    clock.now += 2.0
    backend.gate.set()
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
    backend.gate = asyncio.Event()
    batcher = make(backend)
    blocker = asyncio.create_task(batcher.submit({"x": rows(0)}, 1))
    await settle_loop()
    leaving = asyncio.create_task(batcher.submit({"x": rows(5)}, 1))
    staying = asyncio.create_task(batcher.submit({"x": rows(6)}, 1))
    await settle_loop()
    leaving.cancel()
    await settle_loop()
    backend.gate.set()
    await blocker
    np.testing.assert_array_equal((await staying)["y"], rows(12))
    assert leaving.cancelled()
    assert 5 not in np.concatenate(backend.batches)[:, 0]
    await batcher.close()


async def test_a_failing_batch_fails_only_its_members(backend):
    backend.gate = asyncio.Event()
    backend.fail_if = lambda x: bool((x == 13).any())
    batcher = make(backend, max_batch_size=2)
    blocker = asyncio.create_task(batcher.submit({"x": rows(0)}, 1))
    await settle_loop()
    tasks = [asyncio.create_task(batcher.submit({"x": rows(v)}, 1)) for v in (13, 1, 2, 3)]
    await settle_loop()
    backend.gate.set()
    await blocker
    results = await asyncio.gather(*tasks, return_exceptions=True)
    assert isinstance(results[0], BackendError) and isinstance(results[1], BackendError)
    assert "poisoned batch" in str(results[0])
    np.testing.assert_array_equal(results[2]["y"], rows(4))
    np.testing.assert_array_equal(results[3]["y"], rows(6))
    # and the batcher keeps serving
    np.testing.assert_array_equal((await batcher.submit({"x": rows(4)}, 1))["y"], rows(8))
    await batcher.close()


async def test_outputs_with_the_wrong_row_count_fail_the_batch():
    async def bad_run(instance, inputs):
        return {"y": np.zeros((inputs["x"].shape[0] + 1, 2), np.float32)}

    batcher = DynamicBatcher("m:1", bad_run, max_batch_size=8)
    batcher.start()
    with pytest.raises(BackendError, match="expected 1 rows"):
        await batcher.submit({"x": rows(1)}, 1)
    await batcher.close()


async def test_full_queue_sheds_with_pushback(backend):
    backend.gate = asyncio.Event()
    batcher = make(backend, max_queue_size=2)
    blocker = asyncio.create_task(batcher.submit({"x": rows(0)}, 1))
    await settle_loop()
    queued = [asyncio.create_task(batcher.submit({"x": rows(i)}, 1)) for i in (1, 2)]
    await settle_loop()
    with pytest.raises(Overloaded) as info:
        await batcher.submit({"x": rows(3)}, 1)
    assert info.value.reason == "queue_full" and info.value.retry_after_ms >= 1
    backend.gate.set()
    await asyncio.gather(blocker, *queued)
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
    backend.gate = asyncio.Event()
    batcher = make(backend, max_batch_size=0)
    tasks = [asyncio.create_task(batcher.submit({"x": rows(i, 3)}, 1)) for i in range(3)]
    await settle_loop()
    backend.gate.set()
    await asyncio.gather(*tasks)
    assert [b.shape[0] for b in backend.batches] == [3, 3, 3]
    await batcher.close()


async def test_requests_with_different_shapes_are_not_mixed(backend):
    backend.gate = asyncio.Event()
    batcher = make(backend)
    blocker = asyncio.create_task(batcher.submit({"x": rows(0)}, 1))
    await settle_loop()
    tasks = [
        asyncio.create_task(batcher.submit({"x": rows(1, width=2)}, 1)),
        asyncio.create_task(batcher.submit({"x": rows(2, width=3)}, 1)),
        asyncio.create_task(batcher.submit({"x": rows(3, width=3)}, 1)),
    ]
    await settle_loop()
    backend.gate.set()
    await asyncio.gather(blocker, *tasks)
    assert [b.shape for b in backend.batches] == [(1, 2), (1, 2), (2, 3)]
    await batcher.close()


async def test_instances_run_batches_in_parallel(backend):
    backend.gate = asyncio.Event()
    batcher = make(backend, instances=2, max_batch_size=1)
    tasks = [asyncio.create_task(batcher.submit({"x": rows(i)}, 1)) for i in range(3)]
    await settle_loop()
    assert len(backend.batches) == 2
    assert batcher.stats()["busy_instances"] == 2
    backend.gate.set()
    await asyncio.gather(*tasks)
    await batcher.close()


async def test_close_drains_the_queue_then_refuses(backend):
    backend.gate = asyncio.Event()
    batcher = make(backend)
    tasks = [asyncio.create_task(batcher.submit({"x": rows(i)}, 1)) for i in range(4)]
    await settle_loop()
    closing = asyncio.create_task(batcher.close())
    await settle_loop()
    with pytest.raises(Overloaded) as info:
        await batcher.submit({"x": rows(9)}, 1)
    assert info.value.reason == "draining"
    backend.gate.set()
    await closing
    assert [float(t.result()["y"][0, 0]) for t in tasks] == [0, 2, 4, 6]


async def test_observer_sees_every_batch(backend):
    reports: list[BatchReport] = []
    batcher = make(backend, observer=reports.append)
    await batcher.submit({"x": rows(1, 3)}, 3)
    await batcher.close()
    assert len(reports) == 1 and reports[0].rows == 3 and not reports[0].failed
    assert reports[0].run_s >= 0 and len(reports[0].queue_s) == 1


async def test_shadow_only_batches_run_on_the_background_path(backend):
    """With levels 1..2, level 2 is the lowest (the shadow level): batches made only of it go to
    ``background_run``; a batch holding any level-1 request runs as usual."""
    background: list[int] = []

    async def run_background(instance, inputs):
        background.append(inputs["x"].shape[0])
        return {"y": inputs["x"] * 2}

    batcher = make(backend, max_batch_size=8, levels=2, background_run=run_background)
    backend.gate = asyncio.Event()

    def submit(tag: float, level: int) -> asyncio.Task:
        return asyncio.create_task(batcher.submit({"x": rows(tag)}, 1, level=level))

    first = submit(0, 1)  # holds the instance while the next ones queue
    await settle_loop()
    shadow = [submit(1, 2), submit(2, 2)]
    await settle_loop()
    backend.gate.set()
    await asyncio.gather(first, *shadow)
    backend.gate = asyncio.Event()
    blocker = submit(5, 1)
    await settle_loop()
    mixed = [submit(3, 1), submit(4, 2)]
    await settle_loop()
    backend.gate.set()
    await asyncio.gather(blocker, *mixed)
    assert background == [2]  # the two shadow requests, together; the mixed batch did not go
    await batcher.close()


@pytest.mark.skipif(not hasattr(os, "SCHED_IDLE"), reason="Linux scheduling policies")
def test_a_background_thread_runs_at_the_lowest_os_priority():
    from server.core.worker import InstanceThread

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
