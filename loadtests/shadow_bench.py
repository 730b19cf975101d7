"""Rollout overhead: what shadow execution and routing cost the live traffic (issue 5).

    python -m loadtests.shadow_bench [--quick] [--model M] [--batch B] [--rounds R] [--out DIR]

Targets: with shadow at 100% sampling to a same-size candidate at 50% of capacity, the live p50
and p99 rise by at most 10% over no shadow; routing adds at most 20 us p50 per request. One
server (``python -m server serve``, port 0) on a temporary repository in which ``--model``
(default ``cnn``) and ``--routing-model`` (default ``identity``, plus a copy ``identity_routed``)
have versions 1 and 2 holding the same ONNX file (``version_policy { all { } }``): the
candidate is the live model's twin, so agreement must be 1.0.

1. **Shadow.** Routes 100% to v1, measures v1's capacity C (closed loop, concurrency 64, as
   :mod:`loadtests.overload`; or ``--capacity``), then runs one open-loop timetable
   (:mod:`loadtests.openloop`, one process; ``--load`` x C, default 0.5, of ``--batch``-row
   requests, default 8, so ~100-160 req/s, which the generator sends on time: see ``lag99``):
   a warm-up, then phases A, B, A, B, ... (``--rounds`` each). A: no shadow; B: shadow of v2
   at sample 1.0. A controller thread starts and stops the shadow through
   :class:`clients.admin.AdminClient` at each phase start; the first ``settle`` s of a phase
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
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import numpy as np

from clients import Client
from clients.admin import AdminClient
from clients.messages import build_request, channel_options
from loadtests import overload_report as rep
from loadtests.bench import machine_info
from loadtests.models import MODEL_REPOSITORY, ROOT, inputs_from_metadata
from loadtests.overload import input_specs, log
from loadtests.procs import ServerProcess, run_load
from loadtests.report import write_json
from proto import grpc_service_pb2 as pb

_METHOD = "/inference.GRPCInferenceService/ModelInfer"
_ARM_PARAM = "sluice_arm"
_LIVE, _CANDIDATE = 1, 2
_RATIO_LIMIT = 1.10
_ROUTING_LIMIT_US = 20.0
_STICKY_KEYS = 256
_ROUTING_WARMUP = 50  # untimed requests of each variant per round
_ROUTED_SUFFIX = "_routed"
#: A copy routed 100% to the version the plain model answers with: the routing path alone,
#: without the second version's thread and cache that a 90/10 split adds.
_ONE_ARM_SUFFIX = "_one_arm"


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
    files, all versions served."""
    repo = root / "models"
    for name, source in models.items():
        shutil.copytree(MODEL_REPOSITORY / source, repo / name,
                        ignore=shutil.ignore_patterns("*.py", "__pycache__", ".sluice-state"))
        shutil.copytree(repo / name / str(_LIVE), repo / name / str(_CANDIDATE))
        config = repo / name / "config.pbtxt"
        text = config.read_text()
        if "version_policy" in text:
            raise SystemExit(f"{config} already has a version_policy")
        text = text.replace(f'name: "{source}"', f'name: "{name}"')
        config.write_text(text + "version_policy { all { } }\n")
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
    for stats in client.statistics(model, str(_LIVE)).model_stats:
        i = stats.inference_stats
        return {"count": i.success.count, "e2e_ns": i.success.ns, "queue_ns": i.queue.ns,
                "compute_ns": i.compute_infer.ns, "fail": i.fail.count}
    raise RuntimeError(f"no statistics for {model} v{_LIVE}")


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
                        admin.start_shadow(s.model, _CANDIDATE, sample=1.0, reason="bench B")
                    elif phase["arm"] == "A" and shadowing:
                        admin.stop_shadow(s.model, _CANDIDATE, reason="bench A")
                    shadowing = phase["arm"] == "B"
                    _sleep_until(begin + (0.0 if phase["name"] == "warm-up" else s.settle_s))
                    phase["counters_from"] = _v1_counters(client, s.model)
                    _sleep_until(end)
                    phase["counters_to"] = _v1_counters(client, s.model)
                    e2e = client.latency(s.model).get(s.model, {}).get(str(_LIVE), {}).get("e2e")
                    phase["server_window_e2e_s"] = e2e
                    if shadowing:
                        reports = admin.shadow_report(s.model)
                        phase["shadow"] = next((r for r in reports
                                                if r["shadow_version"] == _CANDIDATE), None)
                except Exception as exc:  # report it; the timetable runs on regardless
                    self.errors.append(f"{phase['name']}: {type(exc).__name__}: {exc}")
            if shadowing:
                admin.stop_shadow(s.model, _CANDIDATE, reason="bench done")


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
        out[f"A_{key}"] = _median([r[key] for r in a])
        out[f"B_{key}"] = _median([r[key] for r in b])
    for q in ("p50", "p99"):
        ratios = [y[f"accepted_{q}_ms"] / x[f"accepted_{q}_ms"] for x, y in zip(a, b, strict=False)
                  if x[f"accepted_{q}_ms"] and y[f"accepted_{q}_ms"]]
        ratio = _median(ratios)
        out[f"{q}_ratios"] = ratios
        out[f"{q}_ratio"] = ratio
        out[f"{q}_pass"] = None if ratio is None else ratio <= _RATIO_LIMIT
    return out


