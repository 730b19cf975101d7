"""Latency at concurrency 1, two servers measured call by call in turn: a paired comparison.

On the shared 2-core machine a c=1 p50 taken over a few seconds moves by hundreds of
microseconds from one window to the next (issue 14's rounds: -92 to +661 us for one change), so
two servers measured one after the other differ by what the neighbours did in between. Here one
client process alternates single calls between the sides (A B, then B A: each side goes first
in half the pairs), so every moment of noise falls on both, and the difference of the p50s is
read from calls made microseconds apart. Each side is a :class:`~loadtests.loadgen.UnaryDriver`
(ModelInfer through ``clients.AsyncClient``, the request built once; TLS credentials and a token
per side), so what is timed is what a client waits for, its own TLS and token work included.

:func:`measure` returns, per side, the p50/p99 over all calls, and per block of ``block`` pairs
the p50 difference of each side against the first one, so a reader sees how steady it is.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from dataclasses import dataclass

import grpc
import numpy as np

from loadtests.loadgen import UnaryDriver


@dataclass(frozen=True)
class Side:
    """One server to call: its ``HOST:PORT``, TLS credentials (None: plaintext), token."""

    target: str
    credentials: grpc.ChannelCredentials | None = None
    token: str | None = None


async def _latencies(sides: dict[str, Side], model: str, inputs: dict[str, np.ndarray],
                     pairs: int, warmup: int) -> dict[str, np.ndarray]:
    drivers = {name: UnaryDriver(side.target, model, inputs, side.credentials, side.token)
               for name, side in sides.items()}
    try:
        calls = {name: driver.caller(0) for name, driver in drivers.items()}
        names = list(calls)
        for _ in range(warmup):
            for name in names:
                await calls[name]()
        times = {name: np.empty(pairs) for name in names}
        clock = time.perf_counter
        for i in range(pairs):
            for name in names if i % 2 == 0 else names[::-1]:
                started = clock()
                await calls[name]()
                times[name][i] = clock() - started
        return times
    finally:
        for driver in drivers.values():
            await driver.close()


def measure(sides: dict[str, Side], model: str, inputs: dict[str, np.ndarray], *,
            pairs: int = 4000, warmup: int = 200, block: int = 500) -> dict[str, object]:
    """Alternate ``pairs`` calls per side (after ``warmup`` each); figures in microseconds."""
    times = asyncio.run(_latencies(sides, model, inputs, pairs, warmup))
    first = next(iter(sides))
    out: dict[str, object] = {
        "pairs": pairs,
        "sides": {name: {"p50_us": float(np.median(t)) * 1e6,
                         "p99_us": float(np.percentile(t, 99)) * 1e6}
                  for name, t in times.items()},
    }
    for name, t in times.items():
        if name == first:
            continue
        base = times[first]
        blocks = [float(np.median(t[i:i + block]) - np.median(base[i:i + block])) * 1e6
                  for i in range(0, pairs - block + 1, block)]
        out[f"{name}_minus_{first}_p50_us"] = {
            "all": float(np.median(t) - np.median(base)) * 1e6,
            "blocks": blocks,
            "median_of_blocks": statistics.median(blocks) if blocks else float("nan"),
        }
    return out
