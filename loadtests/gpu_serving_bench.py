"""The tree model served on the GPU against the same model served on the CPU, rows/s by batch.

    python -m loadtests.gpu_serving_bench [--batches 256,4096,32768] [--concurrency 8]
        [--rounds 3] [--duration 1.5] [--cpu-only] [--json FILE]

Writes a temporary model repository holding two copies of the bundled ``breast_cancer``
(XGBoost in Triton FIL layout, served by our Numba kernels): ``breast_cancer_gpu`` with
``instance_group [{ kind: KIND_GPU }]`` and ``breast_cancer_cpu`` with ``KIND_CPU``, both with
``max_batch_size`` raised to the largest batch measured. One ``sluice serve`` subprocess serves
both (the GPU copy's kernels compile at model load, so no request pays for it). Each round
measures every batch size on both copies back to back (closed loop, ``--concurrency`` workers
over two load generator processes, random rows; see :mod:`loadtests.loadgen`); a figure is the
median over rounds. Without a GPU visible to Numba (or with ``--cpu-only``) only the CPU copy is
served and measured. Needs no xgboost and no tritonclient: clients, numpy, grpcio, protobuf.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

from google.protobuf import text_format

from loadtests.models import MODEL_REPOSITORY, InputSpec
from loadtests.procs import LoadResult, ServerProcess, run_load
from sluice.proto import model_config_pb2

SOURCE_MODEL = "breast_cancer"
TREES = (InputSpec("input__0", "float32", (30,)),)
#: Served copy name -> instance group kind.
COPIES = {"breast_cancer_gpu": "KIND_GPU", "breast_cancer_cpu": "KIND_CPU"}


def write_repository(
    dest: Path, copies: dict[str, str], max_batch_size: int, source: str = SOURCE_MODEL
) -> Path:
    """Write a model repository at ``dest`` with one copy of bundled model ``source`` per entry
    of ``copies`` (name -> instance group kind, e.g. ``KIND_GPU``), each with one instance of
    that kind and ``max_batch_size``; every other setting is the bundled config's."""
    src = MODEL_REPOSITORY / source
    text = (src / "config.pbtxt").read_text(encoding="utf-8")
    kinds = model_config_pb2.ModelInstanceGroup.Kind
    dest.mkdir(parents=True, exist_ok=True)
    for name, kind in copies.items():
        config = text_format.Parse(text, model_config_pb2.ModelConfig())
        config.name = name
        config.max_batch_size = max_batch_size
        del config.instance_group[:]
        config.instance_group.add(count=1, kind=kinds.Value(kind))
        target = dest / name
        shutil.copytree(src, target, ignore=shutil.ignore_patterns("config.pbtxt", "*.npz",
                                                                   "__pycache__"))
        (target / "config.pbtxt").write_text(text_format.MessageToString(config),
                                             encoding="utf-8")
    return dest


def gpu_visible() -> bool:
    """Whether Numba sees a real CUDA GPU here (the simulator does not count)."""
    try:
        from sluice.kernels.cuda import gpu_available, simulator_enabled
    except Exception:  # numba missing or broken: then the server cannot use a GPU either
        return False
    return gpu_available() and not simulator_enabled()


def _sluice_args(repository: Path) -> list[str]:
    return [
        "-m", "sluice.server", "serve", "--model-repository", str(repository), "--host",
        "127.0.0.1",
        "--grpc-port", "0", "--metrics-port", "-1", "--log-level", "WARNING",
    ]


