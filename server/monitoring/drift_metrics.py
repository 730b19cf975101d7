"""Drift on /metrics: read from the drift monitor's last reports at each scrape.

Gauges, per model version, for the ``top`` most drifted features only (highest PSI, then KS;
``top`` None: all), so a wide model does not flood Prometheus:
``sluice_drift_psi``, ``sluice_drift_ks``, ``sluice_drift_missing_rate``,
``sluice_drift_out_of_range_rate`` {model, version, feature}; and for every version
``sluice_drift_max_psi`` (over all features), ``sluice_prediction_drift`` (class-distribution PSI,
or KS for a regressor), ``sluice_drift_window_rows``.

Counters and reference gauges for every feature, so that Prometheus can compute PSI over all
replicas (``increase`` of the live counts summed over instances, against the reference shares):
``sluice_drift_bin_count_total{model, version, feature, bin}`` (live rows binned since the window
was made; ``bin`` is the bin's index, 0 = lowest), ``sluice_drift_reference_fraction{..., bin}``,
``sluice_drift_missing_count_total`` and ``sluice_drift_out_of_range_count_total`` {model,
version, feature}; for the prediction ``sluice_prediction_bin_count_total`` and
``sluice_prediction_reference_fraction`` {model, version, bin}; and
``sluice_drift_sampled_rows_total`` / ``sluice_drift_dropped_rows_total`` {model, version}.

The worker process the windows live in (:mod:`.drift_remote`) reports through
:class:`~.worker_metrics.WorkerCollector` (``sluice_drift_worker_*``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from sluice.server.monitoring.drift_report import DriftReport, FeatureDrift

#: Features per version on the per-feature gauges unless configured (``--drift-top-features``).
DEFAULT_TOP = 20
_VERSION = ["model", "version"]
_FEATURE = [*_VERSION, "feature"]


def most_drifted(features: Iterable[FeatureDrift], top: int | None) -> list[FeatureDrift]:
    """The ``top`` features with the highest PSI, then KS (features without figures last)."""
    ranked = sorted(features, key=lambda f: (-(f.psi if f.psi is not None else -1.0),
                                             -(f.ks if f.ks is not None else -1.0), f.name))
    return ranked if top is None else ranked[:top]


class DriftCollector(Collector):
    """``reports`` is ``DriftMonitor.reports``."""

    def __init__(self, reports: Callable[[], list[DriftReport]],
                 top: int | None = DEFAULT_TOP) -> None:
        self._reports = reports
        self._top = top

    def collect(self) -> Iterable[Metric]:
        gauges = {key: GaugeMetricFamily(f"sluice_drift_{key}", text, labels=_FEATURE)
                  for key, text in (
            ("psi", "Population stability index of a feature's window against its reference "
                    "(most drifted features only)."),
            ("ks", "Two-sample Kolmogorov-Smirnov statistic of a feature's window against its "
                   "reference (most drifted features only)."),
            ("missing_rate", "Share of a feature's window values that are NaN."),
            ("out_of_range_rate", "Share of a feature's window values outside the reference's "
                                  "[min, max]."),
        )}
        max_psi = GaugeMetricFamily("sluice_drift_max_psi", "Highest feature PSI of the window.",
                                    labels=_VERSION)
        prediction = GaugeMetricFamily(
            "sluice_prediction_drift", "Prediction drift over the window: class-distribution "
            "PSI, or KS for a regressor's values.", labels=_VERSION)
        rows = GaugeMetricFamily("sluice_drift_window_rows", "Sampled rows in the drift window.",
                                 labels=_VERSION)
        bins = CounterMetricFamily("sluice_drift_bin_count", "Live rows per reference bin of a "
                                   "feature, since its window was made.", labels=[*_FEATURE, "bin"])
        reference = GaugeMetricFamily("sluice_drift_reference_fraction", "Reference share of a "
                                      "feature's bin.", labels=[*_FEATURE, "bin"])
        missing = CounterMetricFamily("sluice_drift_missing_count", "Live NaN values of a feature.",
                                      labels=_FEATURE)
        outside = CounterMetricFamily("sluice_drift_out_of_range_count", "Live values of a feature "
                                      "outside the reference's [min, max].", labels=_FEATURE)
        pred_bins = CounterMetricFamily("sluice_prediction_bin_count", "Live predictions per "
                                        "reference bin (one per class).", labels=[*_VERSION, "bin"])
        pred_ref = GaugeMetricFamily("sluice_prediction_reference_fraction", "Reference share of "
                                     "a prediction bin.", labels=[*_VERSION, "bin"])
        sampled = CounterMetricFamily("sluice_drift_sampled_rows", "Rows sampled into the drift "
                                      "window.", labels=_VERSION)
        dropped = CounterMetricFamily("sluice_drift_dropped_rows", "Sampled rows dropped: the "
                                      "queue before the next compute was full.", labels=_VERSION)
        for report in self._reports():
            version = [report.model, str(report.version)]
            for f in most_drifted(report.features, self._top):
                for key, value in (("psi", f.psi), ("ks", f.ks), ("missing_rate", f.missing_rate),
                                   ("out_of_range_rate", f.out_of_range_rate)):
                    if value is not None:
                        gauges[key].add_metric([*version, f.name], value)
            if report.max_psi is not None:
                max_psi.add_metric(version, report.max_psi)
            if report.prediction_drift is not None:
                prediction.add_metric(version, report.prediction_drift)
            rows.add_metric(version, report.rows)
            sampled.add_metric(version, report.sampled_rows)
            dropped.add_metric(version, report.dropped_rows)
            for i, f in enumerate(report.features):
                labels = [*version, f.name]
                for b, share in enumerate(f.reference):
                    bins.add_metric([*labels, str(b)], float(report.cumulative[i, b]))
                    reference.add_metric([*labels, str(b)], share)
                special = report.cumulative_special[i]
                missing.add_metric(labels, float(special[0]))
                outside.add_metric(labels, float(special[1] + special[2]))
            if report.prediction is not None:
                i = len(report.features)
                for b, share in enumerate(report.prediction.reference):
                    pred_bins.add_metric([*version, str(b)], float(report.cumulative[i, b]))
                    pred_ref.add_metric([*version, str(b)], share)
        yield from gauges.values()
        yield from (max_psi, prediction, rows, bins, reference, missing, outside, pred_bins,
                    pred_ref, sampled, dropped)

