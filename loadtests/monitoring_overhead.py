"""What the feedback loop costs the request path: Sluice with every monitor on against all off.

    python -m loadtests.monitoring_overhead [--rounds 10] [--concurrency 64] [--window 2]
        [--warmup 2] [--models identity,cnn] [--out DIR]

Two copies of the bundled ``identity`` (batch-1 requests) and ``cnn`` (8 rows per request) in
temporary repositories, each served by its own ``python -m sluice.server serve``:

- **off**: the models as bundled (no prediction log, no live quality, no reference profile: the
  request path asks the monitor hub one dict lookup per request);
- **on**: each model's ``deployment.yaml`` logs 100% of its requests (outputs only), turns live
  quality on, and a reference profile made by ``sluice profile`` from 2,000 random rows turns
  drift on (10% of requests sampled, the default), all writing under a temporary prediction-log
  directory.

perf_analyzer (gRPC, unary, synchronous; it must be on PATH) measures each (model, variant) at
``--concurrency`` in windows of ``--window`` s, after ``--warmup`` s of the same load whose
figures are discarded (0: none). Both variants' servers of a model are up at once and in every
round each is measured once, back to back, their order swapped each round; the one not loaded
is idle (what CPU it used meanwhile is kept, ``idle_cores``: its monitors' threads wake with
nothing to do). Per round the ratios on/off of throughput and of p99 are computed; the table
prints their medians, each with a 95% confidence interval (bootstrap), against the targets:
throughput within 10%, p99 within 10%.

Why the interval: this machine's speed drifts by 10-25% over minutes (other tenants), so one
round's p99 ratio lands anywhere from x0.9 to x1.25, and a median of a few rounds moves by more
than the effect it measures (the same code gave x1.05 one run, x1.17 the next). The interval
says whether a verdict is inside that noise; more rounds narrow it (``--rounds``). Why servers
that stay up: a round's two windows are closer in time (a server took 1.5-3.5 s to start and
stop here, with its workers and its heap freeze), and the "on" server is measured in its steady
state, its log files and monitors' windows filling from round to round, as in production.

A second table says where the server's CPU went while perf_analyzer measured (medians over
rounds, read from ``/proc`` through psutil): microseconds per request of the whole process and
of its main thread, the event loop, and the share of a core the loop got. On this 2-core
machine, shared with perf_analyzer, the loop is the bottleneck (~0.94 of a core with the
monitors off); with them on, the monitors' threads take part of its core and of its GIL, and
these figures, far steadier than p99 here, show how much. The last column is the CPU of the
server's worker processes (the monitor process, drift's worker), which run at the lowest
priority, on CPU that serving leaves idle.

Why the warm-up: the figures are about serving under steady load, and a server's first seconds
are not that. Right after it is ready the server collects and freezes its heap (one full
collection: ~30 ms with the models alone, ~65 ms with the monitors' libraries loaded, timed with
a ``gc`` callback), and the first answers open the log's first file and the monitors' first
windows. Measured from the first request, those one-time costs fell in the first of the three
windows perf_analyzer reports, more for "on" than for "off". Writes ``monitoring_overhead.json``
to ``--out`` (default ``loadtests/results/``). Nothing here imports the server: it runs as
subprocesses.
"""

from __future__ import annotations

import argparse
import contextlib
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import psutil

from loadtests import perfanalyzer
from loadtests.models import MODEL_REPOSITORY, ROOT, load_spec
from loadtests.procs import ServerProcess, checkout_env
from loadtests.report import write_json

#: (model, rows per request).
POINTS = (("identity", 1), ("cnn", 8))
ON_YAML = """# loadtests.monitoring_overhead: every monitor on
logging: {sample: 1.0, inputs: false}
quality: {}
"""


def build(root: Path, monitored: bool) -> Path:
    """A repository with the measured models; with ``monitored``, their monitors all on."""
    for model, _ in POINTS:
        shutil.copytree(MODEL_REPOSITORY / model, root / model)
        if not monitored:
            continue
        (root / model / "deployment.yaml").write_text(ON_YAML)
        spec = load_spec(model, root)
        rng = np.random.default_rng(7)
        data = {t.name: rng.standard_normal((2000, *t.dims)).astype(np.float32)
                for t in spec.inputs}
        np.savez(root / model / "reference.npz", **data)
        subprocess.run(
            [sys.executable, "-m", "sluice.server", "profile", model, "--data",
             str(root / model / "reference.npz"), "--model-repository", str(root)],
            check=True, cwd=ROOT, env=checkout_env(), capture_output=True, text=True,
        )
    return root


def serve(repository: Path, logs: Path) -> ServerProcess:
    """A server of ``repository`` (not started: use it as a context manager)."""
    return ServerProcess("sluice", [
        "-m", "sluice.server", "serve", "--model-repository", str(repository),
        "--host", "127.0.0.1", "--grpc-port", "0", "--metrics-port", "-1",
        "--log-level", "WARNING", "--state-dir", str(logs / "state"),
        "--prediction-log-dir", str(logs / "predictions"),
    ])


