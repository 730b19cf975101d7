"""What each monitor costs per request, in CPU, measured in-process (no transport, no load
generator): figures a shared, noisy machine does not blur the way it blurs throughput.

    python -m loadtests.monitor_cost [--checkout DIR ...] [--variants off,quality,log,drift,all]
        [--rounds 3] [--requests 10000] [--reps 5] [--out DIR]
    python -m loadtests.monitor_cost --subscribers [--checkout DIR ...] [--drain 500]

**Per request** (default). The bundled ``identity`` (batch-1 requests of 16 floats) in one
temporary repository per variant:

- ``off``: as bundled (no monitor: the request path asks the hub one dict lookup);
- ``quality``: ``quality: {}`` in its deployment.yaml (live quality, argmax of the 16 scores);
- ``log``: ``logging: {sample: 1.0, inputs: false}`` (every answer to Parquet);
- ``drift``: a reference profile made by ``sluice profile`` from 2,000 random rows (drift on,
  10% of requests sampled, the default);
- ``all``: every monitor on (what :mod:`loadtests.monitoring_overhead` calls "on").

For each (checkout, variant) a subprocess starts the server's ``Server`` in-process on that
repository and awaits ``InferenceServicer.ModelInfer`` on a pre-serialized request ``--requests``
times, ``--reps`` times; the figure is the best rep's **process** CPU time per request (all
threads: the event loop, the monitor hub's thread that feeds the monitors every 250 ms, the
prediction log's writer; drift's compute runs every 10 s, so a rep may or may not hold one, and
best-of filters it out: what it costs is in ``--subscribers``). Rounds interleave checkouts and
variants (the order reversed every other round); the table shows each median over rounds and
the extra over ``off`` of the same checkout. Give two checkouts (``--checkout /path/to/main
--checkout .``) to compare before and after side by side.

**Per record** (``--subscribers``): the monitors' own CPU on the hub's thread for synthetic
identity answers handed over in drains of ``--drain`` records (500: one 250 ms drain at 2k
requests/s; as the hub's columns where the checkout has them, filled outside the timing, as the
event loop fills them), best of 5: live quality's ``on_finished``, the prediction log's sampling and
hand-off (the Arrow table included), its writer (zstd Parquet row groups), drift's sampling,
and drift's compute amortized over 20,000 records. These are the figures that hold the GIL
the event loop needs (issue 13: quality at ~20 us per record cost ~20% of identity's
throughput at c=64 on 2 cores).

Like every benchmark here, the measured programs run the server's code in subprocesses (with
``python -c``, the checkout's ``.ci/pythonpath`` and root first on PYTHONPATH); this module never
imports the server. Writes ``monitor_cost.json`` to ``--out`` (default ``loadtests/results/``).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from loadtests.models import MODEL_REPOSITORY, ROOT, load_spec
from loadtests.procs import checkout_env
from loadtests.report import write_json

VARIANTS = ("off", "quality", "log", "drift", "all")
_YAML = {
    "off": None,
    "quality": "quality: {}\n",
    "log": "logging: {sample: 1.0, inputs: false}\n",
    "drift": None,
    "all": "logging: {sample: 1.0, inputs: false}\nquality: {}\n",
}
_PROFILED = ("drift", "all")

_PER_REQUEST = r"""
import asyncio, json, os, sys, tempfile, time
from pathlib import Path
import numpy as np
from sluice.proto import grpc_service_pb2 as pb
from sluice.proto.tensors import make_input
from sluice.server.app import Server
from sluice.server.config.settings import ServerConfig

repository, n, reps = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])

class Context:
    def time_remaining(self): return None
    def invocation_metadata(self): return ()

async def main(state):
    config = ServerConfig(model_repository=repository, grpc_port=0, metrics_port=None,
                          state_dir=state / "state", prediction_log_dir=state / "predictions",
                          model_control="explicit", startup_models=("identity",),
                          log_level="WARNING")
    server = Server(config)
    await server.start(lambda: None)
    servicer, context = server.servicer, Context()
    tensor, raw = make_input("INPUT0", np.ones((1, 16), np.float32))
    data = pb.ModelInferRequest(model_name="identity", inputs=[tensor],
                                raw_input_contents=[raw]).SerializeToString()
    parse = pb.ModelInferRequest.FromString
    for _ in range(3000):
        await servicer.ModelInfer(parse(data), context)
    per_rep = []
    for _ in range(reps):
        started = time.process_time()
        for _ in range(n):
            await servicer.ModelInfer(parse(data), context)
        per_rep.append((time.process_time() - started) / n * 1e6)
    await server.stop(1)
    return per_rep

with tempfile.TemporaryDirectory() as state:
    per_rep = asyncio.run(main(Path(state)))
