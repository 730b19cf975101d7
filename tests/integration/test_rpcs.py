"""Every RPC of the inference service through tritonclient (sync and aio), the health service
and reflection, against a real server over the bundled repository."""

from __future__ import annotations

import json

import grpc
import numpy as np
import pytest
import tritonclient.grpc as tc
import tritonclient.grpc.aio as tca
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from tritonclient.utils import InferenceServerException

from sluice.proto import grpc_service_pb2 as pb
from sluice.proto import grpc_service_pb2_grpc as pb_grpc
from sluice.server.app import BUNDLED_REPOSITORY
from tests.support.metrics import labels, moved, scrape

BUNDLED = {p.name for p in BUNDLED_REPOSITORY.iterdir() if (p / "config.pbtxt").is_file()}


@pytest.fixture
def client(bundled_server):
    with tc.InferenceServerClient(bundled_server.address) as c:
        yield c


def test_health_and_server_metadata(client):
    assert client.is_server_live()
    assert client.is_server_ready()
    meta = client.get_server_metadata(as_json=True)
    assert meta["name"] == "sluice"
    assert {"add_sub", "cnn", "digits", "identity", "digits_pipeline"} <= BUNDLED
    assert set(meta["extensions"]) == {
        "model_repository", "model_configuration", "statistics", "parameters",
        "schedule_policy", "classification", "sequence", "sequence(string_id)",
        "system_shared_memory",
    }


def test_model_ready_and_metadata(client):
    for name in BUNDLED:
        assert client.is_model_ready(name)
        assert client.is_model_ready(name, "1")
    assert not client.is_model_ready("identity", "7")
    assert not client.is_model_ready("no_such_model")
    meta = client.get_model_metadata("digits", as_json=True)
    assert meta["versions"] == ["1", "2"]  # version_policy { all { } }
    assert meta["platform"] == "onnxruntime_onnx"
    assert meta["inputs"] == [{"name": "input", "datatype": "FP32", "shape": ["-1", "64"]}]
    assert {o["name"]: o["shape"] for o in meta["outputs"]} == {
        "label": ["-1", "1"], "probabilities": ["-1", "10"]
    }


def test_model_config_is_what_perf_analyzer_reads(client):
    config = client.get_model_config("add_sub", as_json=True)["config"]
    # add_sub's config.pbtxt omits inputs and outputs: they come from the ONNX file.
    assert config["max_batch_size"] == 64
    assert [(t["name"], t["data_type"], t["dims"]) for t in config["input"]] == [
        ("INPUT0", "TYPE_FP32", ["16"]), ("INPUT1", "TYPE_FP32", ["16"])
    ]
    assert [t["name"] for t in config["output"]] == ["OUTPUT0", "OUTPUT1"]
    assert "CPUExecutionProvider" in config["parameters"]["sluice.execution_providers"][
        "string_value"]


def test_statistics_count_requests_and_batches(client):
    x = np.ones((3, 16), np.float32)
    inp = tc.InferInput("INPUT0", x.shape, "FP32")
    inp.set_data_from_numpy(x)
    before = client.get_inference_statistics("identity", as_json=True)["model_stats"][0]
    for _ in range(4):
        client.infer("identity", [inp])
    after = client.get_inference_statistics("identity", as_json=True)["model_stats"][0]
    done = int(after["inference_stats"]["success"]["count"]) - int(
        before["inference_stats"].get("success", {}).get("count", 0))
    assert done == 4
    assert int(after["inference_count"]) - int(before.get("inference_count", 0)) == 12
    sizes = {int(b["batch_size"]) for b in after["batch_stats"]}
    assert 3 in sizes
    assert int(after["last_inference"]) > 0
    everything = client.get_inference_statistics(as_json=True)["model_stats"]
    assert {s["name"] for s in everything} == BUNDLED
    with pytest.raises(InferenceServerException) as info:
        client.get_inference_statistics("nope")
    assert info.value.status() == "StatusCode.NOT_FOUND"


def test_latency_quantiles_travel_with_statistics(bundled_server, client):
    x = np.ones((1, 16), np.float32)
    inp = tc.InferInput("INPUT0", x.shape, "FP32")
    inp.set_data_from_numpy(x)
    for _ in range(20):
        client.infer("identity", [inp])
    from sluice.proto import grpc_service_pb2 as pb
    from sluice.proto import grpc_service_pb2_grpc as pb_grpc

    with grpc.insecure_channel(bundled_server.address) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        _, call = stub.ModelStatistics.with_call(pb.ModelStatisticsRequest(name="identity"))
        table = json.loads(dict(call.trailing_metadata())["sluice-latency-quantiles"])
    e2e = table["identity"]["1"]["e2e"]
    assert 0 < e2e["p50"] <= e2e["p95"] <= e2e["p99"] < 5
    assert table["identity"]["1"]["requests"] >= 20


def test_repository_index_lists_every_model(client):
    index = client.get_model_repository_index(as_json=True)["models"]
    assert {m["name"] for m in index} == BUNDLED
    assert all(m["state"] == "READY" for m in index)


