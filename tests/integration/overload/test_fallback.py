"""Degraded mode: a saturated primary hands requests to its fallback model (answering under its
own name), sheds them itself when the fallback is saturated too, and fails its load naming a
bad fallback.

Through a real server (tests/support/overload.py): models are real ONNX files whose compute time
is set by a loop count, or whose batches the test holds at a gate (``hold``); assertions are
about statuses and counts, never about timings.
"""

from __future__ import annotations

import grpc
import pytest

from sluice.proto import grpc_service_pb2 as pb
from sluice.proto import grpc_service_pb2_grpc as pb_grpc
from tests.support.metrics import labels, moved, scrape
from tests.support.onnx_models import identity_model, write_model
from tests.support.overload import (
    WIDTH,
    occupy,
    outcome_of_reply,
    request,
    served,
    shed_status,
    slow_repo,
    wait_queued,
)


def test_the_fallback_answers_when_the_primary_is_saturated(make_server, hold, tmp_path):
    slow_repo(tmp_path, "a_primary", ms=1,
              batching="default_queue_policy { max_queue_size: 1 }",
              params={"fallback_model": "z_small"})
    write_model(tmp_path, "z_small", identity_model({"x": ("FP32", ["batch", WIDTH])}),
                "max_batch_size: 8\ndynamic_batching {}")
    running = make_server(tmp_path, metrics_port=0)
    before = scrape(running)
    hold.close(served(running, "a_primary").backend)
    with grpc.insecure_channel(running.address) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        admitted = occupy(stub, running, hold, "a_primary", 1)  # full: the rest go to z_small
        degraded = [stub.ModelInfer(request("a_primary"), timeout=30) for _ in range(6)]
        hold.open()
        primary = [future.result() for future in admitted]
    assert [outcome_of_reply(r).answered_by for r in primary] == ["a_primary:1"] * 2
    assert [outcome_of_reply(r).answered_by for r in degraded] == ["z_small:1"] * 6
    assert {(r.model_name, r.model_version) for r in primary + degraded} == {("a_primary", "1")}
    after = scrape(running)
    a, z = {"model": "a_primary", "version": "1"}, {"model": "z_small", "version": "1"}
    assert moved(before, after, "sluice_shed_total") == {
        labels(**a, reason="queue_full", priority="1"): 6}
    assert moved(before, after, "sluice_fallback_requests_total") == {labels(**a): 6}
    # the primary counts what it shed as failed, though its fallback answered it
    assert moved(before, after, "sluice_requests_total") == {
        labels(**a, outcome="success"): 2, labels(**a, outcome="failure"): 6,
        labels(**z, outcome="success"): 6}
    assert after[("sluice_inflight_bytes", labels())] == 0


def test_when_the_fallback_is_saturated_too_the_primary_sheds(make_server, hold, tmp_path):
    for name in ("a_primary", "z_small"):
        slow_repo(tmp_path, name, ms=1, batching="default_queue_policy { max_queue_size: 1 }",
                  params={"fallback_model": "z_small"} if name == "a_primary" else {})
    running = make_server(tmp_path, metrics_port=0)
    before = scrape(running)
    hold.close(served(running, "a_primary").backend, served(running, "z_small").backend)
    with grpc.insecure_channel(running.address) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        admitted = []
        for started, name in ((1, "a_primary"), (2, "z_small")):  # one computing, one queued
            admitted.append(stub.ModelInfer.future(request("a_primary"), timeout=30))
            hold.wait_started(started)
            admitted.append(stub.ModelInfer.future(request("a_primary"), timeout=30))
            wait_queued(running, name, 1)
        for _ in range(6):
            with pytest.raises(grpc.RpcError) as info:
                stub.ModelInfer(request("a_primary"), timeout=30)
            assert shed_status(info.value) == (  # the primary's shed, not the fallback's
                grpc.StatusCode.UNAVAILABLE, "queue_full",
                "model 'a_primary:1': queue full (1 requests at priority 1)")
        hold.open()
        answered = [outcome_of_reply(future.result()).answered_by for future in admitted]
    assert answered == ["a_primary:1"] * 2 + ["z_small:1"] * 2
    after = scrape(running)
    a, z = {"model": "a_primary", "version": "1"}, {"model": "z_small", "version": "1"}
    assert moved(before, after, "sluice_shed_total") == {
        labels(**a, reason="queue_full", priority="1"): 8,
        labels(**z, reason="queue_full", priority="1"): 6}
    # only what the fallback answered instead counts: 2 of the 8 handed to it
    assert moved(before, after, "sluice_fallback_requests_total") == {labels(**a): 2}
    assert moved(before, after, "sluice_requests_total") == {
        labels(**a, outcome="success"): 2, labels(**a, outcome="failure"): 8,
        labels(**z, outcome="success"): 2, labels(**z, outcome="failure"): 6}


@pytest.mark.parametrize(
    ("small", "needle"),
    [
        (None, "fallback_model 'z_small' is not loaded"),
        ({"y": ("FP32", ["batch", WIDTH])}, "input 'IN_x'"),
        ({"x": ("FP32", ["batch", WIDTH + 1])}, "input 'IN_x' is FP32 [16] here, FP32 [17]"),
    ],
)
def test_a_bad_fallback_fails_the_load_naming_it(make_server, tmp_path, small, needle):
    slow_repo(tmp_path, "a_primary", ms=1, params={"fallback_model": "z_small"})
    if small is not None:
        write_model(tmp_path, "z_small", identity_model(small),
                    "max_batch_size: 8\ndynamic_batching {}")
    running = make_server(tmp_path)
    with grpc.insecure_channel(running.address) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        index = stub.RepositoryIndex(pb.RepositoryIndexRequest())
        rows = {m.name: m for m in index.models}
        assert rows["a_primary"].state == "UNAVAILABLE"
        assert needle in rows["a_primary"].reason, rows["a_primary"].reason
        if small is not None:
            assert rows["z_small"].state == "READY"
