"""/metrics for the monitor hub and the prediction log, read at each scrape (nothing counted per
request here: the counters live in :class:`~.hub.MonitorHub` and
:class:`~.prediction_writer.PredictionWriter`)."""

from __future__ import annotations

from collections.abc import Iterable

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from sluice.server.monitoring.hub import MonitorHub
from sluice.server.monitoring.prediction_writer import PredictionWriter


class HubCollector(Collector):
    """Records the hub refused (queue full) per model; batches each subscriber failed on; the
    time each monitor took and how long each drain held the hub's thread."""

    def __init__(self, hub: MonitorHub) -> None:
        self._hub = hub

    def collect(self) -> Iterable[Metric]:
        dropped = CounterMetricFamily(
            "sluice_monitor_dropped", "Finished requests the monitor hub dropped (its queue "
            "was full), per model.", labels=["model"])
        for model, count in sorted(dict(self._hub.dropped).items()):
            dropped.add_metric([model], count)
        failures = CounterMetricFamily(
            "sluice_monitor_failures", "Batches of finished requests a monitor raised on.",
            labels=["monitor"])
        for name, count in sorted(dict(self._hub.failures).items()):
            failures.add_metric([name], count)
        seconds = CounterMetricFamily(
            "sluice_monitor_seconds", "Wall seconds the monitor hub's thread spent in each "
            "monitor (mostly holding the GIL the event loop also needs).", labels=["monitor"])
        cpu = CounterMetricFamily(
            "sluice_monitor_cpu_seconds", "CPU seconds the monitor hub's thread spent in each "
            "monitor.", labels=["monitor"])
        for name, value in sorted(dict(self._hub.seconds).items()):
            seconds.add_metric([name], value)
            cpu.add_metric([name], self._hub.cpu_seconds[name])
        drains = HistogramMetricFamily(
            "sluice_monitor_drain_seconds", "How long each hand-over of finished requests to "
            "all monitors took: the event loop shares the GIL for that long.")
        drains.add_metric([], self._hub.drains.buckets(), self._hub.drains.total)
        yield dropped
        yield failures
        yield seconds
        yield cpu
        yield drains


class PredictionLogCollector(Collector):
    """Records written to readable Parquet files, records dropped by reason, records queued."""

    def __init__(self, writer: PredictionWriter) -> None:
        self._writer = writer

    def collect(self) -> Iterable[Metric]:
        records = CounterMetricFamily(
            "sluice_prediction_log_records", "Logged requests in readable Parquet files.",
            labels=["model"])
        for model, count in sorted(dict(self._writer.written).items()):
            records.add_metric([model], count)
        dropped = CounterMetricFamily(
            "sluice_prediction_log_dropped", "Sampled requests not logged, by reason "
            "(queue_full, write_error, encode_error, not_loaded, worker_lost).",
            labels=["model", "reason"])
        for (model, reason), count in sorted(dict(self._writer.dropped).items()):
            dropped.add_metric([model, reason], count)
        queued = GaugeMetricFamily(
            "sluice_prediction_log_queued", "Sampled requests waiting for the writer.")
        queued.add_metric([], self._writer.queued)
        yield records
        yield dropped
        yield queued
