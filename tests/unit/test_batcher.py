"""DynamicBatcher driven by a fake backend, on the batcher's own instance threads (no server).

The backend runs on an instance thread and can be held at a ``threading.Event`` gate to let the
queue build up; tests wait for the state they need (``until``) instead of counting loop turns.
"""

from __future__ import annotations

import asyncio
import os
import threading

import numpy as np
import pytest

from server.errors import BackendError, DeadlineExceeded, InvalidInput, Overloaded
from server.serving.batcher import DynamicBatcher
from server.serving.instances import BatchReport
from tests.support.threads import block_until, until


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class FakeBackend:
    """Records each batch; output = input * 2; can be held to let the queue build up."""

    def __init__(self) -> None:
        self.batches: list[np.ndarray] = []
        self.gate: threading.Event | None = None
        self.fail_if = None

    def run(self, instance: int, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        x = inputs["x"]
        self.batches.append(x.copy())
        gate = self.gate
        if gate is not None:
            assert gate.wait(30), "test gate never opened"
        if self.fail_if is not None and self.fail_if(x):
            raise RuntimeError("poisoned batch")
        return {"y": x * 2}

    def hold(self) -> threading.Event:
        """Hold every batch from now on until the returned gate is set."""
        self.gate = threading.Event()
        return self.gate


def rows(tag: float, n: int = 1, width: int = 2) -> np.ndarray:
    return np.full((n, width), tag, dtype=np.float32)


async def computing(backend: FakeBackend, batches: int) -> None:
    """Wait until the backend has started ``batches`` batches in all."""
    await until(lambda: len(backend.batches) == batches, what=f"{batches} batch(es) started")


async def queued(batcher: DynamicBatcher, requests: int) -> None:
    """Wait until ``requests`` requests are queued."""
    await until(lambda: len(batcher.queue) == requests, what=f"{requests} queued")


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
    from server.serving.worker import InstanceThread

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
