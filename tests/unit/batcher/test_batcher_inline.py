"""When a batch runs on the event loop instead of an instance thread: only for a backend that
allows it, only once one-request batches are measured cheaper than the hand-off, only while
nothing is queued or computing, never for the lowest level (shadow copies), and back to the
threads as soon as the model turns slow. An inline run answers and counts exactly as a batch.

The fake backend advances a fake clock by its "compute time" and records the thread it ran on.
"""

from __future__ import annotations

import asyncio
import math
import threading
import time

import numpy as np
import pytest

from sluice.server.errors import BackendError
from sluice.server.serving.batcher import DynamicBatcher
from sluice.server.serving.inline import INLINE_CAP_S, INLINE_MIN_S, PROBE_FACTOR, InlinePolicy
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


#: Faster than any hand-off is believed to cost, whatever was measured; and slower than any
#: limit, probes included.
FAST_S = INLINE_MIN_S / 2
SLOW_S = 2 * PROBE_FACTOR * INLINE_CAP_S


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
    backend = TimedBackend(clock, cost_s=FAST_S)
    reports: list[BatchReport] = []
    batcher = make(backend, clock, reports)
    loop_thread = threading.get_ident()
    for tag in range(4):
        await ask(batcher, tag)
    # the first had no measurement yet and went to the instance thread; the rest ran here
    assert backend.threads[0] != loop_thread
    assert backend.threads[1:] == [loop_thread] * 3
    assert [(r.rows, r.failed) for r in reports] == [(1, False)] * 4
    assert [r.run_s for r in reports[1:]] == [pytest.approx(FAST_S)] * 3
    assert batcher.rate.known and batcher.stats()["busy_instances"] == 0
    await batcher.close()


async def test_a_model_that_turns_slow_goes_back_to_its_threads(clock):
    """Each slow inline run lifts the estimate by at most x1.2 (INLINE_RISE_FACTOR 2 at
    weight 0.2), so from FAST_S to the limit takes a bounded number of runs."""
    backend = TimedBackend(clock, cost_s=FAST_S)
    batcher = make(backend, clock, [])
    loop_thread = threading.get_ident()
    await ask(batcher, 0)  # measured on the thread
    await ask(batcher, 1)  # inline
    backend.cost_s = SLOW_S
    bound = math.ceil(math.log(INLINE_CAP_S / FAST_S) / math.log(1.2)) + 1
    for tag in range(2, 2 + bound + 2):
        await ask(batcher, tag)
    on_loop = [t == loop_thread for t in backend.threads]
    back = on_loop.index(False, 1)
    assert on_loop[1:back] == [True] * (back - 1) and 3 <= back <= 2 + bound
    assert not any(on_loop[back:])
    assert batcher.stats()["inline_batches"] == back - 1
    await batcher.close()


async def test_one_stalled_inline_run_does_not_send_a_fast_model_to_its_threads(clock):
    """A GIL stall after the model returned (another thread held the GIL for milliseconds)
    reads as one slow run; it moves the estimate by a fraction, not over the limit."""
    backend = TimedBackend(clock, cost_s=FAST_S)
    batcher = make(backend, clock, [])
    loop_thread = threading.get_ident()
    await ask(batcher, 0)  # measured on the thread
    await ask(batcher, 1)
    backend.cost_s = 2e-3  # the stall
    await ask(batcher, 2)
    backend.cost_s = FAST_S
    for tag in range(3, 8):
        await ask(batcher, tag)
    assert [t == loop_thread for t in backend.threads] == [False] + [True] * 7
    assert batcher._pool.inline_policy.single_s < 2 * FAST_S
    assert batcher.stats()["inline_batches"] == 7
    await batcher.close()


async def test_nothing_runs_inline_while_an_instance_computes_or_for_the_lowest_level(clock):
    backend = TimedBackend(clock, cost_s=FAST_S)
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
    backend = TimedBackend(clock, cost_s=FAST_S)
    batcher = make(backend, clock, [], inline=False)
    for tag in range(4):
        await ask(batcher, tag)
    assert threading.get_ident() not in backend.threads
    await batcher.close()