def _median(values: list[Any]) -> float | None:
    values = [v for v in values if v is not None]
    return float(statistics.median(values)) if values else None


# -- 2. routing: closed loop at concurrency 1, end to end -------------------------------------


def routing_bench(s: Settings, target: str) -> dict[str, Any]:
    """Rounds of requests of the five variants interleaved one by one, so every variant sees
    the same noise; per round and variant p50/p90/p99/mean in us
    and the versions and arms that answered."""
    plain_model, routed_model = s.routing_model, s.routing_model + _ROUTED_SUFFIX
    one_arm = s.routing_model + _ONE_ARM_SUFFIX
    with Client(target, timeout=15.0) as client:
        inputs = inputs_from_metadata(client.model_metadata(plain_model), 1)
    with AdminClient(target, caller="shadow_bench", timeout=10.0) as admin:
        admin.set_routes(routed_model, {_LIVE: 90.0, _CANDIDATE: 10.0}, reason="bench: 90/10")
        admin.set_routes(one_arm, {_CANDIDATE: 100.0}, reason="bench: one arm")
    plain = [build_request(plain_model, inputs).SerializeToString()]
    variants = {
        "plain": plain,
        "one_arm": [build_request(one_arm, inputs).SerializeToString()],
        "routed": [build_request(routed_model, inputs).SerializeToString()],
        "sticky": [build_request(routed_model, inputs, parameters={"sticky_key": f"user-{k}"})
                   .SerializeToString() for k in range(_STICKY_KEYS)],
        "plain2": plain,
    }
    names = list(variants)
    rounds: list[dict[str, Any]] = []
    channel = grpc.insecure_channel(target, options=channel_options(None))
    method = channel.unary_unary(_METHOD)  # bytes in, bytes out
    try:
        for r in range(s.routing_rounds):
            lat, answered = _timed_round(method, [variants[n] for n in names],
                                         s.routing_requests, seed=r)
            for k, name in enumerate(names):
                us = lat[k] / 1e3
                p50, p90, p99 = np.percentile(us, [50, 90, 99])
                rounds.append({"round": r, "variant": name, "p50_us": float(p50),
                               "p90_us": float(p90), "p99_us": float(p99),
                               "mean_us": float(us.mean()), "answered": answered[k]})
    finally:
        channel.close()
    return {"model": plain_model, "routed_model": routed_model,
            "requests_per_variant_and_round": s.routing_requests, "rounds": rounds,
            **routing_summary(rounds)}


def _timed_round(method: Any, kinds: list[list[bytes]], count: int, seed: int) -> tuple[
        np.ndarray, list[dict[str, int]]]:
    """``count`` requests of each kind, one of each per turn in a random order (a fixed order
    would give each kind the same predecessor every time, and following a request to the same
    model can be faster); latencies in ns [kind, i]."""
    lat = np.empty((len(kinds), count), np.int64)
    answered: list[dict[str, int]] = [{} for _ in kinds]
    clock = time.perf_counter_ns
    rng = random.Random(seed)
    order = list(range(len(kinds)))
    for i in range(-_ROUTING_WARMUP, count):
        rng.shuffle(order)
        for k in order:
            payloads = kinds[k]
            payload = payloads[i % len(payloads)]
            t0 = clock()
            raw = method(payload, timeout=10.0)
            t1 = clock()
            if i < 0:
                continue
            lat[k, i] = t1 - t0
            # Parsed after the clock stopped, in every variant alike.
            answer = pb.ModelInferResponse.FromString(raw)
            arm = (answer.parameters[_ARM_PARAM].string_param
                   if _ARM_PARAM in answer.parameters else "-")
            key = f"v{answer.model_version} arm {arm}"
            answered[k][key] = answered[k].get(key, 0) + 1
    return lat, answered


