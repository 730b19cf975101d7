"""Turning the benchmark's raw runs into what it prints and writes: medians per point, the
ratios against their targets, the text tables, ``bench.json`` and ``bench.png``.

A point measured in several rounds is summarized by the median of each figure separately
(req/s, p50, p99, ...). A ratio is computed per round from figures measured minutes apart at
most, then the median over rounds is the headline.
"""

from __future__ import annotations

import json
import statistics
from collections import defaultdict
from collections.abc import Iterable
from pathlib import Path
from typing import Any

_FIGURES = ("req_s", "rows_s", "p50_ms", "p95_ms", "p99_ms")


def point_key(target: str, model: str, mode: str, concurrency: int, batch: int) -> str:
    return f"{target}/{model}/{mode}/c{concurrency}/b{batch}"


def summarize(runs: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per point from its primary runs (the generator setup kept), medians per figure."""
    grouped: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for run in runs:
        if run["primary"]:
            grouped[run["key"]].append(run)
    rows = []
    for group in grouped.values():
        first = group[0]
        row = {k: first[k] for k in ("key", "target", "model", "mode", "concurrency", "batch")}
        row["procs"] = first["procs"]
        row["n"] = len(group)
        for figure in _FIGURES:
            row[figure] = statistics.median(run[figure] for run in group)
        row["errors"] = sum(run["errors"] for run in group)
        row["first_error"] = next((r["first_error"] for r in group if r["first_error"]), "")
        rows.append(row)
    return rows


def _run_of(runs: list[dict[str, Any]], key: str, round_no: int) -> dict[str, Any] | None:
    for run in runs:
        if run["primary"] and run["key"] == key and run["round"] == round_no:
            return run
    return None


def _ort_of(ort: list[dict[str, Any]], model: str, round_no: int) -> list[dict[str, Any]]:
    return [r for r in ort if r["model"] == model and r["round"] == round_no]


def ratios(
    runs: list[dict[str, Any]], ort: list[dict[str, Any]], rounds: int, cnn_best_key: str | None
) -> dict[str, dict[str, Any]]:
    """The four headline ratios: per-round values, their median, target and verdict."""
    ceiling_c1 = point_key("ceiling", "const", "unary", 1, 1)
    sluice_c1 = point_key("sluice", "identity", "unary", 1, 1)
    ceiling_c64 = point_key("ceiling", "const", "unary", 64, 1)
    sluice_c64 = point_key("sluice", "identity", "unary", 64, 1)
    sluice_stream = point_key("sluice", "identity", "stream", 64, 1)
    per_round: dict[str, list[float]] = defaultdict(list)
    for round_no in range(1, rounds + 1):
        c1s, c1c = _run_of(runs, sluice_c1, round_no), _run_of(runs, ceiling_c1, round_no)
        ort_id = [r for r in _ort_of(ort, "identity", round_no) if r["batch"] == 1]
        if c1s and c1c and ort_id:
            overhead_ms = c1s["p50_ms"] - c1c["p50_ms"] - ort_id[0]["p50_ms"]
            per_round["overhead_us"].append(overhead_ms * 1e3)
        u64s, u64c = _run_of(runs, sluice_c64, round_no), _run_of(runs, ceiling_c64, round_no)
        if u64s and u64c and u64c["req_s"] > 0:
            per_round["unary_vs_ceiling"].append(u64s["req_s"] / u64c["req_s"])
        s64 = _run_of(runs, sluice_stream, round_no)
        if s64 and u64s and u64s["req_s"] > 0:
            per_round["stream_vs_unary"].append(s64["req_s"] / u64s["req_s"])
        cnn = _run_of(runs, cnn_best_key, round_no) if cnn_best_key else None
        ort_cnn = _ort_of(ort, "cnn", round_no)
        if cnn and ort_cnn:
            best = max(r["rows_s"] for r in ort_cnn)
            per_round["cnn_vs_ort"].append(cnn["rows_s"] / best if best > 0 else 0.0)
    spec = {
        "unary_vs_ceiling": (
            "Sluice identity c=64 req/s / ceiling c=64 req/s", ">=", 0.9),
        "cnn_vs_ort": (
            f"Sluice cnn batch-8 rows/s at best concurrency ({cnn_best_key}) / ORT in-process "
            "best rows/s", ">=", 0.8),
        "overhead_us": (
            "Sluice identity c=1 p50 - ceiling c=1 p50 - ORT identity batch-1 p50 (us)", "<=",
            150.0),
        "stream_vs_unary": (
            "Sluice identity c=64 streaming req/s / unary req/s", ">=", 1.5),
    }
    out: dict[str, dict[str, Any]] = {}
    for name, (what, op, target) in spec.items():
        values = per_round.get(name, [])
        value = statistics.median(values) if values else None
        ok = None if value is None else (value >= target if op == ">=" else value <= target)
        out[name] = {
            "what": what, "value": value, "per_round": values, "target": f"{op} {target}",
            "met": ok,
        }
    return out


def _fmt(value: float, width: int, digits: int) -> str:
    if value != value:  # NaN
        return "-".rjust(width)
    return f"{value:{width}.{digits}f}"


def load_table(rows: list[dict[str, Any]], pa_note: str | None) -> str:
    """The load table; perf_analyzer's rows/s and p99 beside ours when it ran."""
    head = (
        f"{'server':8} {'model':8} {'mode':6} {'conc':>4} {'batch':>5} {'procs':>5} {'n':>2} "
        f"{'req/s':>9} {'rows/s':>9} {'p50 ms':>8} {'p95 ms':>8} {'p99 ms':>8} {'err':>4}"
    )
    with_pa = pa_note is None
    if with_pa:
        head += f" {'PA rows/s':>10} {'PA p99 ms':>10}"
    lines = [head, "-" * len(head)]
    for r in rows:
        line = (
            f"{r['target']:8} {r['model']:8} {r['mode']:6} {r['concurrency']:4d} "
            f"{r['batch']:5d} {r['procs']:5d} {r['n']:2d} {_fmt(r['req_s'], 9, 0)} "
            f"{_fmt(r['rows_s'], 9, 0)} {_fmt(r['p50_ms'], 8, 3)} {_fmt(r['p95_ms'], 8, 3)} "
            f"{_fmt(r['p99_ms'], 8, 3)} {r['errors']:4d}"
        )
        if with_pa:
            pa = r.get("perf_analyzer") or {}
            if "rows_s" in pa:
                line += f" {_fmt(pa['rows_s'], 10, 0)} {_fmt(pa['p99_ms'], 10, 3)}"
            elif pa:
                line += f" {'error':>10}"
        lines.append(line)
    if pa_note:
        lines.append(pa_note)
    return "\n".join(lines)


def ort_table(ort_rows: list[dict[str, Any]]) -> str:
    head = f"{'model':8} {'batch':>5} {'n':>2} {'rows/s':>12} {'p50 ms':>9} {'p99 ms':>9}"
    lines = [head, "-" * len(head)]
    for r in ort_rows:
        lines.append(
            f"{r['model']:8} {r['batch']:5d} {r['n']:2d} {_fmt(r['rows_s'], 12, 0)} "
            f"{_fmt(r['p50_ms'], 9, 4)} {_fmt(r['p99_ms'], 9, 4)}"
        )
    return "\n".join(lines)


def summarize_ort(ort: list[dict[str, Any]]) -> list[dict[str, Any]]:
    grouped: dict[tuple[str, int], list[dict[str, Any]]] = defaultdict(list)
    for r in ort:
        grouped[(r["model"], r["batch"])].append(r)
    return [
        {
            "model": model, "batch": batch, "n": len(group),
            **{f: statistics.median(r[f] for r in group) for f in ("rows_s", "p50_ms", "p99_ms")},
        }
        for (model, batch), group in grouped.items()
    ]


def ratio_lines(result: dict[str, dict[str, Any]]) -> str:
    lines = []
    for name, r in result.items():
        if r["value"] is None:
            lines.append(f"{name:17} n/a (not measured)   target {r['target']}  {r['what']}")
            continue
        verdict = "MET" if r["met"] else "MISSED"
        rounds = ", ".join(f"{v:.3g}" for v in r["per_round"])
        lines.append(
            f"{name:17} {r['value']:8.3f}  target {r['target']:8} {verdict:6}  "
            f"rounds [{rounds}]  {r['what']}"
        )
    return "\n".join(lines)


def plot(rows: list[dict[str, Any]], path: Path) -> None:
    """Throughput (rows/s) against p99 latency, one line per series over concurrency, log axes."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in rows:
        series[f"{r['target']} {r['model']} {r['mode']} b{r['batch']}"].append(r)
    fig, ax = plt.subplots(figsize=(9, 6))
    for name, points in sorted(series.items()):
        points.sort(key=lambda r: r["concurrency"])
        xs = [p["rows_s"] for p in points]
        ys = [p["p99_ms"] for p in points]
        ax.plot(xs, ys, marker="o", label=name)
        for p, x, y in zip(points, xs, ys, strict=True):
            ax.annotate(f"c{p['concurrency']}", (x, y), fontsize=7, xytext=(3, 3),
                        textcoords="offset points")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("throughput (rows/s, log)")
    ax.set_ylabel("p99 latency (ms, log)")
    ax.set_title("Sluice vs the Python gRPC ceiling (closed loop; labels: concurrency)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_json(path: Path, payload: dict[str, Any]) -> None:
    path.write_text(json.dumps(payload, indent=2, sort_keys=False, default=str) + "\n")


def fmt(value: Any, spec: str, width: int) -> str:
    """``value`` formatted with ``spec`` and right-aligned in ``width``; "-" for None."""
    return ("-" if value is None else format(value, spec)).rjust(width)
