"""The Sluice benchmark: how close the server gets to what Python, gRPC and ONNX Runtime allow.

    python -m loadtests.bench [--quick] [--duration S] [--out DIR] [--repeats R]

Measures, on this machine, side by side in one run:

(a) the onnxruntime ceiling: every bundled model in-process at batch 1, 8, 64, 512 (capped at
    its max_batch_size), rows/s and per-call p50 (:mod:`loadtests.ortbench`); cnn's is measured
    in every round right before Sluice's cnn batch-8 point it is compared with;
(b) the Python gRPC ceiling: :mod:`loadtests.ceiling`, a grpc.aio servicer answering a constant,
    unary at concurrency 1/8/64 and streaming at 64;
(c) Sluice (``python -m sluice.server serve`` in a subprocess) on identity and cnn at concurrency
    1/8/64 with batch-1 and batch-8 requests, unary, and identity at 64 over ModelStreamInfer;
(d) Sluice's RSS: at start, idle after the first round (the warm-up), and idle after 100k more
    identity requests (20k with ``--quick``), growth in % over the warm baseline;
(e) perf_analyzer on Sluice's points when ``perf_analyzer`` is on PATH.

Load comes from :mod:`loadtests.loadgen` processes (closed loop, asyncio, ``--duration`` s after a
1 s warm-up, latencies by ``time.perf_counter``), never from this process, so the generator,
the server and this orchestrator never share an interpreter.

Noise: the machine has two cores, shared by server and generator, and other work runs on it.
So the first round measures every point once, and then ``--repeats`` - 1 more rounds measure
the points the headline ratios use (with the ORT runs they are compared to), interleaving the
two sides of each ratio. A table row is the median per figure over its rounds (column ``n``);
a ratio is computed in each round and its median is reported.

Generator processes at concurrency 64: the first round measures the ceiling at c=64 with one
generator process of 64 workers and with two of 32 each, for unary and for streaming, and keeps
the faster per mode for every c=64 point of that mode, on both servers (the other run stays in
bench.json with ``primary: false``). Two processes must win by more than 10%: one sample on a
noisy box can flip either way, and one process leaves the second core to the server. On the
2-core development box one process won clearly for unary in quiet periods (ceiling ~3.4k vs
~2.3k req/s: a second generator only takes CPU from the server) and streaming was a toss-up
(4-5k req/s either way), which is why it is measured in every run rather than fixed.
``--quick`` skips that check and uses one process.

Writes ``bench.json`` (every run, medians, ratios, memory, machine info) and ``bench.png``
(rows/s against p99, log axes) to ``--out`` (default ``loadtests/results/``, git-ignored).
A full run takes about four minutes.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.metadata
import os
import platform
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from loadtests import perfanalyzer, report
from loadtests.models import MODEL_REPOSITORY, ROOT, ModelSpec, load_spec
from loadtests.ortbench import BATCHES, measure_all
from loadtests.procs import ServerProcess, run_load, send_count

MODELS = ("identity", "digits", "cnn", "add_sub")
CEILING_MODEL = "const"  # how the ceiling's rows are labelled: it answers a constant
_PACKAGES = ("grpcio", "protobuf", "numpy", "onnxruntime", "psutil", "matplotlib", "tritonclient")


@dataclass(frozen=True)
class Settings:
    duration_s: float
    warmup_s: float
    repeats: int
    concurrencies: tuple[int, ...]
    check_generator: bool
    ort_budget_s: float
    ort_cnn_budget_s: float
    memory_requests: int
    out: Path
    quick: bool


@dataclass(frozen=True)
class Point:
    target: str  # "sluice" or "ceiling"
    model: str
    mode: str  # "unary" or "stream"
    concurrency: int
    batch: int

    @property
    def key(self) -> str:
        return report.point_key(self.target, self.model, self.mode, self.concurrency, self.batch)


class Bench:
    """One benchmark run: owns the raw results; the servers are handed in."""

    def __init__(self, settings: Settings, specs: dict[str, ModelSpec]) -> None:
        self.s = settings
        self.specs = specs
        self.runs: list[dict[str, Any]] = []
        self.ort: list[dict[str, Any]] = []
        self.procs_by_mode = {"unary": 1, "stream": 1}
        self.generator_check: dict[str, dict[int, float]] = {}
        self.identity_sent = 0  # identity requests Sluice answered since the memory baseline
        self.began = time.monotonic()

    def log(self, text: str) -> None:
        print(f"[{time.monotonic() - self.began:5.0f}s] {text}", flush=True)

    def measure_ort(
        self, round_no: int, models: tuple[str, ...], batches: tuple[int, ...],
        budget_s: float | None = None,
    ) -> None:
        specs = [self.specs[m] for m in models]
        budget_s = budget_s or self.s.ort_budget_s
        for r in measure_all(specs, batches, budget_s, min(0.2, budget_s)):
            self.ort.append({"round": round_no, **dataclasses.asdict(r)})
            self.log(f"ort {r.model} b={r.batch}: {r.rows_s:,.0f} rows/s p50 {r.p50_ms:.4f} ms")

    def measure(
        self, server: ServerProcess, point: Point, round_no: int, *, procs: int | None = None,
        primary: bool = True,
    ) -> dict[str, Any]:
        procs = procs or (self.procs_by_mode[point.mode] if point.concurrency >= 64 else 1)
        model = "identity" if point.target == "ceiling" else point.model
        result = run_load(
            label=point.target, target=server.target, model=model,
            inputs=self.specs[model].inputs, batch=point.batch, concurrency=point.concurrency,
            mode=point.mode, procs=procs, duration_s=self.s.duration_s, warmup_s=self.s.warmup_s,
        )
        run = {
            **dataclasses.asdict(result), "model": point.model, "key": point.key,
            "round": round_no, "primary": primary,
        }
        self.runs.append(run)
        if point.target == "sluice" and point.model == "identity":
            self.identity_sent += int(result.extra.get("total", result.count))
        errors = f" ERRORS {result.errors}: {result.first_error}" if result.errors else ""
        self.log(
            f"{point.target} {point.model} {point.mode} c={point.concurrency} b={point.batch} "
            f"procs={result.procs}: {result.req_s:,.0f} req/s {result.rows_s:,.0f} rows/s "
            f"p50 {result.p50_ms:.2f} p99 {result.p99_ms:.2f} ms{errors}"
        )
        return run

    def check_generator(self, ceiling: ServerProcess, mode: str, round_no: int) -> None:
        """Ceiling at c=64 with 1 and 2 generator processes; keep the faster for ``mode``."""
        point = Point("ceiling", CEILING_MODEL, mode, 64, 1)
        runs = {p: self.measure(ceiling, point, round_no, procs=p, primary=False) for p in (1, 2)}
        # One process leaves the second core to the server; two must win clearly, not by noise.
        best = 2 if runs[2]["req_s"] > 1.1 * runs[1]["req_s"] else 1
        runs[best]["primary"] = True
        self.procs_by_mode[mode] = best
        self.generator_check[mode] = {p: r["req_s"] for p, r in runs.items()}
        self.log(f"generator check ({mode}, c=64): keeping {best} process(es)")

    def first_round(self, ceiling: ServerProcess, sluice: ServerProcess) -> Point | None:
        """Every point once, the two sides of each comparison next to each other.

        Returns Sluice's best cnn batch-8 point (by rows/s), repeated in later rounds.
        """
        for c in self.s.concurrencies:
            for mode in ("unary", "stream"):
                if mode == "stream" and c != 64:
                    continue
                if c == 64 and self.s.check_generator:
                    self.check_generator(ceiling, mode, 1)
                else:
                    self.measure(ceiling, Point("ceiling", CEILING_MODEL, mode, c, 1), 1)
                self.measure(sluice, Point("sluice", "identity", mode, c, 1), 1)
        cnn_b8: list[tuple[float, Point]] = []
        for model, batch in (("identity", 8), ("cnn", 1), ("cnn", 8)):
            if (model, batch) == ("cnn", 8):  # its ORT ceiling, measured right beside it
                self.measure_ort(1, ("cnn",), BATCHES, self.s.ort_cnn_budget_s)
            for c in self.s.concurrencies:
                point = Point("sluice", model, "unary", c, batch)
                run = self.measure(sluice, point, 1)
                if model == "cnn" and batch == 8:
                    cnn_b8.append((run["rows_s"], point))
        return max(cnn_b8, key=lambda pair: pair[0])[1] if cnn_b8 else None

    def later_round(
        self, round_no: int, ceiling: ServerProcess, sluice: ServerProcess, cnn_best: Point | None
    ) -> None:
        """The points the ratios use, in the same order as in the first round (the ceiling's
        streaming point is in no ratio, so it is not repeated).
        """
        self.measure_ort(round_no, ("identity",), (1,))
        for c in (1, 64):
            self.measure(ceiling, Point("ceiling", CEILING_MODEL, "unary", c, 1), round_no)
            self.measure(sluice, Point("sluice", "identity", "unary", c, 1), round_no)
        self.measure(sluice, Point("sluice", "identity", "stream", 64, 1), round_no)
        if cnn_best is not None:
            self.measure_ort(round_no, ("cnn",), BATCHES, self.s.ort_cnn_budget_s)
            self.measure(sluice, cnn_best, round_no)

    def perf_analyzer(self, sluice: ServerProcess, rows: list[dict[str, Any]]) -> str | None:
        """perf_analyzer beside our Sluice rows; returns the note to print when it is absent."""
        if perfanalyzer.binary() is None:
            return perfanalyzer.NOT_INSTALLED
        for row in rows:
            if row["target"] != "sluice":
                continue
            row["perf_analyzer"] = perfanalyzer.run(
                target=sluice.target, model=row["model"], concurrency=row["concurrency"],
                batch=row["batch"], streaming=row["mode"] == "stream",
                duration_s=self.s.duration_s,
            )
            self.log(f"perf_analyzer {row['key']}: {row['perf_analyzer']}")
        return None


def _settle_rss(server: ServerProcess) -> int:
    time.sleep(0.5)  # let in-flight work and any deferred frees finish
    return server.rss()


def machine_info() -> dict[str, Any]:
    versions = {}
    for name in _PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=False,
            timeout=10,
        ).stdout.strip() or None
    except OSError:
        commit = None
    return {
        "cpu_count": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "machine": platform.machine(),
        "processor": platform.processor() or None,
        "versions": versions,
        "load_average_at_start": os.getloadavg(),
        "git_head": commit,
    }


def _sluice_args() -> list[str]:
    return [
        "-m", "sluice.server", "serve", "--model-repository", str(MODEL_REPOSITORY),
        "--host", "127.0.0.1", "--grpc-port", "0", "--metrics-port", "-1",
        "--log-level", "WARNING",
    ]


def run(settings: Settings) -> dict[str, Any]:
    """The whole benchmark; returns the payload written to bench.json."""
    info = machine_info()
    bench = Bench(settings, {m: load_spec(m) for m in MODELS})
    bench.log("ORT in-process ceiling (cnn comes later, beside Sluice's cnn points)")
    bench.measure_ort(1, tuple(m for m in MODELS if m != "cnn"), BATCHES)
    memory: dict[str, Any] = {}
    with (
        ServerProcess("ceiling", ["-m", "loadtests.ceiling", "--port", "0"]) as ceiling,
        ServerProcess("sluice", _sluice_args()) as sluice,
    ):
        bench.log(f"ceiling on {ceiling.target}, Sluice on {sluice.target} (pid {sluice.pid})")
        memory["rss_start_bytes"] = _settle_rss(sluice)
        cnn_best = bench.first_round(ceiling, sluice)
        memory["rss_baseline_bytes"] = _settle_rss(sluice)
        bench.identity_sent = 0
        for round_no in range(2, settings.repeats + 1):
            bench.log(f"round {round_no} of {settings.repeats}")
            bench.later_round(round_no, ceiling, sluice, cnn_best)
        top_up = max(0, settings.memory_requests - bench.identity_sent)
        if top_up:
            bench.log(f"memory: {top_up} more identity requests (streaming, c=64)")
            sent = send_count(
                target=sluice.target, model="identity", inputs=bench.specs["identity"].inputs,
                count=top_up, concurrency=64, mode="stream",
            )
            if sent["errors"]:
                bench.log(f"memory top-up ERRORS {sent['errors']}: {sent['first_error']}")
            bench.identity_sent += int(sent["total"])
        memory["rss_after_bytes"] = _settle_rss(sluice)
        memory["identity_requests_after_baseline"] = bench.identity_sent
        memory["growth_pct"] = 100.0 * (
            memory["rss_after_bytes"] / memory["rss_baseline_bytes"] - 1.0
        )
        rows = report.summarize(bench.runs)
        pa_note = bench.perf_analyzer(sluice, rows)
        sluice_exit = sluice.stop()
        ceiling.stop()
    ratios = report.ratios(
        bench.runs, bench.ort, settings.repeats, cnn_best.key if cnn_best else None
    )
    info["load_average_at_end"] = os.getloadavg()
    return {
        "settings": {**dataclasses.asdict(settings), "out": str(settings.out)},
        "machine": info,
        "elapsed_s": time.monotonic() - bench.began,
        "generator": {"procs_at_c64": bench.procs_by_mode, "check_req_s": bench.generator_check},
        "ort": report.summarize_ort(bench.ort),
        "ort_runs": bench.ort,
        "rows": rows,
        "runs": bench.runs,
        "ratios": ratios,
        "memory": memory,
        "perf_analyzer": pa_note or "ran",
        "sluice_exit_code": sluice_exit,
    }


def print_report(payload: dict[str, Any]) -> None:
    mem = payload["memory"]
    mib = 1024 * 1024
    print("\nONNX Runtime in-process (default session options, CPU)")
    print(report.ort_table(payload["ort"]))
    print("\nLoad (closed loop; medians over n rounds; procs = generator processes)")
    pa = payload["perf_analyzer"]
    print(report.load_table(payload["rows"], None if pa == "ran" else pa))
    print("\nRatios (median of per-round values)")
    print(report.ratio_lines(payload["ratios"]))
    print(
        f"\nSluice RSS: start {mem['rss_start_bytes'] / mib:.1f} MiB, idle after warm-up "
        f"{mem['rss_baseline_bytes'] / mib:.1f} MiB, after "
        f"{mem['identity_requests_after_baseline']:,} more identity requests "
        f"{mem['rss_after_bytes'] / mib:.1f} MiB: growth {mem['growth_pct']:+.2f}%"
    )
    gen = payload["generator"]
    print(
        f"generator processes at c=64: {gen['procs_at_c64']} "
        f"(check on the ceiling, req/s by processes: {gen['check_req_s']})"
    )
    print(f"Sluice exit code on SIGTERM: {payload['sluice_exit_code']}")
    print(f"elapsed {payload['elapsed_s']:.0f} s")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m loadtests.bench", description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--quick", action="store_true",
                        help="2 s points, concurrency 1 and 64 only, one round, 20k memory run")
    parser.add_argument("--duration", type=float, help="seconds measured per point (default 5)")
    parser.add_argument("--repeats", type=int, help="rounds for the ratio points (default 3)")
    parser.add_argument("--out", type=Path, default=ROOT / "loadtests" / "results")
    args = parser.parse_args(argv)
    quick = args.quick
    settings = Settings(
        duration_s=args.duration or (2.0 if quick else 5.0),
        warmup_s=1.0,
        repeats=max(1, args.repeats or (1 if quick else 3)),
        concurrencies=(1, 64) if quick else (1, 8, 64),
        check_generator=not quick,
        ort_budget_s=0.2 if quick else 0.4,
        ort_cnn_budget_s=0.4 if quick else 0.6,
        memory_requests=20_000 if quick else 100_000,
        out=args.out,
        quick=quick,
    )
    payload = run(settings)
    settings.out.mkdir(parents=True, exist_ok=True)
    report.write_json(settings.out / "bench.json", payload)
    report.plot(payload["rows"], settings.out / "bench.png")
    print_report(payload)
    print(f"wrote {settings.out / 'bench.json'} and {settings.out / 'bench.png'}")
    failed = [r for r in payload["rows"] if r["errors"]]
    return 1 if failed or payload["sluice_exit_code"] != 0 else 0


if __name__ == "__main__":
    raise SystemExit(main())
