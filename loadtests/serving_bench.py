"""Served Numba models vs their ceilings, side by side in one run.

    python -m loadtests.serving_bench [--rounds R] [--duration S]

Measures, interleaved in every round (the two sides of each ratio back to back), medians over
rounds:

- the tree model (``breast_cancer``, XGBoost in FIL layout on our Numba kernels) at concurrency
  64 with batch-1 requests, against the Python gRPC ceiling (:mod:`loadtests.ceiling`) at 64:
  target >= 0.8;
- the pipeline (``digits_pipeline``: standardize -> ONNX -> top-3) against its bare model
  (``digits_linear``) at concurrency 1, p50: target <= 1.10.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys

from loadtests.bench import _sluice_args
from loadtests.models import InputSpec
from loadtests.procs import ServerProcess, run_load

IDENTITY = (InputSpec("INPUT0", "float32", (16,)),)
TREES = (InputSpec("input__0", "float32", (30,)),)
DIGITS = (InputSpec("input", "float32", (64,)),)
PIXELS = (InputSpec("pixels", "float32", (64,)),)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=float, default=4.0)
    args = parser.parse_args(argv)
    rows: dict[str, list] = {k: [] for k in ("ceiling64", "trees64", "bare1", "pipeline1")}
    with (
        ServerProcess("ceiling", ["-m", "loadtests.ceiling", "--port", "0"]) as ceiling,
        ServerProcess("sluice", _sluice_args()) as sluice,
    ):
        points = (
            ("ceiling64", ceiling.target, "identity", IDENTITY, 64),
            ("trees64", sluice.target, "breast_cancer", TREES, 64),
            ("bare1", sluice.target, "digits_linear", DIGITS, 1),
            ("pipeline1", sluice.target, "digits_pipeline", PIXELS, 1),
        )
        for round_no in range(args.rounds):
            for key, target, model, inputs, conc in points:
                result = run_load(label=key, target=target, model=model, inputs=inputs,
                                  batch=1, concurrency=conc, duration_s=args.duration,
                                  warmup_s=1.0)
                if result.errors:
                    print(f"{key}: {result.errors} errors: {result.first_error}", file=sys.stderr)
                rows[key].append(result)
                print(f"round {round_no + 1} {key:10} {model:16} c={conc:<3} "
                      f"{result.req_s:8.0f} req/s  p50 {result.p50_ms:7.3f} ms  "
                      f"p99 {result.p99_ms:7.3f} ms", flush=True)
    trees = [t.req_s / c.req_s for t, c in zip(rows["trees64"], rows["ceiling64"], strict=True)]
    pipe = [p.p50_ms / b.p50_ms for p, b in zip(rows["pipeline1"], rows["bare1"], strict=True)]
    summary = {
        "tree_c64_vs_ceiling_c64": {"median": statistics.median(trees), "rounds": trees,
                                    "target": ">= 0.8"},
        "pipeline_p50_vs_bare_p50_c1": {"median": statistics.median(pipe), "rounds": pipe,
                                        "target": "<= 1.10"},
        "medians": {k: {"req_s": statistics.median(r.req_s for r in v),
                        "p50_ms": statistics.median(r.p50_ms for r in v)}
                    for k, v in rows.items()},
    }
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
