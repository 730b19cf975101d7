"""The merge of worker expositions behind ``sluice serve --workers N``: text in, families out."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import Metric

from sluice.server.workers.merged_metrics import (
    WorkerMetrics,
    cumulative_part,
    merge_families,
    parse_exposition,
)

WORKER_0 = """\
# HELP sluice_requests_total Requests answered, by outcome.
# TYPE sluice_requests_total counter
sluice_requests_total{model="m",outcome="success",version="1"} 10.0
sluice_requests_total{model="m",outcome="failure",version="1"} 1.0
# HELP sluice_request_duration_seconds End-to-end time.
# TYPE sluice_request_duration_seconds histogram
sluice_request_duration_seconds_bucket{le="0.01",model="m",version="1"} 4.0
sluice_request_duration_seconds_bucket{le="+Inf",model="m",version="1"} 10.0
sluice_request_duration_seconds_count{model="m",version="1"} 10.0
sluice_request_duration_seconds_sum{model="m",version="1"} 0.5
# HELP sluice_latency_quantile_seconds Latency quantiles over the sliding window.
# TYPE sluice_latency_quantile_seconds gauge
sluice_latency_quantile_seconds{model="m",quantile="0.5",stage="e2e",version="1"} 0.002
# HELP sluice_queue_depth_requests Requests waiting in the batch queue now.
# TYPE sluice_queue_depth_requests gauge
sluice_queue_depth_requests{model="m",version="1"} 3.0
# HELP sluice_inflight_bytes Input bytes in flight.
# TYPE sluice_inflight_bytes gauge
sluice_inflight_bytes 100.0
# HELP sluice_load_ratio Something that does not add up.
# TYPE sluice_load_ratio gauge
sluice_load_ratio 0.5
"""

WORKER_1 = """\
# HELP sluice_requests_total Requests answered, by outcome.
# TYPE sluice_requests_total counter
sluice_requests_total{model="m",outcome="success",version="1"} 5.0
sluice_requests_total{model="m",outcome="failure",version="1"} 0.0
sluice_requests_total{model="only1",outcome="success",version="2"} 7.0
# HELP sluice_request_duration_seconds End-to-end time.
# TYPE sluice_request_duration_seconds histogram
sluice_request_duration_seconds_bucket{le="0.01",model="m",version="1"} 5.0
sluice_request_duration_seconds_bucket{le="+Inf",model="m",version="1"} 5.0
sluice_request_duration_seconds_count{model="m",version="1"} 5.0
sluice_request_duration_seconds_sum{model="m",version="1"} 0.02
# HELP sluice_latency_quantile_seconds Latency quantiles over the sliding window.
# TYPE sluice_latency_quantile_seconds gauge
sluice_latency_quantile_seconds{model="m",quantile="0.5",stage="e2e",version="1"} 0.001
# HELP sluice_queue_depth_requests Requests waiting in the batch queue now.
# TYPE sluice_queue_depth_requests gauge
sluice_queue_depth_requests{model="m",version="1"} 2.0
# HELP sluice_inflight_bytes Input bytes in flight.
# TYPE sluice_inflight_bytes gauge
sluice_inflight_bytes 50.0
# HELP sluice_load_ratio Something that does not add up.
# TYPE sluice_load_ratio gauge
sluice_load_ratio 0.25
"""


def _values(families: list[Metric]) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for f in families for s in f.samples}


def _key(name: str, **labels: str) -> tuple[str, tuple[tuple[str, str], ...]]:
    return name, tuple(sorted(labels.items()))


def test_counters_and_histograms_sum_per_label_set():
    merged = merge_families({"0": parse_exposition(WORKER_0), "1": parse_exposition(WORKER_1)})
    v = _values(merged)
    m = {"model": "m", "version": "1"}
    assert v[_key("sluice_requests_total", outcome="success", **m)] == 15
    assert v[_key("sluice_requests_total", outcome="failure", **m)] == 1
    # a label set only one worker has (a model loaded on one worker) passes through
    assert v[_key("sluice_requests_total", model="only1", outcome="success", version="2")] == 7
    assert v[_key("sluice_request_duration_seconds_bucket", le="0.01", **m)] == 9
    assert v[_key("sluice_request_duration_seconds_bucket", le="+Inf", **m)] == 15
    assert v[_key("sluice_request_duration_seconds_count", **m)] == 15
    assert abs(v[_key("sluice_request_duration_seconds_sum", **m)] - 0.52) < 1e-12
    types = {f.name: f.type for f in merged}
    assert types["sluice_requests"] == "counter"
    assert types["sluice_request_duration_seconds"] == "histogram"


def test_amount_gauges_sum_and_quantiles_stay_per_worker():
    merged = merge_families({"0": parse_exposition(WORKER_0), "1": parse_exposition(WORKER_1)})
    v = _values(merged)
    m = {"model": "m", "version": "1"}
    assert v[_key("sluice_queue_depth_requests", **m)] == 5
    assert v[_key("sluice_inflight_bytes")] == 150
    q = {"quantile": "0.5", "stage": "e2e", **m}
    assert v[_key("sluice_latency_quantile_seconds", worker="0", **q)] == 0.002
    assert v[_key("sluice_latency_quantile_seconds", worker="1", **q)] == 0.001
    assert _key("sluice_latency_quantile_seconds", **q) not in v
    # a gauge that is not an amount is never summed
    assert v[_key("sluice_load_ratio", worker="0")] == 0.5
    assert v[_key("sluice_load_ratio", worker="1")] == 0.25


def test_created_takes_the_earliest_and_summary_quantiles_stay_per_worker():
    text = """\
