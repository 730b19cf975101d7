"""The overload benchmark's targets: verdicts from the per-phase figures, and the lines printed.

A goodput target ("3x: goodput >= 90% of C") is judged against C, and also read against the
phase's **CPU bound** (:func:`loadtests.overload_report.cpu_model`: the goodput this machine's
cores allow at that offered rate, with the generator sharing them). Its line shows the goodput
as a share of C *and* of the bound, and a failed one says which of the two caps it:

* the goodput reaches the target's share **of the bound** (e.g. 88% of the bound for an 85%
  target): no server could do better on these cores, so this machine's CPU caps it, not Sluice;
* it does not: Sluice falls short of what the CPU allows.

Pure functions over the dictionaries of :func:`loadtests.overload_report.phase_stats`.
"""

from __future__ import annotations

from typing import Any

CPU = "cpu"
SLUICE = "sluice"


def check_targets(
    steps: dict[str, dict[str, Any]], recovery_s: float | None, slo_ms: float
) -> list[dict[str, Any]]:
    """The issue's targets, each with the measured value and a verdict (None: not measured).
    Goodput rows also carry the goodput in req/s, the phase's CPU bound as a share of C, the
    goodput as a share of that bound and, when failed, what caps it (``capped_by``: "cpu",
    "sluice", or None when it passed or the bound is unknown)."""

    def get(phase: str, key: str) -> Any:
        return steps.get(phase, {}).get(key)

    def row(name: str, value: Any, passed: Any) -> dict[str, Any]:
        return {"target": name, "value": value, "pass": _verdict(passed)}

    p99, rej = get("3x", "accepted_p99_ms"), get("3x", "server_reject_p99_ms")
    p1 = get("3x p1=20%", "p1_success")
    return [
        goodput_row("3x", 0.90, steps.get("3x", {})),
        row(f"3x: accepted p99 <= {slo_ms:g} ms", p99, None if p99 is None else p99 <= slo_ms),
        row("3x: server-side reject p99 < 1 ms (bucket bound)", rej,
            None if rej is None else rej <= 1.0),
        goodput_row("5x", 0.85, steps.get("5x", {})),
        row("recovery to 1x behaviour <= 2 s", recovery_s,
            recovery_s is not None and recovery_s <= 2.0),
        row("3x, 20% priority 1: p1 success >= 99.5%", p1, None if p1 is None else p1 >= 0.995),
    ]


def goodput_row(phase: str, share: float, stats: dict[str, Any]) -> dict[str, Any]:
    """The target "``phase``: goodput >= ``share`` of C" over one phase's figures."""
    of_c, bound = stats.get("goodput_of_capacity"), stats.get("cpu_bound_of_capacity")
    passed = _verdict(None if of_c is None else of_c >= share)
    of_bound = None if of_c is None or not bound else of_c / bound
    capped_by = None
    if passed is False and bound is not None:
        capped_by = CPU if of_bound is None or of_bound >= share else SLUICE
    return {
        "target": f"{phase}: goodput >= {share:.0%} of C", "value": of_c, "pass": passed,
        "share": share, "goodput_req_s": stats.get("goodput_req_s"),
        "bound_of_capacity": bound, "of_bound": of_bound, "capped_by": capped_by,
    }


def _verdict(passed: Any) -> bool | None:
    """A plain bool (or None): figures computed with numpy give ``numpy.bool_``, which is never
    ``is False`` (what ``--check`` asks) and reaches the JSON as the string "False"."""
    return None if passed is None else bool(passed)


def target_lines(targets: list[dict[str, Any]]) -> str:
    verdicts = {True: "PASS", False: "FAIL", None: "n/a "}
    return "\n".join(f"  {verdicts[t['pass']]}  {t['target']}: {_measured(t)}" for t in targets)


def _measured(t: dict[str, Any]) -> str:
    if t["value"] is None:
        return "-"
    if "share" not in t:
        return format(t["value"], ".3g")
    text = f"{t['goodput_req_s']:,.0f} req/s = {t['value']:.0%} of C"
    bound = t["bound_of_capacity"]
    if bound is None:
        return f"{text}, CPU bound not measured"
    if t["of_bound"] is not None:
        text += f", {t['of_bound']:.0%} of the CPU bound"
    text += f" (bound = {bound:.0%} of C)"
    if t["capped_by"] == CPU:
        text += ": this machine's CPU bound caps it, not Sluice"
    elif t["capped_by"] == SLUICE:
        text += (f": under {t['share']:.0%} of the CPU bound too, so Sluice falls short, "
                 f"not the CPU")
    return text