def routing_summary(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    by_round: dict[int, dict[str, dict[str, Any]]] = {}
    for r in rounds:
        by_round.setdefault(r["round"], {})[r["variant"]] = r
    variants = list(dict.fromkeys(r["variant"] for r in rounds))
    medians = {v: {k: _median([r[k] for r in rounds if r["variant"] == v])
                   for k in ("p50_us", "p90_us", "p99_us", "mean_us")} for v in variants}
    deltas = {v: [one[v]["p50_us"] - one["plain"]["p50_us"] for one in by_round.values()]
              for v in variants if v != "plain"}
    overhead = {v: _median(d) for v, d in deltas.items()}
    verdict = {v: None if (o := overhead.get(v)) is None else o <= _ROUTING_LIMIT_US
               for v in ("one_arm", "routed", "sticky")}
    return {"medians": medians, "p50_deltas_us": deltas, "p50_overhead_us": overhead,
            "noise_floor_us": overhead.get("plain2"), "pass": verdict}


# -- the run ----------------------------------------------------------------------------------


def run(s: Settings) -> dict[str, Any]:
    info = machine_info()
    with ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="sluice-shadow-")))
        repository = build_repository(tmp, {s.model: s.model, s.routing_model: s.routing_model,
                                            s.routing_model + _ROUTED_SUFFIX: s.routing_model,
                                            s.routing_model + _ONE_ARM_SUFFIX: s.routing_model})
        server = stack.enter_context(ServerProcess("sluice", [
            "-m", "server", "serve", "--model-repository", str(repository),
            "--host", "127.0.0.1", "--grpc-port", "0", "--metrics-port", "-1",
            "--log-level", "WARNING",
        ]))
        target = server.target
        log(f"server {target} (pid {server.pid}); {s.model} and {s.routing_model} with "
            f"versions {_LIVE} and {_CANDIDATE} (same file)")
        with AdminClient(target, caller="shadow_bench", timeout=10.0) as admin:
            admin.set_routes(s.model, {_LIVE: 100.0}, reason="bench: all traffic to v1")
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
            log(f"capacity C = {capacity:,.0f} req/s of v{_LIVE} (closed loop, c=64, "
                f"p50 {result.p50_ms:.1f} p99 {result.p99_ms:.1f} ms)")
        phases = plan(s, capacity)
        log(f"open loop at {s.load:g} x C = {s.load * capacity:,.0f} req/s: {s.rounds} x (A, B), "
            f"{s.phase_s:g} s each, first {s.settle_s:g} s not counted")
        records, generator = open_loop(s, target, phases)
        rows = analyze_phases(s, capacity, phases, records)
        log(f"routing: {s.routing_rounds} rounds x 4 variants x {s.routing_requests} requests, "
            "interleaved, concurrency 1")
        routing = routing_bench(s, target)
        exit_code = server.stop()
    return {
        "settings": {**dataclasses.asdict(s), "out": str(s.out)},
        "machine": {**info, "load_average_at_end": os.getloadavg()},
        "capacity_req_s": capacity, "capacity_run": capacity_run,
        "generator": generator, "server_exit_code": exit_code,
        "shadow": {"phases": rows, **shadow_verdict(rows)}, "routing": routing,
    }


def _f(value: Any, spec: str, width: int) -> str:
    return ("-" if value is None else format(value, spec)).rjust(width)


