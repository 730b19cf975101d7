"""Prometheus metrics for one server, on its own registry (no globals).

Nothing is observed per request here: a collector reads each model version's
:class:`~sluice.server.serving.stats.ModelStats` when /metrics is scraped. Histograms are cumulative
buckets, so they sum correctly across replicas; the window quantiles are gauges for humans.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any, Protocol

from prometheus_client import CollectorRegistry
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from sluice.server.metrics_http import MetricsCheck, MetricsEndpoint
from sluice.server.serving.budget import InflightBudget
from sluice.server.serving.model import ModelVersion
from sluice.server.serving.stats import CumulativeHistogram, LatencyWindow
from sluice.server.tls_reload import CertificateReloader

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
            "reject": HistogramMetricFamily(
                "sluice_reject_duration_seconds",
                "Time from a request reaching its model to its shed (UNAVAILABLE) status.",
                labels=_LABELS),
        }
        requests = CounterMetricFamily(
            "sluice_requests", "Requests answered, by outcome.", labels=[*_LABELS, "outcome"])
        rows = CounterMetricFamily("sluice_inference_rows", "Rows inferred.", labels=_LABELS)
        batches = CounterMetricFamily("sluice_batches", "Batches executed.", labels=_LABELS)
        inline = CounterMetricFamily(
            "sluice_inline_batches",
            "Batches of one request computed on the event loop, not handed to an instance "
            "thread (counted in sluice_batches too).", labels=_LABELS)
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
                ("batch", s.batch_size_hist), ("reject", s.reject_hist),
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
            inline.add_metric(labels, queue["inline_batches"])
            depth_rows.add_metric(labels, queue["queued_rows"])
            for (reason, level), count in list(s.shed.items()):
                shed.add_metric([*labels, reason, str(level)], count)
            fallback.add_metric(labels, s.fallback_count)
        yield from hists.values()
        yield from (requests, rows, batches, inline, quantiles, depth, depth_rows, shed, fallback)
        if self._inflight is not None:
            inflight = GaugeMetricFamily(
                "sluice_inflight_bytes",
                "Input bytes of admitted requests not yet answered, all models.")
            inflight.add_metric([], self._inflight.bytes)
            yield inflight



class ArmReading(Protocol):
    """What the arm collector reads of one arm's statistics (``rollout.arm_stats.ArmStats``
    has it); a protocol, so that metrics does not depend on the deployment machinery."""

    version: int | None
    requests: int
    errors: int
    latency: LatencyWindow
    latency_sum_s: float

    def histogram(self, bounds: Sequence[float]) -> list[tuple[str, int]]: ...


#: Bounds (seconds) of ``sluice_arm_request_duration_seconds``: 6 per decade (neighbours at most
#: 1.67x apart), fine enough for histogram_quantile to judge a canary's p99 ratio over a fleet.
ARM_LATENCY_BUCKETS_S: tuple[float, ...] = (
    *(round(m * 10.0 ** e, 6) for e in range(-4, 1) for m in (1, 1.5, 2, 3, 5, 7)), 10.0)


class ArmCollector(Collector):
    """Per-arm requests (by outcome) and window latency quantiles, labelled model, version, arm;
    the version is the one that answered (an arm that moved keeps a series per version).

    ``arms`` yields (model, arm, stats) — ``Router.all_arm_stats``. Only routed traffic has
    arms: models with a deployment, and requests that named an alias."""

    def __init__(self, arms: Callable[[], Iterable[tuple[str, str, ArmReading]]]) -> None:
        self._arms = arms

    def collect(self) -> Iterable[Metric]:
        labels = ["model", "version", "arm"]
        requests = CounterMetricFamily(
            "sluice_arm_requests", "Routed requests per arm, by outcome (client errors are not "
            "counted).", labels=[*labels, "outcome"])
        quantiles = GaugeMetricFamily(
            "sluice_arm_latency_quantile_seconds",
            "Latency quantiles of an arm's successful requests over the sliding window.",
            labels=[*labels, "quantile"])
        duration = HistogramMetricFamily(  # fleet gates (issue 15): summed over replicas
            "sluice_arm_request_duration_seconds", "Latency of an arm's successful requests.",
            labels=labels)
        for model, arm, stats in self._arms():
            values = [model, "" if stats.version is None else str(stats.version), arm]
            requests.add_metric([*values, "success"], stats.requests - stats.errors)
            requests.add_metric([*values, "failure"], stats.errors)
            duration.add_metric(values, stats.histogram(ARM_LATENCY_BUCKETS_S),
                                stats.latency_sum_s)
            q = stats.latency.quantiles((50, 95, 99))
            if q is not None:
                for p, value in q.items():
                    quantiles.add_metric([*values, str(p / 100)], value)
        yield requests
        yield quantiles
        yield duration


class ShadowCollector(Collector):
    """Shadow comparison per (model, live_version, shadow_version): copies mirrored, compared,
    shed, candidate errors (counters); agreement, differences, share within tolerance and both
    sides' latency quantiles (gauges). ``reports`` is ``ShadowMirror.reports``."""

    _COUNTERS = ("mirrored", "compared", "shed", "candidate_errors", "live_errors", "dropped",
                 "label_rows")  # label_rows: fleet agreement gate (issue 15)
    _GAUGES = ("candidate_error_rate", "agreement", "max_abs_diff", "mean_abs_diff",
               "within_tolerance")

    def __init__(self, reports: Callable[[], Iterable[Any]]) -> None:
        self._reports = reports

    def collect(self) -> Iterable[Metric]:
        labels = ["model", "live_version", "shadow_version"]
        counters = {
            key: CounterMetricFamily(
                f"sluice_shadow_{key}", f"Shadow copies: {key.replace('_', ' ')}.", labels=labels)
            for key in self._COUNTERS
        }
        gauges = {
            key: GaugeMetricFamily(
                f"sluice_shadow_{key}", f"Shadow comparison: {key.replace('_', ' ')}.",
                labels=labels)
            for key in self._GAUGES
        }
        latency = GaugeMetricFamily(
            "sluice_shadow_latency_quantile_seconds",
            "Latency quantiles of mirrored requests, live (the caller's) and shadow (the "
            "candidate's own), over the sliding window.", labels=[*labels, "side", "quantile"])
        for report in self._reports():
            values = [report.model, str(report.live_version), str(report.shadow_version)]
            for key, family in counters.items():
                family.add_metric(values, getattr(report, key))
            for key, family in gauges.items():
                value = getattr(report, key)
                if value is not None:
                    family.add_metric(values, value)
            for side in ("live", "shadow"):
                for q in ("50", "99"):
                    value = getattr(report, f"{side}_p{q}_s")
                    if value is not None:
                        latency.add_metric([*values, side, f"0.{q}"], value)
        yield from counters.values()
        yield from gauges.values()
        yield latency


