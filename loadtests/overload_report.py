"""Reading an open-loop run: per-phase figures, recovery time, a 100 ms timeline, the CPU bound,
the printed table and ``overload.png`` (the targets: :mod:`loadtests.overload_targets`). Pure
functions over the merged per-request records of :mod:`loadtests.openloop`; nothing here sends a
request.

Definitions (times are client-observed, ``time.perf_counter`` in the generator processes):

* a request belongs to the phase in which it was *due* (its timetable slot), so what a phase
  sent late still counts against that phase;
* latency = answer received - request sent; generator lag = sent - due (how far the generator
  fell behind its own timetable, reported per phase so a slow generator cannot pass unnoticed);
* goodput = OK answers with latency <= SLO, per second of the phase; shed = UNAVAILABLE;
  reject latency = latency of the UNAVAILABLE answers (client-observed: it includes both gRPC
  stacks and the loopback); the server-side figure (``srv99``) is the model's time from a
  request reaching it to its shed status, from the server's cumulative reject histogram read at
  each phase boundary (so a bucket's upper bound: "< 1 ms" means the bucket ending at 1 ms);
* generator drops (code -1) were never sent and are reported apart from server outcomes;
* CPU: the server's and the generators' CPU seconds are read at each phase boundary. A least
  squares fit over the phases splits the server's CPU into a cost per request that reaches it
  (receive, decode, admit or shed, answer: ``rpc``) and an extra cost per request it computes
  (``compute``); with the generator's cost per request sent, the **CPU bound** of a phase is
  the goodput the machine's cores allow at that offered rate,
  ``min(rate, C, (cores - rate * (rpc + generator)) / compute)``: on a machine the generator
  shares, every request turned away still costs both sides CPU that computing cannot use.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import numpy as np

from loadtests.report import fmt

OK = 0
DROPPED = -1
UNAVAILABLE = grpc.StatusCode.UNAVAILABLE.value[0]
_CODE_NAMES = {code.value[0]: code.name for code in grpc.StatusCode}
_CODE_NAMES[DROPPED] = "GENERATOR_DROP"
_CODE_NAMES[-2] = "NO_ANSWER"
WINDOW_S = 0.1
_RECOVERY_RUN = 5  # consecutive good windows (0.5 s) that count as recovered
# A phase is trusted when the generator sent >= 95% of its timetable inside the phase and its
# lag p99 stayed under this fraction of the SLO; otherwise the generator, not the server, was
# (also) the limit and the phase is flagged.
_LAG_LIMIT_OF_SLO = 0.2


@dataclass
class Records:
    """Every request of a run, merged from the generator processes (seconds after the start)."""

    sched: np.ndarray
    send: np.ndarray
    end: np.ndarray
    code: np.ndarray
    prio: np.ndarray
    reason: np.ndarray  # index into ``reasons``; -1 none
    reasons: list[str]

    @classmethod
    def merge(cls, parts: list[dict[str, np.ndarray]]) -> Records:
        reasons: list[str] = []
        mapped = []
        for part in parts:
            local = [str(r) for r in part["reasons"]]
            table = np.array([_index(reasons, r) for r in local] + [-1], dtype=np.int16)
            mapped.append(table[part["reason"].astype(np.int16)])  # -1 picks the trailing -1
        cat = {k: np.concatenate([p[k] for p in parts]) for k in ("sched", "send", "end", "code",
                                                                  "prio")}
        order = np.argsort(cat["sched"], kind="stable")
        return cls(
            **{k: v[order] for k, v in cat.items()},
            reason=np.concatenate(mapped)[order], reasons=reasons,
        )


def _index(names: list[str], name: str) -> int:
    if name not in names:
        names.append(name)
    return names.index(name)


def _pct(values: np.ndarray, q: float) -> float | None:
    return float(np.percentile(values, q) * 1e3) if values.size else None


def phase_stats(
    rec: Records, start: float, duration_s: float, slo_s: float, capacity: float
) -> dict[str, Any]:
    """Figures of the requests due in ``[start, start + duration_s)``."""
    due = (rec.sched >= start) & (rec.sched < start + duration_s)
    code, lat = rec.code[due], rec.end[due] - rec.send[due]
    prio, reason = rec.prio[due], rec.reason[due]
    sent = code != DROPPED
    ok = code == OK
    good = ok & (lat <= slo_s)
    shed = code == UNAVAILABLE
    n_sent = int(np.count_nonzero(sent))
    lag = (rec.send[due] - rec.sched[due])[sent]
    lag = lag[~np.isnan(lag)]
    others: dict[str, int] = {}
    failed = sent & ~(ok | shed)
    for value, count in zip(*np.unique(code[failed], return_counts=True), strict=True):
        others[_CODE_NAMES.get(int(value), str(value))] = int(count)
    reasons = {
        (rec.reasons[int(r)] if r >= 0 else "none"): int(c)
        for r, c in zip(*np.unique(reason[shed], return_counts=True), strict=True)
    }
    goodput = np.count_nonzero(good) / duration_s
    # Achieved offered load: sends that left inside the phase's own window, whenever due.
    in_window = (rec.send >= start) & (rec.send < start + duration_s)
    sent_rate = np.count_nonzero(in_window) / duration_s
    offered = due.sum() / duration_s
    lag_p99 = _pct(lag, 99)
    stats: dict[str, Any] = {
        "duration_s": duration_s,
        "due": int(due.sum()),
        "offered_req_s": offered,
        "sent_req_s": sent_rate,
        "generator_drops": int(np.count_nonzero(~sent)),
        "generator_lag_p99_ms": lag_p99,
        "generator_kept_up": bool(
            sent_rate >= 0.95 * offered and (lag_p99 or 0.0) <= _LAG_LIMIT_OF_SLO * slo_s * 1e3
        ),
        "goodput_req_s": goodput,
        "goodput_of_capacity": goodput / capacity if capacity else None,
        "ok": int(np.count_nonzero(ok)),
        "ok_late": int(np.count_nonzero(ok & ~good)),
        "accepted_p50_ms": _pct(lat[ok], 50),
        "accepted_p95_ms": _pct(lat[ok], 95),
        "accepted_p99_ms": _pct(lat[ok], 99),
        "shed": int(np.count_nonzero(shed)),
        "shed_req_s": np.count_nonzero(shed) / duration_s,
        "shed_share": np.count_nonzero(shed) / n_sent if n_sent else None,
        "shed_reasons": reasons,
        "reject_p50_ms": _pct(lat[shed], 50),
        "reject_p99_ms": _pct(lat[shed], 99),
        "other_errors": others,
    }
    for level in (1, 2):
        mine = sent & (prio == level)
        if mine.any():
            stats[f"p{level}_sent"] = int(mine.sum())
            stats[f"p{level}_success"] = float(np.count_nonzero(good & mine) / mine.sum())
    return stats


def cpu_model(
    phases: dict[str, dict[str, Any]], capacity: float, cores: int
) -> dict[str, Any]:
    """Fit the server's CPU per phase as ``rpc * sent/s + compute * computed/s`` (computed =
    OK answers) and the generator's cost per request sent; store each phase's CPU bound (never
    above the offered rate or C) as a share of C under ``cpu_bound_of_capacity`` (None where
    the fit failed)."""
    rows, cpu_server, gen_cpu, gen_sent = [], [], 0.0, 0
    for st in phases.values():
        sent = st["due"] - st["generator_drops"]
        if st.get("server_cores") is not None:
            rows.append((sent / st["duration_s"], st["ok"] / st["duration_s"]))
            cpu_server.append(st["server_cores"])
        if st.get("generator_cores") is not None:
            gen_cpu += st["generator_cores"] * st["duration_s"]
            gen_sent += sent
    model: dict[str, Any] = {"cores": cores, "rpc_ms": None, "compute_ms": None,
                             "generator_ms": 1e3 * gen_cpu / gen_sent if gen_sent else None}
    if len(rows) >= 3:
        (rpc, compute), *_ = np.linalg.lstsq(np.array(rows), np.array(cpu_server), rcond=None)
        if rpc > 0 and compute > 0:
            model["rpc_ms"], model["compute_ms"] = 1e3 * rpc, 1e3 * compute
    for st in phases.values():
        st["cpu_bound_of_capacity"] = _bound(st, model, capacity)
    return model


def _bound(st: dict[str, Any], model: dict[str, Any], capacity: float) -> float | None:
    if model["compute_ms"] is None or model["generator_ms"] is None or not capacity:
        return None
    rate = (st["due"] - st["generator_drops"]) / st["duration_s"]
    spare = model["cores"] - rate * (model["rpc_ms"] + model["generator_ms"]) / 1e3
    return min(rate, capacity, max(0.0, spare / (model["compute_ms"] / 1e3))) / capacity


def cpu_lines(model: dict[str, Any]) -> str:
    if model["compute_ms"] is None:
        return "CPU model: not enough phases with CPU readings to fit"
    return (f"CPU per request (fit over the phases): server {model['rpc_ms']:.2f} ms for every "
            f"request that reaches it + {model['compute_ms']:.2f} ms per computed request; "
            f"generator {fmt(model['generator_ms'], '.2f', 0)} ms per request; "
            f"{model['cores']} cores shared -> 'bound' = the goodput those allow")


def timeline(rec: Records, total_s: float, slo_s: float) -> dict[str, list[float | None]]:
    """Per 100 ms window (by due time): sent, goodput, shed and other errors per second, and
    the accepted p99 (ms; None when nothing succeeded in the window).
    """
    edges = np.arange(0.0, total_s + WINDOW_S / 2, WINDOW_S)
    # Due times sit on exact multiples of the window at round rates: nudge before flooring.
    slot = np.clip((rec.sched / WINDOW_S + 1e-6).astype(np.int64), 0, len(edges) - 2)
    lat = rec.end - rec.send
    ok = rec.code == OK
    out: dict[str, list[float | None]] = {k: [] for k in
                                          ("t_s", "sent", "good", "shed", "errors", "p99_ms")}
    for w in range(len(edges) - 1):
        here = slot == w
        code = rec.code[here]
        out["t_s"].append(float(edges[w]))
        out["sent"].append(np.count_nonzero(code != DROPPED) / WINDOW_S)
        out["good"].append(np.count_nonzero(ok[here] & (lat[here] <= slo_s)) / WINDOW_S)
        out["shed"].append(np.count_nonzero(code == UNAVAILABLE) / WINDOW_S)
        out["errors"].append(
            np.count_nonzero((code != OK) & (code != UNAVAILABLE) & (code != DROPPED)) / WINDOW_S
        )
        out["p99_ms"].append(_pct(lat[here][ok[here]], 99))
    return out


def recovery_time(
    line: dict[str, list[float | None]], start: float, duration_s: float, slo_s: float,
    reference_good_share: float,
) -> float | None:
    """Seconds from ``start`` until the first of 5 consecutive windows in which the accepted p99
    is within the SLO and the share of sent requests that were good is at least 90% of
    ``reference_good_share`` (that of the first 1x step). None: not within the phase.
    """
    run = 0
    for t, sent, good, p99 in zip(line["t_s"], line["sent"], line["good"], line["p99_ms"],
                                  strict=True):
        assert t is not None and sent is not None and good is not None
        if t < start - 1e-9 or t >= start + duration_s - 1e-9:
            continue
        ok = (sent > 0 and good / sent >= 0.9 * reference_good_share
              and p99 is not None and p99 <= slo_s * 1e3)
        run = run + 1 if ok else 0
        if run == _RECOVERY_RUN:
            return t - (_RECOVERY_RUN - 1) * WINDOW_S - start
    return None


def reject_quantiles(
    before: list[list[Any]] | None, after: list[list[Any]] | None, percents=(50, 99)
) -> dict[int, float | None]:
    """Server-side reject latency (ms) over one interval: the upper bound of the bucket holding
    each percentile of the rejects between two cumulative snapshots (None: no rejects)."""
    if not after:
        return {p: None for p in percents}
    start = {bound: count for bound, count in before or ()}
    diffs = [(float(bound), count - start.get(bound, 0)) for bound, count in after]
    total = diffs[-1][1]
    out: dict[int, float | None] = {}
    for p in percents:
        if total <= 0:
            out[p] = None
            continue
        need = total * p / 100
        out[p] = next(1e3 * bound for bound, count in diffs if count >= need)
    return out


def table(steps: dict[str, dict[str, Any]]) -> str:
    head = (f"{'phase':<10} {'offered/s':>9} {'sent/s':>7} {'goodput/s':>9} {'%C':>5} "
            f"{'p50':>7} {'p95':>7} {'p99':>7} {'shed%':>6} {'rej50':>6} {'rej99':>6} {'srv99':>6} "
            f"{'lag99':>6} {'drops':>5} {'srvcpu':>6} {'bound':>5}  other errors")
    lines = [head, "-" * len(head)]
    for name, s in steps.items():
        share = s["goodput_of_capacity"]
        shed = s["shed_share"]
        others = ", ".join(f"{k} {v}" for k, v in s["other_errors"].items()) or "-"
        if "p1_success" in s:
            others += f"; p1 ok {100 * s['p1_success']:.2f}% p2 ok {100 * s['p2_success']:.2f}%"
        flag = " " if s["generator_kept_up"] else "!"
        lines.append(
            f"{name:<9}{flag} {s['offered_req_s']:>9.0f} {s['sent_req_s']:>7.0f} "
            f"{s['goodput_req_s']:>9.0f} {fmt(None if share is None else 100 * share, '.0f', 5)} "
            f"{fmt(s['accepted_p50_ms'], '.1f', 7)} {fmt(s['accepted_p95_ms'], '.1f', 7)} "
            f"{fmt(s['accepted_p99_ms'], '.1f', 7)} "
            f"{fmt(None if shed is None else 100 * shed, '.1f', 6)} "
            f"{fmt(s['reject_p50_ms'], '.2f', 6)} {fmt(s['reject_p99_ms'], '.2f', 6)} "
            f"{fmt(s.get('server_reject_p99_ms'), '.3g', 6)} "
            f"{fmt(s['generator_lag_p99_ms'], '.1f', 6)} {s['generator_drops']:>5} "
            f"{fmt(s.get('server_cores'), '.2f', 6)} "
            f"{fmt(_percent(s.get('cpu_bound_of_capacity')), '.0f', 5)}"
            f"  {others}"
        )
    if any(not s["generator_kept_up"] for s in steps.values()):
        lines.append(f"! the generator fell behind its timetable (sent < 95% of offered inside "
                     f"the phase, or lag p99 > {_LAG_LIMIT_OF_SLO:.0%} of the SLO): those rows "
                     f"measure the generator as much as the server")
    return "\n".join(lines)


def _percent(share: float | None) -> float | None:
    return None if share is None else 100 * share


def plot(payload: dict[str, Any], path: Path) -> None:
    """Top: per step, offered load against goodput (and C), with accepted p99 and shed share.
    Bottom: the whole run in 100 ms windows, phase boundaries marked.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    capacity, slo_ms = payload["capacity_req_s"], payload["settings"]["slo_ms"]
    steps = [(n, s) for n, s in payload["phases"].items() if payload["kinds"][n] == "step"]
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(10, 9))
    xs = [s["offered_req_s"] for _, s in steps]
    top.plot(xs, [s["goodput_req_s"] for _, s in steps], "o-", label="goodput (OK within SLO)/s")
    top.plot(xs, [s["shed_req_s"] for _, s in steps], "s--", label="shed (UNAVAILABLE)/s")
    top.axhline(capacity, color="grey", ls=":", label=f"C = {capacity:.0f} req/s")
    for (name, _), x in zip(steps, xs, strict=True):
        top.annotate(name, (x, 0), xytext=(0, 4), textcoords="offset points", fontsize=8)
    top.set_xlabel("offered load (req/s)")
    top.set_ylabel("req/s")
    right = top.twinx()
    right.plot(xs, [s["accepted_p99_ms"] or np.nan for _, s in steps], "^-", color="tab:red",
               label="accepted p99 (ms)")
    right.axhline(slo_ms, color="tab:red", ls=":", label=f"SLO {slo_ms:g} ms")
    right.set_ylabel("ms")
    handles = top.get_legend_handles_labels()
    more = right.get_legend_handles_labels()
    top.legend(handles[0] + more[0], handles[1] + more[1], fontsize=8, loc="upper left")
    top.set_title(f"Open-loop overload: {payload['settings']['model']} "
                  f"b{payload['settings']['batch']}, deadline "
                  f"{payload['settings']['deadline_ms']:g} ms")
    line = payload["timeline"]
    series = (("sent", "sent/s", "tab:blue"), ("good", "goodput/s", "tab:green"),
              ("shed", "shed/s", "tab:orange"), ("errors", "other errors/s", "tab:purple"))
    for key, label, color in series:
        bottom.plot(line["t_s"], line[key], label=label, lw=1, color=color)
    right = bottom.twinx()
    right.plot(line["t_s"], [np.nan if v is None else v for v in line["p99_ms"]],
               color="black", ls="--", lw=0.8, label="accepted p99 (ms)")
    right.axhline(slo_ms, color="black", ls=":", lw=0.8)
    right.set_yscale("log")
    right.set_ylabel("accepted p99 (ms, log; dotted: SLO)")
    for k, (name, start) in enumerate(payload["phase_starts"].items()):
        bottom.axvline(start, color="grey", lw=0.5)
        bottom.annotate(name, (start, 1.0), xycoords=("data", "axes fraction"),
                        xytext=(2, -10 - 9 * (k % 2)), textcoords="offset points", fontsize=7)
    bottom.set_xlabel("time (s, by due time; 100 ms windows)")
    bottom.set_ylabel("req/s")
    handles = bottom.get_legend_handles_labels()
    more = right.get_legend_handles_labels()
    bottom.legend(handles[0] + more[0], handles[1] + more[1], fontsize=8, loc="center left")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
