"""Turning the runs of :mod:`loadtests.peers` into its summary and tables (no I/O, no servers).

A run is one server measured at one (model, concurrency) point in one round: a dict with
``round``, ``server`` (a key of :data:`SERVERS`), ``model``, ``concurrency`` and either
perf_analyzer's figures (``req_s``, ``p50_ms``, ...) or an ``error``. An ORT run is the model
alone in-process at batch 1: ``round``, ``model``, ``p50_ms``.

Promises (held by ``tests/unit/test_peer_report.py``):

- a figure is the median over the rounds that produced it; a run with an error, or a
  throughput that is not positive, produces none, and a point without any is ``None``;
- a ratio (Sluice/bare, Sluice/inline-ORT) is computed in each round from that round's two
  throughputs (measured minutes apart at most), then the median is reported; a round where either
  side has no figure is left out;
- the overhead at concurrency 1 is, per round, Sluice's p50 minus the bare servicer's p50 minus
  the model's in-process ORT p50 (all µs), median over rounds, against :data:`OVERHEAD_TARGET_US`.
"""

from __future__ import annotations

import statistics
from collections.abc import Iterable, Sequence
from typing import Any

SERVERS = {"bare": "bare", "inline_ort": "inline-ORT", "sluice": "Sluice", "mlserver": "MLServer"}
"""Server key -> column label, in column order."""

OVERHEAD_TARGET_US = 60.0
"""Sluice's c=1 p50 should be within this of the bare servicer's p50 plus the model's own time."""


def _ok(run: dict[str, Any]) -> bool:
    return "error" not in run and run.get("req_s", 0) > 0


def _by_round(
    runs: Iterable[dict[str, Any]], server: str, model: str, concurrency: int
) -> dict[int, dict[str, Any]]:
    return {
        run["round"]: run for run in runs
        if run["server"] == server and run["model"] == model
        and run["concurrency"] == concurrency and _ok(run)
    }


def _median(values: Sequence[float]) -> float | None:
    return statistics.median(values) if values else None


def figure(
    runs: list[dict[str, Any]], server: str, model: str, concurrency: int, name: str
) -> float | None:
    """Median over rounds of ``name`` (e.g. ``req_s``) at one point; None without a figure."""
    return _median([r[name] for r in _by_round(runs, server, model, concurrency).values()])


def paired(
    runs: list[dict[str, Any]], model: str, concurrency: int, servers: Sequence[str]
) -> list[tuple[dict[str, Any], ...]]:
    """One tuple of runs (in ``servers`` order) per round in which every one of ``servers`` has
    a figure at this point, in round order."""
    rounds = [_by_round(runs, server, model, concurrency) for server in servers]
    common = sorted(set.intersection(*(set(r) for r in rounds)))
    return [tuple(r[k] for r in rounds) for k in common]


def ratio(
    runs: list[dict[str, Any]], model: str, concurrency: int, numerator: str, denominator: str
) -> float | None:
    """Median over rounds of ``numerator`` req/s over ``denominator`` req/s at one point."""
    return _median([a["req_s"] / b["req_s"]
                    for a, b in paired(runs, model, concurrency, (numerator, denominator))])


def ort_p50_us(ort: list[dict[str, Any]], model: str) -> float | None:
    """The model's in-process batch-1 p50 (µs), median over rounds."""
    return _median([r["p50_ms"] * 1e3 for r in ort if r["model"] == model])


def overhead_us(
    runs: list[dict[str, Any]], ort: list[dict[str, Any]], model: str
) -> dict[str, Any]:
    """Sluice c=1 p50 - bare c=1 p50 - ORT p50 (µs): per round, median, target, verdict."""
    ort_ms = {r["round"]: r["p50_ms"] for r in ort if r["model"] == model}
    values = [
        (sluice["p50_ms"] - bare["p50_ms"] - ort_ms[sluice["round"]]) * 1e3
        for sluice, bare in paired(runs, model, 1, ("sluice", "bare"))
        if sluice["round"] in ort_ms
    ]
    value = _median(values)
    return {
        "what": "Sluice c=1 p50 - bare c=1 p50 - in-process ORT batch-1 p50 (us)",
        "value": value, "per_round": values, "target": f"<= {OVERHEAD_TARGET_US:g}",
        "met": None if value is None else value <= OVERHEAD_TARGET_US,
    }


