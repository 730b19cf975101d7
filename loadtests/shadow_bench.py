"""Rollout overhead: what shadow execution and routing cost the live traffic (issue 5).

    python -m loadtests.shadow_bench [--quick] [--model M] [--batch B] [--rounds R] [--out DIR]

Targets: with shadow at 100% sampling to a same-size candidate at 50% of capacity, the live p50
and p99 rise by at most 10% over no shadow; routing adds at most 20 us p50 per request. One
server (``python -m sluice.server serve``, port 0) on a temporary repository in which ``--model``
(default ``cnn``) and ``--routing-model`` (default ``identity``, plus a copy ``identity_routed``)
have versions 1 and 2 holding the same ONNX file (``version_policy { all { } }``): the
candidate is the live model's twin, so agreement must be 1.0.

1. **Shadow.** Routes 100% to v1, measures v1's capacity C (closed-loop throughput at
   concurrency 64, whatever its latency; or ``--capacity``), then runs one open-loop timetable
   (:mod:`loadtests.openloop`, one process; ``--load`` x C, default 0.5, of ``--batch``-row
   requests, default 8, so ~100-160 req/s, which the generator sends on time: see ``lag99``):
   a warm-up, then phases A, B, A, B, ... (``--rounds`` each). A: no shadow; B: shadow of v2
   at sample 1.0. A controller thread starts and stops the shadow through
   :class:`sluice.clients.admin.AdminClient` at each phase start; the first ``settle`` s of a phase
   are not counted. Per phase: client-observed p50/p95/p99 of successes, goodput (OK within
   ``--slo-ms``), errors, generator lag; v1's server-side mean e2e/queue/compute from
   ModelStatistics' cumulative counters over the counted window; per B phase the shadow report.
   (v1's e2e quantiles from the ``sluice-latency-quantiles`` trailer go to the JSON only: the
   server's window is 60 s, so they span earlier phases.) Verdict: median over rounds of
   B_k / A_k for p50 and p99, against 1.10.
2. **Routing.** Closed loop at concurrency 1 from this process (one blocking channel,
   pre-serialized requests, ``time.perf_counter_ns``), five variants taking turns request by
   request, in a random order per turn, so they share the machine's noise: ``plain``
   (``identity``: no deployment, no version named), ``one_arm`` (``identity_one_arm``: routes
   100% to v2, the version ``plain`` answers with: the routing path alone), ``routed``
   (``identity_routed``: routes v1 90 / v2 10, which also splits the traffic over two
   versions' threads), ``sticky`` (same, ``sticky_key`` cycling over 256 keys) and ``plain2``
   (``plain`` again: the noise floor).
   Overhead = median over rounds of (variant p50 - plain p50). End to end on purpose: the
   server's own e2e timer starts after routing.

Writes ``shadow_bench.json`` (every phase and round) to ``--out`` (default
``loadtests/results/``). About 1.5 min (30 s with ``--quick``).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from loadtests import overload_report as rep
from loadtests.bench import machine_info
from loadtests.models import MODEL_REPOSITORY, ROOT
from loadtests.overload import input_specs, log
from loadtests.procs import ServerProcess, run_load
from loadtests.report import write_json
from loadtests.routing_bench import (
    CANDIDATE,
    LIVE,
    ONE_ARM_SUFFIX,
    ROUTED_SUFFIX,
    median,
    routing_bench,
)
from loadtests.shadow_report import RATIO_LIMIT, print_report
from sluice.clients import Client
from sluice.clients.admin import AdminClient


@dataclass(frozen=True)
class Settings:
    model: str
    batch: int
    load: float
    rounds: int
    phase_s: float
    settle_s: float
    warmup_s: float
    slo_ms: float
    deadline_ms: float
    capacity_s: float
    capacity: float | None
    channels: int
    routing_model: str
    routing_requests: int
    routing_rounds: int
    out: Path
    quick: bool


def build_repository(root: Path, models: dict[str, str]) -> Path:
    """Copies of bundled models (``{name: bundled name}``) whose version 2 is version 1's
    files, all versions served. A bundled model's own other versions (``digits`` ships a
    different model as version 2) are left out: the candidate must be the live model's twin."""
    repo = root / "models"
    serve_all = "version_policy { all { } }"
    for name, source in models.items():
        shutil.copytree(
            MODEL_REPOSITORY / source, repo / name,
            ignore=lambda folder, names: [
                n for n in names if n in ("__pycache__", ".sluice-state") or n.endswith(".py")
                or (n.isdigit() and n != str(LIVE))
            ],
        )
        shutil.copytree(repo / name / str(LIVE), repo / name / str(CANDIDATE))
        config = repo / name / "config.pbtxt"
        text = config.read_text()
        if "version_policy" in text and serve_all not in text:
            raise SystemExit(f"{config} already has another version_policy")
        text = text.replace(f'name: "{source}"', f'name: "{name}"')
        config.write_text(text if serve_all in text else f"{text}{serve_all}\n")
    return repo