def measure(server: ServerProcess, model: str, batch: int,
            args: argparse.Namespace) -> dict[str, Any]:
    """One window of ``server`` under load, after ``args.warmup`` s of the same load."""
    def load(duration_s: float, max_trials: int) -> dict[str, Any]:
        return perfanalyzer.run(
            target=server.target, model=model, concurrency=args.concurrency,
            batch=batch, streaming=False, duration_s=duration_s, stability_percent=100,
            max_trials=max_trials,
        )

    if args.warmup > 0:  # the same load, its figures discarded (see the docstring)
        load(args.warmup, 1)
    before = cpu_seconds(server.pid)
    result = load(args.window, args.max_trials)
    after = cpu_seconds(server.pid)
    if "req_s" in result:
        result |= cpu_per_request(before, after, result["req_s"])
    return result


def measure_model(repos: dict[str, Path], logs: Path, model: str, batch: int,
                  args: argparse.Namespace) -> list[dict[str, Any]]:
    """``args.rounds`` rounds of ``model`` with both variants' servers up (see the docstring):
    in each round each variant is measured once, the order swapped every round; the variant
    not loaded is idle, and what CPU it used meanwhile is kept with the run (``idle_cores``)."""
    runs: list[dict[str, Any]] = []
    with contextlib.ExitStack() as stack:
        servers: dict[str, ServerProcess] = {}
        try:
            for variant, repository in repos.items():
                servers[variant] = stack.enter_context(serve(repository, logs / variant))
        except RuntimeError as exc:
            error = str(exc)[-1000:]
            print(f"{model}: a server did not start: {error}", flush=True)
            return [{"round": 1, "model": model, "variant": v, "error": error} for v in repos]
        for n in range(1, args.rounds + 1):
            for variant in (["off", "on"] if n % 2 else ["on", "off"]):
                (other,) = (s for v, s in servers.items() if v != variant)
                idle = idle_cpu(other.pid)
                result = measure(servers[variant], model, batch, args)
                idle_after = idle_cpu(other.pid)
                if idle is not None and idle_after is not None:
                    result["idle_cores"] = (idle_after[1] - idle[1]) / (idle_after[0] - idle[0])
                runs.append({"round": n, "model": model, "variant": variant, **result})
                shown = (result["error"].strip().splitlines()[-1][:120] if "error" in result
                         else f"{result['req_s']:8.0f} req/s  p99 {result['p99_ms']:.2f} ms")
                print(f"round {n} {model:8} b={batch} c={args.concurrency} {variant:3} {shown}",
                      flush=True)
    return runs


def cpu_seconds(pid: int) -> tuple[float, float, float, float]:
    """(monotonic now, the server process's CPU seconds, its main thread's: the event loop,
    its running child processes': the monitor and drift workers)."""
    process = psutil.Process(pid)
    loop = next((t.user_time + t.system_time for t in process.threads() if t.id == pid), 0.0)
    times = process.cpu_times()
    workers = 0.0
    for child in process.children(recursive=True):
        try:
            spent = child.cpu_times()
        except psutil.Error:  # gone in between
            continue
        workers += spent.user + spent.system
    return time.monotonic(), times.user + times.system, loop, workers


def idle_cpu(pid: int) -> tuple[float, float] | None:
    """(monotonic now, CPU seconds of the server and its workers), None once it is gone (its
    own window then says why)."""
    try:
        now, process, _, workers = cpu_seconds(pid)
    except psutil.Error:
        return None
    return now, process + workers


def cpu_per_request(before: tuple[float, ...], after: tuple[float, ...],
                    req_s: float) -> dict[str, float]:
    """Where the server's CPU went while perf_analyzer measured (its trials, all of them, at
    the rate it reports): cores used by the whole process, by the event loop's thread and by
    its worker processes (at the lowest priority: idle CPU), and microseconds of each per
    request."""
    elapsed = after[0] - before[0]
    cores, loop = (after[1] - before[1]) / elapsed, (after[2] - before[2]) / elapsed
    workers = (after[3] - before[3]) / elapsed
    return {"cpu_cores": cores, "loop_cores": loop, "workers_cores": workers,
            "cpu_us_per_req": cores / req_s * 1e6, "loop_us_per_req": loop / req_s * 1e6,
            "workers_us_per_req": workers / req_s * 1e6}


def median_ci(values: list[float], resamples: int = 4000) -> tuple[float, float]:
    """A 95% confidence interval of the median of ``values`` (percentile bootstrap, fixed
    seed: the same runs always give the same interval)."""
    data = np.asarray(values, dtype=np.float64)
    picks = np.random.default_rng(0).integers(0, len(data), (resamples, len(data)))
    medians = np.median(data[picks], axis=1)
    low, high = np.percentile(medians, [2.5, 97.5])
    return float(low), float(high)


