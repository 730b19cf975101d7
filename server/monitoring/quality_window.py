"""One (model, version, arm)'s recent predictions, their labels, and the numbers they give.

A :class:`QualityWindow` keeps the predictions of the last ``rows`` predicted rows and, when a
time bound is set, of the last ``seconds`` (monotonic time of arrival at the monitor), oldest
first. Labels join a prediction in the window by request id (:meth:`QualityWindow.label`); a
label for a row that has one replaces it (last write wins). Every count the metrics need is kept
incrementally, added when a prediction or label comes and taken away when it is replaced or
leaves the window, so reading the numbers costs O(classes^2), never O(rows).

Promises:
- The numbers always describe exactly the predictions in the window and their latest labels.
- Classifier counts are integers, so accuracy and F1 are exact fractions of the rows joined.
"""

from __future__ import annotations

import math
from collections import Counter, deque
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from sluice.server.monitoring.quality_spec import CLASSIFIER, QualitySpec

#: Confidence histogram: 10 bins of width 0.1 over [0, 1] (1.0 falls in the last).
CONFIDENCE_BINS = 10


@dataclass(slots=True)
class Prediction:
    """One answered request in a window."""

    id: str
    #: Monotonic seconds at which the monitor took it.
    at: float
    predicted: np.ndarray
    #: Top-class probability per row; None when the model gives no scores.
    confidence: np.ndarray | None
    #: Label per row (float64, NaN: not labelled yet).
    labels: np.ndarray = field(default_factory=lambda: np.empty(0))
    #: Confidence bin per row and the confidence's sum, as Python numbers: adding and evicting
    #: a prediction then costs no numpy call (computed by :func:`confidence_bins` when None).
    bins: list[int] | None = None
    confidence_total: float = 0.0
    #: Rows with a label: eviction looks at the labels only when there are some.
    labelled: int = 0

    @property
    def rows(self) -> int:
        return len(self.predicted)


def confidence_bins(confidence: np.ndarray) -> list[int]:
    """The confidence histogram's bin of each row (1.0 falls in the last bin)."""
    bins = np.minimum((confidence * CONFIDENCE_BINS).astype(np.int64), CONFIDENCE_BINS - 1)
    return bins.clip(0).tolist()


