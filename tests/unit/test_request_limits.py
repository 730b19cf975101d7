"""The size caps of one inference request (issue 14 item 4): elements per tensor (on the
declared shape, before any tensor is decoded), BYTES element length, and entries per parameters
map. Each refusal is ResourceExhausted naming the input and the setting; a request at the cap
passes. The decoder's short path (codec plans, shared by every server in the process) obeys the
caps of the server that decodes."""

from __future__ import annotations

import numpy as np
import pytest

from sluice.proto import grpc_service_pb2 as pb
from sluice.proto import tensors
from sluice.server.config.settings import RequestLimits, ServerConfig
from sluice.server.errors import ResourceExhausted
from sluice.server.protocol import codec

LIMITS = RequestLimits(max_inputs=4, max_outputs=4, max_rank=4, max_elements=6,
                       max_element_bytes=3, max_parameters=2)


@pytest.fixture(autouse=True)
def no_plans():
    codec._raw_plans.clear()
    yield
    codec._raw_plans.clear()


def message(name: str, datatype: str, shape: list[int], raw: bytes | None) -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name="m")
    request.inputs.add(name=name, datatype=datatype, shape=shape)
    if raw is not None:
        request.raw_input_contents.append(raw)
    return request


def test_element_caps_are_checked_on_the_declared_shape_before_decoding():
    # No data at all: the decoder would say "no data"; the cap speaks first, so nothing
    # sized by the shape is ever allocated.
    with pytest.raises(ResourceExhausted) as info:
        codec.decode_request(message("x", "FP32", [2, 4], None), None, LIMITS)
    assert info.value.message == (
        "input 'x': shape [2,4] has 8 elements; the server allows at most 6 "
        "(max_tensor_elements)")
    # A zero dimension makes 0 elements, but no dimension may exceed the cap either.
    with pytest.raises(ResourceExhausted, match=r"dimension 4611686018427387904 of shape "
                       r"\[0,4611686018427387904\] exceeds .* \(max_tensor_elements\)"):
        codec.decode_request(message("x", "FP32", [0, 2**62], b""), None, LIMITS)
    at_cap = np.arange(6, dtype=np.float32).reshape(2, 3)
    decoded = codec.decode_request(message("x", "FP32", [2, 3], at_cap.tobytes()), None, LIMITS)
    np.testing.assert_array_equal(decoded.inputs["x"], at_cap)


def test_the_short_path_obeys_the_cap_of_the_server_that_decodes():
    x = np.zeros((2, 4), np.float32)
    for _ in range(2):  # learnt (and then taken) by a decode without limits
        assert codec.decode_request(message("x", "FP32", [2, 4], x.tobytes()), None) is not None
    with pytest.raises(ResourceExhausted, match="8 elements.*max_tensor_elements"):
        codec.decode_request(message("x", "FP32", [2, 4], x.tobytes()), None, LIMITS)
    empty = message("x", "FP32", [0, 9], b"")
    codec.decode_request(empty, None)
    with pytest.raises(ResourceExhausted, match="dimension 9"):
        codec.decode_request(empty, None, LIMITS)


def test_a_bytes_element_over_the_cap_is_named_by_its_index():
    raw = tensors.encode_raw(np.array([b"abc", b"abcd"], dtype=object))
    with pytest.raises(ResourceExhausted) as info:
        codec.decode_request(message("s", "BYTES", [2], raw), None, LIMITS)
    assert info.value.message == (
        "input 's': BYTES element 1 holds 4 bytes; the server allows at most 3 "
        "(max_element_bytes)")
    typed = message("s", "BYTES", [1], None)
    typed.inputs[0].contents.bytes_contents.append(b"long")
    with pytest.raises(ResourceExhausted, match="element 0 holds 4 bytes"):
        codec.decode_request(typed, None, LIMITS)
    ok = tensors.encode_raw(np.array([b"abc", b""], dtype=object))
    decoded = codec.decode_request(message("s", "BYTES", [2], ok), None, LIMITS)
    assert decoded.inputs["s"].tolist() == [b"abc", b""]


def test_parameter_maps_over_the_cap_are_refused_naming_their_owner():
    x = np.zeros((1, 2), np.float32).tobytes()
    request = message("x", "FP32", [1, 2], x)
    for key in ("a", "b", "c"):
        request.parameters[key].string_param = key
    with pytest.raises(ResourceExhausted) as info:
        codec.decode_request(request, None, LIMITS)
    assert info.value.message == (
        "request has 3 parameters; the server allows at most 2 (max_request_parameters)")
    request = message("x", "FP32", [1, 2], x)
    for key in ("a", "b", "c"):
        request.inputs[0].parameters[key].int64_param = 1
    with pytest.raises(ResourceExhausted, match="input 'x' has 3 parameters"):
        codec.decode_request(request, None, LIMITS)
    request = message("x", "FP32", [1, 2], x)
    output = request.outputs.add(name="y")
    for key in ("a", "b", "c"):
        output.parameters[key].bool_param = True
    with pytest.raises(ResourceExhausted, match="output 'y' has 3 parameters"):
        codec.decode_request(request, None, LIMITS)
    request = message("x", "FP32", [1, 2], x)
    request.parameters["a"].int64_param = 1
    request.parameters["b"].int64_param = 2
    assert codec.decode_request(request, None, LIMITS).parameters == {"a": 1, "b": 2}


def test_the_server_settings_reach_the_request_limits():
    config = ServerConfig(model_repository=".", max_tensor_elements=10, max_element_bytes=20,
                          max_request_parameters=30)
    limits = config.request_limits
    assert (limits.max_elements, limits.max_element_bytes, limits.max_parameters) == (10, 20, 30)