def summarize(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per model: median throughput and p99 of each variant, and the medians of the per-round
    on/off ratios."""
    rows = []
    for model, batch in POINTS:
        mine = [r for r in runs if r["model"] == model and "error" not in r]
        rounds = sorted({r["round"] for r in mine})
        pairs = []
        for n in rounds:
            by = {r["variant"]: r for r in mine if r["round"] == n}
            if {"on", "off"} <= set(by):
                pairs.append((by["on"], by["off"]))
        if not pairs:
            continue
        rows.append({
            "model": model, "batch": batch, "rounds": len(pairs),
            "off_req_s": statistics.median(off["req_s"] for _, off in pairs),
            "on_req_s": statistics.median(on["req_s"] for on, _ in pairs),
            "off_p99_ms": statistics.median(off["p99_ms"] for _, off in pairs),
            "on_p99_ms": statistics.median(on["p99_ms"] for on, _ in pairs),
        })
        for name, key in (("throughput_ratio", "req_s"), ("p99_ratio", "p99_ms")):
            ratios = [on[key] / off[key] for on, off in pairs]
            rows[-1][name] = statistics.median(ratios)
            rows[-1][f"{name}_ci95"] = median_ci(ratios)
        idle = [r["idle_cores"] for r in mine if "idle_cores" in r]
        if idle:
            rows[-1]["idle_cores_max"] = max(idle)
        timed = [pair for pair in pairs if all("cpu_us_per_req" in run for run in pair)]
        for key in ("cpu_us_per_req", "loop_us_per_req", "loop_cores", "workers_us_per_req"):
            if not timed or any(key not in run for pair in timed for run in pair):
                continue
            rows[-1][f"off_{key}"] = statistics.median(off[key] for _, off in timed)
            rows[-1][f"on_{key}"] = statistics.median(on[key] for on, _ in timed)
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m loadtests.monitoring_overhead",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--window", type=float, default=2.0)
    parser.add_argument("--warmup", type=float, default=2.0,
                        help="seconds of load before measuring, not counted (0: none)")
    parser.add_argument("--max-trials", type=int, default=8)
    parser.add_argument("--out", type=Path, default=ROOT / "loadtests" / "results")
    parser.add_argument("--models", default=",".join(m for m, _ in POINTS),
                        help="which of the models to measure, comma-separated")
    args = parser.parse_args(argv)
    points = [(m, b) for m, b in POINTS if m in args.models.split(",")]
    if not points:
        parser.error(f"--models: none of {args.models!r} is one of "
                     f"{', '.join(m for m, _ in POINTS)}")
    if perfanalyzer.binary() is None:
        print(perfanalyzer.NOT_INSTALLED, file=sys.stderr)
        return 2
    runs: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="sluice-monitoring-") as tmp:
        repos = {"off": build(Path(tmp) / "off", False), "on": build(Path(tmp) / "on", True)}
        for model, batch in points:
            runs += measure_model(repos, Path(tmp) / model, model, batch, args)
    summary = summarize(runs)
    print("\nmodel     b   c  rounds   off req/s   on req/s  ratio (95% CI)      "
          "off p99   on p99  ratio (95% CI)")
    for row in summary:
        print(f"{row['model']:8} {row['batch']:2} {args.concurrency:3} {row['rounds']:6} "
              f"{row['off_req_s']:11.0f} {row['on_req_s']:10.0f} {row['throughput_ratio']:6.3f} "
              f"({row['throughput_ratio_ci95'][0]:.3f}-{row['throughput_ratio_ci95'][1]:.3f}) "
              f"{row['off_p99_ms']:7.2f}ms {row['on_p99_ms']:6.2f}ms {row['p99_ratio']:6.3f} "
              f"({row['p99_ratio_ci95'][0]:.3f}-{row['p99_ratio_ci95'][1]:.3f})")
    print("\nserver CPU (medians)  us/request off -> on   event loop: us/request, cores off -> on"
          "   workers us/request on")
    for row in summary:
        if "off_cpu_us_per_req" in row:
            print(f"{row['model']:8} {row['batch']:2}   {row['off_cpu_us_per_req']:7.0f} -> "
                  f"{row['on_cpu_us_per_req']:5.0f}        {row['off_loop_us_per_req']:5.0f} -> "
                  f"{row['on_loop_us_per_req']:5.0f},  {row['off_loop_cores']:.2f} -> "
                  f"{row['on_loop_cores']:.2f}   {row.get('on_workers_us_per_req', 0):12.1f}")
    for row in summary:
        if "idle_cores_max" in row:
            print(f"{row['model']:8}: the idle server used at most {row['idle_cores_max']:.3f} "
                  "of a core while the other was measured")
    args.out.mkdir(parents=True, exist_ok=True)
    write_json(args.out / "monitoring_overhead.json", {
        "settings": vars(args) | {"out": str(args.out)}, "runs": runs, "summary": summary})
    return 0


if __name__ == "__main__":
    sys.exit(main())
