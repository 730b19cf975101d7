"""Drift reports (as :meth:`sluice.clients.AdminClient.drift_report` returns them) as text:
a table of the most drifted features and, for each feature over the PSI threshold, a histogram
of the reference shares beside the live ones."""

from __future__ import annotations

from typing import Any

#: PSI above which a feature counts as drifted (the usual reading: 0.1 moderate, 0.2 drifted).
DRIFTED_PSI = 0.2
_BAR = 24


def _num(value: float | None, form: str = ".3f") -> str:
    return "-" if value is None else format(value, form)


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value * 100:.1f}%"


def _ranked(features: list[dict[str, Any]]) -> list[dict[str, Any]]:
    def key(f: dict[str, Any]) -> tuple[float, float, str]:
        psi, ks = f.get("psi"), f.get("ks")
        return (-(psi if psi is not None else -1.0), -(ks if ks is not None else -1.0),
                f["name"])
    return sorted(features, key=key)


def _bin_label(edges: list[float], k: int) -> str:
    if not edges:
        return "all"
    if k == 0:
        return f"<= {edges[0]:g}"
    if k == len(edges):
        return f"> {edges[-1]:g}"
    return f"({edges[k - 1]:g}, {edges[k]:g}]"


def histogram_text(feature: dict[str, Any], classes: list[float] | None = None) -> list[str]:
    """One line per bin: its range (or class), the reference share and the live share as bars."""
    live = feature["live"]
    total = sum(live)
    labels = ([f"class {c:g}" for c in classes] if classes else
              [_bin_label(feature["edges"], k) for k in range(len(feature["reference"]))])
    width = max(len(label) for label in labels)
    lines = [f"  {'bin':<{width}}  {'reference':<{_BAR + 7}}  live"]
    for label, ref, count in zip(labels, feature["reference"], live, strict=True):
        share = count / total if total else 0.0
        lines.append(f"  {label:<{width}}  {'#' * round(ref * _BAR):<{_BAR}} {ref * 100:5.1f}%  "
                     f"{'#' * round(share * _BAR):<{_BAR}} {share * 100:5.1f}%")
    return lines


def drift_text(reports: list[dict[str, Any]], top: int = 20, histograms: int = 5) -> str:
    """Per version: the window, the prediction's drift, the ``top`` most drifted features
    (PSI, KS, missing and out-of-range rates) and up to ``histograms`` histograms of features
    over :data:`DRIFTED_PSI` (and of the prediction when it drifted)."""
    out: list[str] = []
    for r in reports:
        out.append(f"{r['model']} version {r['version']}: {r['rows']} rows in the window "
                   f"(sample {r['sample']:g}, at most {r['window_rows']} rows / "
                   f"{r['window_s']:g} s; {r['sampled_rows']} sampled, {r['dropped_rows']} "
                   f"dropped)")
        if r["prediction"] is not None:
            statistic = "KS" if r["prediction_kind"] == "value" else "PSI"
            out.append(f"prediction '{r['prediction_output']}' ({r['prediction_kind']}): "
                       f"{statistic} {_num(r['prediction_drift'])}")
        if not r["rows"]:
            out.append("no rows sampled yet")
            out.append("")
            continue
        ranked = _ranked(r["features"])
        width = max([len("feature"), *(len(f["name"]) for f in ranked[:top])]) + 2
        out.append(f"{'feature':<{width}}{'PSI':>8}{'KS':>8}{'missing':>9}{'out of range':>14}")
        for f in ranked[:top]:
            outside = (None if f["below_rate"] is None or f["above_rate"] is None
                       else f["below_rate"] + f["above_rate"])
            flag = "  drifted" if (f["psi"] or 0.0) > DRIFTED_PSI else ""
            out.append(f"{f['name']:<{width}}{_num(f['psi']):>8}{_num(f['ks']):>8}"
                       f"{_pct(f['missing_rate']):>9}{_pct(outside):>14}{flag}")
        if len(ranked) > top:
            out.append(f"({len(ranked) - top} more features, less drifted)")
        drifted = [f for f in ranked if (f["psi"] or 0.0) > DRIFTED_PSI]
        for f in drifted[:histograms]:
            out.append("")
            out.append(f"{f['name']} (PSI {_num(f['psi'])}):")
            out.extend(histogram_text(f))
        prediction = r["prediction"]
        if prediction is not None and (prediction["psi"] or 0.0) > DRIFTED_PSI:
            out.append("")
            out.append(f"prediction '{r['prediction_output']}' (PSI {_num(prediction['psi'])}):")
            classes = _classes(prediction["edges"]) if r["prediction_kind"] != "value" else None
            out.extend(histogram_text(prediction, classes))
        out.append("")
    return "\n".join(out).rstrip("\n")


def _classes(edges: list[float]) -> list[float] | None:
    """The classes of a class prediction from its half-way edges when they are evenly spaced
    (the usual 0..n-1); None otherwise (the bins are then labelled by range)."""
    if len(edges) < 2:
        return None
    step = edges[1] - edges[0]
    if any(abs((b - a) - step) > 1e-9 for a, b in zip(edges, edges[1:], strict=False)):
        return None
    return [edges[0] - step / 2 + k * step for k in range(len(edges) + 1)]
