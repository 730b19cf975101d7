"""Live quality on /metrics, read from :meth:`QualityMonitor.reports` at each scrape.

- ``sluice_quality{model,version,arm,metric}``: accuracy, precision_macro, recall_macro,
  f1_macro, mae, rmse, labelled_share, estimated_accuracy, estimated_accuracy_labelled,
  estimate_error (those defined for the window; see ``QualityWindow.numbers``).
- ``sluice_quality_class{model,version,arm,class,metric}``: precision, recall, f1, support.
- ``sluice_quality_confusion_rows{model,version,arm,label,predicted}``: labelled rows.
- ``sluice_quality_rows{model,version,arm,kind}``: predicted and labelled rows in the window.
- ``sluice_prediction_confidence{model,version,arm}``: top-class probability, a cumulative
  histogram since start (bins of width 0.1), so replicas sum and PromQL can take rates.
- ``sluice_feedback_labels_total{model,outcome}``: joined, unknown, invalid, logged,
  log_failed; ``sluice_quality_skipped_total{model}``: answers that could not be scored.

The window gauges describe the window now and go up and down; only the counters and the
histogram are cumulative.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from sluice.server.monitoring.quality_window import CONFIDENCE_BINS

_LABELS = ["model", "version", "arm"]
_OUTCOMES = ("joined", "unknown", "invalid", "logged", "log_failed")


class QualityCollector(Collector):
    """Reads ``reports()`` (``QualityMonitor.reports``) when /metrics is scraped."""

    def __init__(self, reports: Callable[[], list[dict[str, Any]]]) -> None:
        self._reports = reports

    def collect(self) -> Iterable[Metric]:
        quality = GaugeMetricFamily(
            "sluice_quality", "Live quality of a version's arm over its window, by metric.",
            labels=[*_LABELS, "metric"])
        per_class = GaugeMetricFamily(
            "sluice_quality_class", "Per-class precision, recall, f1 and support over the "
            "window.", labels=[*_LABELS, "class", "metric"])
        confusion = GaugeMetricFamily(
            "sluice_quality_confusion_rows", "Labelled rows in the window by true label and "
            "prediction.", labels=[*_LABELS, "label", "predicted"])
        rows = GaugeMetricFamily(
            "sluice_quality_rows", "Predicted and labelled rows in the live quality window.",
            labels=[*_LABELS, "kind"])
        confidence = HistogramMetricFamily(
            "sluice_prediction_confidence", "Top-class probability of each predicted row, "
            "since start.", labels=_LABELS)
        labels = CounterMetricFamily(
            "sluice_feedback_labels", "Feedback labels by outcome.", labels=["model", "outcome"])
        skipped = CounterMetricFamily(
            "sluice_quality_skipped", "Answers live quality could not score.", labels=["model"])
        for report in self._reports():
            model = report["model"]
            for w in report["windows"]:
                key = [model, str(w["version"]), w["arm"]]
                for name, value in sorted(w["metrics"].items()):
                    quality.add_metric([*key, name], value)
                for row in w["classes"]:
                    for name in ("precision", "recall", "f1", "support"):
                        per_class.add_metric([*key, str(row["class"]), name], row[name])
                for (label, predicted), count in w["confusion"]:
                    confusion.add_metric([*key, str(label), str(predicted)], count)
                rows.add_metric([*key, "predicted"], w["predicted_rows"])
                rows.add_metric([*key, "labelled"], w["labelled_rows"])
            for (version, arm), (hist, total) in sorted(report.get("confidence", {}).items()):
                running, buckets = 0, []
                for i in range(CONFIDENCE_BINS):
                    running += int(hist[i])
                    bound = "+Inf" if i == CONFIDENCE_BINS - 1 else f"{(i + 1) / CONFIDENCE_BINS:g}"
                    buckets.append((bound, running))
                confidence.add_metric([model, str(version), arm], buckets, total)
            counts = report["counts"]
            for outcome in _OUTCOMES:
                labels.add_metric([model, outcome], counts.get(outcome, 0))
            skipped.add_metric([model], counts.get("skipped_unreadable", 0))
        yield from (quality, per_class, confusion, rows, confidence, labels, skipped)
