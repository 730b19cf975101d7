"""Bad requests get a precise status whose message names the offending thing, and the server
keeps serving everyone else."""

from __future__ import annotations

import grpc
import numpy as np
import pytest
import tritonclient.grpc as tc
from tritonclient.utils import InferenceServerException

from sluice.proto import grpc_service_pb2 as pb
from sluice.proto import grpc_service_pb2_grpc as pb_grpc
from sluice.proto.tensors import make_input
from tests.support.onnx_models import identity_model, write_model


def fp32_input(name: str, value: np.ndarray) -> tc.InferInput:
    tensor = tc.InferInput(name, list(value.shape), "FP32")
    tensor.set_data_from_numpy(value.astype(np.float32))
    return tensor


def expect(client, model, inputs, code, *needles, **kw):
    with pytest.raises(InferenceServerException) as info:
        client.infer(model, inputs, **kw)
    assert info.value.status() == f"StatusCode.{code}", info.value.message()
    for needle in needles:
        assert needle in info.value.message(), (needle, info.value.message())


@pytest.fixture
def client(bundled_server):
    with tc.InferenceServerClient(bundled_server.address) as c:
        yield c


OK = np.ones((2, 16), np.float32)


def test_unknown_model_and_version_are_not_found(client, bundled_server):
    loaded = sorted({v.name for v in bundled_server.server.repository.loaded()})
    assert {"digits", "identity", "cnn"} <= set(loaded)
    expect(client, "no_such_model", [fp32_input("INPUT0", OK)], "NOT_FOUND",
           f"model 'no_such_model' is not loaded; loaded: {', '.join(loaded)}")
    expect(client, "identity", [fp32_input("INPUT0", OK)], "NOT_FOUND", "'3'",
           model_version="3")
    # Triton's status and words for a version string that is no number (issue 16 item 6)
    expect(client, "identity", [fp32_input("INPUT0", OK)], "INVALID_ARGUMENT",
           "failed to get model version from specified version string 'latest'",
           "model 'identity' has no alias 'latest'", model_version="latest")


def test_wrong_datatype(client):
    bad = tc.InferInput("INPUT0", [2, 16], "INT32")
    bad.set_data_from_numpy(np.ones((2, 16), np.int32))
    expect(client, "identity", [bad], "INVALID_ARGUMENT", "INPUT0", "FP32", "INT32")


def test_wrong_shape(client):
    expect(client, "identity", [fp32_input("INPUT0", np.ones((2, 15)))], "INVALID_ARGUMENT",
           "INPUT0", "[-1, 16]", "[2, 15]")
    expect(client, "identity", [fp32_input("INPUT0", np.ones(16))], "INVALID_ARGUMENT",
           "INPUT0")


def test_missing_and_unknown_inputs(client):
    expect(client, "add_sub", [fp32_input("INPUT0", OK)], "INVALID_ARGUMENT",
           "missing input 'INPUT1'")
    expect(client, "identity", [fp32_input("INPUT0", OK), fp32_input("EXTRA", OK)],
           "INVALID_ARGUMENT", "unexpected input 'EXTRA'")


def test_inputs_with_different_batch_sizes(client):
    expect(client, "add_sub", [fp32_input("INPUT0", OK), fp32_input("INPUT1", np.ones((3, 16)))],
           "INVALID_ARGUMENT", "INPUT1", "batch size 3")


def test_batch_over_max(client):
    expect(client, "add_sub",
           [fp32_input("INPUT0", np.ones((65, 16))), fp32_input("INPUT1", np.ones((65, 16)))],
           "INVALID_ARGUMENT", "batch size 65", "max_batch_size 64")


def test_unknown_requested_output(client):
    expect(client, "identity", [fp32_input("INPUT0", OK)], "INVALID_ARGUMENT", "'NOPE'",
           outputs=[tc.InferRequestedOutput("NOPE")])


def test_raw_byte_length_mismatch_and_count_mismatch(bundled_server):
    with grpc.insecure_channel(bundled_server.address) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        tensor, raw = make_input("INPUT0", OK)
        request = pb.ModelInferRequest(model_name="identity", inputs=[tensor],
                                       raw_input_contents=[raw[:-4]])
        with pytest.raises(grpc.RpcError) as info:
            stub.ModelInfer(request)
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "INPUT0" in info.value.details() and "124" in info.value.details()
        request = pb.ModelInferRequest(model_name="identity", inputs=[tensor],
                                       raw_input_contents=[raw, raw])
        with pytest.raises(grpc.RpcError) as info:
            stub.ModelInfer(request)
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        # typed contents work as well as raw
        tensor.contents.fp32_contents.extend(OK.ravel().tolist())
        reply = stub.ModelInfer(pb.ModelInferRequest(model_name="identity", inputs=[tensor]))
        assert list(reply.outputs[0].shape) == [2, 16]


def test_bad_priority_and_timeout_parameters(bundled_server):
    with grpc.insecure_channel(bundled_server.address) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        tensor, raw = make_input("INPUT0", OK)
        for key, param in (("priority", pb.InferParameter(string_param="high")),
                           ("timeout", pb.InferParameter(string_param="soon"))):
            request = pb.ModelInferRequest(model_name="identity", inputs=[tensor],
                                           raw_input_contents=[raw], parameters={key: param})
            with pytest.raises(grpc.RpcError) as info:
                stub.ModelInfer(request)
            assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert f"'{key}'" in info.value.details()


def test_non_utf8_bytes_for_an_onnx_string_input(make_server, tmp_path):
    write_model(tmp_path, "text", identity_model({"s": ("BYTES", ["batch", 2])}),
                "max_batch_size: 4\ndynamic_batching {}\n")
    running = make_server(tmp_path)
    value = np.array([[b"ok", b"\xff\xfe"]], dtype=object)
    tensor = tc.InferInput("IN_s", [1, 2], "BYTES")
    tensor.set_data_from_numpy(value)
    with tc.InferenceServerClient(running.address) as c:
        expect(c, "text", [tensor], "INVALID_ARGUMENT", "IN_s", "UTF-8")
        good = tc.InferInput("IN_s", [1, 2], "BYTES")
        good.set_data_from_numpy(np.array([[b"ok", b"fine"]], dtype=object))
        assert c.infer("text", [good]).as_numpy("OUT_s").tolist() == [[b"ok", b"fine"]]


def test_server_keeps_serving_after_every_error(client):
    for _ in range(3):
        with pytest.raises(InferenceServerException):
            client.infer("identity", [fp32_input("INPUT0", np.ones((2, 3)))])
    result = client.infer("identity", [fp32_input("INPUT0", OK)])
    np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), OK)
    assert client.is_server_ready()