class QualityWindow:
    """Predictions of one (model, version, arm) and the counts over them (not thread-safe:
    :class:`~sluice.server.monitoring.quality.QualityMonitor` holds its lock around every
    call)."""

    def __init__(self, spec: QualitySpec, key: tuple[int, str] = (0, "")) -> None:
        self.spec = spec
        #: (version, arm) of the predictions it holds.
        self.key = key
        self.kind = spec.kind
        self._items: deque[Prediction] = deque()
        self.predicted_rows = 0
        self.labelled_rows = 0
        #: Sum of top-class probabilities over predicted rows that have one.
        self.confidence_sum = 0.0
        self.confidence_rows = 0
        #: ... and over the labelled ones: the estimate on the very rows that were measured.
        self.labelled_confidence_sum = 0.0
        self.labelled_confidence_rows = 0
        self.confidence_hist = np.zeros(CONFIDENCE_BINS, dtype=np.int64)
        #: (label, predicted) -> labelled rows (classifiers).
        self.confusion: Counter[tuple[int, int]] = Counter()
        #: Sums of |error| and error^2 over labelled rows (regressors).
        self.abs_error = 0.0
        self.squared_error = 0.0

    # -- changes ------------------------------------------------------------------------------

    def add(self, item: Prediction) -> list[Prediction]:
        """Take a new prediction (unlabelled); returns the predictions it pushed out."""
        item.labels = np.full(item.rows, np.nan)
        self._items.append(item)
        self.predicted_rows += item.rows
        if item.confidence is not None:
            if item.bins is None:
                item.bins = confidence_bins(item.confidence)
                item.confidence_total = float(item.confidence.sum())
            self.confidence_sum += item.confidence_total
            self.confidence_rows += item.rows
            hist = self.confidence_hist
            for b in item.bins:
                hist[b] += 1
        return self.evict(item.at)

    def evict(self, now: float) -> list[Prediction]:
        """Drop predictions beyond the row bound or older than the time bound."""
        gone = []
        horizon = None if self.spec.window_s is None else now - self.spec.window_s
        while self._items and (
            self.predicted_rows - self._items[0].rows >= self.spec.window_rows
            and self.predicted_rows > self.spec.window_rows
            or (horizon is not None and self._items[0].at < horizon)
        ):
            item = self._items.popleft()
            self._forget(item)
            gone.append(item)
        return gone

    def label(self, item: Prediction, row: int | None, value: float) -> int:
        """Set the label of ``row`` (None: every row) of ``item``; returns how many rows had a
        label already (replaced)."""
        rows = range(item.rows) if row is None else (row,)
        replaced = 0
        for r in rows:
            old = item.labels[r]
            if not math.isnan(old):
                replaced += 1
                self._count(item, r, old, -1)
            else:
                item.labelled += 1
            item.labels[r] = value
            self._count(item, r, value, +1)
        return replaced

    def _forget(self, item: Prediction) -> None:
        self.predicted_rows -= item.rows
        if item.confidence is not None:
            self.confidence_sum -= item.confidence_total
            self.confidence_rows -= item.rows
            hist = self.confidence_hist
            for b in item.bins or ():
                hist[b] -= 1
        if item.labelled:
            for r in np.flatnonzero(~np.isnan(item.labels)):
                self._count(item, int(r), float(item.labels[r]), -1)

    def _count(self, item: Prediction, row: int, value: float, sign: int) -> None:
        self.labelled_rows += sign
        if item.confidence is not None:
            self.labelled_confidence_sum += sign * float(item.confidence[row])
            self.labelled_confidence_rows += sign
        if self.kind == CLASSIFIER:
            key = (int(value), int(item.predicted[row]))
            self.confusion[key] += sign
            if not self.confusion[key]:
                del self.confusion[key]
        else:
            error = float(item.predicted[row]) - value
            self.abs_error += sign * abs(error)
            self.squared_error += sign * error * error

    # -- reading ------------------------------------------------------------------------------

    def numbers(self) -> dict[str, Any]:
        """Everything :mod:`.quality` reports for this window: ``metrics`` (name -> value,
        only those defined), per-class rows, confusion cells and the confidence histogram."""
        metrics: dict[str, float] = {}
        out: dict[str, Any] = {
            "kind": self.kind, "predicted_rows": self.predicted_rows,
            "labelled_rows": self.labelled_rows, "metrics": metrics, "classes": [],
            "confusion": sorted(self.confusion.items()),
            "confidence_histogram": [int(c) for c in self.confidence_hist],
        }
        if self.predicted_rows:
            metrics["labelled_share"] = self.labelled_rows / self.predicted_rows
        if self.confidence_rows:
            metrics["estimated_accuracy"] = self.confidence_sum / self.confidence_rows
        if not self.labelled_rows:
            return out
        if self.kind != CLASSIFIER:
            metrics["mae"] = self.abs_error / self.labelled_rows
            metrics["rmse"] = math.sqrt(max(self.squared_error, 0.0) / self.labelled_rows)
            return out
        per_class, summary = classification_metrics(self.confusion)
        metrics.update(summary)
        out["classes"] = per_class
        if self.labelled_confidence_rows:
            estimate = self.labelled_confidence_sum / self.labelled_confidence_rows
            metrics["estimated_accuracy_labelled"] = estimate
            metrics["estimate_error"] = estimate - metrics["accuracy"]
        return out


def classification_metrics(
    confusion: Counter[tuple[int, int]] | dict[tuple[int, int], int],
) -> tuple[list[dict[str, Any]], dict[str, float]]:
    """Per-class precision, recall, F1 and support, and accuracy with their macro means, from
    (label, predicted) -> rows. Classes are those that occur as a label or a prediction (as
    scikit-learn does); a class never predicted has precision 0, one never labelled recall 0."""
    total = sum(confusion.values())
    classes = sorted({c for pair in confusion for c in pair})
    correct = sum(n for (label, predicted), n in confusion.items() if label == predicted)
    rows = []
    for c in classes:
        tp = confusion.get((c, c), 0)
        predicted = sum(n for (_, p), n in confusion.items() if p == c)
        support = sum(n for (t, _), n in confusion.items() if t == c)
        precision = tp / predicted if predicted else 0.0
        recall = tp / support if support else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        rows.append({"class": c, "precision": precision, "recall": recall, "f1": f1,
                     "support": support})
    n = len(rows) or 1
    summary = {
        "accuracy": correct / total if total else 0.0,
        "precision_macro": sum(r["precision"] for r in rows) / n,
        "recall_macro": sum(r["recall"] for r in rows) / n,
        "f1_macro": sum(r["f1"] for r in rows) / n,
    }
    return rows, summary
