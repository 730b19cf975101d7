"""Admission, priority lanes, CoDel and the service-rate meter, on a fake clock and a fake
backend whose batches take fake time (no server, no sleeps).

The batcher's instance threads run the fake backend, which can be held at a
``threading.Event`` gate to let the queue build up; tests wait for the state they rely on
(``until``: a batch computing, so many requests queued) instead of counting loop turns.
"""

from __future__ import annotations

import asyncio
import random
import threading

import numpy as np
import pytest

from server.config.model import (
    DynamicBatching,
    ModelConfig,
    OverloadPolicy,
    QueuePolicy,
    RequestLimits,
    TimeoutAction,
)
from server.errors import (
    DeadlineExceeded,
    InvalidInput,
    Overloaded,
    ResourceExhausted,
)
from server.serving.admission import (
    SHADOW_PRIORITY,
    Admission,
    AdmissionPolicy,
    InflightBudget,
    check_request_limits,
)
from server.serving.batcher import DynamicBatcher
from server.serving.queues import CoDel, PriorityQueue, QueueItem, ServiceRate
from tests.support.threads import until


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class TimedBackend:
    """Output = input * 2; each batch costs ``per_batch_s + per_row_s * rows`` of fake time
    (added to the clock on the instance thread) and can be held at a gate to let the queue
    build up."""

    def __init__(self, clock: FakeClock, per_batch_s: float = 0.0, per_row_s: float = 0.01):
        self.clock = clock
        self.per_batch_s = per_batch_s
        self.per_row_s = per_row_s
        self.batches: list[list[float]] = []
        self.gate: threading.Event | None = None

    def run(self, instance: int, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        x = inputs["x"]
        self.batches.append([float(v) for v in x[:, 0]])
        gate = self.gate
        if gate is not None:
            assert gate.wait(30), "test gate never opened"
        self.clock.now += self.per_batch_s + self.per_row_s * x.shape[0]
        return {"y": x * 2}

    @property
    def seen(self) -> list[float]:
        return [tag for batch in self.batches for tag in batch]


class Model:
    """A batcher and its admission wired as ModelVersion wires them."""

    def __init__(
        self,
        clock: FakeClock,
        backend: TimedBackend,
        *,
        max_batch: int = 1,
        levels: int = 0,
        default_level: int = 0,
        policies: dict[int, QueuePolicy] | None = None,
        default_policy: QueuePolicy | None = None,
        overload: OverloadPolicy | None = None,
        default_queue: int = 64,
        budget: InflightBudget | None = None,
        preferred: tuple[int, ...] = (),
    ) -> None:
        config = ModelConfig(
            name="m",
            max_batch_size=max_batch,
            dynamic_batching=DynamicBatching(
                priority_levels=levels,
                default_priority_level=default_level,
                default_queue_policy=default_policy or QueuePolicy(),
                priority_queue_policy=policies or {},
            ),
            overload=overload or OverloadPolicy(),
        )
        self.clock = clock
        self.policy = AdmissionPolicy.from_config(config, default_queue)
        self.batcher = DynamicBatcher(
            "m:1", backend.run, max_batch_size=max_batch, max_queue_size=self.policy.queue_bound,
            levels=self.policy.shadow_level, codel=self.policy.codel(), clock=clock,
            preferred_batch_sizes=preferred,
        )
        self.batcher.start()
        self.admission = Admission(
            "m:1", self.policy, self.batcher, budget=budget, rng=random.Random(7)
        )

    def send(
        self, tag: float, *, rows: int = 1, level: int = 1, deadline: float | None = None,
        expire: float | None = None, nbytes: int | None = None,
    ) -> asyncio.Task:
        """Admit now (raising at once if shed); the task queues the request when it first runs
        (ModelVersion queues at once: wait for the queue count before relying on it)."""
        x = np.full((rows, 2), tag, np.float32)
        size = x.nbytes if nbytes is None else nbytes
        self.admission.admit(rows, size, level, deadline, self.clock())

        async def wait():
            try:
                return await self.batcher.submit(
                    {"x": x}, rows, deadline, level=level, nbytes=size, expire=expire
                )
            finally:
                self.admission.release(size)

        return asyncio.create_task(wait())


async def computing(backend: TimedBackend, batches: int) -> None:
    """Wait until the backend has started ``batches`` batches in all (the last one is held at
    the gate, if there is one)."""
    await until(lambda: len(backend.batches) == batches, what=f"{batches} batch(es) started")


async def queued(model: Model, requests: int) -> None:
    """Wait until ``requests`` requests are queued."""
    await until(lambda: len(model.batcher.queue) == requests, what=f"{requests} queued")


async def one_held_one_queued(model: Model, backend: TimedBackend) -> list[asyncio.Task]:
    """Requests 0 and 1 at level 1: the first computing, held at a new gate; the second queued
    behind it. Returns their tasks (open ``backend.gate`` to finish them)."""
    started = len(backend.batches)
    backend.gate = threading.Event()
    waiting = [model.send(i, level=1) for i in range(2)]
    await computing(backend, started + 1)
    await queued(model, 1)
    return waiting


async def measure(model: Model, backend: TimedBackend, times: int = 1) -> None:
    """Run requests alone so the batcher has measured its speed."""
    for _ in range(times):
        await model.send(-1)
    backend.batches.clear()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def backend(clock: FakeClock) -> TimedBackend:
    return TimedBackend(clock)


# -- deadline feasibility ----------------------------------------------------------------------


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


# -- priorities ---------------------------------------------------------------------------------


async def test_higher_priority_is_cut_first_and_fifo_within_a_level(clock, backend):
    model = Model(clock, backend, levels=3, default_level=2)
    backend.gate = threading.Event()
    blocker = model.send(0, level=1)
    await computing(backend, 1)
    order = [(3, 31), (2, 21), (1, 11), (3, 32), (1, 12), (2, 22)]
    tasks = [model.send(tag, level=level) for level, tag in order]
    shadow = model.send(99, level=model.admission.level(SHADOW_PRIORITY))
    await queued(model, 7)
    backend.gate.set()
    await asyncio.gather(blocker, *tasks, shadow)
    assert backend.seen == [0, 11, 12, 21, 22, 31, 32, 99]
    await model.batcher.close()


async def test_a_preferred_cut_puts_the_rest_back_in_priority_order(clock, backend):
    model = Model(clock, backend, max_batch=8, levels=2, default_level=2, preferred=(2,))
    backend.gate = threading.Event()
    blocker = model.send(0)
    await computing(backend, 1)
    tasks = [model.send(21, level=2), model.send(11, level=1), model.send(22, level=2)]
    await queued(model, 3)
    backend.gate.set()
    await asyncio.gather(blocker, *tasks)
    assert backend.batches == [[0], [11, 21], [22]]
    await model.batcher.close()


async def test_priority_levels_follow_tritons_rules(clock, backend):
    model = Model(clock, backend, levels=3, default_level=2)
    level = model.admission.level
    assert [level(p) for p in (1, 2, 3)] == [1, 2, 3]
    assert level(0) == 2 and level(7) == 2  # unset or out of range: the default level
    assert level(SHADOW_PRIORITY) == 4
    plain = Model(clock, backend)
    assert [plain.admission.level(p) for p in (0, 1, 5)] == [1, 1, 1]
    assert plain.admission.level(SHADOW_PRIORITY) == 2
    await model.batcher.close()
    await plain.batcher.close()


async def test_lower_levels_are_shed_at_their_share_of_the_budget(clock, backend):
    overload = OverloadPolicy(latency_budget_ms=100)
    model = Model(clock, backend, levels=2, default_level=2, overload=overload)
    await measure(model, backend)
    backend.gate = threading.Event()
    waiting = [model.send(i, level=2) for i in range(7)]  # ~70 ms of work ahead
    await computing(backend, 1)
    await queued(model, 6)
    # level 2 of 2 may use half the budget: 50 ms without a deadline
    with pytest.raises(Overloaded) as info:
        model.send(20, level=2)
    assert info.value.reason == "priority" and info.value.retry_after_ms >= 1
    # ... and half the time to its deadline with one
    with pytest.raises(Overloaded) as info:
        model.send(21, level=2, deadline=clock.now + 0.150)
    assert info.value.reason == "priority"
    ok = [model.send(22, level=2, deadline=clock.now + 0.5)]
    # level 1 cuts ahead of level 2: nothing is ahead of it, whatever level 2 has queued
    ok.append(model.send(10, level=1))
    ok.append(model.send(11, level=1, deadline=clock.now + 0.030))
    await queued(model, 9)  # all queued before the running batch ends and the next is cut
    backend.gate.set()
    await asyncio.gather(*waiting, *ok)
    assert 20 not in backend.seen and 21 not in backend.seen
    assert backend.seen[1:3] == [10, 11]
    await model.batcher.close()


async def test_lower_levels_do_not_make_a_higher_levels_batch_late(clock, backend):
    model = Model(clock, backend, max_batch=8, levels=2, default_level=2)
    await measure(model, backend)  # 10 ms per row
    backend.gate = threading.Event()
    blocker = model.send(0, level=1)
    await computing(backend, 1)
    low = [model.send(20 + i, rows=2, level=2) for i in range(3)]
    # Starts when the blocker is done (t+10 ms); 1 row + 2 rows of level 2 end at t+40 ms,
    # inside its deadline; 2 more rows would end at t+60 ms, past it.
    high = model.send(10, level=1, deadline=clock.now + 0.045)
    await queued(model, 4)
    backend.gate.set()
    await asyncio.gather(blocker, high, *low)
    assert backend.batches == [[0], [10, 20, 20], [21, 21, 22, 22]]
    await model.batcher.close()


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


async def test_shadow_copies_use_at_most_half_the_inflight_bytes(clock, backend):
    budget = InflightBudget(64)
    model = Model(clock, backend, max_batch=4, levels=2, default_level=2, budget=budget)
    backend.gate = threading.Event()
    shadow = model.admission.policy.shadow_level
    waiting = [model.send(1, level=shadow, nbytes=16), model.send(2, level=shadow, nbytes=16)]
    with pytest.raises(Overloaded) as info:
        model.send(3, level=shadow, nbytes=16)  # 48 > 64 / 2
    assert info.value.reason == "queue_full" and "shadow" in info.value.message
    waiting.append(model.send(4, level=1, nbytes=32))  # live traffic still fits: 64
    backend.gate.set()
    await asyncio.gather(*waiting)
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


async def test_budget_fractions_are_configurable(clock, backend):
    overload = OverloadPolicy(latency_budget_ms=100, priority_budget_fractions=(1.0, 0.9))
    model = Model(clock, backend, levels=2, default_level=1, overload=overload)
    await measure(model, backend)
    backend.gate = threading.Event()
    waiting = [model.send(i, level=2) for i in range(7)]
    await computing(backend, 1)
    await queued(model, 6)
    waiting.append(model.send(20, level=2))  # 80 ms needed, 90 ms allowed
    backend.gate.set()
    await asyncio.gather(*waiting)
    assert model.policy.level_policies[3].budget_fraction == pytest.approx(0.45)  # shadow
    await model.batcher.close()


# -- caps ---------------------------------------------------------------------------------------


async def test_row_cap_evicts_lower_priority_then_refuses(clock, backend):
    overload = OverloadPolicy(max_queue_rows=4)
    model = Model(clock, backend, max_batch=2, levels=2, default_level=2, overload=overload)
    backend.gate = threading.Event()
    blocker = model.send(0, level=1)
    await computing(backend, 1)
    low = [model.send(20 + i, level=2) for i in range(4)]
    await queued(model, 4)
    with pytest.raises(Overloaded) as info:
        model.send(30, level=2)  # nothing below level 2 to make room with
    assert info.value.reason == "queue_full" and "max_queue_rows" in info.value.message
    high = model.send(10, rows=2, level=1)  # evicts the two last-served level-2 requests
    # Two level-2 requests left, the level-1 one queued; the evicted callers were woken first.
    await queued(model, 3)
    assert low[3].done() and low[2].done()
    for task in low[2:]:
        error = task.exception()
        assert isinstance(error, Overloaded) and error.reason == "priority"
    backend.gate.set()
    await asyncio.gather(blocker, high, *low[:2])
    assert sorted(backend.seen) == [0, 10, 10, 20, 21]
    assert model.batcher.stats()["peak_queued_rows"] <= 4
    await model.batcher.close()


async def test_byte_cap_and_per_level_request_cap(clock, backend):
    overload = OverloadPolicy(max_queue_bytes=64)
    policies = {1: QueuePolicy(max_queue_size=1)}
    model = Model(clock, backend, levels=2, default_level=2, policies=policies, overload=overload)
    backend.gate = threading.Event()
    blocker = model.send(0)
    await computing(backend, 1)
    first = model.send(1, level=1, nbytes=16)
    await queued(model, 1)
    with pytest.raises(Overloaded) as info:
        model.send(2, level=1, nbytes=16)
    assert info.value.reason == "queue_full" and "1 requests at priority 1" in info.value.message
    low = [model.send(20 + i, level=2, nbytes=16) for i in range(3)]
    await queued(model, 4)
    with pytest.raises(Overloaded) as info:
        model.send(30, level=2, nbytes=16)
    assert info.value.reason == "queue_full" and "max_queue_bytes" in info.value.message
    backend.gate.set()
    await asyncio.gather(blocker, first, *low)
    assert model.batcher.stats()["peak_queued_bytes"] <= 64
    await model.batcher.close()


async def test_a_request_larger_than_any_cap_is_resource_exhausted(clock, backend):
    budget = InflightBudget(1000)
    model = Model(clock, backend, max_batch=8, budget=budget,
                  overload=OverloadPolicy(max_queue_rows=4, max_queue_bytes=500))
    with pytest.raises(ResourceExhausted, match=r"5 rows exceeds .*max_queue_rows \(4\)"):
        model.send(1, rows=5)
    with pytest.raises(ResourceExhausted, match=r"max_queue_bytes \(500\)"):
        model.send(1, nbytes=501)
    roomy = Model(clock, backend, budget=budget)
    with pytest.raises(ResourceExhausted, match=r"max_inflight_bytes \(1000\)"):
        roomy.send(1, nbytes=1001)
    assert budget.bytes == 0
    await model.batcher.close()
    await roomy.batcher.close()


async def test_the_inflight_budget_is_shared_and_released(clock, backend):
    budget = InflightBudget(100)
    a = Model(clock, backend, budget=budget)
    b = Model(clock, backend, budget=budget)
    backend.gate = threading.Event()
    held = [a.send(1, nbytes=60)]
    with pytest.raises(Overloaded) as info:
        b.send(2, nbytes=60)
    assert info.value.reason == "queue_full" and "max_inflight_bytes" in info.value.message
    held.append(b.send(3, nbytes=40))
    assert budget.bytes == 100 and budget.peak_bytes == 100
    backend.gate.set()
    await asyncio.gather(*held)
    assert budget.bytes == 0
    await a.batcher.close()
    await b.batcher.close()


def test_request_limits_name_the_limit():
    limits = RequestLimits(max_inputs=2, max_outputs=1, max_rank=3)
    check_request_limits(limits, 2, 1, 3)
    for args, needle in (((3, 0, 1), "max_request_inputs"), ((1, 2, 1), "max_request_outputs"),
                         ((1, 1, 4), "max_tensor_rank")):
        with pytest.raises(ResourceExhausted, match=needle):
            check_request_limits(limits, *args)


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


# -- building blocks ----------------------------------------------------------------------------


def _item(level: int, rows: int = 1, nbytes: int = 0) -> QueueItem:
    future = asyncio.get_running_loop().create_future()
    return QueueItem({}, rows, (), future, None, 0.0, level=level, nbytes=nbytes)


async def test_priority_queue_counts_and_evicts():
    queue = PriorityQueue(3)
    items = [_item(3, 1, 10), _item(1, 2, 20), _item(2, 3, 30), _item(3, 4, 40)]
    for item in items:
        queue.push(item)
    assert len(queue) == 4 and queue.rows == 10 and queue.bytes == 100
    assert queue.rows_ahead(1) == 2 and queue.rows_ahead(2) == 5 and queue.rows_ahead(3) == 10
    assert queue.rows_below(1) == 8 and queue.bytes_below(2) == 50
    assert queue.pop_lowest(1) is items[3]  # the last one level 3 would serve
    assert queue.pop_lowest(1, head=True) is items[0]
    assert queue.pop_lowest(2) is None
    assert queue.peak_rows == 10 and queue.rows == 5
    assert [i.level for i in queue.drain()] == [1, 2]
    assert len(queue) == 0 and queue.rows == 0 and queue.bytes == 0


def test_service_rate_estimates():
    rate = ServiceRate(instances=1, max_batch_rows=64)
    assert not rate.known and rate.batch_s(8) == 0.0
    rate.started(0, 0.0, 8)
    rate.finished(0, 0.008, ok=True)
    assert rate.known
    assert rate.batch_s(8) == pytest.approx(0.008)
    assert rate.batch_s(64) == pytest.approx(0.064)  # scaled up from smaller batches
    assert rate.batch_s(2) == pytest.approx(0.008)  # a smaller batch takes no longer
    rate.started(0, 1.0, 64)
    assert rate.free_in_s(1.010) == pytest.approx(0.054)
    rate.finished(0, 1.016, ok=True)
    assert rate.free_in_s(2.0) == 0.0
    assert rate.drain_s(130) == pytest.approx(2 * 0.016 + 0.008)  # 64 + 64 + a batch of 2
    assert rate.rows_per_s == pytest.approx(64 / 0.016)
    rate.started(0, 3.0, 64)
    rate.finished(0, 9.0, ok=False)  # failed batches teach nothing
    assert rate.batch_s(64) == pytest.approx(0.016)


def test_service_rate_over_several_instances():
    rate = ServiceRate(instances=2, max_batch_rows=64)
    rate.started(0, 0.0, 8)
    rate.finished(0, 0.008, ok=True)
    rate.started(1, 0.0, 64)
    rate.finished(1, 0.016, ok=True)
    assert rate.drain_s(8) == pytest.approx(0.008)  # one batch runs on one instance only
    assert rate.drain_s(100) == pytest.approx(0.016)  # two batches side by side
    assert rate.drain_s(64 * 4) == pytest.approx(2 * 0.016)  # four batches over two