# -- 1. shadow: one open-loop timetable, shadow toggled per phase -----------------------------


def plan(s: Settings, capacity: float) -> list[dict[str, Any]]:
    rate = s.load * capacity
    phases = [{"name": "warm-up", "arm": "A", "rate": rate, "duration_s": s.warmup_s}]
    for k in range(s.rounds):
        phases += [{"name": f"{arm}{k + 1}", "arm": arm, "rate": rate, "duration_s": s.phase_s}
                   for arm in ("A", "B")]
    return phases


def _v1_counters(client: Client, model: str) -> dict[str, int]:
    for stats in client.statistics(model, str(LIVE)).model_stats:
        i = stats.inference_stats
        return {"count": i.success.count, "e2e_ns": i.success.ns, "queue_ns": i.queue.ns,
                "compute_ns": i.compute_infer.ns, "fail": i.fail.count}
    raise RuntimeError(f"no statistics for {model} v{LIVE}")


class Controller(threading.Thread):
    """At each phase start applies the phase's shadow setting; snapshots v1's cumulative
    counters after the settle time and at the phase end, and reads the shadow report at the end
    of every B phase. Failures are kept in ``errors`` (the main thread raises them)."""

    def __init__(self, s: Settings, target: str, start: float,
                 phases: list[dict[str, Any]]) -> None:
        super().__init__(daemon=True, name="shadow-controller")
        self._s, self._target, self._start, self._phases = s, target, start, phases
        self.errors: list[str] = []

    def run(self) -> None:
        s = self._s
        edges = np.cumsum([0.0] + [p["duration_s"] for p in self._phases]) + self._start
        shadowing = False
        with Client(self._target, timeout=10.0) as client, \
                AdminClient(self._target, caller="shadow_bench", timeout=10.0) as admin:
            for phase, begin, end in zip(self._phases, edges[:-1], edges[1:], strict=True):
                _sleep_until(begin)
                try:
                    if phase["arm"] == "B" and not shadowing:
                        admin.start_shadow(s.model, CANDIDATE, sample=1.0, reason="bench B")
                    elif phase["arm"] == "A" and shadowing:
                        admin.stop_shadow(s.model, CANDIDATE, reason="bench A")
                    shadowing = phase["arm"] == "B"
                    _sleep_until(begin + (0.0 if phase["name"] == "warm-up" else s.settle_s))
                    phase["counters_from"] = _v1_counters(client, s.model)
                    _sleep_until(end)
                    phase["counters_to"] = _v1_counters(client, s.model)
                    e2e = client.latency(s.model).get(s.model, {}).get(str(LIVE), {}).get("e2e")
                    phase["server_window_e2e_s"] = e2e
                    if shadowing:
                        reports = admin.shadow_report(s.model)
                        phase["shadow"] = next((r for r in reports
                                                if r["shadow_version"] == CANDIDATE), None)
                except Exception as exc:  # report it; the timetable runs on regardless
                    self.errors.append(f"{phase['name']}: {type(exc).__name__}: {exc}")
            if shadowing:
                admin.stop_shadow(s.model, CANDIDATE, reason="bench done")


def _child_env() -> dict[str, str]:
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)
    return dict(os.environ, PYTHONPATH=path)


def _sleep_until(instant: float) -> None:
    time.sleep(max(0.0, instant - time.monotonic()))


