"""Triton's perf_analyzer, when installed, run on the same points as our generator.

``perf_analyzer -m MODEL -u HOST:PORT -i grpc --concurrency-range N -b B -f FILE.csv`` (plus
``--streaming`` for stream points); its CSV gives inferences/s (rows/s) and latency percentiles
in microseconds. Nothing here is needed for the benchmark to run: without the binary every
point reports ``perf_analyzer not installed``.

Stability: perf_analyzer repeats ``duration_s`` windows until the last three agree within
``--stability-percentage`` (its default 10%: max/min <= 1.1) in both throughput and average
latency, then reports those three windows pooled; after ``--max-trials`` windows without that it
reports nothing (an ``error`` here). On a shared, noisy machine 10% is rarely met, so a caller
may pass ``stability_percent`` (:mod:`loadtests.peers` passes 100: the three windows within a
factor of two, which still rejects a window spoilt by a long stall) and ``max_trials``.
"""

from __future__ import annotations

import csv
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

NOT_INSTALLED = "perf_analyzer not installed"


def binary() -> str | None:
    return shutil.which("perf_analyzer")


def run(
    *, target: str, model: str, concurrency: int, batch: int, streaming: bool, duration_s: float,
    stability_percent: float | None = None, max_trials: int = 3, protocol: str = "grpc",
    extra_args: list[str] | tuple[str, ...] = (),
) -> dict[str, Any]:
    """One point: ``{"rows_s", "req_s", "p50_ms", "p95_ms", "p99_ms"}`` or ``{"error": ...}``.

    ``stability_percent`` None keeps perf_analyzer's own (10%); see the module docstring.
    ``extra_args`` go to perf_analyzer as they are (e.g. its ``--ssl-grpc-*`` flags).
    """
    exe = binary()
    if exe is None:
        return {"error": NOT_INSTALLED}
    with tempfile.TemporaryDirectory(prefix="sluice-pa-") as tmp:
        csv_path = Path(tmp) / "pa.csv"
        args = [
            exe, "-m", model, "-u", target, "-i", protocol,  # protocol "http": REST
            "--concurrency-range", str(concurrency), "-b", str(batch), "-f", str(csv_path),
            "--measurement-interval", str(int(duration_s * 1000)),
            "--max-trials", str(max_trials),
        ]
        if stability_percent is not None:
            args += ["--stability-percentage", f"{stability_percent:g}"]
        if streaming:
            args.append("--streaming")
        args += extra_args
        try:
            done = subprocess.run(
                args, capture_output=True, text=True, check=False,
                timeout=duration_s * (max_trials + 3) + 60,
            )
        except subprocess.TimeoutExpired:
            return {"error": "perf_analyzer timed out"}
        if done.returncode != 0 or not csv_path.exists():
            return {"error": f"perf_analyzer exit {done.returncode}: {done.stderr[-500:]}"}
        with csv_path.open(newline="") as handle:
            rows = list(csv.DictReader(handle))
    if not rows:
        return {"error": "perf_analyzer wrote no rows"}
    row = rows[-1]
    rows_s = float(row["Inferences/Second"])  # perf_analyzer counts inferences = rows
    return {
        "rows_s": rows_s,
        "req_s": rows_s / batch,
        "p50_ms": float(row["p50 latency"]) / 1e3,
        "p95_ms": float(row["p95 latency"]) / 1e3,
        "p99_ms": float(row["p99 latency"]) / 1e3,
    }
