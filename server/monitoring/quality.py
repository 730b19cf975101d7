"""Live quality: predictions joined with ground truth by request id, per model version and arm.

The monitor subscribes to the :class:`~sluice.server.monitoring.hub.MonitorHub` and watches every
loaded model whose outputs say what it predicts (:mod:`.quality_spec`). For each answered
request of such a model it keeps, in the (version, arm) :class:`~.quality_window.QualityWindow`,
the predicted class (or value) and top-class probability of each row: the answers of one drain
of the hub go in as one chunk of arrays, a few numpy calls per drain and ~3 us per answer
(grouping, and a dict entry per request id for the label join), never on the request path. In a
server this monitor runs in the monitor process, behind
:class:`~.quality_remote.RemoteQuality` (why: :mod:`.monitor_remote`); in tests, on a hub here.
Labels come by request id through :meth:`QualityMonitor.feedback` (the Admin ``Feedback``
RPC, ``sluice feedback``): a label for the request applies to its rows, one with a row number
to that row; a later label replaces an earlier one (last write wins). Ids not in a window
(never seen, or older than it) are counted as unknown, not refused, and every valid label is
appended to the Parquet feedback log (:mod:`.feedback_log`), so late labels still join offline.
Bad labels are refused one by one, each with a message naming its index and id; the rest of the
call goes on.

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
from sluice.server.monitoring.hub import Finished, MonitorHub, grouped
from sluice.server.monitoring.quality_index import RequestIndex
from sluice.server.monitoring.quality_spec import (
    CLASSIFIER,
    QualitySpec,
    decide,
    read_group,
    read_rows,
)
from sluice.server.monitoring.quality_window import (
    CONFIDENCE_BINS,
    Chunk,
    QualityWindow,
    clean_confidence,
)

log = logging.getLogger(__name__)

#: Most per-label errors one feedback answer lists (all are counted).
MAX_ERRORS = 1000

#: What one group of answers scores to: (ids, row offsets, predictions, confidences or None).
_Scored = tuple[list[str], np.ndarray, np.ndarray, np.ndarray | None]


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
    #: request id -> (chunk, position of the request in it) for requests in a window.
    index: RequestIndex = field(default_factory=RequestIndex)
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
        #: Whether some model is scored (records of others are not even grouped).
        self._watching = False
        self._lock = threading.Lock()
        if hub is not None:
            hub.subscribe("quality", self.on_finished)

    # -- models -------------------------------------------------------------------------------

    def model_loaded(self, name: str, configs: Mapping[int, ModelConfig],
                     model_dir: Path | None = None) -> None:
        """Decide how each loaded version of ``name`` is scored (reading its deployment.yaml
        ``quality`` block from ``model_dir``) and watch it when one can be. Blocking."""
        specs = scoring(name, configs, model_dir, window_rows=self.window_rows,
                        window_s=self.window_s)
        for version, spec in specs.items():
            if isinstance(spec, str):
                log.info("model '%s' version %d: no live quality: %s", name, version, spec)
        with self._lock:
            model = self._models.setdefault(name, _Model())
            model.specs = specs
            watch = scored(specs)
            if watch != model.watched and self._hub is not None:
                (self._hub.watch if watch else self._hub.unwatch)(name)
            model.watched = watch
            self._watching = any(m.watched for m in self._models.values())

    # -- the hub's subscriber -----------------------------------------------------------------

    def on_finished(self, records: list[Finished]) -> None:
        """Take a batch of finished requests (the hub's thread): the answers of each (model,
        version, arm) are scored together (:func:`read_group`; what cannot be, one by one) and
        go into its window as one :class:`Chunk`."""
        if not self._watching:
            return  # the hub hands over other monitors' models only
        groups = grouped(records, by_arm=True)
        read: list[tuple[_Model, tuple[int, str], QualitySpec, _Scored]] = []
        for (name, version, arm), group in groups.items():
            model = self._models.get(name)
            spec = model.specs.get(version) if model is not None else None
            if model is None or not isinstance(spec, QualitySpec):
                continue
            answered = [r for r in group if r.status == "OK"]
            scored = self._read(model, spec, answered) if answered else None
            if scored is not None:
                read.append((model, (version, arm), spec, scored))
        if not read:
            return
        now = self._clock()
        with self._lock:
            for model, key, spec, (ids, starts, predicted, confidence) in read:
                window = model.windows.get(key)
                if window is None or window.spec != spec:
                    if window is not None:
                        model.index.forget_chunks(window.chunks)
                    window = model.windows[key] = QualityWindow(spec, key)
                chunk = Chunk(window, ids, starts, predicted, confidence, now)
                model.index.add(chunk)  # first: its own oldest requests may leave at once
                model.index.forget(window.add(chunk))
                if confidence is not None and chunk.bins is not None:
                    hist, total = model.confidence.get(
                        key, (np.zeros(CONFIDENCE_BINS, np.int64), 0.0))
                    hist += np.bincount(chunk.bins, minlength=CONFIDENCE_BINS)
                    model.confidence[key] = (hist, total + float(confidence.sum()))

    @staticmethod
    def _read(model: _Model, spec: QualitySpec, group: list[Finished]) -> _Scored | None:
        """(ids, row offsets, predictions, cleaned confidences or None) of the readable answers
        of ``group`` (None when none is); unreadable ones are counted and skipped."""
        try:
            predicted, confidence, rows = read_group(spec, [r.outputs for r in group])
            ids = [r.id for r in group]
        except (ValueError, TypeError):  # not batched alike: one by one
            ids, parts, confs, rows = [], [], [], []
            for record in group:
                try:
                    one, conf = read_rows(spec, record.outputs)
                except (ValueError, TypeError) as exc:
                    model.counts["skipped_unreadable"] += 1
                    log.debug("model '%s': answer %r not scored: %s", record.model, record.id,
                              exc)
                    continue
                ids.append(record.id)
                parts.append(one)
                rows.append(len(one))
                if conf is not None:
                    confs.append(conf)
            if not ids:
                return None
            predicted = np.concatenate(parts)
            confidence = np.concatenate(confs) if confs else None
        starts = np.zeros(len(rows) + 1, dtype=np.int64)
        np.cumsum(rows, out=starts[1:])
        return ids, starts, predicted, (
            clean_confidence(confidence) if confidence is not None else None)

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
                model.index.forget(window.evict(now))
            for i, label in enumerate(labels):
                result.received += 1
                found = model.index.find(label.id) if label.id else None
                spec = found[0].window.spec if found is not None else newest
                problem = _problem(label, spec,
                                   found[0].rows_of(found[1]) if found is not None else None)
                if problem:
                    result.invalid += 1
                    if len(result.errors) < MAX_ERRORS:
                        result.errors.append((i, label.id, problem))
                    continue
                if found is None:
                    result.unknown += 1
                    logged.append(LoggedLabel(label.id, label.row, label.value, None, None))
                    continue
                chunk, k = found
                window = chunk.window
                result.joined += 1
                result.replaced_rows += window.label(chunk, k, label.row, label.value)
                logged.append(LoggedLabel(label.id, label.row, label.value, *window.key))
            for key in ("joined", "replaced_rows", "unknown", "invalid"):
                model.counts[key] += getattr(result, key)
            classifier = (newest.kind == CLASSIFIER if newest is not None
                          else all(_class_id_like(x.value) for x in logged))
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
                model.index.forget(window.evict(now))
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
            model.index.forget(window.evict(self._clock()))
            numbers = window.numbers()
        return numbers["metrics"].get("accuracy"), numbers["labelled_rows"]


def scoring(name: str, configs: Mapping[int, ModelConfig], model_dir: Path | None, *,
            window_rows: int, window_s: float | None) -> dict[int, QualitySpec | str]:
    """How each version in ``configs`` is scored, or why it is not (its deployment.yaml's
    ``quality`` block read from ``model_dir``). Blocking."""
    try:
        declared = read_quality(model_dir) if model_dir is not None else QualityDeclared()
    except SluiceError as exc:
        return {v: exc.message for v in configs}
    return {version: decide(config, declared, window_rows=window_rows, window_s=window_s)
            for version, config in configs.items()}


def scored(specs: Mapping[int, QualitySpec | str]) -> bool:
    """Whether some version is scored."""
    return any(isinstance(s, QualitySpec) for s in specs.values())


_CLASS_ID_END = 2.0 ** 63  # the log's label column is int64


def _class_id_like(value: float) -> bool:
    """Whether ``value`` fits the log's class-id column; a model without a quality spec logs
    its labels there when all do, else as values (never a truncated or overflowing id)."""
    return float(value).is_integer() and 0 <= value < _CLASS_ID_END


def _problem(label: Label, spec: QualitySpec | None, rows: int | None) -> str:
    """Why ``label`` cannot be taken ("" when it can); ``rows``: its request's rows, None when
    the id is in no window."""
    if not label.id:
        return "id: a request id is required"
    if label.row is not None and label.row < 0:
        return f"row: must be >= 0, got {label.row}"
    if rows is not None and label.row is not None and label.row >= rows:
        return f"row {label.row}: request '{label.id}' had {rows} row(s)"
    if not math.isfinite(label.value):
        return f"label: must be a finite number, got {label.value}"
    if spec is not None and spec.kind == CLASSIFIER:
        if not float(label.value).is_integer():
            return f"label: a class id (a whole number) is expected, got {label.value:g}"
        if spec.classes is not None and not 0 <= label.value < spec.classes:
            return f"label: class {int(label.value)} is not in 0..{spec.classes - 1}"
        if not _class_id_like(label.value):
            return f"label: a class id is from 0 to 2^63-1, got {label.value:g}"
    return ""
