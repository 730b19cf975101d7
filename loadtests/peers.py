"""Sluice beside its peers: the same models, the same client, one server at a time.

    python -m loadtests.peers [--quick] [--rounds 2] [--models identity,mlp,cnn28]
        [--concurrency 1,8,64] [--mlserver-python PATH] [--out DIR]

Servers, each in its own subprocess on 127.0.0.1, started for one point and stopped after it:

1. **bare**: :mod:`loadtests.ceiling`, a grpc.aio servicer answering a constant shaped like the
   model's answer (plus the ModelMetadata/ModelConfig perf_analyzer asks for);
2. **inline-ORT**: :mod:`loadtests.inline_ort`, one onnxruntime call per request on the event
   loop, one intra-op thread, no batching;
3. **Sluice**: ``python -m sluice.server serve`` on a repository holding only the measured model;
4. **MLServer** 1.7.1 (:mod:`loadtests.peer_mlserver`), only with ``--mlserver-python PATH`` to
   an interpreter that has it (skipped, with a note, otherwise; nothing is installed here).

Models (:mod:`loadtests.peer_models`, written to a temporary Triton-layout repository): the
bundled ``identity``, ``mlp`` (64->128->10) and ``cnn28`` (1x28x28 -> 10), each with
``max_batch_size: 64``, dynamic batching and one CPU instance in Sluice.

Client: Triton's perf_analyzer over gRPC (:mod:`loadtests.perfanalyzer`; it must be on PATH),
unary, synchronous, batch-1 requests, at each concurrency. Stability: perf_analyzer measures
windows of ``--window`` s (2 s, 0.5 s with ``--quick``) until the last three agree within
``--stability`` percent (100 by default, not perf_analyzer's 10%: on a shared, noisy 2-core box
10% is rarely met, while a factor of two still rejects a window spoilt by a stall), at most
``--max-trials`` windows (10; 6 with ``--quick``); it reports the three windows pooled. Its first
windows double as the server's warm-up. A point that never stabilizes is recorded as an error.

Interleaving: in each round the in-process onnxruntime p50 of every model at batch 1 is measured
first (:mod:`loadtests.ortbench`, no server running), then for each (model, concurrency) every
server is measured in turn, the order rotated by one each round, so the servers compared in a
ratio are measured seconds apart. Figures are medians over ``--rounds`` (2; 1 with ``--quick``);
ratios are computed per round, then their median (:mod:`loadtests.peer_report`).

Prints the throughput table (req/s per server, Sluice/bare, Sluice/inline), the p50 table at
concurrency 1 with each model's ORT p50 and Sluice's overhead (Sluice p50 - bare p50 - ORT p50,
target <= 60 us), and writes ``peers.json`` (settings, every run, the ORT runs, the summary) to
``--out`` (default ``loadtests/results/``, git-ignored). A full default run is about 72 points
of ~10-25 s each. Nothing here imports ``server``.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from loadtests import ortbench, perfanalyzer
from loadtests.models import ROOT, load_spec
from loadtests.peer_mlserver import MLServerProcess
from loadtests.peer_models import MODELS, build_repository
from loadtests.peer_report import SERVERS, latency_table, summarize, throughput_table
from loadtests.procs import ServerProcess
from loadtests.report import write_json

Starter = Callable[[], contextlib.AbstractContextManager[Any]]


def _ints(text: str) -> list[int]:
    return [int(part) for part in text.split(",") if part]


def _names(text: str) -> list[str]:
    return [part for part in text.split(",") if part]


def starters(
    model: str, repository: Path, mlserver_python: str | None
) -> dict[str, Starter]:
    """Server key -> a fresh context manager serving ``model`` (its ``target`` once entered)."""
    model_dir = repository / model
    found: dict[str, Starter] = {
        "bare": lambda: ServerProcess("bare", [
            "-m", "loadtests.ceiling", "--port", "0", "--model-dir", str(model_dir)]),
        "inline_ort": lambda: ServerProcess("inline-ort", [
            "-m", "loadtests.inline_ort", "--port", "0", "--model-dir", str(model_dir)]),
        "sluice": lambda: ServerProcess("sluice", [
            "-m", "sluice.server", "serve", "--model-repository", str(repository),
            "--host", "127.0.0.1", "--grpc-port", "0", "--metrics-port", "-1",
            "--log-level", "WARNING"]),
    }
    if mlserver_python:
        found["mlserver"] = lambda: MLServerProcess(mlserver_python, model_dir)
    return found


def measure(start: Starter, model: str, concurrency: int, args: argparse.Namespace
            ) -> dict[str, Any]:
    """Start a server, run perf_analyzer on one point, stop it; a failed start is an error."""
    try:
        with start() as server:
            return perfanalyzer.run(
                target=server.target, model=model, concurrency=concurrency, batch=1,
                streaming=False, duration_s=args.window, stability_percent=args.stability,
                max_trials=args.max_trials,
            )
    except RuntimeError as exc:
        return {"error": str(exc)[-1000:]}


def _rotated(keys: list[str], by: int) -> list[str]:
    by %= len(keys)
    return keys[by:] + keys[:by]


def _say(run: dict[str, Any]) -> None:
    where = (f"round {run['round']} {run['model']:8} c={run['concurrency']:<3} "
             f"{SERVERS[run['server']]:10}")
    if "error" in run:
        print(f"{where} error: {run['error'].strip().splitlines()[-1][:160]}", flush=True)
    else:
        print(f"{where} {run['req_s']:9.0f} req/s  p50 {run['p50_ms'] * 1e3:7.0f} us  "
              f"p99 {run['p99_ms'] * 1e3:7.0f} us", flush=True)


def run_all(args: argparse.Namespace, mlserver_python: str | None) -> dict[str, Any]:
    """Every round of every point; returns the payload written to ``peers.json``."""
    runs: list[dict[str, Any]] = []
    ort: list[dict[str, Any]] = []
    began = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="sluice-peers-") as tmp:
        repositories = {m: build_repository(Path(tmp) / m, [m]) for m in args.models}
        for round_no in range(1, args.rounds + 1):
            for model in args.models:
                spec = load_spec(model, repositories[model])
                result = ortbench.measure(spec, 1, args.ort_budget, args.ort_budget / 4)
                ort.append({"round": round_no, "model": model, "p50_ms": result.p50_ms,
                            "p99_ms": result.p99_ms, "calls": result.calls})
                print(f"round {round_no} {model:8} in-process ORT batch 1: p50 "
                      f"{result.p50_ms * 1e3:.1f} us", flush=True)
            for model in args.models:
                servers = starters(model, repositories[model], mlserver_python)
                for concurrency in args.concurrency:
                    for key in _rotated(list(servers), round_no - 1):
                        result = measure(servers[key], model, concurrency, args)
                        run = {"round": round_no, "server": key, "model": model,
                               "concurrency": concurrency, **result}
                        runs.append(run)
                        _say(run)
    return {
        "settings": {
            "rounds": args.rounds, "models": args.models, "concurrency": args.concurrency,
            "window_s": args.window, "stability_percent": args.stability,
            "max_trials": args.max_trials, "batch": 1, "mode": "unary",
            "ort_budget_s": args.ort_budget, "quick": args.quick,
        },
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                    "python": sys.version.split()[0]},
        "elapsed_s": time.monotonic() - began,
        "runs": runs,
        "ort": ort,
    }


def _mlserver(path: str | None) -> tuple[str | None, str | None]:
    """(interpreter to use, or None; a note when MLServer is skipped)."""
    if path is None:
        return None, "MLServer skipped: no --mlserver-python given"
    if not Path(path).exists():
        return None, f"MLServer skipped: --mlserver-python {path} does not exist"
    return path, None


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m loadtests.peers", description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--quick", action="store_true",
                        help="short windows, fewer trials, 1 round (a smoke run)")
    parser.add_argument("--rounds", type=int, help="rounds (default 2; 1 with --quick)")
    parser.add_argument("--models", type=_names, default=list(MODELS),
                        help=f"comma-separated, from {','.join(MODELS)} (default all)")
    parser.add_argument("--concurrency", type=_ints, default=[1, 8, 64],
                        help="comma-separated concurrency levels (default 1,8,64)")
    parser.add_argument("--window", type=float,
                        help="perf_analyzer measurement window, s (default 2; 0.5 quick)")
    parser.add_argument("--stability", type=float, default=100.0,
                        help="perf_analyzer --stability-percentage (default 100)")
    parser.add_argument("--max-trials", type=int,
                        help="perf_analyzer --max-trials (default 10; 6 quick)")
    parser.add_argument("--mlserver-python", help="interpreter with MLServer 1.7.1 installed")
    parser.add_argument("--out", type=Path, default=ROOT / "loadtests" / "results")
    args = parser.parse_args(argv)
    unknown = sorted(set(args.models) - set(MODELS))
    if unknown:
        parser.error(f"unknown model(s) {unknown}; known: {list(MODELS)}")
    if args.rounds is None:
        args.rounds = 1 if args.quick else 2
    if args.window is None:
        args.window = 0.5 if args.quick else 2.0
    if args.max_trials is None:
        args.max_trials = 6 if args.quick else 10
    args.ort_budget = 0.5 if args.quick else 2.0
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if perfanalyzer.binary() is None:
        print("peers: perf_analyzer is not on PATH (python -m loadtests.get_perf_analyzer installs "
              "it); nothing to measure", file=sys.stderr)
        return 2
    mlserver_python, note = _mlserver(args.mlserver_python)
    if note:
        print(note, flush=True)
    payload = run_all(args, mlserver_python)
    summary = summarize(payload["runs"], payload["ort"], args.models, args.concurrency)
    payload["notes"] = [note] if note else []
    payload["summary"] = summary
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / "peers.json"
    write_json(path, payload)
    print()
    print(f"medians over {args.rounds} round(s); perf_analyzer, batch 1, unary")
    print(throughput_table(summary))
    print()
    print(latency_table(summary))
    if note:
        print(note)
    print(f"\nwrote {path} ({payload['elapsed_s']:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