def _table(results: dict[tuple[str, int], list[LoadResult]], batches: list[int],
           copies: list[str], concurrency: int) -> list[dict[str, object]]:
    rows = []
    for batch in batches:
        row: dict[str, object] = {"batch": batch, "concurrency": concurrency}
        rates: dict[str, float] = {}
        for name in copies:
            points = results[(name, batch)]
            kind = "gpu" if name.endswith("_gpu") else "cpu"
            rates[kind] = statistics.median(p.rows_s for p in points)
            row[f"{kind}_rows_s"] = rates[kind]
            row[f"{kind}_p50_ms"] = statistics.median(p.p50_ms for p in points)
            row[f"{kind}_rounds_rows_s"] = [p.rows_s for p in points]
            row[f"{kind}_errors"] = sum(p.errors for p in points)
        if rates.get("cpu") and "gpu" in rates:
            row["gpu_over_cpu"] = rates["gpu"] / rates["cpu"]
        rows.append(row)
    return rows


def _print_table(rows: list[dict[str, object]]) -> None:
    def cell(row: dict[str, object], key: str, fmt: str) -> str:
        value = row.get(key)
        return "-" if value is None else format(value, fmt)

    print(f"\n{'batch':>7} {'conc':>5} {'GPU rows/s':>13} {'CPU rows/s':>13} {'GPU/CPU':>8} "
          f"{'GPU p50 ms':>11} {'CPU p50 ms':>11}")
    for row in rows:
        print(f"{row['batch']:>7} {row['concurrency']:>5} {cell(row, 'gpu_rows_s', ',.0f'):>13} "
              f"{cell(row, 'cpu_rows_s', ',.0f'):>13} {cell(row, 'gpu_over_cpu', '.2f'):>8} "
              f"{cell(row, 'gpu_p50_ms', '.2f'):>11} {cell(row, 'cpu_p50_ms', '.2f'):>11}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", default="256,4096,32768",
                        help="rows per request, comma-separated (default 256,4096,32768)")
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=float, default=1.5, help="seconds per point")
    parser.add_argument("--warmup", type=float, default=0.5, help="seconds before each point")
    parser.add_argument("--procs", type=int, default=2, help="load generator processes")
    parser.add_argument("--cpu-only", action="store_true", help="serve and measure KIND_CPU only")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = parser.parse_args(argv)
    batches = [int(b) for b in args.batches.split(",") if b]
    copies = dict(COPIES)
    if args.cpu_only or not gpu_visible():
        if not args.cpu_only:
            print("no CUDA GPU visible to numba: measuring the CPU copy only", flush=True)
        copies.pop("breast_cancer_gpu")
    names = list(copies)
    results: dict[tuple[str, int], list[LoadResult]] = {(n, b): [] for n in names for b in batches}
    errors = 0
    with tempfile.TemporaryDirectory(prefix="sluice-gpu-bench-") as tmp:
        repository = write_repository(Path(tmp) / "models", copies, max(batches))
        with ServerProcess("sluice", _sluice_args(repository), start_timeout_s=300) as server:
            print(f"serving {', '.join(names)} (max_batch_size {max(batches)}) on "
                  f"{server.target}", flush=True)
            for round_no in range(args.rounds):
                for batch in batches:
                    for name in names:
                        point = run_load(label=f"{name} b{batch}", target=server.target,
                                         model=name, inputs=TREES, batch=batch,
                                         concurrency=args.concurrency, procs=args.procs,
                                         duration_s=args.duration, warmup_s=args.warmup)
                        results[(name, batch)].append(point)
                        errors += point.errors
                        if point.errors:
                            print(f"  {point.errors} errors: {point.first_error}",
                                  file=sys.stderr)
                        print(f"round {round_no + 1} {name:18} batch {batch:>6} "
                              f"c={args.concurrency:<3} {point.rows_s:>13,.0f} rows/s "
                              f"{point.req_s:>9,.1f} req/s  p50 {point.p50_ms:8.2f} ms  "
                              f"p99 {point.p99_ms:8.2f} ms", flush=True)
    rows = _table(results, batches, names, args.concurrency)
    _print_table(rows)
    if args.json is not None:
        args.json.write_text(json.dumps({"rows": rows, "errors": errors}, indent=2) + "\n",
                             encoding="utf-8")
    return 1 if errors else 0


if __name__ == "__main__":
    raise SystemExit(main())
