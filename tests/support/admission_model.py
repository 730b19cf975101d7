"""A batcher and its admission wired as ModelVersion wires them, over a fake backend whose batches
take fake time on a fake clock (no server, no sleeps).

The backend runs on the batcher's instance threads and can be held at a ``threading.Event`` gate
to let the queue build up; ``computing`` / ``queued`` wait for the state a test relies on (a batch
computing, so many requests queued) instead of counting loop turns.
"""

from __future__ import annotations

import asyncio
import random
import threading

import numpy as np

from sluice.server.config.model import DynamicBatching, ModelConfig, OverloadPolicy, QueuePolicy
from sluice.server.serving.admission import Admission, AdmissionPolicy
from sluice.server.serving.batcher import DynamicBatcher
from sluice.server.serving.budget import InflightBudget
from tests.support.fake_clock import FakeClock
from tests.support.threads import until


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
