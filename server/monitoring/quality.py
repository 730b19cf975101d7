"""Live quality: predictions joined with ground truth by request id, per model version and arm.

The monitor subscribes to the :class:`~sluice.server.monitoring.hub.MonitorHub` and watches every
loaded model whose outputs say what it predicts (:mod:`.quality_spec`). For each answered
request of such a model it keeps, in the (version, arm) :class:`~.quality_window.QualityWindow`,
the predicted class (or value) and top-class probability of each row: a few microseconds of
numpy on the hub's thread, never on the request path. Labels come by request id through
:meth:`QualityMonitor.feedback` (the Admin ``Feedback`` RPC, ``sluice feedback``): a label for
the request applies to its rows, one with a row number to that row; a later label replaces an
earlier one (last write wins). Ids not in a window (never seen, or older than it) are counted as
unknown, not refused, and every valid label is appended to the Parquet feedback log
(:mod:`.feedback_log`), so late labels still join offline. Bad labels are refused one by one,
each with a message naming its index and id; the rest of the call goes on.

Before labels arrive, each window estimates its accuracy as the mean top-class probability of
its predictions (confidence-based performance estimation, right for a calibrated classifier);
once labels come, the same estimate over the labelled rows stands beside the measured accuracy
(``estimate_error``), so how far to trust the estimate is visible.

Promises:
- Nothing here runs on the request path or can fail it: the hub hands records over, and an
  answer that cannot be read is skipped and counted (``skipped``).
- Feedback sent after its answers were received joins them: :meth:`feedback` first drains the
  hub, so every answer already given is in a window.
- The numbers are exact functions of the window's predictions and their latest labels.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from sluice.server.config.model import ModelConfig
from sluice.server.config.quality_file import QualityDeclared, read_quality
from sluice.server.errors import ModelNotFound, SluiceError
from sluice.server.monitoring.feedback_log import FeedbackLog, LoggedLabel
from sluice.server.monitoring.hub import Finished, MonitorHub
from sluice.server.monitoring.quality_spec import (
    CLASSIFIER,
    QualitySpec,
    decide,
    read_group,
    read_rows,
)
from sluice.server.monitoring.quality_window import (
    CONFIDENCE_BINS,
    Prediction,
    QualityWindow,
    confidence_bins,
)

log = logging.getLogger(__name__)

#: Most per-label errors one feedback answer lists (all are counted).
MAX_ERRORS = 1000


@dataclass(frozen=True, slots=True)
class Label:
    """One label as sent: request ``id``, ``row`` (None: every row of the request) and the
    class id (classifiers) or value (regressors)."""

    id: str
    row: int | None
    value: float


@dataclass(slots=True)
class FeedbackResult:
    """What one feedback call did with its labels."""

    received: int = 0
    #: Labels joined with a prediction in a window.
    joined: int = 0
    #: Rows whose earlier label a joined one replaced.
    replaced_rows: int = 0
    #: Valid labels whose id is in no window (kept in the Parquet log only).
    unknown: int = 0
    #: Labels refused; ``errors`` says why, one entry per label (index, id, message).
    invalid: int = 0
    errors: list[tuple[int, str, str]] = field(default_factory=list)
    #: Labels appended to the Parquet feedback log.
    logged: int = 0
    #: Why the labels were not logged ("" when they were, or when no log is configured).
    log_error: str = ""
    #: Why live quality is off for the model ("" when it is on).
    note: str = ""


@dataclass(slots=True)
class _Model:
    """What the monitor holds for one model."""

    #: version -> how its answers are scored, or why they are not.
    specs: dict[int, QualitySpec | str] = field(default_factory=dict)
    windows: dict[tuple[int, str], QualityWindow] = field(default_factory=dict)
    #: request id -> (window, prediction) for predictions in a window.
    index: dict[str, tuple[QualityWindow, Prediction]] = field(default_factory=dict)
    #: Feedback outcomes since start: joined, replaced_rows, unknown, invalid, logged,
    #: log_failed; answers skipped: skipped_unreadable.
    counts: Counter[str] = field(default_factory=Counter)
    #: (version, arm) -> cumulative confidence histogram counts (for Prometheus) and sum.
    confidence: dict[tuple[int, str], tuple[np.ndarray, float]] = field(default_factory=dict)
    watched: bool = False


class QualityMonitor:
    """Live quality of every watched model; thread-safe (one lock around the windows)."""

    def __init__(
        self, hub: MonitorHub | None, *, window_rows: int = 10_000,
        window_s: float | None = 3600.0, feedback_log: FeedbackLog | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._hub = hub
        self.window_rows = window_rows
        self.window_s = window_s
        self._log = feedback_log
        self._clock = clock
        self._models: dict[str, _Model] = {}
        self._lock = threading.Lock()
        if hub is not None:
            hub.subscribe("quality", self.on_finished)

    # -- models -------------------------------------------------------------------------------

    def model_loaded(self, name: str, configs: Mapping[int, ModelConfig],
                     model_dir: Path | None = None) -> None:
        """Decide how each loaded version of ``name`` is scored (reading its deployment.yaml
        ``quality`` block from ``model_dir``) and watch it when one can be. Blocking."""
        try:
            declared = read_quality(model_dir) if model_dir is not None else QualityDeclared()
        except SluiceError as exc:
            specs: dict[int, QualitySpec | str] = {v: exc.message for v in configs}
        else:
            specs = {
                version: decide(config, declared, window_rows=self.window_rows,
                                window_s=self.window_s)
                for version, config in configs.items()
            }
        for version, spec in specs.items():
            if isinstance(spec, str):
                log.info("model '%s' version %d: no live quality: %s", name, version, spec)
        with self._lock:
            model = self._models.setdefault(name, _Model())
            model.specs = specs
            watch = any(isinstance(s, QualitySpec) for s in specs.values())
            if watch != model.watched and self._hub is not None:
                (self._hub.watch if watch else self._hub.unwatch)(name)
            model.watched = watch

    # -- the hub's subscriber -----------------------------------------------------------------

    def on_finished(self, records: list[Finished]) -> None:
        """Take a batch of finished requests (the hub's thread): the answers of each (model,
        version, arm) are scored together (:func:`read_group`); what cannot be, one by one."""
        groups: dict[tuple[str, int, str], list[Finished]] = {}
        for record in records:
            model = self._models.get(record.model)
            if model is None or record.status != "OK":
                continue
            if not isinstance(model.specs.get(record.version), QualitySpec):
                continue
            groups.setdefault((record.model, record.version, record.arm), []).append(record)
        if not groups:
            return
        read: list[tuple[_Model, Finished, np.ndarray, np.ndarray | None, list[int] | None,
                         float]] = []
        for (name, version, _), group in groups.items():
            model = self._models[name]
            spec = model.specs[version]
            assert isinstance(spec, QualitySpec)
            read.extend(self._read(model, spec, group))
        now = self._clock()
        with self._lock:
            for model, record, predicted, confidence, bins, total in read:
                key = (record.version, record.arm)
                window = model.windows.get(key)
                spec = model.specs.get(record.version)
                if window is None or window.spec != spec:
                    window = model.windows[key] = QualityWindow(spec, key)
                item = Prediction(record.id, now, predicted, confidence, bins=bins,
                                  confidence_total=total)
                for gone in window.add(item):
                    if model.index.get(gone.id, (None, None))[1] is gone:
                        del model.index[gone.id]
                if record.id:
                    model.index[record.id] = (window, item)
                if confidence is not None:
                    self._count_confidence(model, key, item)

    @staticmethod
    def _read(model: _Model, spec: QualitySpec, group: list[Finished]) -> list[tuple[
            _Model, Finished, np.ndarray, np.ndarray | None, list[int] | None, float]]:
        """(model, record, predictions, confidences, confidence bins, confidence sum) of each
        readable answer of ``group``; unreadable ones are counted and skipped."""
        try:
            predicted, confidence, rows = read_group(spec, [r.outputs for r in group])
        except (ValueError, TypeError):
            pass  # not batched alike: one by one below
        else:
            bins = confidence_bins(confidence) if confidence is not None else None
            totals = (np.add.reduceat(confidence, np.cumsum([0, *rows[:-1]])).tolist()
                      if confidence is not None and all(rows) else None)
            out = []
            start = 0
            for i, (record, n) in enumerate(zip(group, rows, strict=True)):
                end = start + n
                conf = confidence[start:end] if confidence is not None else None
                total = (totals[i] if totals is not None
                         else float(conf.sum()) if conf is not None else 0.0)
                out.append((model, record, predicted[start:end], conf,
                            bins[start:end] if bins is not None else None, total))
                start = end
            return out
        out = []
        for record in group:
            try:
                predicted, conf = read_rows(spec, record.outputs)
            except (ValueError, TypeError) as exc:
                model.counts["skipped_unreadable"] += 1
                log.debug("model '%s': answer %r not scored: %s", record.model, record.id, exc)
                continue
            bins = confidence_bins(conf) if conf is not None else None
            total = float(conf.sum()) if conf is not None else 0.0
            out.append((model, record, predicted, conf, bins, total))
        return out

    @staticmethod
    def _count_confidence(model: _Model, key: tuple[int, str], item: Prediction) -> None:
        hist, total = model.confidence.get(key, (np.zeros(CONFIDENCE_BINS, np.int64), 0.0))
        for b in item.bins or ():
            hist[b] += 1
        model.confidence[key] = (hist, total + item.confidence_total)

    # -- ground truth -------------------------------------------------------------------------

    def feedback(self, name: str, labels: Iterable[Label]) -> FeedbackResult:
        """Join ``labels`` with ``name``'s predictions and log them. Raises ModelNotFound for a
        model the monitor never saw loaded; everything else is counted in the result. Blocking
        (the Parquet write)."""
        if self._hub is not None:
            self._hub.drain()  # answers already given are in their windows before labels join
        result = FeedbackResult()
        logged: list[LoggedLabel] = []
        with self._lock:
            model = self._models.get(name)
            if model is None:
                raise ModelNotFound(f"model '{name}' is not loaded")
            specs = [s for _, s in sorted(model.specs.items()) if isinstance(s, QualitySpec)]
            newest = specs[-1] if specs else None
            if newest is None:
                result.note = "; ".join(sorted({str(s) for s in model.specs.values()}))
            now = self._clock()
            for window in model.windows.values():
                for gone in window.evict(now):
                    if model.index.get(gone.id, (None, None))[1] is gone:
                        del model.index[gone.id]
            for i, label in enumerate(labels):
                result.received += 1
                found = model.index.get(label.id) if label.id else None
                spec = found[0].spec if found is not None else newest
                problem = _problem(label, spec, found[1] if found is not None else None)
                if problem:
                    result.invalid += 1
                    if len(result.errors) < MAX_ERRORS:
                        result.errors.append((i, label.id, problem))
                    continue
                if found is None:
                    result.unknown += 1
                    logged.append(LoggedLabel(label.id, label.row, label.value, None, None))
                    continue
                window, item = found
                result.joined += 1
                result.replaced_rows += window.label(item, label.row, label.value)
                logged.append(LoggedLabel(label.id, label.row, label.value, *window.key))
            for key in ("joined", "replaced_rows", "unknown", "invalid"):
                model.counts[key] += getattr(result, key)
            classifier = newest is None or newest.kind == CLASSIFIER
        if self._log is not None and logged:
            result.log_error = self._log.write(name, logged, classifier=classifier)
            result.logged = 0 if result.log_error else len(logged)
            with self._lock:
                model.counts["logged"] += result.logged
                model.counts["log_failed"] += len(logged) - result.logged
        return result

    # -- reading ------------------------------------------------------------------------------

    def report(self, name: str) -> dict[str, Any]:
        """``name``'s live quality: one entry per (version, arm) window with its numbers, the
        feedback counts, and notes for versions without live quality."""
        with self._lock:
            model = self._models.get(name)
            if model is None:
                raise ModelNotFound(f"model '{name}' is not loaded")
            now = self._clock()
            windows = []
            for (version, arm), window in sorted(model.windows.items()):
                for gone in window.evict(now):
                    if model.index.get(gone.id, (None, None))[1] is gone:
                        del model.index[gone.id]
                windows.append({"version": version, "arm": arm,
                                "window_rows": window.spec.window_rows,
                                "window_s": window.spec.window_s, **window.numbers()})
            notes = {v: s for v, s in model.specs.items() if isinstance(s, str)}
            return {"model": name, "windows": windows, "counts": dict(model.counts),
                    "notes": notes}

    def reports(self) -> list[dict[str, Any]]:
        """:meth:`report` of every model the monitor holds (the metrics collector's view)."""
        out = []
        for name in sorted(self._models):
            report = self.report(name)
            with self._lock:
                model = self._models[name]
                report["confidence"] = {k: (h.copy(), s) for k, (h, s) in model.confidence.items()}
            out.append(report)
        return out

    def accuracy(self, name: str, arm: str, version: int) -> tuple[float | None, int]:
        """(accuracy, labelled rows) of ``name``'s (version, arm) window now; (None, 0) when it
        has no labelled row. The canary's accuracy gates read this."""
        with self._lock:
            model = self._models.get(name)
            window = model.windows.get((version, arm)) if model is not None else None
            if window is None or window.kind != CLASSIFIER:
                return None, 0
            window.evict(self._clock())
            numbers = window.numbers()
        return numbers["metrics"].get("accuracy"), numbers["labelled_rows"]


def _problem(label: Label, spec: QualitySpec | None, item: Prediction | None) -> str:
    """Why ``label`` cannot be taken ("" when it can)."""
    if not label.id:
        return "id: a request id is required"
    if label.row is not None and label.row < 0:
        return f"row: must be >= 0, got {label.row}"
    if item is not None and label.row is not None and label.row >= item.rows:
        return f"row {label.row}: request '{label.id}' had {item.rows} row(s)"
    if not math.isfinite(label.value):
        return f"label: must be a finite number, got {label.value}"
    if spec is not None and spec.kind == CLASSIFIER:
        if not float(label.value).is_integer():
            return f"label: a class id (a whole number) is expected, got {label.value:g}"
        if spec.classes is not None and not 0 <= label.value < spec.classes:
            return f"label: class {int(label.value)} is not in 0..{spec.classes - 1}"
    return ""