class CanaryCollector(Collector):
    """The canary of each model: its step (percent of traffic on the candidate) and its state
    (1 on the current one of running, promoted, rolled_back, aborted), labelled with both
    versions. Read from the deployment state (``Router.models`` / ``Router.state``)."""

    _STATES = ("running", "promoted", "rolled_back", "aborted")

    def __init__(
        self, models: Callable[[], Iterable[str]], state: Callable[[str], Any]
    ) -> None:
        self._models = models
        self._state = state

    def collect(self) -> Iterable[Metric]:
        labels = ["model", "stable_version", "candidate_version"]
        step = GaugeMetricFamily(
            "sluice_canary_step_percent", "Traffic share of the canary's current step.",
            labels=labels)
        outcome = GaugeMetricFamily(
            "sluice_canary_state", "1 for the canary's state (running, promoted, rolled_back, "
            "aborted).", labels=[*labels, "state"])
        for model in self._models():
            record = self._state(model).canary
            if not record or "candidate" not in record:
                continue  # none, or a deployment.yaml block not started yet
            values = [model, str(record.get("stable", "")), str(record["candidate"])]
            steps, index = record.get("steps") or (), record.get("step")
            if isinstance(index, int) and 0 <= index < len(steps):
                step.add_metric(values, steps[index])
            for name in self._STATES:
                outcome.add_metric([*values, name], 1.0 if record.get("state") == name else 0.0)
        yield step
        yield outcome