def summarize(
    runs: list[dict[str, Any]], ort: list[dict[str, Any]], models: Sequence[str],
    concurrencies: Sequence[int],
) -> dict[str, Any]:
    """Rows per (model, concurrency), the c=1 p50s and the overhead per model."""
    rows = []
    for model in models:
        for concurrency in concurrencies:
            errors = {
                s: next((r["error"] for r in runs if r["server"] == s and r["model"] == model
                         and r["concurrency"] == concurrency and "error" in r), None)
                for s in SERVERS
            }
            rows.append({
                "model": model, "concurrency": concurrency,
                "req_s": {s: figure(runs, s, model, concurrency, "req_s") for s in SERVERS},
                "p50_us": {s: _us(figure(runs, s, model, concurrency, "p50_ms"))
                           for s in SERVERS},
                "sluice_over_bare": ratio(runs, model, concurrency, "sluice", "bare"),
                "sluice_over_inline": ratio(runs, model, concurrency, "sluice", "inline_ort"),
                "errors": {s: e for s, e in errors.items() if e},
            })
    return {
        "rows": rows,
        "ort_p50_us": {model: ort_p50_us(ort, model) for model in models},
        "overhead_us": {model: overhead_us(runs, ort, model) for model in models},
    }


def _us(ms: float | None) -> float | None:
    return None if ms is None else ms * 1e3


def _cell(value: float | None, spec: str, width: int, error: str | None = None) -> str:
    if value is None:
        return ("error" if error else "-").rjust(width)
    return format(value, spec).rjust(width)


def throughput_table(summary: dict[str, Any]) -> str:
    """model, concurrency | req/s per server | Sluice/bare | Sluice/inline (medians)."""
    head = f"{'model':8} {'conc':>4} |" + "".join(
        f" {label + ' req/s':>16}" for label in SERVERS.values()
    ) + f" | {'Sluice/bare':>11} {'Sluice/inline':>13}"
    lines = [head, "-" * len(head)]
    for row in summary["rows"]:
        cells = "".join(
            _cell(row["req_s"][s], ".0f", 17, row["errors"].get(s)) for s in SERVERS
        )
        lines.append(
            f"{row['model']:8} {row['concurrency']:4d} |{cells} | "
            f"{_cell(row['sluice_over_bare'], '.3f', 11)} "
            f"{_cell(row['sluice_over_inline'], '.3f', 13)}"
        )
    return "\n".join(lines)


def latency_table(summary: dict[str, Any]) -> str:
    """At concurrency 1: p50 per server, the model's ORT p50 and Sluice's overhead (µs)."""
    head = f"{'model':8} |" + "".join(f" {label:>10}" for label in SERVERS.values()) + (
        f" | {'ORT p50':>8} {'Sluice-bare-ORT':>15} {'target':>7}"
    )
    lines = ["p50 at concurrency 1 (us)", head, "-" * len(head)]
    for row in summary["rows"]:
        if row["concurrency"] != 1:
            continue
        model = row["model"]
        over = summary["overhead_us"][model]
        cells = "".join(_cell(row["p50_us"][s], ".0f", 11, row["errors"].get(s))
                        for s in SERVERS)
        verdict = {True: "met", False: "MISSED", None: "-"}[over["met"]]
        lines.append(
            f"{model:8} |{cells} | {_cell(summary['ort_p50_us'][model], '.1f', 8)} "
            f"{_cell(over['value'], '+.0f', 15)} {verdict:>7}"
        )
    return "\n".join(lines)
