"""Open-loop overload benchmark: does Sluice keep serving at capacity when offered far more?

    python -m loadtests.overload [--quick] [--model M] [--batch B] [--slo-ms 50] [--out DIR]
        [--capacity REQ_S] [--target HOST:PORT | --server-arg=--workers --server-arg=2] [--check]

Default workload: ``cnn``, 8 rows per request. The generator must be able to offer 5x C on
time, on the same two cores as the server. At batch 1, C is ~1,000-1,300 req/s (the gRPC and
Python cost per request dominates), so 5x is 5-6.5k req/s: two Python generator processes fell
~0.5 s behind their timetable and took CPU the server needed, so the 5x step measured the
generator. At batch 8, the closed loop saturates at ~200 req/s (~1,700 rows/s, compute-bound
like a real model; C, within the SLO, is at most that), so 5x is at most ~1,100 req/s, which one
generator process sends on time. ``--batch 1`` still works; the table
flags (``!``) every phase in which the generator fell behind.

1. Capacity C: the best goodput *within the SLO* (:mod:`loadtests.capacity`). Closed-loop
   probes (:func:`loadtests.procs.run_load`, one generator process, 2 s after a 1 s warm-up;
   1 s with ``--quick``) at concurrency 8, doubling (up to 64) while the p99 is within the SLO,
   halving while not, then bisecting; C is the highest goodput (OK within the SLO, per s) of a
   probe whose p99 is within the SLO. When none is, the report says so and C is the best
   goodput of any probe. Or ``--capacity`` to reuse a C measured before (compare runs before
   and after a change at the same C).
2. One open-loop timetable (:mod:`loadtests.openloop` generators, run by
   :mod:`loadtests.timetable`; constant arrival rate, sent whether or not earlier requests were
   answered): a 1 s warm-up at 0.5x C, steps at 1x, 2x, 3x, 5x C (5 s each, 2 s with
   ``--quick``), back to 1x for 5 s (3 s) to measure recovery, then 3x C with 20% of the
   requests at priority 1 and the rest at priority 2 (5 s, 2 s). Every request
   carries the gRPC deadline ``--deadline-ms`` (default: the SLO), so the server can shed work
   it cannot finish in time.
3. Per phase: offered and really sent rate, goodput (OK within the SLO, per s, and as a share
   of C), accepted p50/p95/p99, shed share (UNAVAILABLE) and its reasons, client-observed reject
   latency p50/p99, other errors by code, generator lag p99 and generator-side drops, the
   phase's CPU bound; recovery time after the 5x step in 100 ms windows; the issue's targets
   with PASS/FAIL, a goodput target as a share of C and of the CPU bound, saying when this
   machine's CPU, not Sluice, caps it (:mod:`loadtests.overload_targets`).

Writes ``overload.json`` and ``overload.png`` to ``--out`` (default ``loadtests/results/``).
Starts its own server (``python -m sluice.server serve`` on port 0, ``--server-arg`` appended)
unless ``--target`` names a running one; load goes only to the loopback interface. Exit status 0
when the harness ran (1 with ``--check`` when a target failed); the generator's health is part of
the report: when ``sent/s`` falls short of ``offered/s`` or lag p99 is large, the generator,
not the server, was the limit. A run takes about a minute (45 s with ``--quick``).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import shutil
import tempfile
import time
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from loadtests import capacity as cap
from loadtests import overload_report as rep
from loadtests import overload_targets
from loadtests.bench import machine_info
from loadtests.models import MODEL_REPOSITORY, ROOT, InputSpec
from loadtests.procs import ServerProcess, run_load
from loadtests.report import write_json
from loadtests.timetable import open_loop
from sluice.clients import Client

# One asyncio generator process keeps its timetable up to about this rate on the 2-core box
# (measured against the constant-answer ceiling server); above it the load is split in two.
_RATE_PER_PROCESS = 2500.0
_LOOPBACK = ("127.0.0.1", "localhost", "[::1]")


@dataclass(frozen=True)
class Settings:
    model: str
    batch: int
    slo_ms: float
    deadline_ms: float
    multiples: tuple[float, ...]
    step_s: float
    recovery_s: float
    warmup_s: float
    priority_multiple: float
    p1_share: float
    #: Seconds measured per capacity probe (after a 1 s warm-up).
    capacity_s: float
    #: Highest concurrency a capacity probe may use.
    capacity_max_concurrency: int
    capacity: float | None
    procs: int | None
    channels: int
    max_outstanding: int
    target: str | None
    server_args: tuple[str, ...]
    out: Path
    quick: bool
    #: Priority levels to give the model in a temporary copy of the repository (0: as bundled).
    priority_levels: int = 2
    #: Repository the server it starts serves (a copy when priority levels are patched in).
    model_repository: Path = MODEL_REPOSITORY


def log(text: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {text}", flush=True)


def plan(s: Settings, capacity: float) -> list[dict[str, Any]]:
    """The timetable's phases: name, kind, multiple of C, total rate, duration, p1 share."""
    def phase(name: str, kind: str, multiple: float, duration: float,
              share: float | None = None) -> dict[str, Any]:
        return {"name": name, "kind": kind, "multiple": multiple, "rate": multiple * capacity,
                "duration_s": duration, "p1_share": share}

    phases = [phase("warm-up", "warmup", 0.5, s.warmup_s)]
    phases += [phase(f"{m:g}x", "step", m, s.step_s) for m in s.multiples]
    phases.append(phase("recovery", "recovery", 1.0, s.recovery_s))
    name = f"{s.priority_multiple:g}x p1={s.p1_share:.0%}"
    phases.append(phase(name, "priority", s.priority_multiple, s.step_s, s.p1_share))
    return phases


