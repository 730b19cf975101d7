"""The onnxruntime ceiling: each model run in-process, no gRPC, no batcher.

A session with default options on the CPU provider, as the server builds it for one instance,
fed pre-built random inputs in a loop after a warm-up. Runs in the benchmark's own process while
no load is running (servers may be up, idle).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from loadtests.models import ModelSpec, make_inputs

BATCHES = (1, 8, 64, 512)


@dataclass
class OrtResult:
    """One model at one batch size: calls made in the window, rows/s and per-call latency."""

    model: str
    batch: int
    calls: int
    rows_s: float
    p50_ms: float
    p99_ms: float


def batch_sizes(spec: ModelSpec, batches: tuple[int, ...] = BATCHES) -> list[int]:
    """``batches`` capped at the model's max_batch_size, without duplicates, in order."""
    cap = spec.max_batch_size or 1
    return sorted({min(b, cap) for b in batches})


def measure(spec: ModelSpec, batch: int, budget_s: float, warmup_s: float) -> OrtResult:
    """Run ``spec`` at ``batch`` rows for about ``budget_s`` (at least 5 calls) after warm-up."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(spec.path), providers=["CPUExecutionProvider"])
    feeds = make_inputs(spec.inputs, batch)
    run = session.run
    clock = time.perf_counter
    warm_until = clock() + warmup_s
    for _ in range(3):
        run(None, feeds)
    while clock() < warm_until:
        run(None, feeds)
    latencies: list[float] = []
    began = clock()
    stop = began + budget_s
    while (now := clock()) < stop or len(latencies) < 5:
        run(None, feeds)
        latencies.append(clock() - now)
    elapsed = clock() - began
    times = np.asarray(latencies)
    p50, p99 = np.percentile(times, [50, 99]) * 1e3
    return OrtResult(
        model=spec.name, batch=batch, calls=len(latencies),
        rows_s=len(latencies) * batch / elapsed, p50_ms=float(p50), p99_ms=float(p99),
    )


def measure_all(
    specs: list[ModelSpec], batches: tuple[int, ...], budget_s: float, warmup_s: float
) -> list[OrtResult]:
    return [
        measure(spec, batch, budget_s, warmup_s)
        for spec in specs
        for batch in batch_sizes(spec, batches)
    ]
