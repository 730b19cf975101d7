"""When a batch runs on the event loop instead of an instance thread: only for a backend that
allows it, only once one-request batches are measured cheaper than the hand-off, only while
nothing is queued or computing, never for the lowest level (shadow copies), and back to the
threads as soon as the model turns slow. An inline run answers and counts exactly as a batch.

The fake backend advances a fake clock by its "compute time" and records the thread it ran on.
"""

from __future__ import annotations

import asyncio
import threading

import numpy as np
import pytest

from sluice.server.errors import BackendError
from sluice.server.serving import inline
from sluice.server.serving.batcher import DynamicBatcher
from sluice.server.serving.inline import INLINE_MAX_S
from sluice.server.serving.instances import BatchReport
from tests.support.batcher_fakes import rows
from tests.support.fake_clock import FakeClock
from tests.support.threads import until


class TimedBackend:
    """output = input * 2; each run advances ``clock`` by ``cost_s`` and records its thread."""

    def __init__(self, clock: FakeClock, cost_s: float) -> None:
        self.clock = clock
        self.cost_s = cost_s
        self.threads: list[int] = []
        self.gate: threading.Event | None = None
        self.fail: type[BaseException] | None = None

    def run(self, instance: int, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        self.threads.append(threading.get_ident())
        if self.gate is not None:
            assert self.gate.wait(30), "test gate never opened"
        self.clock.advance(self.cost_s)
        if self.fail is not None:
            raise self.fail("boom")
        return {"y": inputs["x"] * 2}


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def make(backend: TimedBackend, clock: FakeClock, reports: list[BatchReport], **kw):
    kw.setdefault("inline", True)
    batcher = DynamicBatcher("m:1", backend.run, max_batch_size=8, clock=clock,
                             observer=reports.append, **kw)
    batcher.start()
    return batcher


async def ask(batcher: DynamicBatcher, tag: float, **kw) -> None:
    out = await asyncio.wait_for(batcher.submit({"x": rows(tag)}, 1, **kw), 10)
    np.testing.assert_array_equal(out["y"], rows(2 * tag))


async def test_a_fast_model_runs_inline_once_measured_and_counts_as_a_batch(clock):
    backend = TimedBackend(clock, cost_s=INLINE_MAX_S / 6)
    reports: list[BatchReport] = []
    batcher = make(backend, clock, reports)
    loop_thread = threading.get_ident()
    for tag in range(4):
        await ask(batcher, tag)
    # the first had no measurement yet and went to the instance thread; the rest ran here
    assert backend.threads[0] != loop_thread
    assert backend.threads[1:] == [loop_thread] * 3
    assert [(r.rows, r.failed) for r in reports] == [(1, False)] * 4
    assert [r.run_s for r in reports[1:]] == [pytest.approx(INLINE_MAX_S / 6)] * 3
    assert batcher.rate.known and batcher.stats()["busy_instances"] == 0
    await batcher.close()


async def test_a_model_that_turns_slow_goes_back_to_its_threads(clock):
    backend = TimedBackend(clock, cost_s=INLINE_MAX_S / 6)
    batcher = make(backend, clock, [])
    loop_thread = threading.get_ident()
    await ask(batcher, 0)  # measured on the thread
    await ask(batcher, 1)  # inline
    backend.cost_s = 20 * INLINE_MAX_S
    await ask(batcher, 2)  # still inline: it was measured fast; this run measures it slow
    await ask(batcher, 3)
    await ask(batcher, 4)
    assert [t == loop_thread for t in backend.threads] == [False, True, True, False, False]
    await batcher.close()


async def test_nothing_runs_inline_while_an_instance_computes_or_for_the_lowest_level(clock):
    backend = TimedBackend(clock, cost_s=INLINE_MAX_S / 6)
    batcher = make(backend, clock, [], levels=2)
    loop_thread = threading.get_ident()
    await ask(batcher, 0)
    await ask(batcher, 1)  # measured fast: inline from here on
    backend.gate = threading.Event()
    low = asyncio.create_task(ask(batcher, 2, level=2))  # the lowest level: to a thread, held
    await until(lambda: len(backend.threads) == 3, what="the level-2 request computing")
    high = asyncio.create_task(ask(batcher, 3, level=1))  # an instance computes: queued
    await until(lambda: len(batcher.queue) == 1, what="the level-1 request queued")
    backend.gate.set()
    await asyncio.gather(low, high)
    assert [t == loop_thread for t in backend.threads] == [False, True, False, False]
    await batcher.close()


async def test_without_permission_the_event_loop_never_computes(clock):
    backend = TimedBackend(clock, cost_s=INLINE_MAX_S / 6)
    batcher = make(backend, clock, [], inline=False)
    for tag in range(4):
        await ask(batcher, tag)
    assert threading.get_ident() not in backend.threads
    await batcher.close()


@pytest.mark.parametrize("raised", [RuntimeError, SystemExit])
async def test_a_failing_inline_run_fails_only_its_request(clock, raised):
    backend = TimedBackend(clock, cost_s=INLINE_MAX_S / 6)
    reports: list[BatchReport] = []
    batcher = make(backend, clock, reports)
    await ask(batcher, 0)
    backend.fail = raised  # even SystemExit from a model's code fails only its request
    with pytest.raises(BackendError, match="model 'm:1': inference failed: boom"):
        await ask(batcher, 1)
    assert backend.threads[1] == threading.get_ident()  # it was the inline run that failed
    backend.fail = None
    await ask(batcher, 2)
    assert [r.failed for r in reports] == [False, True, False]
    await batcher.close()


async def test_a_model_its_threads_measure_slow_is_probed_inline(clock):
    """A time taken on an instance thread includes its wake-up and the wait for the GIL; a model
    measured there between INLINE_MAX_S and INLINE_PROBE_MAX_S gets one inline run a second, and
    that run's time, taken where it would run, decides."""
    fast = TimedBackend(clock, cost_s=20e-6)
    batcher = make(fast, clock, [])
    batcher._pool.inline_policy.single_s = 150e-6  # as its thread measured it
    assert batcher.inline_estimate_s() == 150e-6  # the probe's turn
    assert batcher.try_inline({"x": rows(1.0)}, 1, clock()) is not None
    assert fast.threads == [threading.get_ident()]
    assert batcher._pool.inline_policy.single_s == pytest.approx(20e-6)
    assert batcher.inline_estimate_s() == pytest.approx(20e-6)  # inline from now on

    slow = TimedBackend(clock, cost_s=150e-6)
    batcher = make(slow, clock, [])
    batcher._pool.inline_policy.single_s = 150e-6
    assert batcher.inline_estimate_s() is not None
    assert batcher.try_inline({"x": rows(2.0)}, 1, clock()) is not None  # the probe
    assert batcher.inline_estimate_s() is None  # really 150 us: threads, until the next second
    assert batcher.try_inline({"x": rows(3.0)}, 1, clock()) is None
    clock.advance(1.0)
    assert batcher.inline_estimate_s() is not None

    heavy = TimedBackend(clock, cost_s=0.0)
    batcher = make(heavy, clock, [])
    batcher._pool.inline_policy.single_s = inline.INLINE_PROBE_MAX_S  # too slow to be worth a probe
    assert batcher.inline_estimate_s() is None
    await batcher.close()
