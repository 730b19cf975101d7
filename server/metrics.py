"""Prometheus metrics for one server, on its own registry (no globals).

Nothing is observed per request here: a collector reads each model version's
:class:`~server.core.stats.ModelStats` when /metrics is scraped. Histograms are cumulative
buckets, so they sum correctly across replicas; the window quantiles are gauges for humans.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from server.core.admission import InflightBudget
from server.core.model import ModelVersion
from server.core.stats import CumulativeHistogram

_LABELS = ["model", "version"]


class _ModelCollector(Collector):
    def __init__(
        self, versions: Callable[[], list[ModelVersion]], inflight: InflightBudget | None
    ) -> None:
        self._versions = versions
        self._inflight = inflight

    def collect(self) -> Iterable[Metric]:
        versions = self._versions()
        hists = {
            "e2e": HistogramMetricFamily(
                "sluice_request_duration_seconds",
                "End-to-end time of successful requests, arrival to answer.", labels=_LABELS),
            "queue": HistogramMetricFamily(
                "sluice_queue_duration_seconds", "Time requests waited in the batch queue.",
                labels=_LABELS),
            "compute": HistogramMetricFamily(
                "sluice_compute_duration_seconds",
                "Time to gather, run and scatter one batch.", labels=_LABELS),
            "batch": HistogramMetricFamily(
                "sluice_batch_size_rows", "Rows per executed batch.", labels=_LABELS),
        }
        requests = CounterMetricFamily(
            "sluice_requests", "Requests answered, by outcome.", labels=[*_LABELS, "outcome"])
        rows = CounterMetricFamily("sluice_inference_rows", "Rows inferred.", labels=_LABELS)
        batches = CounterMetricFamily("sluice_batches", "Batches executed.", labels=_LABELS)
        quantiles = GaugeMetricFamily(
            "sluice_latency_quantile_seconds",
            "Latency quantiles over the sliding window, by stage (e2e, queue, compute).",
            labels=[*_LABELS, "stage", "quantile"])
        depth = GaugeMetricFamily(
            "sluice_queue_depth_requests", "Requests waiting in the batch queue now.",
            labels=_LABELS)
        depth_rows = GaugeMetricFamily(
            "sluice_queue_depth_rows", "Rows waiting in the batch queue now.", labels=_LABELS)
        shed = CounterMetricFamily(
            "sluice_shed", "Requests shed with UNAVAILABLE, by reason and priority level.",
            labels=[*_LABELS, "reason", "priority"])
        fallback = CounterMetricFamily(
            "sluice_fallback_requests",
            "Requests this model shed that its fallback model answered instead.", labels=_LABELS)
        for served in versions:
            labels = [served.name, str(served.version)]
            s = served.stats
            pairs: list[tuple[str, CumulativeHistogram]] = [
                ("e2e", s.e2e_hist), ("queue", s.queue_hist), ("compute", s.compute_hist),
                ("batch", s.batch_size_hist),
            ]
            for key, hist in pairs:
                hists[key].add_metric(labels, hist.buckets(), hist.total)
            requests.add_metric([*labels, "success"], s.success_count)
            requests.add_metric([*labels, "failure"], s.fail_count)
            rows.add_metric(labels, s.inference_count)
            batches.add_metric(labels, s.execution_count)
            for stage, window in (("e2e", s.e2e), ("queue", s.queue), ("compute", s.compute)):
                q = window.quantiles((50, 95, 99))
                if q is not None:
                    for p, value in q.items():
                        quantiles.add_metric([*labels, stage, str(p / 100)], value)
            queue = served.queue_stats()
            depth.add_metric(labels, queue["queued_requests"])
            depth_rows.add_metric(labels, queue["queued_rows"])
            for (reason, level), count in list(s.shed.items()):
                shed.add_metric([*labels, reason, str(level)], count)
            fallback.add_metric(labels, s.fallback_count)
        yield from hists.values()
        yield from (requests, rows, batches, quantiles, depth, depth_rows, shed, fallback)
        if self._inflight is not None:
            inflight = GaugeMetricFamily(
                "sluice_inflight_bytes",
                "Input bytes of admitted requests not yet answered, all models.")
            inflight.add_metric([], self._inflight.bytes)
            yield inflight


class Metrics:
    """Owns one CollectorRegistry and, when started, the /metrics HTTP endpoint."""

    def __init__(
        self,
        versions: Callable[[], list[ModelVersion]],
        inflight: InflightBudget | None = None,
    ) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(_ModelCollector(versions, inflight))
        self._http = None
        self.port: int | None = None

    def serve(self, host: str, port: int) -> int:
        """Serve /metrics on ``host:port`` (0 picks a free port); returns the bound port."""
        server, _thread = start_http_server(port, addr=host, registry=self.registry)
        self._http = server
        self.port = server.server_port
        return self.port

    def close(self) -> None:
        if self._http is not None:
            self._http.shutdown()
            self._http.server_close()
            self._http = None
