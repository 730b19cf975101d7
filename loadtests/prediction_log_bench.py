"""How many records a second the prediction log writes to Parquet on one core.

    python -m loadtests.prediction_log_bench [--records N] [--repeats R] [--out DIR]

Digits-sized records (one row: a 64-float input, an int64 label and 10 float probabilities)
go the whole way a logged request goes after the request path: the hub subscriber
(``PredictionLog.on_finished``: sampling at 1.0, grouping, the writer's bounded intake) in
batches of 500 (what the hub hands over in one 250 ms drain at 2k requests/s), then the writer
thread (Arrow arrays, zstd Parquet row groups, Hive directories, rotation) until ``flush`` has
closed every file. Arrow's one-time setup (``prediction_files.warm_up``: pyarrow's first array
imports pandas, ~0.2-0.7 s) is done before the clock starts, as the server does it when a logged
model loads; timed, it was more than half the CPU measured for 50,000 records (5.8 against 2.5 us
per record). Both run in one process pinned to one CPU, so the figure is what one core
sustains; it is measured with outputs only and with inputs too, ``--repeats`` times each (the
median is reported, with the process CPU seconds per record, which the load of other work on a
shared machine does not inflate).

Like every benchmark here it runs the server's code in a subprocess (``loadtests`` never imports
the server): the measured program is :data:`_PROGRAM`, run with ``python -c``. Writes
``prediction_log_bench.json`` to ``--out`` (default ``loadtests/results/``).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from loadtests.bench import machine_info
from loadtests.models import ROOT
from loadtests.procs import checkout_env
from loadtests.report import write_json

#: Target from issue 13: the writer sustains at least this many records per second on one core.
TARGET_PER_S = 20_000

_PROGRAM = r"""
import json, os, pathlib, sys, tempfile, time
import numpy as np
from sluice.server.config.model import ModelConfig
from sluice.server.config.prediction_logging import LoggingConfig
from sluice.server.monitoring.hub import Finished, MonitorHub
from sluice.server.monitoring.prediction_files import warm_up
from sluice.server.monitoring.prediction_log import PredictionLog
from sluice.server.monitoring.prediction_settings import LoggingSettings
from sluice.server.monitoring.prediction_writer import PredictionWriter
from sluice.server.types import TensorSpec

n, inputs, root = int(sys.argv[1]), sys.argv[2] == "1", pathlib.Path(sys.argv[3])
os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[-1]})
config = ModelConfig(name="digits", max_batch_size=256,
                     inputs=(TensorSpec("input", "FP32", (64,)),),
                     outputs=(TensorSpec("label", "INT64", (1,)),
                              TensorSpec("probabilities", "FP32", (10,))))
rng = np.random.default_rng(0)
x = rng.random((n, 1, 64), dtype=np.float32)
p = rng.random((n, 1, 10), dtype=np.float32)
labels = rng.integers(0, 10, (n, 1, 1))
now = time.time()
records = [Finished(f"bench-{i:x}", now, "digits", 2, "", "", {"label": labels[i],
           "probabilities": p[i]}, {"input": x[i]}, 1e-4) for i in range(n)]
hub = MonitorHub()
log = PredictionLog(hub, PredictionWriter(root, tag="bench", capacity_records=n),
                    LoggingSettings(None), lambda name, version: config)
log.model_loaded("digits", LoggingConfig(1.0, inputs=inputs))
log.start()
warm_up()  # Arrow's one-time imports, as the server does when a logged model loads
cpu, wall = time.process_time(), time.perf_counter()
for start in range(0, n, 500):
    log.on_finished(records[start:start + 500])
log.writer.flush(600)
wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
log.close()
files = list(root.rglob("*.parquet"))
print(json.dumps({"records": n, "written": log.writer.written["digits"],
                  "dropped": sum(log.writer.dropped.values()), "wall_s": wall, "cpu_s": cpu,
                  "files": len(files), "bytes": sum(f.stat().st_size for f in files)}))
"""


def run_once(records: int, inputs: bool) -> dict:
    with tempfile.TemporaryDirectory() as root:
        done = subprocess.run(
            [sys.executable, "-c", _PROGRAM, str(records), "1" if inputs else "0", root],
            env=checkout_env(), cwd=ROOT, capture_output=True, text=True, check=True,
        )
    result = json.loads(done.stdout.strip().splitlines()[-1])
    result["per_s"] = result["written"] / result["wall_s"]
    result["cpu_us_per_record"] = result["cpu_s"] / result["written"] * 1e6
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m loadtests.prediction_log_bench",
                                     description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--records", type=int, default=200_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=ROOT / "loadtests" / "results")
    args = parser.parse_args(argv)
    report: dict = {"machine": machine_info(), "target_per_s": TARGET_PER_S,
                    "load_average": os.getloadavg(), "runs": {}}
    for inputs in (False, True):
        name = "outputs and inputs" if inputs else "outputs only"
        runs = [run_once(args.records, inputs) for _ in range(args.repeats)]
        assert all(r["written"] == args.records and not r["dropped"] for r in runs), runs
        median = statistics.median(r["per_s"] for r in runs)
        cpu = statistics.median(r["cpu_us_per_record"] for r in runs)
        report["runs"][name] = {"median_per_s": median, "median_cpu_us_per_record": cpu,
                                "runs": runs}
        print(f"{name:>20}: {median:9,.0f} records/s on one core (median of {len(runs)}; "
              f"{cpu:.1f} us CPU per record; {runs[0]['files']} files, "
              f"{runs[0]['bytes'] / args.records:.0f} bytes per record)"
              + ("" if median >= TARGET_PER_S else f"  BELOW the {TARGET_PER_S:,} target"))
    args.out.mkdir(parents=True, exist_ok=True)
    write_json(args.out / "prediction_log_bench.json", report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
