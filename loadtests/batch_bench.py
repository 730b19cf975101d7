"""Batch prediction against its ceiling: ``sluice batch`` on a Parquet file of ``cnn`` images
versus onnxruntime in-process on the same rows at its best batch size (issue 17: at least 0.90),
and a 1M-row ``identity`` job (rows/s end to end).

The ceiling: one InferenceSession with the options the server gives ``cnn`` (default threads,
spinning off), the rows already in memory, run at each of ``--batches`` and the fastest taken.
The job: ``python -m sluice.server batch`` in a subprocess (its --json summary: rows predicted over
the job's own seconds, reading the file, converting, predicting, writing parts and assembling the
output; the interpreter's start and the model's load are not counted), at the best batch size.
Then ``--rounds`` rounds side by side, each one pass of the ceiling at that size and one job, in
turn (A B, B A, ...): on a shared machine a burst of load hits both alike, so the ratio of each
round (and their median) is the figure to trust, not a job against the sweep's best pass.

    python -m loadtests.batch_bench [--rows 20000] [--rounds 3] [--identity-rows 1000000]
                                    [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

REPOSITORY = Path(__file__).resolve().parent.parent / "model_repository"


def ort_ceiling(x: np.ndarray, batches: list[int], budget_s: float) -> dict[int, float]:
    """rows/s of onnxruntime on ``x`` at each batch size (each pass over all rows, best of the
    passes made in ``budget_s``)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    session = ort.InferenceSession(str(REPOSITORY / "cnn" / "1" / "model.onnx"), options,
                                   providers=["CPUExecutionProvider"])
    rates = {}
    for batch in batches:
        session.run(["logits"], {"image": x[:batch]})
        best, ends = 0.0, time.monotonic() + budget_s
        while time.monotonic() < ends or best == 0.0:
            started = time.perf_counter()
            for start in range(0, len(x), batch):
                session.run(["logits"], {"image": x[start:start + batch]})
            best = max(best, len(x) / (time.perf_counter() - started))
        rates[batch] = best
    return rates


def ceiling_pass(x: np.ndarray, batch: int) -> float:
    """rows/s of one pass of onnxruntime over ``x`` at ``batch`` (a fresh session, warmed)."""
    return ort_ceiling(x, [batch], 0.0)[batch]


def run_job(model: str, data: Path, out: Path, *extra: str) -> dict:
    command = [sys.executable, "-m", "sluice.server", "batch", model, "--input", str(data),
               "--output", str(out), "--model-repository", str(REPOSITORY), "--json", "--quiet",
               "--restart", *extra]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"batch job failed ({done.returncode}): {done.stderr.strip()}")
    return json.loads(done.stdout)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=20_000, help="cnn rows (12 KiB each)")
    parser.add_argument("--identity-rows", type=int, default=1_000_000)
    parser.add_argument("--batches", default="32,64,128,256")
    parser.add_argument("--budget-s", type=float, default=10.0, help="ceiling time per size")
    parser.add_argument("--rounds", type=int, default=3,
                        help="side-by-side rounds (one ceiling pass, one job) after the sweep")
    parser.add_argument("--out", type=Path, default=None, help="write batch_bench.json here")
    args = parser.parse_args(argv)
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        x = rng.standard_normal((args.rows, 3, 32, 32), dtype=np.float32)
        images = pa.FixedSizeListArray.from_arrays(pa.array(x.ravel()), 3 * 32 * 32)
        pq.write_table(pa.table({"id": np.arange(args.rows), "image": images}),
                       folder / "cnn.parquet", row_group_size=8192)
        rates = ort_ceiling(x, [int(b) for b in args.batches.split(",")], args.budget_s)
        best = max(rates, key=rates.__getitem__)
        cnn_job = ("cnn", folder / "cnn.parquet", folder / "cnn_out.parquet", "--key", "id",
                   "--batch-rows", str(best), "--chunk-rows", "8192")
        job = run_job(*cnn_job)
        rounds = []  # (ceiling rows/s, job rows/s), measured one after the other
        for round_ in range(args.rounds):
            if round_ % 2 == 0:
                pair = (ceiling_pass(x, best), run_job(*cnn_job)["rows_per_s"])
            else:
                job_rate = run_job(*cnn_job)["rows_per_s"]
                pair = (ceiling_pass(x, best), job_rate)
            rounds.append(pair)
            print(f"round {round_}: onnxruntime {pair[0]:,.0f} rows/s, sluice batch "
                  f"{pair[1]:,.0f} rows/s = {pair[1] / pair[0]:.3f}", flush=True)
        ident = rng.random((args.identity_rows, 16), dtype=np.float32)
        pq.write_table(pa.table({"id": np.arange(args.identity_rows), "INPUT0":
                                 pa.FixedSizeListArray.from_arrays(pa.array(ident.ravel()), 16)}),
                       folder / "identity.parquet", row_group_size=131072)
        identity = run_job("identity", folder / "identity.parquet",
                           folder / "identity_out.parquet", "--key", "id", "--batch-rows", "65536")
    report = {
        "cnn_rows": args.rows,
        "ort_rows_s": {str(k): round(v, 1) for k, v in rates.items()},
        "ort_best_batch": best,
        "batch_job_rows_s": job["rows_per_s"],
        "ratio": round(job["rows_per_s"] / rates[best], 3),
        "round_ratios": [round(j / c, 3) for c, j in rounds],
        "round_ratio_median": round(statistics.median(j / c for c, j in rounds), 3)
        if rounds else None,
        "identity_rows": identity["rows"],
        "identity_rows_s": identity["rows_per_s"],
        "identity_seconds": identity["seconds"],
    }
    print(f"cnn: onnxruntime {rates[best]:,.0f} rows/s at batch {best} "
          f"({', '.join(f'{k}: {v:,.0f}' for k, v in rates.items())}); sluice batch "
          f"{job['rows_per_s']:,.0f} rows/s = {report['ratio']:.3f} of it (target >= 0.90)")
    if rounds:
        print(f"side by side: median {report['round_ratio_median']:.3f} of onnxruntime over "
              f"{len(rounds)} rounds ({', '.join(map(str, report['round_ratios']))})")
    print(f"identity: {identity['rows']:,} rows in {identity['seconds']:.1f}s = "
          f"{identity['rows_per_s']:,.0f} rows/s")
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "batch_bench.json").write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
