"""How a refused request is told: a full queue is UNAVAILABLE with a pushback and a shed reason
in its trailers and metric labels; a request over a size cap is RESOURCE_EXHAUSTED naming the
limit; and the overload settings ModelConfig reports are the ones admission runs with.

Through a real server (tests/support/overload.py): models are real ONNX files whose compute time
is set by a loop count, or whose batches the test holds at a gate (``hold``); assertions are
about statuses and counts, never about timings.
"""

from __future__ import annotations

import grpc
import numpy as np
import pytest
from google.protobuf import text_format

from sluice.proto import grpc_service_pb2 as pb
from sluice.proto import grpc_service_pb2_grpc as pb_grpc
from sluice.proto import model_config_pb2 as mc
from sluice.proto.tensors import make_input
from sluice.server.config.model import OVERLOAD_PARAMETERS
from tests.support.metrics import labels, moved, scrape
from tests.support.onnx_models import identity_model, write_model
from tests.support.overload import (
    occupy,
    request,
    served,
    shed_status,
    slow_repo,
)

# -- shed statuses and trailers -----------------------------------------------------------------


def test_queue_full_is_unavailable_with_pushback_and_reason(make_server, hold, tmp_path):
    slow_repo(tmp_path, ms=1, batching="default_queue_policy { max_queue_size: 2 }")
    running = make_server(tmp_path, metrics_port=0)
    before = scrape(running)
    hold.close(served(running, "slow").backend)
    with grpc.insecure_channel(running.address) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        admitted = occupy(stub, running, hold, "slow", 2)  # the queue of 2 is full
        for _ in range(7):
            with pytest.raises(grpc.RpcError) as info:
                stub.ModelInfer(request("slow"), timeout=30)
            assert shed_status(info.value) == (
                grpc.StatusCode.UNAVAILABLE, "queue_full",
                "model 'slow:1': queue full (2 requests at priority 1)")
        hold.open()
        for future in admitted:
            future.result()
    after = scrape(running)
    model = {"model": "slow", "version": "1"}
    assert moved(before, after, "sluice_shed_total") == {
        labels(**model, reason="queue_full", priority="1"): 7}
    assert moved(before, after, "sluice_requests_total") == {
        labels(**model, outcome="success"): 3, labels(**model, outcome="failure"): 7}


# -- size caps ----------------------------------------------------------------------------------


def test_size_caps_are_resource_exhausted_naming_the_limit(make_server, tmp_path):
    write_model(tmp_path, "two", identity_model({"a": ("FP32", ["batch", 4]),
                                                "b": ("FP32", ["batch", 4])}),
                "max_batch_size: 8\ndynamic_batching {}")
    write_model(tmp_path, "deep", identity_model({"x": ("FP32", ["batch", 2, 2, 2])}),
                "max_batch_size: 8\ndynamic_batching {}")
    write_model(tmp_path, "small_queue", identity_model({"x": ("FP32", ["batch", 4])}),
                'max_batch_size: 8\ndynamic_batching {}\n'
                'parameters { key: "max_queue_bytes" value { string_value: "64" } }')
    running = make_server(tmp_path, max_request_inputs=1, max_tensor_rank=3,
                          max_message_bytes=64 * 1024)
    with grpc.insecure_channel(running.address) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)

        def refused(message, *needles):
            with pytest.raises(grpc.RpcError) as info:
                stub.ModelInfer(message)
            assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, info.value.details()
            for needle in needles:
                assert needle in info.value.details()

        two = pb.ModelInferRequest(model_name="two")
        for name in ("IN_a", "IN_b"):
            tensor, raw = make_input(name, np.ones((1, 4), np.float32))
            two.inputs.append(tensor)
            two.raw_input_contents.append(raw)
        refused(two, "2 inputs", "max_request_inputs")
        tensor, raw = make_input("IN_x", np.ones((1, 2, 2, 2), np.float32))
        refused(pb.ModelInferRequest(model_name="deep", inputs=[tensor],
                                     raw_input_contents=[raw]), "4 dimensions", "max_tensor_rank")
        tensor, raw = make_input("IN_x", np.ones((8, 4), np.float32))  # 128 bytes
        refused(pb.ModelInferRequest(model_name="small_queue", inputs=[tensor],
                                     raw_input_contents=[raw]), "128", "max_queue_bytes")
        tensor, raw = make_input("IN_x", np.ones((1, 4), np.float32))
        stub.ModelInfer(pb.ModelInferRequest(model_name="small_queue", inputs=[tensor],
                                             raw_input_contents=[raw]))
        # over the gRPC message limit: refused by gRPC itself, before Sluice sees it
        tensor, raw = make_input("IN_x", np.ones((4, 2, 2, 2), np.float32))
        big = pb.ModelInferRequest(model_name="deep", inputs=[tensor],
                                   raw_input_contents=[raw + b"\0" * 100_000])
        refused(big)


# -- settings -----------------------------------------------------------------------------------


def test_model_config_reports_the_overload_settings(make_server, tmp_path):
    slow_repo(tmp_path, ms=1, batching="priority_levels: 2 default_priority_level: 2",
              params={"latency_budget_ms": "250", "codel_target_ms": "5"})
    declared = text_format.Parse((tmp_path / "slow" / "config.pbtxt").read_text(),
                                 mc.ModelConfig())
    params = {k: v.string_value for k, v in declared.parameters.items()}
    overload = {"latency_budget_ms", "codel_target_ms"}
    assert overload <= params.keys() and overload <= OVERLOAD_PARAMETERS
    running = make_server(tmp_path)
    with grpc.insecure_channel(running.address) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        config = stub.ModelConfig(pb.ModelConfigRequest(name="slow")).config
    batching = config.dynamic_batching
    assert (batching.priority_levels, batching.default_priority_level) == (
        declared.dynamic_batching.priority_levels,
        declared.dynamic_batching.default_priority_level)
    reported = {k: v.string_value for k, v in config.parameters.items()}
    assert reported.pop("sluice.execution_providers") == "CPUExecutionProvider"
    # every parameter the file declares and no other; the overload ones as the same numbers
    assert reported.keys() == params.keys()
    assert {k: float(reported[k]) for k in overload} == {k: float(params[k]) for k in overload}
    assert {k: reported[k] for k in params.keys() - overload} == {
        k: params[k] for k in params.keys() - overload}
    # ... and they are the settings admission runs with
    policy = served(running, "slow").admission.policy
    assert policy.latency_budget_s == float(params["latency_budget_ms"]) / 1000
    assert policy.codel_target_s == float(params["codel_target_ms"]) / 1000