def print_report(payload: dict[str, Any]) -> None:
    s, sh, ro = payload["settings"], payload["shadow"], payload["routing"]
    load = payload["machine"]["load_average_at_start"]
    print(f"\nshadow on {s['model']} b{s['batch']}: C = {payload['capacity_req_s']:,.0f} req/s, "
          f"offered {s['load']:g} x C; load average at start {load[0]:.2f}")
    print("client ms (successes); srv = v1 means over the counted window (ms); shadow: "
          "mirrored/compared/shed, agreement")
    head = (f"{'phase':<8}{'sent/s':>7}{'good/s':>7}{'p50':>7}{'p95':>7}{'p99':>7}{'err':>5}"
            f"{'lag99':>6}{'srvE2E':>7}{'srvQ':>6}{'srvC':>6}  shadow")
    print(head + "\n" + "-" * len(head))
    for r in sh["phases"]:
        srv = r["server_v1"] or {}
        errors = r["shed"] + sum(r["other_errors"].values())
        shadow = r["shadow"]
        text = "-" if not shadow else (
            f"{shadow['mirrored']}/{shadow['compared']}/{shadow['shed']} "
            f"agree {_f(shadow['agreement'], '.3f', 0)}"
            + (f" cand.err {shadow['candidate_errors']}" if shadow["candidate_errors"] else ""))
        flag = " " if r["generator_kept_up"] else "!"
        print(f"{r['name']:<7}{flag}{r['sent_req_s']:>7.0f}{r['goodput_req_s']:>7.0f}"
              f"{_f(r['accepted_p50_ms'], '.2f', 7)}{_f(r['accepted_p95_ms'], '.2f', 7)}"
              f"{_f(r['accepted_p99_ms'], '.2f', 7)}{errors:>5}"
              f"{_f(r['generator_lag_p99_ms'], '.1f', 6)}{_f(srv.get('e2e_mean_ms'), '.2f', 7)}"
              f"{_f(srv.get('queue_mean_ms'), '.2f', 6)}{_f(srv.get('compute_mean_ms'), '.2f', 6)}"
              f"  {text}")
    verdict = {True: "PASS", False: "FAIL", None: "n/a"}
    def triple(arm: str) -> str:
        return "/".join(_f(sh[f"{arm}_accepted_{q}_ms"], ".2f", 0) for q in ("p50", "p95", "p99"))

    print(f"medians over {sh['rounds']} rounds, p50/p95/p99: A {triple('A')} ms, "
          f"B {triple('B')} ms")
    for q in ("p50", "p99"):
        ratios = ", ".join(f"{x:.2f}" for x in sh[f"{q}_ratios"])
        print(f"  {verdict[sh[f'{q}_pass']]}  live {q} B/A = {_f(sh[f'{q}_ratio'], '.3f', 0)} "
              f"(median of rounds: {ratios}; target <= {_RATIO_LIMIT:.2f})")
    print(f"\nrouting: {ro['model']} (no deployment) vs {ro['routed_model']} (v1 90 / v2 10), "
          f"concurrency 1, {ro['requests_per_variant_and_round']} requests per variant and "
          "round, interleaved; client-observed us, medians of rounds")
    head = f"{'variant':<8}{'p50':>8}{'p90':>8}{'p99':>8}{'mean':>8}{'p50-plain':>10}  answered by"
    print(head + "\n" + "-" * len(head))
    for v, m in ro["medians"].items():
        answered: dict[str, int] = {}
        for r in ro["rounds"]:
            if r["variant"] == v:
                for k, n in r["answered"].items():
                    answered[k] = answered.get(k, 0) + n
        total = sum(answered.values()) or 1
        shares = ", ".join(f"{k} {100 * n / total:.1f}%" for k, n in sorted(answered.items()))
        print(f"{v:<8}{m['p50_us']:>8.1f}{m['p90_us']:>8.1f}{m['p99_us']:>8.1f}"
              f"{m['mean_us']:>8.1f}{_f(ro['p50_overhead_us'].get(v), '+.1f', 10)}  {shares}")
    floor = ", ".join(f"{d:+.1f}" for d in ro["p50_deltas_us"].get("plain2", []))
    print(f"noise floor: plain2 - plain p50 = {_f(ro['noise_floor_us'], '+.1f', 0)} us "
          f"(median of rounds: {floor})")
    for v in ("one_arm", "routed", "sticky"):
        print(f"  {verdict[ro['pass'][v]]}  {v}: p50 overhead "
              f"{_f(ro['p50_overhead_us'].get(v), '+.1f', 0)} us (target <= "
              f"{_ROUTING_LIMIT_US:g} us)")
    end = payload["machine"]["load_average_at_end"]
    print(f"load average at end {end[0]:.2f} {end[1]:.2f} {end[2]:.2f}")


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
