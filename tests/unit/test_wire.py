"""sluice.server.protocol.wire: hand-written response bytes parse to the message protobuf builds."""

from __future__ import annotations

import ml_dtypes
import numpy as np
import pytest

from sluice.proto import grpc_service_pb2 as pb
from sluice.proto import tensors
from sluice.proto.params import set_param
from sluice.server.protocol import wire
from sluice.server.types import InferResponse


def reference(response: InferResponse) -> pb.ModelInferResponse:
    """The response built field by field through protobuf (what the server sent before)."""
    message = pb.ModelInferResponse(
        model_name=response.model_name, model_version=response.model_version, id=response.id
    )
    for name, array in response.outputs.items():
        array = np.asarray(array)
        message.outputs.add(
            name=name, datatype=tensors.dtype_to_datatype(array.dtype), shape=array.shape
        )
        message.raw_output_contents.append(tensors.encode_raw(array))
    for key, value in response.parameters.items():
        set_param(message.parameters, key, value)
    return message


rng = np.random.default_rng(7)
CASES = {
    "one fp32 row": {"probabilities": rng.random((1, 10), dtype=np.float32)},
    "two outputs": {"label": np.array([3, 2**40], np.int64),
                    "probabilities": rng.random((2, 10), dtype=np.float32)},
    "scalar and empty": {"s": np.float64(2.5), "empty": np.zeros((0, 3), np.int32)},
    "bool, fp16, uint8": {"b": np.array([[True, False]]), "h": np.ones((2, 2), np.float16),
                          "u": np.arange(200, dtype=np.uint8).reshape(2, 100)},
    "bf16": {"bf": np.ones((3,), ml_dtypes.bfloat16)},
    "big-endian": {"be": np.arange(6, dtype=">i4").reshape(2, 3)},
    "not contiguous": {"t": np.arange(12, dtype=np.float32).reshape(3, 4).T},
    "bytes": {"text": np.array([[b"a", b"", "\u00e9".encode()]], dtype=object)},
    "large dims": {"wide": np.zeros((1, 300, 2), np.int8)},  # multi-byte varints in the shape
    "long name": {"x" * 200: np.zeros((1,), np.float32)},
}


@pytest.mark.parametrize("outputs", CASES.values(), ids=CASES.keys())
@pytest.mark.parametrize("request_id", ["", "req-\u00e9-1"])
def test_response_bytes_parse_to_the_protobuf_message(outputs, request_id):
    response = InferResponse("model", "3", dict(outputs), id=request_id)
    parsed = pb.ModelInferResponse.FromString(wire.encode_response(response))
    assert parsed == reference(response)
    decoded = tensors.decode_outputs(parsed)
    assert list(decoded) == list(outputs)
    for name, array in outputs.items():
        np.testing.assert_array_equal(decoded[name], array)


def test_parameters_and_empty_fields():
    params = {"sluice_arm": "stable", "n": 7, "big": 2**63 + 1, "flag": True, "x": 0.25}
    response = InferResponse("m", "", {"y": np.ones((1, 2), np.float32)}, parameters=params)
    parsed = pb.ModelInferResponse.FromString(wire.encode_response(response))
    assert parsed == reference(response)
    assert parsed.model_version == "" and parsed.id == ""


def test_stream_response_wraps_the_response():
    response = InferResponse("m", "1", {"y": np.arange(4, dtype=np.int64)}, id="7")
    parsed = pb.ModelStreamInferResponse.FromString(wire.encode_stream_response(response))
    assert parsed.error_message == ""
    assert parsed.infer_response == reference(response)


def test_many_shapes_past_the_cache_limit_stay_right():
    for rows in range(1, wire._CACHE_LIMIT + 50, 7):
        response = InferResponse("m", str(rows), {"y": np.full((rows, 2), rows, np.int32)})
        assert pb.ModelInferResponse.FromString(wire.encode_response(response)) == reference(
            response
        )
    assert len(wire._outputs) <= wire._CACHE_LIMIT


def test_an_output_with_no_kserve_datatype_is_refused_by_name():
    response = InferResponse("m", "1", {"c": np.ones((1,), np.complex64)})
    with pytest.raises(tensors.TensorError, match="complex64"):
        wire.encode_response(response)
