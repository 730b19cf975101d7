"""Fakes that drive a DynamicBatcher without a server: a backend that records its batches and
can be held at a gate, and waits for the state a test relies on.

The backend runs on the batcher's instance threads; a held batch lets the queue build up behind
it, and ``computing`` / ``queued`` wait for that state instead of counting loop turns.
"""

from __future__ import annotations

import threading

import numpy as np

from sluice.server.serving.batcher import DynamicBatcher
from tests.support.threads import until


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


def make(backend: FakeBackend, **kw) -> DynamicBatcher:
    kw.setdefault("max_batch_size", 8)
    batcher = DynamicBatcher("m:1", backend.run, **kw)
    batcher.start()
    return batcher