def open_loop(s: Settings, target: str, phases: list[dict[str, Any]]) -> tuple[
        rep.Records, dict[str, Any]]:
    """One generator process runs the whole timetable while the controller toggles shadow."""
    total_s = sum(p["duration_s"] for p in phases)
    gen_phases = json.dumps([{"rate": p["rate"], "duration_s": p["duration_s"]} for p in phases])
    with tempfile.TemporaryDirectory(prefix="sluice-shadow-") as tmp:
        out = Path(tmp) / "gen.npz"
        child = subprocess.Popen(
            [sys.executable, "-m", "loadtests.openloop", "--target", target, "--model", s.model,
             "--batch", str(s.batch), "--phases", gen_phases, "--deadline-ms", str(s.deadline_ms),
             "--out", str(out), "--channels", str(s.channels)],
            cwd=ROOT, env=_child_env(), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, text=True)
        try:
            assert child.stdout is not None and child.stdin is not None
            if child.stdout.readline().strip() != "ready":
                _, err = child.communicate(timeout=30)
                raise RuntimeError(f"open-loop generator failed to start: {err[-2000:]}")
            start = time.monotonic() + 0.5
            controller = Controller(s, target, start, phases)
            controller.start()
            child.stdin.write(f"{start!r}\n")
            child.stdin.flush()
            stdout, stderr = child.communicate(timeout=total_s + s.deadline_ms / 1e3 + 60)
        finally:
            if child.poll() is None:
                child.kill()
                child.wait()
        controller.join(timeout=30)
        summary = next((json.loads(x) for x in reversed(stdout.splitlines())
                        if x.startswith("{")), None)
        if summary is None or "fatal" in summary or child.returncode != 0:
            raise RuntimeError(f"open-loop generator failed: {summary} {stderr[-2000:]}")
        if controller.errors:
            raise RuntimeError("shadow controller: " + "; ".join(controller.errors))
        with np.load(out) as data:
            records = rep.Records.merge([{k: data[k] for k in data.files}])
    return records, summary


def analyze_phases(s: Settings, capacity: float, phases: list[dict[str, Any]],
                   records: rep.Records) -> list[dict[str, Any]]:
    rows, t = [], 0.0
    for p in phases:
        settle = 0.0 if p["name"] == "warm-up" else s.settle_s
        stats = rep.phase_stats(records, t + settle, p["duration_s"] - settle, s.slo_ms / 1e3,
                                capacity)
        t += p["duration_s"]
        a, b = p.get("counters_from"), p.get("counters_to")
        server = None
        if a and b and b["count"] > a["count"]:
            n = b["count"] - a["count"]
            server = {"requests": n, "fail": b["fail"] - a["fail"],
                      **{f"{k[:-3]}_mean_ms": (b[k] - a[k]) / n / 1e6
                         for k in ("e2e_ns", "queue_ns", "compute_ns")}}
        window = p.get("server_window_e2e_s") or {}
        rows.append({"name": p["name"], "arm": p["arm"], "rate": p["rate"], **stats,
                     "server_v1": server, "server_window_e2e_ms": {
                         k: v * 1e3 for k, v in window.items() if v is not None},
                     "shadow": p.get("shadow")})
    return rows


def shadow_verdict(rows: list[dict[str, Any]]) -> dict[str, Any]:
    a = [r for r in rows if r["arm"] == "A" and r["name"] != "warm-up"]
    b = [r for r in rows if r["arm"] == "B"]
    out: dict[str, Any] = {"rounds": min(len(a), len(b))}
    for key in ("accepted_p50_ms", "accepted_p95_ms", "accepted_p99_ms", "goodput_req_s"):
        out[f"A_{key}"] = median([r[key] for r in a])
        out[f"B_{key}"] = median([r[key] for r in b])
    for q in ("p50", "p99"):
        ratios = [y[f"accepted_{q}_ms"] / x[f"accepted_{q}_ms"] for x, y in zip(a, b, strict=False)
                  if x[f"accepted_{q}_ms"] and y[f"accepted_{q}_ms"]]
        ratio = median(ratios)
        out[f"{q}_ratios"] = ratios
        out[f"{q}_ratio"] = ratio
        out[f"{q}_pass"] = None if ratio is None else ratio <= RATIO_LIMIT
    return out


# -- the run ----------------------------------------------------------------------------------