def input_specs(target: str, model: str) -> tuple[InputSpec, ...]:
    """The model's inputs as the closed-loop generator wants them, from ModelMetadata."""
    from sluice.proto.datatypes import datatype_to_dtype

    with Client(target, timeout=15.0) as client:
        metadata = client.model_metadata(model)
    return tuple(
        InputSpec(t["name"], datatype_to_dtype(t["datatype"]).name,
                  tuple(max(1, int(d)) for d in t["shape"][1:]))
        for t in metadata["inputs"]
    )


def analyze(s: Settings, capacity: float, phases: list[dict[str, Any]],
            records: rep.Records) -> dict[str, Any]:
    slo_s = s.slo_ms / 1e3
    starts, stats, kinds, t = {}, {}, {}, 0.0
    for p in phases:
        starts[p["name"]], kinds[p["name"]] = t, p["kind"]
        stats[p["name"]] = rep.phase_stats(records, t, p["duration_s"], slo_s, capacity)
        server_reject = p.get("server_reject_ms") or {}
        stats[p["name"]]["server_reject_p50_ms"] = server_reject.get(50)
        stats[p["name"]]["server_reject_p99_ms"] = server_reject.get(99)
        cpu = p.get("cpu_s") or {}
        for group in ("server", "generator"):
            used = cpu.get(group)
            stats[p["name"]][f"{group}_cores"] = None if used is None else used / p["duration_s"]
        t += p["duration_s"]
    line = rep.timeline(records, t, slo_s)
    first = next(p["name"] for p in phases if p["kind"] == "step")
    due = stats[first]["due"] - stats[first]["generator_drops"]
    reference = (stats[first]["goodput_req_s"] * s.step_s / due) if due else 0.0
    recovery = next(p for p in phases if p["kind"] == "recovery")
    recovery_s = rep.recovery_time(line, starts["recovery"], recovery["duration_s"], slo_s,
                                   reference)
    prio_name = next(p["name"] for p in phases if p["kind"] == "priority")
    steps = {**stats, "3x p1=20%": stats[prio_name]}
    cpu = rep.cpu_model(stats, capacity, _cores())
    return {
        "phases": stats, "kinds": kinds, "phase_starts": starts, "timeline": line, "cpu": cpu,
        "recovery_s": recovery_s, "reference_good_share": reference,
        "targets": overload_targets.check_targets(steps, recovery_s, s.slo_ms),
    }