print(json.dumps({"us_per_request": min(per_rep), "reps": per_rep}))
"""

_PER_RECORD = r"""
import json, sys, tempfile, time
from pathlib import Path
import numpy as np
from sluice.server.config.pbtxt import read_model_config
from sluice.server.config.prediction_logging import LoggingConfig
from sluice.server.monitoring.drift import DriftMonitor
from sluice.server.monitoring.hub import Finished, MonitorHub
from sluice.server.monitoring.prediction_log import PredictionLog
from sluice.server.monitoring.prediction_settings import LoggingSettings
from sluice.server.monitoring.prediction_writer import PredictionWriter
from sluice.server.monitoring.quality import QualityMonitor

model_dir, drain = Path(sys.argv[1]), int(sys.argv[2])
config, _ = read_model_config(model_dir, "identity")
rng = np.random.default_rng(0)
now = time.time()
drains = [[Finished(f"bench-{k}-{i}", now, "identity", 1, "", "", {"OUTPUT0": x},
                    {"INPUT0": x}, 1e-4)
           for i, x in enumerate(rng.standard_normal((drain, 1, 16)).astype(np.float32))]
          for k in range(60)]
warm, timed = drains[:20], drains[20:]
records = len(timed) * drain
try:  # as the hub hands them over: its columns, filled on the event loop as requests finish
    from sluice.server.monitoring.drained import Drained
    def fresh(batches):
        return [Drained.of(d) for d in batches]
except ImportError:  # an older checkout: lists of records
    def fresh(batches):
        return batches

def best(run, reps=5):
    out = []
    for _ in range(reps):
        batches = fresh(timed)  # not timed: the event loop's part
        started = time.thread_time()
        run(batches)
        out.append((time.thread_time() - started) / records * 1e6)
    return min(out)

def each(subscriber):
    return lambda batches: [subscriber(d) for d in batches]

figures = {}
quality = QualityMonitor(None)
quality.model_loaded("identity", {1: config}, model_dir)
each(quality.on_finished)(fresh(warm))
figures["quality"] = best(each(quality.on_finished))
with tempfile.TemporaryDirectory() as root:
    writer = PredictionWriter(Path(root), tag="bench", capacity_records=10 ** 7)
    log = PredictionLog(MonitorHub(), writer, LoggingSettings(None), lambda m, v: config)
    log.model_loaded("identity", LoggingConfig(sample=1.0))
    each(log.on_finished)(fresh(warm))
    writer.flush()
    figures["log (hub)"] = best(each(log.on_finished))
    writer.flush()
    figures["log (hub + writer)"] = best(lambda b: (each(log.on_finished)(b), writer.flush()))
try:  # as served: the coding kernels, or before them (an older checkout) binning and KS
    from sluice.kernels import drift_codes
    drift = DriftMonitor(MonitorHub(), drift_codes, seed=1)
except ImportError:
    from sluice.kernels.binning import bin_counts
    from sluice.kernels.ks import ks_columns
    drift = DriftMonitor(MonitorHub(), bin_counts, seed=1, ks_kernel=ks_columns)
drift.load_version(config, model_dir / "1")
each(drift.on_finished)(fresh(warm))
drift.compute_now()
figures["drift (hub)"] = best(each(drift.on_finished))
drift.compute_now()
figures["drift (hub + compute)"] = best(lambda b: (each(drift.on_finished)(b), drift.compute_now()))
print(json.dumps(figures))
"""


def build(root: Path, variant: str) -> Path:
    """A repository holding the bundled ``identity`` with ``variant``'s monitors on."""
    model = root / "identity"
    shutil.copytree(MODEL_REPOSITORY / "identity", model)
    if _YAML[variant] is not None:
        (model / "deployment.yaml").write_text(f"# loadtests.monitor_cost: {variant}\n"
                                               + _YAML[variant])
    if variant in _PROFILED:
        spec = load_spec("identity", root)
        rng = np.random.default_rng(7)
        data = {t.name: rng.standard_normal((2000, *t.dims)).astype(np.float32)
                for t in spec.inputs}
        np.savez(model / "reference.npz", **data)
        subprocess.run(
            [sys.executable, "-m", "sluice.server", "profile", "identity", "--data",
             str(model / "reference.npz"), "--model-repository", str(root)],
            check=True, cwd=ROOT, env=checkout_env(), capture_output=True, text=True,
        )
    return root


def checkout_run(checkout: Path, program: str, *args: str) -> dict[str, Any]:
    """Run ``program`` with ``checkout``'s sluice first on the path; its last line as JSON."""
    first = [str(checkout / ".ci" / "pythonpath"), str(checkout)]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(first))
    done = subprocess.run([sys.executable, "-c", program, *args], cwd=checkout, env=env,
                          capture_output=True, text=True, check=False)
    if done.returncode:
        return {"error": done.stderr.strip()[-2000:]}
    return json.loads(done.stdout.strip().splitlines()[-1])


def summarize(runs: list[dict[str, Any]], checkouts: list[str],
              variants: list[str]) -> list[dict[str, Any]]:
    """Per variant and checkout: the median over rounds of the best rep, and its extra over
    ``off`` of the same checkout (None where it was not measured)."""
    def median(checkout: str, variant: str) -> float | None:
        values = [r["us_per_request"] for r in runs if r["checkout"] == checkout
                  and r["variant"] == variant and "us_per_request" in r]
        return statistics.median(values) if values else None

    rows = []
    for variant in variants:
        row: dict[str, Any] = {"variant": variant}
        for checkout in checkouts:
            mine, off = median(checkout, variant), median(checkout, "off")
            row[checkout] = {"us_per_request": mine,
                             "extra_over_off_us": None if mine is None or off is None
                             else mine - off,
                             "ratio_to_off": None if mine is None or not off else mine / off}
        rows.append(row)
    return rows