def test_unsupported_extensions_answer_unimplemented(client):
    for call in (
        client.get_cuda_shared_memory_status,
        client.get_trace_settings,
        client.get_log_settings,
    ):
        with pytest.raises(InferenceServerException) as info:
            call()
        assert info.value.status() == "StatusCode.UNIMPLEMENTED"
    with pytest.raises(InferenceServerException) as info:
        client.register_cuda_shared_memory("r", b"\0" * 64, 0, 16)
    assert info.value.status() == "StatusCode.UNIMPLEMENTED"
    assert "needs a GPU" in info.value.message()


def test_sequence_parameters_on_a_stateless_model_are_ignored_as_triton_does(
    client, bundled_server
):
    """Triton's schedulers other than the sequence batcher ignore a request's sequence; its
    frontend still refuses a parameter of the wrong type, on every model."""
    x = np.arange(16, dtype=np.float32).reshape(1, 16)
    inp = tc.InferInput("INPUT0", x.shape, "FP32")
    inp.set_data_from_numpy(x)
    for _ in range(2):  # no START needed the second time: there is no sequence
        result = client.infer("identity", [inp], sequence_id=5, sequence_start=True)
        np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), x)
    request = pb.ModelInferRequest(model_name="identity", raw_input_contents=[x.tobytes()])
    request.inputs.add(name="INPUT0", datatype="FP32", shape=[1, 16])
    request.parameters["sequence_start"].int64_param = 1  # tritonclient only sends bools
    with grpc.insecure_channel(bundled_server.address) as channel, pytest.raises(
        grpc.RpcError
    ) as info:
        pb_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "'sequence_start' must be a bool" in info.value.details()


def test_grpc_health_service_and_reflection(bundled_server):
    with grpc.insecure_channel(bundled_server.address) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        for service in ("", "inference.GRPCInferenceService"):
            status = health.Check(health_pb2.HealthCheckRequest(service=service)).status
            assert status == health_pb2.HealthCheckResponse.SERVING
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        request = reflection_pb2.ServerReflectionRequest(list_services="")
        reply = next(stub.ServerReflectionInfo(iter([request])))
        names = {s.name for s in reply.list_services_response.service}
        assert "inference.GRPCInferenceService" in names
        request = reflection_pb2.ServerReflectionRequest(
            file_containing_symbol="inference.ModelInferRequest")
        reply = next(stub.ServerReflectionInfo(iter([request])))
        assert reply.file_descriptor_response.file_descriptor_proto


def test_prometheus_metrics_endpoint(bundled_server, client):
    before = scrape(bundled_server)
    x = np.ones((2, 16), np.float32)
    inp = tc.InferInput("INPUT0", x.shape, "FP32")
    inp.set_data_from_numpy(x)
    for _ in range(3):  # one after another: three batches of two rows
        client.infer("identity", [inp])
    after = scrape(bundled_server)
    model = {"model": "identity", "version": "1"}
    assert moved(before, after, "sluice_requests_total") == {
        labels(**model, outcome="success"): 3}
    assert moved(before, after, "sluice_inference_rows_total") == {labels(**model): 6}
    assert moved(before, after, "sluice_batches_total") == {labels(**model): 3}
    # some of those may have run on the event loop (when measured cheaper than the hand-off)
    assert ("sluice_inline_batches_total", labels(**model)) in after
    assert sum(moved(before, after, "sluice_inline_batches_total").values()) <= 3
    for histogram in ("request_duration_seconds", "queue_duration_seconds",
                      "compute_duration_seconds"):
        name = f"sluice_{histogram}"
        assert moved(before, after, f"{name}_count") == {labels(**model): 3}, name
        assert moved(before, after, f"{name}_bucket")[labels(**model, le="+Inf")] == 3, name
    assert moved(before, after, "sluice_batch_size_rows_bucket") == {
        labels(**model, le=le): 3
        for le in ("2.0", "4.0", "8.0", "16.0", "32.0", "64.0", "128.0", "256.0", "512.0",
                   "1024.0", "+Inf")}  # none in le="1.0"
    assert moved(before, after, "sluice_batch_size_rows_sum") == {labels(**model): 6}
    assert after[("sluice_queue_depth_requests", labels(**model))] == 0
    assert after[("sluice_latency_quantile_seconds",
                  labels(**model, stage="e2e", quantile="0.99"))] > 0


async def test_aio_client_every_read_rpc(bundled_server):
    async with tca.InferenceServerClient(bundled_server.address) as client:
        assert await client.is_server_live()
        assert await client.is_server_ready()
        assert await client.is_model_ready("cnn")
        meta = await client.get_model_metadata("cnn", as_json=True)
        assert meta["inputs"][0]["shape"] == ["-1", "3", "32", "32"]
        config = await client.get_model_config("cnn", as_json=True)
        assert config["config"]["max_batch_size"] == 128
        x = np.random.default_rng(0).standard_normal((2, 3, 32, 32)).astype(np.float32)
        inp = tca.InferInput("image", x.shape, "FP32")
        inp.set_data_from_numpy(x)
        result = await client.infer("cnn", [inp], request_id="abc")
        assert result.get_response().id == "abc"
        assert result.as_numpy("logits").shape == (2, 10)
        stats = await client.get_inference_statistics("cnn", as_json=True)
        assert int(stats["model_stats"][0]["inference_count"]) >= 2
        index = await client.get_model_repository_index(as_json=True)
        assert {m["name"] for m in index["models"]} == BUNDLED
