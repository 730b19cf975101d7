"""codec.decode_request's short path: after a (datatype, shape) decoded once, the same request
decodes to the same arrays, and every malformed variant still gets the general path's error."""

from __future__ import annotations

import numpy as np
import pytest

from sluice.proto import grpc_service_pb2 as pb
from sluice.proto import tensors
from sluice.server.config.settings import RequestLimits
from sluice.server.errors import ResourceExhausted
from sluice.server.protocol import codec

LIMITS = RequestLimits(max_inputs=4, max_outputs=4, max_rank=3)


def request(
    *arrays: tuple[str, np.ndarray], raw: list[bytes] | None = None
) -> pb.ModelInferRequest:
    message = pb.ModelInferRequest(model_name="m", id="r1")
    for name, array in arrays:
        message.inputs.add(name=name, datatype=tensors.dtype_to_datatype(array.dtype),
                           shape=array.shape)
        message.raw_input_contents.append(tensors.encode_raw(array))
    if raw is not None:
        del message.raw_input_contents[:]
        message.raw_input_contents.extend(raw)
    return pb.ModelInferRequest.FromString(message.SerializeToString())


@pytest.fixture(autouse=True)
def no_plans():
    codec._raw_plans.clear()
    yield
    codec._raw_plans.clear()


def test_second_request_takes_the_short_path_with_the_same_arrays():
    rng = np.random.default_rng(3)
    x, k = rng.random((2, 5), dtype=np.float32), np.arange(6, dtype=np.int64).reshape(2, 3)
    first = codec.decode_request(request(("x", x), ("k", k)), None, LIMITS)
    assert first.signature is None  # nothing known yet: the general decoder ran
    second = codec.decode_request(request(("x", x), ("k", k)), 5.0, LIMITS)
    assert second.signature == (("x", "FP32", (2, 5)), ("k", "INT64", (2, 3)))
    for decoded in (first, second):
        np.testing.assert_array_equal(decoded.inputs["x"], x)
        np.testing.assert_array_equal(decoded.inputs["k"], k)
        assert decoded.inputs["x"].dtype == np.float32 and not decoded.inputs["x"].flags.writeable
    assert (second.id, second.deadline, second.priority) == ("r1", 5.0, 0)


def test_bool_and_bytes_never_take_the_short_path():
    for array in (np.array([[True, False]]), np.array([[b"ab"]], dtype=object)):
        codec.decode_request(request(("b", array)), None)
        assert codec.decode_request(request(("b", array)), None).signature is None
    with pytest.raises(tensors.TensorError, match="BOOL raw data must hold only 0 or 1"):
        codec.decode_request(request(("b", np.array([[True, False]])), raw=[b"\x01\x02"]), None)


def malformed() -> dict[str, pb.ModelInferRequest]:
    x = np.zeros((1, 4), np.float32)
    short = request(("x", x), raw=[b"\x00" * 12])
    twice = request(("x", x), ("x", x))
    both = request(("x", x))
    both.inputs[0].contents.fp32_contents.extend([0.0] * 4)
    shm = request(("x", x))
    shm.inputs[0].parameters["shared_memory_region"].string_param = "r"
    missing = request(("x", x), ("y", x), raw=[x.tobytes()])
    return {"short raw": short, "repeated name": twice, "raw and contents": both,
            "shared memory": shm, "raw count": missing}


EXPECTED = {
    "short raw": r"input 'x': expected 16 bytes of raw data for FP32 \[1,4\], got 12",
    "repeated name": "input 'x': appears more than once",
    # Triton's words (issue 16 item 6)
    "raw and contents": "contents field must not be specified when using raw_input_contents "
                        "for 'x' for model 'm'",
    "shared memory": "input 'x': shared-memory tensors are not supported",
    "raw count": "input 'y': 1 raw_input_contents entries for 2 inputs",
}


@pytest.mark.parametrize("name", list(EXPECTED))
def test_malformed_requests_after_a_known_plan_get_the_general_error(name):
    x = np.zeros((1, 4), np.float32)
    codec.decode_request(request(("x", x)), None)  # learn (FP32, (1, 4))
    assert codec.decode_request(request(("x", x)), None).signature is not None
    with pytest.raises(tensors.TensorError, match=EXPECTED[name]):
        codec.decode_request(malformed()[name], None)


def test_limits_still_apply_on_the_short_path():
    x = np.zeros((1, 1, 1), np.float32)
    codec.decode_request(request(("x", x)), None, LIMITS)
    deep = np.zeros((1, 1, 1, 1), np.float32)
    codec.decode_request(request(("x", deep)), None)  # learnt without limits
    with pytest.raises(ResourceExhausted, match="4 dimensions.*max_tensor_rank"):
        codec.decode_request(request(("x", deep)), None, LIMITS)
    many = [(f"i{n}", x) for n in range(5)]
    with pytest.raises(ResourceExhausted, match="5 inputs.*max_request_inputs"):
        codec.decode_request(request(*many), None, LIMITS)


def test_plans_stay_bounded():
    for rows in range(1, codec._PLAN_LIMIT + 20):
        codec.decode_request(request(("x", np.zeros((rows, 1), np.float32))), None)
    assert len(codec._raw_plans) <= codec._PLAN_LIMIT