# TYPE c_total counter
c_total 1.0
c_created 200.0
# TYPE s summary
s{quantile="0.9"} %s
s_count 4.0
s_sum 2.0
"""
    merged = merge_families({
        "a": parse_exposition(text % "0.3"),
        "b": parse_exposition(text.replace("200.0", "100.0") % "0.7"),
    })
    v = _values(merged)
    assert v[_key("c_total")] == 2 and v[_key("c_created")] == 100
    assert v[_key("s_count")] == 8 and v[_key("s_sum")] == 4
    assert v[_key("s", quantile="0.9", worker="a")] == 0.3
    assert v[_key("s", quantile="0.9", worker="b")] == 0.7


def test_merged_families_render_and_parse_back():
    merged = merge_families({"0": parse_exposition(WORKER_0), "1": parse_exposition(WORKER_1)})

    class Fixed:
        def collect(self):
            return merged

    registry = CollectorRegistry(auto_describe=False)
    registry.register(Fixed())
    again = parse_exposition(generate_latest(registry).decode())
    assert _values(again) == _values(merged)
    assert "# TYPE sluice_requests_total counter" in generate_latest(registry).decode()


def test_cumulative_part_keeps_only_what_only_grows():
    kept = cumulative_part(parse_exposition(WORKER_0))
    assert {f.name for f in kept} == {"sluice_requests", "sluice_request_duration_seconds"}


def _collect(metrics: WorkerMetrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return _values(list(metrics.collect()))


def test_worker_metrics_reports_down_workers_and_keeps_counters_monotonic():
    texts = {"http://w0/metrics": WORKER_0, "http://w1/metrics": WORKER_1}

    def fetch(url: str, timeout_s: float) -> str:
        if url not in texts:
            raise ConnectionRefusedError(url)
        return texts[url]

    metrics = WorkerMetrics(2, fetch=fetch)
    try:
        metrics.worker_ready(0, "http://w0/metrics")
        metrics.worker_ready(1, "http://w1/metrics")
        v = _collect(metrics)
        success = _key("sluice_requests_total", model="m", outcome="success", version="1")
        assert v[_key("sluice_workers")] == 2
        assert v[_key("sluice_worker_up", worker="0")] == 1
        assert v[_key("sluice_worker_up", worker="1")] == 1
        assert v[success] == 15

        # worker 1 stops answering but is alive: its counters stay, its gauges go, up = 0
        del texts["http://w1/metrics"]
        v = _collect(metrics)
        assert v[_key("sluice_worker_up", worker="1")] == 0
        assert v[success] == 15
        assert v[_key("sluice_inflight_bytes")] == 100

        # worker 0 dies; its replacement starts from zero: the total does not go backwards
        metrics.worker_exited(0)
        v = _collect(metrics)
        assert v[_key("sluice_workers")] == 1
        assert v[_key("sluice_worker_up", worker="0")] == 0
        assert v[success] == 15
        metrics.worker_restarted()
        texts["http://w0b/metrics"] = WORKER_0.replace("} 10.0", "} 1.0")
        metrics.worker_ready(0, "http://w0b/metrics")
        v = _collect(metrics)
        assert v[_key("sluice_worker_restarts_total")] == 1
        assert v[_key("sluice_workers")] == 2
        assert v[success] == 16
    finally:
        metrics.close()
