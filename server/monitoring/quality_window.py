"""One (model, version, arm)'s recent predictions, their labels, and the numbers they give.

A :class:`QualityWindow` keeps the predictions of the last ``rows`` predicted rows and, when a
time bound is set, of the last ``seconds`` (monotonic time of arrival at the monitor), oldest
first. Labels join a prediction in the window by request id (:meth:`QualityWindow.label`); a
label for a row that has one replaces it (last write wins). Every count the metrics need is kept
incrementally, added when a prediction or label comes and taken away when it is replaced or
leaves the window, so reading the numbers costs O(classes^2), never O(rows).

Why chunks: the window holds one :class:`Chunk` per group of answers the monitor scored
together (one drain of the hub, one (version, arm)), as arrays: ids, row offsets, predictions,
confidences, their histogram bins and the labels. Adding a chunk is a few numpy calls whatever
its size (``np.bincount`` for the confidence histogram), and eviction takes whole chunks, or a
chunk's oldest requests by moving its ``head``. One object and a few counter updates per
request, as this module did before, cost ~20 us of the hub thread's GIL per answer of identity
and ~20% of its throughput at concurrency 64 on 2 cores (issue 13); with chunks the whole
subscriber costs ~3 us per answer in drains of 500 (``python -m loadtests.monitor_cost
--subscribers``).

Confidences are summed as integers (:data:`CONFIDENCE_SCALE` parts per 1): sums kept by adding
and taking away never drift, and equal windows give equal figures whatever the chunking.

Promises:
- The numbers always describe exactly the predictions in the window and their latest labels.
- Classifier counts are integers, so accuracy and F1 are exact fractions of the rows joined.
- A request leaves the window whole (never some of its rows), oldest first, exactly when a
  window of one request per chunk would let it go.
"""

from __future__ import annotations

import math
from collections import Counter, deque
from typing import Any

import numpy as np

from sluice.server.monitoring.quality_spec import CLASSIFIER, QualitySpec

#: Confidence histogram: 10 bins of width 0.1 over [0, 1] (1.0 falls in the last).
CONFIDENCE_BINS = 10
#: Fixed-point parts per 1 of a summed confidence (rounding 1e-12 per row; 2^23 rows fit int64).
CONFIDENCE_SCALE = 1 << 40


def clean_confidence(confidence: np.ndarray) -> np.ndarray:
    """Top-class probabilities as counted: NaN (scores that were not numbers) as 0, all in
    [0, 1]."""
    return np.clip(np.nan_to_num(confidence, nan=0.0), 0.0, 1.0)


def confidence_bins(confidence: np.ndarray) -> np.ndarray:
    """The confidence histogram's bin of each row (int64; 1.0 falls in the last bin)."""
    bins = (confidence * CONFIDENCE_BINS).astype(np.int64)
    return np.clip(bins, 0, CONFIDENCE_BINS - 1, out=bins)


class Chunk:
    """Answers of one window scored together: request ``k`` has rows
    ``starts[k]:starts[k + 1]`` of the row arrays. Requests before ``head`` have left the
    window."""

    __slots__ = ("at", "base", "bins", "confidence", "fixed", "gone", "head", "ids", "labelled",
                 "labels", "predicted", "starts", "window")

    def __init__(self, window: QualityWindow, ids: list[str], starts: np.ndarray,
                 predicted: np.ndarray, confidence: np.ndarray | None, at: float) -> None:
        """``confidence``: cleaned (:func:`clean_confidence`) top-class probability per row, or
        None when the model gives no scores; ``at``: monotonic seconds of arrival."""
        self.window = window
        self.ids = ids
        self.starts = starts
        self.predicted = predicted
        self.confidence = confidence
        self.at = at
        self.bins = confidence_bins(confidence) if confidence is not None else None
        self.fixed = (np.rint(confidence * CONFIDENCE_SCALE).astype(np.int64)
                      if confidence is not None else None)
        #: Label per row (float64, NaN: not labelled yet); None until the first label.
        self.labels: np.ndarray | None = None
        #: Rows with a label: eviction looks at the labels only when there are some.
        self.labelled = 0
        self.head = 0
        #: Position of request 0 among its model's requests, and whether every request left
        #: its window (kept by :class:`~sluice.server.monitoring.quality_index.RequestIndex`).
        self.base = 0
        self.gone = False

    def rows_of(self, k: int) -> int:
        """Rows of request ``k``."""
        return int(self.starts[k + 1] - self.starts[k])


