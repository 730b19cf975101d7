"""What the shadow mirror accumulates per (model, live version, shadow version), and its report.

Plain data: no tasks, no I/O, no locks. :class:`PairingStats` is touched only on the event loop
thread (the mirror counts copies into it and merges the comparison thread's :class:`Delta` totals
there), so reading a :class:`ShadowReport` never races a comparison. The flip keys kept per
pairing are bounded (``MAX_FLIP_KEYS``), so a label space of any size costs bounded memory.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sluice.server.rollout.comparison import Delta
from sluice.server.serving.stats import LatencyWindow

#: Distinct "live->shadow" flip keys kept per pair of versions; the rest count under "other".
MAX_FLIP_KEYS = 1024


@dataclass
class ShadowReport:
    """Comparison of one (model, live version, shadow version) since the last reset.

    ``mirrored`` = copies sampled; each ends as ``shed`` (mirror queue full, expired, or shed by
    the candidate's admission), a candidate error, a success, or unrun (its live call failed).
    Only pairs whose live request succeeded are judged: ``compared`` pairs had both answers and
    comparable outputs; ``candidate_errors`` / ``candidate_error_rate`` count failures (outputs
    of another shape or kind included) among candidate answers judged. ``agreement`` is over
    ``label_rows`` rows (see :func:`sluice.server.rollout.comparison.compare`; None: no label
    output); the diffs cover every element of every float output (None: none compared);
    ``within_tolerance`` is the fraction of rows whose largest difference is <= ``tolerance``;
    ``flips`` maps "live_label->shadow_label" to rows (disagreements only). Latency quantiles
    (seconds) cover the last ``window_s`` of mirrored requests: live is the caller's latency,
    shadow the candidate's ``infer`` (its own queue and compute, not the wait in the mirror's
    queue). ``live_errors``: mirrored requests whose live call failed; ``dropped``: pairs not
    compared (the comparison backlog was full).
    """

    model: str
    live_version: int
    shadow_version: int
    mirrored: int
    compared: int
    shed: int
    candidate_errors: int
    candidate_error_rate: float | None
    agreement: float | None
    label_rows: int
    max_abs_diff: float | None
    mean_abs_diff: float | None
    within_tolerance: float | None
    tolerance: float
    flips: dict[str, int]
    live_p50_s: float | None
    live_p99_s: float | None
    shadow_p50_s: float | None
    shadow_p99_s: float | None
    live_errors: int = 0
    dropped: int = 0
    last_candidate_error: str | None = None

    def to_json(self) -> dict[str, Any]:
        """Plain JSON types (max_abs_diff may be inf when only one side produced NaN/inf)."""
        out = {name: getattr(self, name) for name in self.__dataclass_fields__}
        out["flips"] = dict(self.flips)
        return out


class PairingStats(Delta):
    """Everything accumulated for one (model, live version, shadow version) since its reset."""

    __slots__ = ("mirrored", "compared", "shed", "candidate_errors", "answered", "live_errors",
                 "dropped", "last_error", "live", "shadow")

    def __init__(self, window_s: float, clock: Callable[[], float]) -> None:
        super().__init__()
        self.mirrored = self.compared = self.shed = self.candidate_errors = 0
        self.answered = self.live_errors = self.dropped = 0
        self.last_error: str | None = None
        self.live = LatencyWindow(window_s, clock=clock)
        self.shadow = LatencyWindow(window_s, clock=clock)

    def merge(self, delta: Delta) -> None:
        """Add one compared pair's totals (flip keys past ``MAX_FLIP_KEYS`` count as "other")."""
        for name in ("label_rows", "agree", "elements", "abs_sum", "rows", "within"):
            setattr(self, name, getattr(self, name) + getattr(delta, name))
        for key, count in delta.flips.items():
            if key not in self.flips and len(self.flips) >= MAX_FLIP_KEYS:
                key = "other"
            self.flips[key] += count
        if delta.abs_max is not None:
            self.abs_max = max(self.abs_max or 0.0, delta.abs_max)
        self.compared += 1

    def report(self, model: str, live_version: int, shadow_version: int,
               tolerance: float) -> ShadowReport:
        """The accumulated counts as a report (``tolerance``: the mirror's, for the record)."""
        judged = self.candidate_errors + self.answered
        live = self.live.quantiles((50, 99)) or {}
        shadow = self.shadow.quantiles((50, 99)) or {}
        return ShadowReport(
            model=model, live_version=live_version, shadow_version=shadow_version,
            mirrored=self.mirrored, compared=self.compared, shed=self.shed,
            candidate_errors=self.candidate_errors,
            candidate_error_rate=self.candidate_errors / judged if judged else None,
            agreement=self.agree / self.label_rows if self.label_rows else None,
            label_rows=self.label_rows, max_abs_diff=self.abs_max,
            mean_abs_diff=self.abs_sum / self.elements if self.elements else None,
            within_tolerance=self.within / self.rows if self.rows else None, tolerance=tolerance,
            flips=dict(self.flips.most_common()),
            live_p50_s=live.get(50), live_p99_s=live.get(99),
            shadow_p50_s=shadow.get(50), shadow_p99_s=shadow.get(99),
            live_errors=self.live_errors, dropped=self.dropped,
            last_candidate_error=self.last_error,
        )
