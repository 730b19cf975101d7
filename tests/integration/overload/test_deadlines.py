"""Deadlines under load: a deadline the queue makes unreachable is shed at arrival, an expired
request never reaches the backend, and requests that expire while queued are never executed.

Through a real server (tests/support/overload.py): models are real ONNX files whose compute time
is set by a loop count; assertions are about statuses and counts, never about timings.
"""

from __future__ import annotations

import time

import grpc
import numpy as np
import pytest

from sluice.proto import grpc_service_pb2_grpc as pb_grpc
from sluice.server.errors import DeadlineExceeded
from sluice.server.types import InferRequest
from tests.support.metrics import labels, moved, scrape
from tests.support.overload import (
    WIDTH,
    outcome_of_error,
    request,
    served,
    slow_repo,
    wait_queued,
)


def test_an_infeasible_deadline_is_shed_at_arrival(make_server, tmp_path):
    slow_repo(tmp_path, ms=50)
    running = make_server(tmp_path, metrics_port=0)
    before = scrape(running)
    with grpc.insecure_channel(running.address) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        for _ in range(2):  # let the server measure its speed
            stub.ModelInfer(request("slow"))
        backlog = [stub.ModelInfer.future(request("slow")) for _ in range(8)]
        wait_queued(running, "slow", 6)  # >= 300 ms of work ahead
        computed = served(running, "slow").stats.execution_count
        for kw in ({"timeout": 0.25}, {}):
            message = request("slow") if kw else request("slow", timeout=150_000)
            with pytest.raises(grpc.RpcError) as info:
                stub.ModelInfer.with_call(message, **kw)
            shed = outcome_of_error(info.value)
            # refused at once as infeasible: UNAVAILABLE, not a DEADLINE_EXCEEDED later
            assert shed.code == grpc.StatusCode.UNAVAILABLE, info.value.details()
            assert shed.reason == "deadline" and shed.pushback_ms >= 1
            assert "cannot finish by its deadline" in info.value.details()
        for future in backlog:
            future.result()
    stats = served(running, "slow").stats
    assert stats.execution_count == computed + 8  # the shed requests were never computed
    after = scrape(running)
    model = {"model": "slow", "version": "1"}
    assert moved(before, after, "sluice_shed_total") == {
        labels(**model, reason="deadline", priority="1"): 2}
    assert moved(before, after, "sluice_requests_total") == {
        labels(**model, outcome="success"): 10, labels(**model, outcome="failure"): 2}


def test_an_expired_request_never_reaches_the_backend(make_server, tmp_path):
    slow_repo(tmp_path, ms=5)
    running = make_server(tmp_path)
    version = served(running, "slow")
    expired = InferRequest("slow", "", {"IN_x": np.ones((1, WIDTH), np.float32)},
                           deadline=time.monotonic() - 0.001)
    with pytest.raises(DeadlineExceeded, match="deadline passed before queueing"):
        running.call(version.infer(expired))
    assert version.stats.execution_count == 0
    with grpc.insecure_channel(running.address) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        for _ in range(2):  # once the speed is measured, a hopeless deadline is shed too
            stub.ModelInfer(request("slow"))
        for _ in range(5):
            with pytest.raises(grpc.RpcError) as info:
                stub.ModelInfer(request("slow"), timeout=1e-6)
            outcome = outcome_of_error(info.value)
            assert outcome.code == grpc.StatusCode.DEADLINE_EXCEEDED or (
                outcome.code == grpc.StatusCode.UNAVAILABLE and outcome.reason == "deadline"
            ), outcome
    assert version.stats.execution_count == 2


def test_requests_that_expire_in_the_queue_are_never_executed(make_server, tmp_path):
    slow_repo(tmp_path, ms=300)
    running = make_server(tmp_path)
    with grpc.insecure_channel(running.address) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        blocker = stub.ModelInfer.future(request("slow"))
        while served(running, "slow").queue_stats()["busy_instances"] < 1:
            time.sleep(0.002)
        # Nothing has been measured yet, so admission lets them in; they expire while queued.
        doomed = [stub.ModelInfer.future(request("slow", timeout=20_000)) for _ in range(5)]
        blocker.result()
        for future in doomed:
            with pytest.raises(grpc.RpcError) as info:
                future.result()
            assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
            assert "in the queue" in info.value.details()
    stats = served(running, "slow").stats
    assert stats.execution_count == 1 and stats.inference_count == 1
    assert stats.fail_count == 5
