"""REST on ``identity`` against a constant-answer servicer on the same HTTP library, side by side.

    python -m loadtests.rest_bench [--duration S] [--rounds R] [--concurrency C] [--out DIR]
        [--mlserver-python PATH]

Issue 17's performance section: Sluice's KServe v2 REST door on ``identity`` at concurrency 64
(``perf_analyzer -i http``, binary tensor data both ways) must reach at least 85% of a minimal
HTTP servicer on aiohttp that answers every infer with the same bytes
(:mod:`loadtests.rest_constant`). Both run for the whole benchmark, one process each; every
round measures both, the side that goes first alternating per round (the machine drifts).
Reported: per side the median over rounds of inferences/s and p50, and the median of the
per-round ratios (Sluice / constant) against the target. Writes ``rest_bench.json`` to ``--out``
(default ``loadtests/results/``, git-ignored). Needs perf_analyzer on PATH
(``python -m loadtests.get_perf_analyzer``).

With ``--mlserver-python PATH`` (an interpreter with MLServer 1.7.1 and onnxruntime), MLServer
serves the same ``identity.onnx`` (:mod:`loadtests.peer_mlserver`: a plain onnxruntime runtime,
inference in its server process) and a second table compares it over REST with Sluice and the
constant servicer. perf_analyzer cannot drive MLServer's REST (no model config endpoint, no
binary tensor data), so that table comes from :mod:`loadtests.rest_loadgen` (JSON tensors, the
same concurrency, a Python closed loop) on all three, rounds alternating the order; its figures
compare with each other only, not with the perf_analyzer table.

``--inline-ort`` adds a third side to the perf_analyzer table: :mod:`loadtests.rest_constant`
``--inline-ort``, the same aiohttp servicer running identity's ONNX file on each request (no
validation, batching or statistics), and its ratio to the constant: what computing the answer
costs at all on this library and machine, beside what Sluice's whole path costs.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import re
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

from loadtests import perfanalyzer
from loadtests.models import MODEL_REPOSITORY, ROOT
from loadtests.peer_mlserver import MLServerProcess
from loadtests.procs import checkout_env, terminate

MIN_RATIO = 0.85
_SIDES = ("sluice", "constant")
_JSON_SIDES = ("sluice", "constant", "mlserver")
_ADDRESS = re.compile(r"HTTP listening on (?:http://)?(\S+)\s*$")


def _start(args: list[str]) -> tuple[subprocess.Popen, str]:
    """Start ``python ARGS``; (process, host:port) once it listens and answers ready."""
    proc = subprocess.Popen([sys.executable, *args], cwd=ROOT, env=checkout_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert proc.stdout is not None
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        found = _ADDRESS.search(line)
        if found:
            address = found.group(1)
            while time.monotonic() < deadline:
                try:
                    with urllib.request.urlopen(f"http://{address}/v2/health/ready", timeout=5):
                        return proc, address
                except OSError:
                    time.sleep(0.2)
        if not line and proc.poll() is not None:
            break
    terminate(proc, 5)
    raise RuntimeError(f"{args[:3]} did not start")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=5.0, help="seconds per window")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--out", type=Path, default=ROOT / "loadtests" / "results")
    parser.add_argument("--inline-ort", action="store_true",
                        help="also measure an aiohttp servicer running identity inline")
    parser.add_argument("--mlserver-python", help="interpreter with MLServer 1.7.1 installed: "
                        "also measure MLServer's REST on identity (JSON tensors)")
    args = parser.parse_args(argv)
    if perfanalyzer.binary() is None:
        print(f"rest_bench: {perfanalyzer.NOT_INSTALLED}", file=sys.stderr)
        return 2
    if args.mlserver_python and not Path(args.mlserver_python).exists():
        print(f"rest_bench: --mlserver-python {args.mlserver_python} does not exist",
              file=sys.stderr)
        return 2
    sluice = _start(["-m", "sluice.server", "serve", "--model-repository", str(MODEL_REPOSITORY),
                     "--grpc-port", "0", "--http-port", "0", "--metrics-port", "-1",
                     "--model-control", "explicit", "--load-model", "identity",
                     "--log-level", "WARNING"])
    started = [sluice]
    try:
        constant = _start(["-m", "loadtests.rest_constant", "--port", "0"])
        started.append(constant)
        if args.inline_ort:
            started.append(_start(["-m", "loadtests.rest_constant", "--port", "0",
                                   "--inline-ort"]))
    except BaseException:
        for proc, _ in started:
            terminate(proc, 10)
        raise
    targets = {"sluice": sluice[1], "constant": constant[1]}
    sides = _SIDES
    if args.inline_ort:
        targets["inline_ort"] = started[2][1]
        sides = (*_SIDES, "inline_ort")
    rounds: list[dict[str, Any]] = []
    json_rounds: list[dict[str, Any]] = []
    peers = contextlib.ExitStack()
    try:
        if args.mlserver_python:
            mlserver = peers.enter_context(MLServerProcess(args.mlserver_python,
                                                           MODEL_REPOSITORY / "identity"))
            targets["mlserver"] = mlserver.http_target
        for index in range(args.rounds):
            order = sides if index % 2 == 0 else sides[::-1]
            point: dict[str, Any] = {}
            for side in order:
                point[side] = perfanalyzer.run(
                    target=targets[side], model="identity", concurrency=args.concurrency,
                    batch=1, streaming=False, duration_s=args.duration, stability_percent=100,
                    max_trials=4, protocol="http")
                print(f"round {index + 1} {side}: {point[side]}", flush=True)
            rounds.append(point)
        if "mlserver" in targets:
            json_rounds = _json_rounds(targets, args)
    finally:
        peers.close()
        for proc, _ in started:
            terminate(proc, 10)
    report = _report(rounds, sides)
    if json_rounds:
        report["json_loadgen"] = _json_report(json_rounds)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "rest_bench.json").write_text(json.dumps(
        {"rounds": rounds, "json_rounds": json_rounds, "summary": report}, indent=2))
    print(json.dumps(report, indent=2))
    return 0


def _json_rounds(targets: dict[str, str], args: argparse.Namespace) -> list[dict[str, Any]]:
    """Each round measures the three servers with :mod:`loadtests.rest_loadgen`, starting one
    place later in the order each time."""
    rounds = []
    for index in range(args.rounds):
        shift = index % len(_JSON_SIDES)
        point: dict[str, Any] = {}
        for side in _JSON_SIDES[shift:] + _JSON_SIDES[:shift]:
            done = subprocess.run(
                [sys.executable, "-m", "loadtests.rest_loadgen", "--target", targets[side],
                 "--concurrency", str(args.concurrency), "--duration", str(args.duration)],
                cwd=ROOT, env=checkout_env(), capture_output=True, text=True,
                timeout=args.duration + 120, check=False)
            lines = done.stdout.strip().splitlines()
            point[side] = json.loads(lines[-1]) if lines else {
                "error": f"rest_loadgen exited {done.returncode}: {done.stderr[-300:]}"}
            print(f"json round {index + 1} {side}: {point[side]}", flush=True)
        rounds.append(point)
    return rounds


def _json_report(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    good = [r for r in rounds if all("infer_s" in r[side] for side in _JSON_SIDES)]
    if not good:
        return {"error": "no round measured all three"}
    summary: dict[str, Any] = {side: {
        "infer_s": statistics.median(r[side]["infer_s"] for r in good),
        "p50_ms": statistics.median(r[side]["p50_ms"] for r in good),
    } for side in _JSON_SIDES}
    for side in ("constant", "mlserver"):
        summary[f"sluice_over_{side}"] = round(statistics.median(
            r["sluice"]["infer_s"] / r[side]["infer_s"] for r in good), 3)
    summary["rounds"] = len(good)
    return summary


def _report(rounds: list[dict[str, Any]], sides: tuple[str, ...] = _SIDES) -> dict[str, Any]:
    good = [r for r in rounds if all("rows_s" in r[side] for side in sides)]
    if not good:
        return {"error": "no round measured every side"}
    summary: dict[str, Any] = {}
    for side in sides:
        summary[side] = {
            "infer_s": statistics.median(r[side]["rows_s"] for r in good),
            "p50_ms": statistics.median(r[side]["p50_ms"] for r in good),
        }
    ratio = statistics.median(r["sluice"]["rows_s"] / r["constant"]["rows_s"] for r in good)
    summary["ratio"] = round(ratio, 3)
    summary["target"] = MIN_RATIO
    summary["meets_target"] = ratio >= MIN_RATIO
    if "inline_ort" in sides:
        summary["inline_ort_ratio"] = round(statistics.median(
            r["inline_ort"]["rows_s"] / r["constant"]["rows_s"] for r in good), 3)
    return summary


if __name__ == "__main__":
    sys.exit(main())
