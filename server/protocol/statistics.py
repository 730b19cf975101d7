"""ModelStatistics encoding (Triton's fields) and the p50/p95/p99 table."""

from __future__ import annotations

from typing import Any

from sluice.proto import grpc_service_pb2 as pb
from sluice.server.serving.model import ModelVersion

PERCENTILES = (50, 95, 99)


def _duration(count: int, ns: int) -> pb.StatisticDuration:
    return pb.StatisticDuration(count=count, ns=ns)


def model_statistics(served: ModelVersion) -> pb.ModelStatistics:
    s = served.stats
    executed = s.success_count
    return pb.ModelStatistics(
        name=served.name,
        version=str(served.version),
        last_inference=s.last_inference_ms,
        inference_count=s.inference_count,
        execution_count=s.execution_count,
        inference_stats=pb.InferStatistics(
            success=_duration(s.success_count, s.success_ns),
            fail=_duration(s.fail_count, s.fail_ns),
            queue=_duration(s.queue_count, s.queue_ns),
            compute_input=_duration(executed, s.compute_input_ns),
            compute_infer=_duration(executed, s.compute_infer_ns),
            compute_output=_duration(executed, s.compute_output_ns),
        ),
        batch_stats=[
            pb.InferBatchStatistics(
                batch_size=size,
                compute_input=_duration(b.count, b.compute_input_ns),
                compute_infer=_duration(b.count, b.compute_infer_ns),
                compute_output=_duration(b.count, b.compute_output_ns),
            )
            for size, b in sorted(s.batch_stats.items())
        ],
    )


def latency_table(versions: list[ModelVersion]) -> dict[str, Any]:
    """{model: {version: {stage: {"p50": s, "p95": s, "p99": s} | None}}} over the window, for
    stages e2e, queue, compute and reject (time to shed), plus "requests" (successes),
    "window_s" and "reject_buckets" (cumulative [upper bound, count] pairs since load)."""
    table: dict[str, Any] = {}
    for served in versions:
        stages = {}
        for stage, window in (
            ("e2e", served.stats.e2e), ("queue", served.stats.queue),
            ("compute", served.stats.compute), ("reject", served.stats.reject),
        ):
            q = window.quantiles(PERCENTILES)
            stages[stage] = None if q is None else {f"p{p}": q[p] for p in PERCENTILES}
        stages["requests"] = served.stats.success_count
        # Cumulative, so a reader can difference two snapshots to get one interval's rejects.
        stages["reject_buckets"] = served.stats.reject_hist.buckets()
        stages["window_s"] = served.stats.window_s
        table.setdefault(served.name, {})[str(served.version)] = stages
    return table