# hardened input (issue 14 item 4)
class RefusalCollector(Collector):
    """``sluice_refused_requests_total{code}``: requests refused before they reached a model
    (not valid protobuf, over a size cap, malformed tensors or parameters), by status code."""

    def __init__(self, counts: Callable[[], dict[str, int]]) -> None:
        self._counts = counts

    def collect(self) -> Iterable[Metric]:
        family = CounterMetricFamily(
            "sluice_refused_requests",
            "Requests refused before reaching a model (not valid protobuf, over a size cap, "
            "malformed tensors or parameters), by status code.", labels=["code"])
        for code, count in sorted(self._counts().items()):
            family.add_metric([code], count)
        yield family


# string models & warm-up (issue 16 item 1)
class WarmupCollector(Collector):
    """``sluice_warmup_failures_total{model}``: default warm-ups that failed at load (logged
    as warnings; those versions served anyway)."""

    def __init__(self, counts: Callable[[], dict[str, int]]) -> None:
        self._counts = counts

    def collect(self) -> Iterable[Metric]:
        family = CounterMetricFamily(
            "sluice_warmup_failures",
            "Default warm-ups that failed at load (a warning; the version served anyway).",
            labels=["model"])
        for model, count in sorted(self._counts().items()):
            family.add_metric([model], count)
        yield family


# request layouts (issue 11): ModelInfer requests decoded without protobuf
class LayoutCollector(Collector):
    """``sluice_request_layout_lookups_total{result}``: ModelInfer requests whose layout was
    cached (``hit``: decoded from their bytes) or not (``miss``: parsed by protobuf)."""

    def __init__(self, counts: Callable[[], dict[str, int]]) -> None:
        self._counts = counts

    def collect(self) -> Iterable[Metric]:
        family = CounterMetricFamily(
            "sluice_request_layout_lookups",
            "ModelInfer requests decoded from a cached request layout (hit) or parsed by "
            "protobuf (miss).", labels=["result"])
        for result, count in sorted(self._counts().items()):
            family.add_metric([result], count)
        yield family


class Metrics:
    """Owns one CollectorRegistry and, when started, the /metrics HTTP endpoint."""

    def __init__(
        self,
        versions: Callable[[], list[ModelVersion]],
        inflight: InflightBudget | None = None,
    ) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(_ModelCollector(versions, inflight))
        self._http: MetricsEndpoint | None = None
        self.port: int | None = None

    def register(self, collector: Collector) -> None:
        """Add a collector (read at each scrape) to this server's registry."""
        self.registry.register(collector)

    def serve(self, host: str, port: int, tls: CertificateReloader | None = None,
              check: MetricsCheck | None = None) -> int:
        """Serve /metrics on ``host:port`` (0 picks a free port), over HTTPS with ``tls``'s
        certificates, swapped when it reloads (transport security), only to callers ``check``
        lets through (authz, ``--tokens``); returns the bound port."""
        context = None if tls is None else tls.material.http_context
        endpoint = self._http = MetricsEndpoint(self.registry, host, port, context, check)
        if tls is not None:
            tls.on_reload(lambda material: endpoint.replace_context(material.http_context))
        self.port = endpoint.port
        return self.port

    @property
    def endpoint(self) -> MetricsEndpoint | None:
        """The running /metrics endpoint, if any (its TLS context is swapped on reload)."""
        return self._http

    def close(self) -> None:
        if self._http is not None:
            self._http.close()
            self._http = None