@pytest.mark.parametrize("raised", [RuntimeError, SystemExit])
async def test_a_failing_inline_run_fails_only_its_request(clock, raised):
    backend = TimedBackend(clock, cost_s=FAST_S)
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
    measured there between the limit and PROBE_FACTOR x the limit gets one inline run a second,
    and that run's time, taken where it would run, decides."""
    fast = TimedBackend(clock, cost_s=20e-6)
    batcher = make(fast, clock, [])
    policy = batcher._pool.inline_policy
    policy.fixed_limit_s = 100e-6
    policy.single_s = 150e-6  # as its thread measured it
    assert batcher.inline_estimate_s() == 150e-6  # the probe's turn
    assert batcher.try_inline({"x": rows(1.0)}, 1, clock()) is not None
    assert fast.threads == [threading.get_ident()]
    assert policy.single_s == pytest.approx(20e-6)
    assert batcher.inline_estimate_s() == pytest.approx(20e-6)  # inline from now on

    slow = TimedBackend(clock, cost_s=150e-6)
    batcher = make(slow, clock, [])
    policy = batcher._pool.inline_policy
    policy.fixed_limit_s = 100e-6
    policy.single_s = 150e-6
    assert batcher.inline_estimate_s() is not None
    assert batcher.try_inline({"x": rows(2.0)}, 1, clock()) is not None  # the probe
    assert batcher.inline_estimate_s() is None  # really 150 us: threads, until the next second
    assert batcher.try_inline({"x": rows(3.0)}, 1, clock()) is None
    clock.advance(1.0)
    assert batcher.inline_estimate_s() is not None

    heavy = TimedBackend(clock, cost_s=0.0)
    batcher = make(heavy, clock, [])
    policy = batcher._pool.inline_policy
    policy.fixed_limit_s = 100e-6
    policy.single_s = PROBE_FACTOR * 100e-6  # too slow to be worth a probe
    assert batcher.inline_estimate_s() is None
    await batcher.close()


def test_the_limit_is_the_measured_hand_off_within_its_bounds(clock):
    policy = InlinePolicy(clock)
    default = policy.limit_s
    assert INLINE_MIN_S <= default <= INLINE_CAP_S  # nothing timed yet
    policy.handed_off(200e-6)
    assert policy.limit_s == pytest.approx(200e-6)  # the first sample is taken as it is
    policy.handed_off(100e-6)
    assert policy.limit_s == pytest.approx(200e-6 + 0.2 * (100e-6 - 200e-6))  # then smoothed
    policy.handed_off(-1.0)  # a wild sample: clamped, never below the floor
    assert policy.limit_s == INLINE_MIN_S
    for _ in range(100):
        policy.handed_off(1.0)  # a starved machine: the loop still never blocks past the cap
    assert policy.limit_s == INLINE_CAP_S
    policy.single_s = 300e-6
    policy.handoff_s = 400e-6
    assert policy.allows() == (True, False)  # computes faster than its hand-off
    policy.handoff_s = 250e-6
    assert policy.allows() == (False, False)


async def test_the_hand_off_is_timed_from_a_request_queued_to_an_idle_pool():
    """On the real clock: the first request (nothing measured) goes through a thread; what it
    took beyond its compute becomes the hand-off's cost, which lies between zero and the round
    trip the caller saw. A request queued behind another is not a sample."""
    backend = TimedBackend(FakeClock(), cost_s=0.0)
    batcher = DynamicBatcher("m:1", backend.run, max_batch_size=8, inline=True)
    batcher.start()
    policy = batcher._pool.inline_policy
    policy.fixed_limit_s = 0.0  # keep every request on the threads
    started = time.perf_counter()
    await ask(batcher, 1)
    round_trip = time.perf_counter() - started
    assert policy.handoff_s is not None and 0 < policy.handoff_s < round_trip

    samples: list[float] = []
    policy.handed_off = samples.append  # count the samples from here on
    backend.gate = threading.Event()
    held = asyncio.create_task(ask(batcher, 2))  # queued to an idle pool: a sample
    await until(lambda: len(backend.threads) == 2, what="the second request computing")
    queued = asyncio.create_task(ask(batcher, 3))  # queued behind it: no sample
    await until(lambda: len(batcher.queue) == 1, what="the third request queued")
    backend.gate.set()
    await asyncio.gather(held, queued)
    assert len(samples) == 1 and samples[0] >= 0
    assert batcher._pool.timed_item is None  # no reference kept to an answered request
    await batcher.close()