def run(s: Settings) -> dict[str, Any]:
    info = machine_info()
    with ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="sluice-shadow-")))
        repository = build_repository(tmp, {s.model: s.model, s.routing_model: s.routing_model,
                                            s.routing_model + ROUTED_SUFFIX: s.routing_model,
                                            s.routing_model + ONE_ARM_SUFFIX: s.routing_model})
        server = stack.enter_context(ServerProcess("sluice", [
            "-m", "sluice.server", "serve", "--model-repository", str(repository),
            "--host", "127.0.0.1", "--grpc-port", "0", "--metrics-port", "-1",
            "--log-level", "WARNING",
        ]))
        target = server.target
        log(f"server {target} (pid {server.pid}); {s.model} and {s.routing_model} with "
            f"versions {LIVE} and {CANDIDATE} (same file)")
        with AdminClient(target, caller="shadow_bench", timeout=10.0) as admin:
            admin.set_routes(s.model, {LIVE: 100.0}, reason="bench: all traffic to v1")
        capacity_run, capacity = None, s.capacity
        if capacity is None:
            result = run_load(
                label="capacity", target=target, model=s.model,
                inputs=input_specs(target, s.model), batch=s.batch, concurrency=64, procs=1,
                duration_s=s.capacity_s, warmup_s=1.0,
            )
            if result.errors or not result.count:
                raise RuntimeError(f"capacity run failed: {result.first_error}")
            capacity_run, capacity = dataclasses.asdict(result), result.req_s
            log(f"capacity C = {capacity:,.0f} req/s of v{LIVE} (closed loop, c=64, "
                f"p50 {result.p50_ms:.1f} p99 {result.p99_ms:.1f} ms)")
        phases = plan(s, capacity)
        log(f"open loop at {s.load:g} x C = {s.load * capacity:,.0f} req/s: {s.rounds} x (A, B), "
            f"{s.phase_s:g} s each, first {s.settle_s:g} s not counted")
        records, generator = open_loop(s, target, phases)
        rows = analyze_phases(s, capacity, phases, records)
        log(f"routing: {s.routing_rounds} rounds x 4 variants x {s.routing_requests} requests, "
            "interleaved, concurrency 1")
        routing = routing_bench(target, s.routing_model, s.routing_requests, s.routing_rounds)
        exit_code = server.stop()
    return {
        "settings": {**dataclasses.asdict(s), "out": str(s.out)},
        "machine": {**info, "load_average_at_end": os.getloadavg()},
        "capacity_req_s": capacity, "capacity_run": capacity_run,
        "generator": generator, "server_exit_code": exit_code,
        "shadow": {"phases": rows, **shadow_verdict(rows)}, "routing": routing,
    }


def parse(argv: list[str] | None) -> Settings:
    parser = argparse.ArgumentParser(prog="python -m loadtests.shadow_bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer and shorter rounds")
    parser.add_argument("--model", default="cnn", help="shadowed model (default cnn)")
    parser.add_argument("--batch", type=int, default=8, help="rows per request (default 8)")
    parser.add_argument("--load", type=float, default=0.5, help="offered load, multiple of C")
    parser.add_argument("--rounds", type=int, help="A and B phases each (default 4; quick 3)")
    parser.add_argument("--slo-ms", type=float, default=50.0, help="goodput threshold")
    parser.add_argument("--deadline-ms", type=float, default=1000.0, help="gRPC deadline")
    parser.add_argument("--capacity", type=float, help="req/s: skip measuring C, use this")
    parser.add_argument("--channels", type=int, default=4, help="generator connections")
    parser.add_argument("--routing-model", default="identity")
    parser.add_argument("--routing-requests", type=int,
                        help="timed requests per variant and round (default 1500; quick 400)")
    parser.add_argument("--routing-rounds", type=int, help="routing rounds (default 5; quick 3)")
    parser.add_argument("--out", type=Path, default=ROOT / "loadtests" / "results")
    args = parser.parse_args(argv)
    quick = args.quick
    return Settings(
        model=args.model, batch=args.batch, load=args.load,
        rounds=args.rounds or (3 if quick else 4), phase_s=3.0 if quick else 7.0,
        settle_s=1.0 if quick else 1.5, warmup_s=1.0 if quick else 2.0, slo_ms=args.slo_ms,
        deadline_ms=args.deadline_ms, capacity_s=2.0 if quick else 3.0, capacity=args.capacity,
        channels=args.channels, routing_model=args.routing_model,
        routing_requests=args.routing_requests or (400 if quick else 1500),
        routing_rounds=args.routing_rounds or (3 if quick else 5), out=args.out, quick=quick,
    )


def main(argv: list[str] | None = None) -> int:
    settings = parse(argv)
    payload = run(settings)
    settings.out.mkdir(parents=True, exist_ok=True)
    write_json(settings.out / "shadow_bench.json", payload)
    print_report(payload)
    print(f"wrote {settings.out / 'shadow_bench.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