def per_request(args: argparse.Namespace, checkouts: list[Path]) -> dict[str, Any]:
    names = [str(c) for c in checkouts]
    runs: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="sluice-monitor-cost-") as tmp:
        repos = {v: build(Path(tmp) / v, v) for v in args.variants}
        for n in range(1, args.rounds + 1):
            order = [(v, c) for v in args.variants for c in checkouts]
            for variant, checkout in order if n % 2 else order[::-1]:
                result = checkout_run(checkout, _PER_REQUEST, str(repos[variant]),
                                      str(args.requests), str(args.reps))
                runs.append({"round": n, "checkout": str(checkout), "variant": variant,
                             **result})
                shown = (f"{result['us_per_request']:7.1f} us/request" if "error" not in result
                         else "error: " + result["error"].splitlines()[-1][:100])
                print(f"round {n} {variant:8} {checkout}: {shown}", flush=True)
    summary = summarize(runs, names, list(args.variants))
    print(f"\nprocess CPU per identity request, median over {args.rounds} rounds of the best "
          f"of {args.reps} x {args.requests}")
    print(f"{'variant':8}" + "".join(f"  {name[-30:]:>30}" for name in names))
    for row in summary:
        cells = []
        for name in names:
            cell = row[name]
            if cell["us_per_request"] is None:
                cells.append(f"  {'-':>30}")
                continue
            extra = cell["extra_over_off_us"]
            more = "" if extra is None or row["variant"] == "off" else (
                f" ({extra:+.1f}, x{cell['ratio_to_off']:.2f})")
            cells.append(f"  {cell['us_per_request']:7.1f} us{more:>20}")
        print(f"{row['variant']:8}" + "".join(cells))
    return {"runs": runs, "summary": summary}


def per_record(args: argparse.Namespace, checkouts: list[Path]) -> dict[str, Any]:
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="sluice-monitor-cost-") as tmp:
        model_dir = build(Path(tmp) / "all", "all") / "identity"
        for round_ in range(args.rounds):
            for checkout in checkouts if round_ % 2 == 0 else checkouts[::-1]:
                got = checkout_run(checkout, _PER_RECORD, str(model_dir), str(args.drain))
                results.setdefault(str(checkout), []).append(got)
    print(f"\nhub-thread CPU per identity record (drains of {args.drain}), median over "
          f"{args.rounds} rounds of the best of 5")
    names = list(results)
    print(f"{'monitor':22}" + "".join(f"  {name[-24:]:>24}" for name in names))
    medians: dict[str, dict[str, float]] = {}
    for name in names:
        ok = [r for r in results[name] if "error" not in r]
        medians[name] = ({k: statistics.median(r[k] for r in ok) for k in ok[0]} if ok else {})
    for key in next((m for m in medians.values() if m), {}):
        print(f"{key:22}" + "".join(f"  {medians[n].get(key, float('nan')):21.2f} us"
                                    for n in names))
    for name in names:
        for r in results[name]:
            if "error" in r:
                print(f"{name}: error: {r['error'].splitlines()[-1][:200]}")
    return {"runs": results, "medians": medians}


def add_checkout_option(parser: argparse.ArgumentParser) -> None:
    """``--checkout DIR`` (repeatable): the checkouts a benchmark measures side by side."""
    parser.add_argument("--checkout", type=Path, action="append",
                        help="a Sluice checkout to measure (repeat to compare; default: this "
                             "one)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m loadtests.monitor_cost",
                                     description=__doc__.split("\n\n")[0])
    add_checkout_option(parser)
    parser.add_argument("--variants", type=lambda s: [v for v in s.split(",") if v],
                        default=list(VARIANTS))
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--requests", type=int, default=10_000)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--subscribers", action="store_true",
                        help="per record on the hub's thread instead of per request")
    parser.add_argument("--drain", type=int, default=500)
    parser.add_argument("--out", type=Path, default=ROOT / "loadtests" / "results")
    args = parser.parse_args(argv)
    unknown = [v for v in args.variants if v not in VARIANTS]
    if unknown:
        parser.error(f"unknown variant(s) {', '.join(unknown)} (expected {', '.join(VARIANTS)})")
    checkouts = [c.resolve() for c in (args.checkout or [ROOT])]
    report = per_record(args, checkouts) if args.subscribers else per_request(args, checkouts)
    report["settings"] = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    report["settings"]["checkout"] = [str(c) for c in checkouts]
    report["load_average"] = os.getloadavg()
    args.out.mkdir(parents=True, exist_ok=True)
    name = "monitor_cost_records.json" if args.subscribers else "monitor_cost.json"
    write_json(args.out / name, report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
