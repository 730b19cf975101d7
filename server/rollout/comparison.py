"""Comparing a live answer with a shadow answer: pure numpy, no server state.

Runs on the shadow mirror's comparison thread (see :mod:`sluice.server.rollout.shadow`); each call
turns one pair of answers into a :class:`Delta` of totals that the event loop merges.
"""

from __future__ import annotations

import logging
from collections import Counter
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

Arrays = dict[str, np.ndarray]


class Delta:
    """Totals of comparing some pairs; the comparison thread makes them, the loop merges them."""

    __slots__ = ("label_rows", "agree", "flips", "elements", "abs_sum", "abs_max", "rows",
                 "within")

    def __init__(self) -> None:
        self.label_rows = self.agree = self.elements = self.rows = self.within = 0
        self.abs_sum = 0.0
        self.abs_max: float | None = None
        self.flips: Counter[str] = Counter()


def mismatch(live: Arrays, shadow: Arrays) -> str | None:
    """Why the candidate's outputs cannot be compared with the live ones (None: they can).
    Metadata only: cheap enough for the loop."""
    for name, a in live.items():
        b = shadow.get(name)
        if b is None:
            return f"candidate gave no output '{name}'"
        if a.shape != b.shape:
            return f"output '{name}': candidate shape {list(b.shape)}, live {list(a.shape)}"
        if (a.dtype.kind == "f") != (b.dtype.kind == "f") or (
            a.dtype.kind != "f" and a.dtype.kind != b.dtype.kind
        ):
            return f"output '{name}': candidate dtype {b.dtype}, live {a.dtype}"
    return None


def compare_all(work: list[tuple[Arrays, Arrays]], tolerance: float) -> list[Delta | None]:
    out: list[Delta | None] = []
    for live, shadow in work:
        try:
            out.append(compare(live, shadow, tolerance))
        except Exception:  # our bug (an output kind we do not handle): skip, keep comparing
            log.exception("shadow comparison failed")
            out.append(None)
    return out


def compare(live: Arrays, shadow: Arrays, tolerance: float) -> Delta:
    """Compare one pair of answers (same names and shapes; see :func:`mismatch`).

    Labels come from the first output (in the live response's order) that has them: a float
    output whose last dim is > 1 gives per-row argmax over its last axis (every position of the
    leading axes is a row); an integer, bool or BYTES output gives one row per element when it
    has at most one axis, else one row per index of its first axis, equal when all its elements
    are (flips only when a row is one element). Float outputs with last dim 1 give no labels.
    Differences cover every element of every float output (NaN equals NaN; NaN against a number
    is inf); a row (first axis; the whole output when it has none) is within tolerance when its
    largest difference over all float outputs is <= ``tolerance``.
    """
    delta = Delta()
    labelled = False
    row_max: list[np.ndarray] = []
    for name, a in live.items():
        b = shadow[name]
        if a.size == 0:
            continue
        if a.dtype.kind == "f":
            x, y = (np.atleast_1d(v).astype(np.float64, copy=False) for v in (a, b))
            with np.errstate(invalid="ignore", over="ignore"):
                diff = np.abs(x - y)
            same = (x == y) | (np.isnan(x) & np.isnan(y))
            diff[same] = 0.0
            diff[np.isnan(diff)] = np.inf
            delta.elements += diff.size
            delta.abs_sum += float(diff.sum())
            top = float(diff.max())
            delta.abs_max = top if delta.abs_max is None else max(delta.abs_max, top)
            row_max.append(diff.reshape(diff.shape[0], -1).max(axis=1))
            if not labelled and a.ndim >= 1 and a.shape[-1] > 1:
                labelled = True
                _labels(delta, a.argmax(axis=-1).ravel(), b.argmax(axis=-1).ravel())
        elif not labelled:
            labelled = True
            if a.ndim <= 1 or a[0].size == 1:
                _labels(delta, a.reshape(-1), b.reshape(-1))
            else:
                equal = (a.reshape(a.shape[0], -1) == b.reshape(b.shape[0], -1)).all(axis=1)
                delta.label_rows += int(equal.size)
                delta.agree += int(equal.sum())
    if row_max:
        if all(r.size == row_max[0].size for r in row_max):
            worst = np.maximum.reduce(row_max)
        else:  # outputs without a common first axis: each output's rows count on their own
            worst = np.concatenate(row_max)
        delta.rows = int(worst.size)
        delta.within = int((worst <= tolerance).sum())
    return delta


def _labels(delta: Delta, live: np.ndarray, shadow: np.ndarray) -> None:
    differ = live != shadow
    delta.label_rows += int(live.size)
    delta.agree += int(live.size - differ.sum())
    if differ.any():
        delta.flips.update(
            f"{_label(x)}->{_label(y)}" for x, y in zip(live[differ], shadow[differ], strict=True)
        )


def _label(value: Any) -> str:
    if isinstance(value, np.generic):
        value = value.item()
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)