class QualityWindow:
    """Predictions of one (model, version, arm) and the counts over them (not thread-safe:
    :class:`~sluice.server.monitoring.quality.QualityMonitor` holds its lock around every
    call)."""

    def __init__(self, spec: QualitySpec, key: tuple[int, str] = (0, "")) -> None:
        self.spec = spec
        #: (version, arm) of the predictions it holds.
        self.key = key
        self.kind = spec.kind
        self._chunks: deque[Chunk] = deque()
        self.predicted_rows = 0
        self.labelled_rows = 0
        #: Sum of top-class probabilities (in CONFIDENCE_SCALE parts) over predicted rows that
        #: have one ...
        self.confidence_fixed = 0
        self.confidence_rows = 0
        #: ... and over the labelled ones: the estimate on the very rows that were measured.
        self.labelled_confidence_fixed = 0
        self.labelled_confidence_rows = 0
        self.confidence_hist = np.zeros(CONFIDENCE_BINS, dtype=np.int64)
        #: (label, predicted) -> labelled rows (classifiers).
        self.confusion: Counter[tuple[int, int]] = Counter()
        #: Sums of |error| and error^2 over labelled rows (regressors).
        self.abs_error = 0.0
        self.squared_error = 0.0

    @property
    def chunks(self) -> tuple[Chunk, ...]:
        return tuple(self._chunks)

    # -- changes ------------------------------------------------------------------------------

    def add(self, chunk: Chunk) -> list[tuple[Chunk, int, int]]:
        """Take a new chunk (unlabelled); returns the requests it pushed out, as (chunk, first,
        end) ranges of request positions."""
        self._chunks.append(chunk)
        rows = len(chunk.predicted)
        self.predicted_rows += rows
        if chunk.fixed is not None and chunk.bins is not None:
            self.confidence_fixed += int(chunk.fixed.sum())
            self.confidence_rows += rows
            self.confidence_hist += np.bincount(chunk.bins, minlength=CONFIDENCE_BINS)
        return self.evict(chunk.at)

    def evict(self, now: float) -> list[tuple[Chunk, int, int]]:
        """Drop requests beyond the row bound or older than the time bound (as (chunk, first,
        end) ranges): the oldest request goes while the rest still hold ``window_rows`` rows."""
        gone: list[tuple[Chunk, int, int]] = []
        horizon = None if self.spec.window_s is None else now - self.spec.window_s
        chunks = self._chunks
        while chunks:
            chunk = chunks[0]
            end = len(chunk.ids)
            if horizon is not None and chunk.at < horizon:
                first = chunk.head
                self._drop(chunk, end)
            else:
                excess = self.predicted_rows - self.spec.window_rows
                if excess <= 0:
                    break
                # request k goes when it and those before it leave >= window_rows rows and
                # the window held more than window_rows before it went (a 0-row request too)
                target = int(chunk.starts[chunk.head]) + excess
                fits = int(np.searchsorted(chunk.starts, target, side="right")) - 1
                below = int(np.searchsorted(chunk.starts, target, side="left"))
                stop = min(fits, below, end)
                if stop <= chunk.head:
                    break
                first = chunk.head
                self._drop(chunk, stop)
                if stop < end:
                    gone.append((chunk, first, stop))
                    break
            chunks.popleft()
            gone.append((chunk, first, end))
        return gone

    def label(self, chunk: Chunk, k: int, row: int | None, value: float) -> int:
        """Set the label of ``row`` (None: every row) of request ``k`` of ``chunk``; returns
        how many rows had a label already (replaced)."""
        start = int(chunk.starts[k])
        rows = range(start, int(chunk.starts[k + 1])) if row is None else (start + row,)
        if chunk.labels is None:
            chunk.labels = np.full(len(chunk.predicted), np.nan)
        labels = chunk.labels
        replaced = 0
        for r in rows:
            old = labels[r]
            if not math.isnan(old):
                replaced += 1
                self._count(chunk, r, float(old), -1)
            else:
                chunk.labelled += 1
            labels[r] = value
            self._count(chunk, r, value, +1)
        return replaced

    def _drop(self, chunk: Chunk, stop: int) -> None:
        """Take requests ``head:stop`` of ``chunk`` out of the counts; ``head`` becomes
        ``stop``."""
        a, b = int(chunk.starts[chunk.head]), int(chunk.starts[stop])
        chunk.head = stop
        if a == b:
            return
        self.predicted_rows -= b - a
        if chunk.fixed is not None and chunk.bins is not None:
            self.confidence_fixed -= int(chunk.fixed[a:b].sum())
            self.confidence_rows -= b - a
            self.confidence_hist -= np.bincount(chunk.bins[a:b], minlength=CONFIDENCE_BINS)
        if not chunk.labelled or chunk.labels is None:
            return
        rows = a + np.flatnonzero(~np.isnan(chunk.labels[a:b]))
        if not rows.size:
            return
        n = int(rows.size)
        chunk.labelled -= n
        self.labelled_rows -= n
        labels = chunk.labels[rows]
        predicted = chunk.predicted[rows]
        if chunk.fixed is not None:
            self.labelled_confidence_fixed -= int(chunk.fixed[rows].sum())
            self.labelled_confidence_rows -= n
        if self.kind == CLASSIFIER:
            self.confusion.subtract(zip(labels.astype(np.int64).tolist(), predicted.tolist(),
                                        strict=True))
            for key in [key for key, count in self.confusion.items() if not count]:
                del self.confusion[key]
        else:
            error = predicted.astype(np.float64) - labels
            self.abs_error -= float(np.abs(error).sum())
            self.squared_error -= float((error * error).sum())

    def _count(self, chunk: Chunk, row: int, value: float, sign: int) -> None:
        self.labelled_rows += sign
        if chunk.fixed is not None:
            self.labelled_confidence_fixed += sign * int(chunk.fixed[row])
            self.labelled_confidence_rows += sign
        if self.kind == CLASSIFIER:
            key = (int(value), int(chunk.predicted[row]))
            self.confusion[key] += sign
            if not self.confusion[key]:
                del self.confusion[key]
        else:
            error = float(chunk.predicted[row]) - value
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
            metrics["estimated_accuracy"] = self.confidence_fixed / (
                CONFIDENCE_SCALE * self.confidence_rows)
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
            estimate = self.labelled_confidence_fixed / (
                CONFIDENCE_SCALE * self.labelled_confidence_rows)
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