def _cores() -> int:
    """CPUs this process may run on (the server and generator share them on this machine)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def _with_priority_levels(tmp: Path, source: Path, model: str, levels: int) -> Path:
    """A copy of the bundled repository where ``model`` has ``levels`` priority levels (requests
    without a priority get the lowest), so the priority-1 phase measures priority scheduling."""
    repo = tmp / "models"
    shutil.copytree(source, repo, ignore=shutil.ignore_patterns("*.py", "__pycache__"))
    config = repo / model / "config.pbtxt"
    text = config.read_text()
    if "dynamic_batching { }" not in text:
        raise SystemExit(f"--priority-levels: {config} has no plain 'dynamic_batching {{ }}'")
    config.write_text(text.replace(
        "dynamic_batching { }",
        f"dynamic_batching {{ priority_levels: {levels} default_priority_level: {levels} }}",
    ))
    return repo


def run(s: Settings) -> dict[str, Any]:
    info = machine_info()
    with ExitStack() as stack:
        server = None
        if s.target is None:
            repository = s.model_repository
            if s.priority_levels:
                repository = _with_priority_levels(
                    Path(stack.enter_context(tempfile.TemporaryDirectory())), repository, s.model,
                    s.priority_levels,
                )
            server = stack.enter_context(ServerProcess("sluice", [
                "-m", "sluice.server", "serve", "--model-repository", str(repository),
                "--host", "127.0.0.1", "--grpc-port", "0", "--metrics-port", "-1",
                "--log-level", "WARNING", *s.server_args,
            ]))
        target = server.target if server else str(s.target)
        log(f"server {target}" + (f" (pid {server.pid})" if server else " (given)"))
        specs = input_specs(target, s.model)
        measured: dict[str, Any] = {"given": s.capacity is not None, "probes": [], "runs": []}
        capacity = s.capacity
        if capacity is None:
            measured, capacity = measure_capacity(s, target, specs)
        phases = plan(s, capacity)
        peak = max(p["rate"] for p in phases)
        procs = s.procs or (1 if peak <= _RATE_PER_PROCESS else 2)
        log(f"open loop: {len(phases)} phases, peak {peak:,.0f} req/s, {procs} generator "
            f"process(es), deadline {s.deadline_ms:g} ms")
        cpu0 = _cpu_s(server)
        rss0 = server.rss() if server else None
        records, summaries = open_loop(
            target, phases, procs, server.pid if server else None, model=s.model,
            batch=s.batch, deadline_ms=s.deadline_ms, channels=s.channels,
            max_outstanding=s.max_outstanding,
        )
        cpu1 = _cpu_s(server)
        rss1 = server.rss() if server else None
        exit_code = server.stop() if server else None
    payload = {
        "settings": {**dataclasses.asdict(s), "out": str(s.out)},
        "machine": info,
        "target": target,
        "capacity_req_s": capacity,
        "capacity": measured,
        "plan": phases,
        "generator": {"procs": procs, "summaries": summaries},
        "server": {
            "cpu_s_during_open_loop": None if cpu0 is None or cpu1 is None else cpu1 - cpu0,
            "rss_before_bytes": rss0, "rss_after_bytes": rss1, "exit_code": exit_code,
        },
        **analyze(s, capacity, phases, records),
    }
    payload["machine"]["load_average_at_end"] = os.getloadavg()
    return payload


def measure_capacity(
    s: Settings, target: str, specs: tuple[InputSpec, ...]
) -> tuple[dict[str, Any], float]:
    """Probe closed loop until :func:`loadtests.capacity.search` is done; what the payload keeps
    of it, and C. RuntimeError when no probe answered anything within the SLO."""
    runs: list[dict[str, Any]] = []

    def measure(concurrency: int) -> cap.Probe:
        result = run_load(
            label=f"capacity c={concurrency}", target=target, model=s.model, inputs=specs,
            batch=s.batch, concurrency=concurrency, procs=1, duration_s=s.capacity_s,
            warmup_s=1.0, slo_ms=s.slo_ms,
        )
        runs.append(dataclasses.asdict(result))
        probe = cap.Probe(concurrency, result.req_s, result.extra["good_req_s"],
                          result.p50_ms, result.p99_ms, result.errors)
        log(f"capacity probe {cap.probe_line(probe, s.slo_ms)}"
            + (f" ({result.first_error})" if result.errors else ""))
        return probe

    probes = cap.search(measure, s.slo_ms, limit=s.capacity_max_concurrency)
    chosen = cap.choose_capacity(probes, s.slo_ms)
    if chosen.probe is None:
        raise RuntimeError(cap.capacity_lines(chosen, probes, s.slo_ms))
    log(cap.capacity_lines(chosen, [], s.slo_ms))
    return {"given": False, "within_slo": chosen.within_slo,
            "concurrency": chosen.probe.concurrency,
            "probes": [dataclasses.asdict(p) for p in probes], "runs": runs}, chosen.req_s


def _cpu_s(server: ServerProcess | None) -> float | None:
    if server is None:
        return None
    import psutil

    times = psutil.Process(server.pid).cpu_times()
    return float(times.user + times.system)


def print_report(payload: dict[str, Any]) -> None:
    s = payload["settings"]
    print(f"\nOpen-loop overload on {s['model']} b{s['batch']}: C = "
          f"{payload['capacity_req_s']:,.0f} req/s, SLO {s['slo_ms']:g} ms, deadline "
          f"{s['deadline_ms']:g} ms, {payload['generator']['procs']} generator process(es)")
    measured = payload["capacity"]
    probes = [cap.Probe(**p) for p in measured["probes"]]
    chosen = None if measured["given"] else cap.choose_capacity(probes, s["slo_ms"])
    print(cap.capacity_lines(chosen, probes, s["slo_ms"], payload["capacity_req_s"]))
    print("latencies in ms (client-observed); goodput = OK within the SLO; shed = UNAVAILABLE")
    print(rep.table(payload["phases"]))
    rec = payload["recovery_s"]
    print(f"recovery after the 5x step: {'not within the phase' if rec is None else f'{rec:.1f} s'}"
          f" (100 ms windows; reference good share {payload['reference_good_share']:.2f})")
    srv = payload["server"]
    if srv["rss_before_bytes"]:
        mib = 1024 * 1024
        print(f"server: {srv['cpu_s_during_open_loop']:.1f} CPU s during the open loop, RSS "
              f"{srv['rss_before_bytes'] / mib:.0f} -> {srv['rss_after_bytes'] / mib:.0f} MiB, "
              f"exit code {srv['exit_code']}")
    gen = payload["generator"]["summaries"]
    print(f"generator: {sum(g['cpu_s'] for g in gen):.1f} CPU s, lag p99 "
          f"{max(g['lag_p99_ms'] or 0.0 for g in gen):.1f} ms over the run, "
          f"{sum(g['dropped'] for g in gen)} drops, at most "
          f"{max(g['max_outstanding'] for g in gen)} calls in flight")
    print(rep.cpu_lines(payload["cpu"]))
    print("targets:")
    print(overload_targets.target_lines(payload["targets"]))


def parse(argv: list[str] | None) -> tuple[Settings, bool]:
    parser = argparse.ArgumentParser(prog="python -m loadtests.overload", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="2 s steps, 3 s recovery")
    parser.add_argument("--model", default="cnn")
    parser.add_argument("--batch", type=int, default=8, help="rows per request (default 8)")
    parser.add_argument("--slo-ms", type=float, default=50.0)
    parser.add_argument("--deadline-ms", type=float, help="gRPC deadline (default: the SLO)")
    parser.add_argument("--multiples", default="1,2,3,5", help="steps, in multiples of C")
    parser.add_argument("--capacity", type=float, help="req/s: skip measuring C, use this")
    parser.add_argument("--procs", type=int, help="generator processes (default: by rate)")
    parser.add_argument("--channels", type=int, default=4, help="connections per generator")
    parser.add_argument("--max-outstanding", type=int, default=8192,
                        help="calls in flight per generator before it drops (counted)")
    parser.add_argument("--model-repository", type=Path, default=MODEL_REPOSITORY,
                        help="repository for the server it starts (default: the bundled one)")
    parser.add_argument("--target", help="HOST:PORT of a running server on the loopback")
    parser.add_argument("--server-arg", action="append", default=[],
                        help="extra argument for the server it starts (repeatable)")
    parser.add_argument("--out", type=Path, default=ROOT / "loadtests" / "results")
    parser.add_argument("--check", action="store_true", help="exit 1 when a target fails")
    parser.add_argument("--priority-levels", type=int, default=2,
                        help="priority levels given to the model (0: its config as bundled)")
    args = parser.parse_args(argv)
    if args.target and args.target.rpartition(":")[0] not in _LOOPBACK:
        parser.error("--target must be on the loopback (127.0.0.1:PORT)")
    quick = args.quick
    settings = Settings(
        model=args.model, batch=args.batch, slo_ms=args.slo_ms,
        deadline_ms=args.deadline_ms or args.slo_ms,
        multiples=tuple(float(m) for m in args.multiples.split(",")),
        step_s=2.0 if quick else 5.0, recovery_s=3.0 if quick else 5.0, warmup_s=1.0,
        priority_multiple=3.0, p1_share=0.2, capacity_s=1.0 if quick else 2.0,
        capacity_max_concurrency=cap.MAX_CONCURRENCY, capacity=args.capacity, procs=args.procs,
        channels=args.channels, max_outstanding=args.max_outstanding, target=args.target,
        server_args=tuple(args.server_arg), out=args.out, quick=quick,
        priority_levels=args.priority_levels, model_repository=args.model_repository,
    )
    return settings, args.check


def main(argv: list[str] | None = None) -> int:
    settings, check = parse(argv)
    payload = run(settings)
    settings.out.mkdir(parents=True, exist_ok=True)
    write_json(settings.out / "overload.json", payload)
    rep.plot(payload, settings.out / "overload.png")
    print_report(payload)
    print(f"wrote {settings.out / 'overload.json'} and {settings.out / 'overload.png'}")
    failed = any(t["pass"] is False for t in payload["targets"])
    return 1 if check and failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
