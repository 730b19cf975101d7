"""The tensor codec against numpy and against tritonclient's own encoder/decoder."""

from __future__ import annotations

import struct
import sys

import ml_dtypes
import numpy as np
import pytest
import tritonclient.grpc as triton_grpc
from tritonclient.grpc import service_pb2 as triton_service
from tritonclient.grpc._utils import _get_inference_request
from tritonclient.utils import deserialize_bytes_tensor

from sluice.proto import tensors
from sluice.proto.grpc_service_pb2 import InferTensorContents, ModelInferRequest, ModelInferResponse
from sluice.proto.tensors import TensorError, decode_tensor

NUMERIC = {
    "BOOL": np.array([[True, False, True], [False, False, True]]),
    "UINT8": np.array([0, 1, 255], dtype=np.uint8),
    "UINT16": np.array([[0, 65535], [7, 8]], dtype=np.uint16),
    "UINT32": np.array([0, 2**32 - 1, 12345], dtype=np.uint32),
    "UINT64": np.array([0, 2**64 - 1, 2**63], dtype=np.uint64),
    "INT8": np.array([-128, 0, 127], dtype=np.int8),
    "INT16": np.array([-(2**15), 2**15 - 1], dtype=np.int16),
    "INT32": np.arange(-6, 6, dtype=np.int32).reshape(2, 3, 2),
    "INT64": np.array([-(2**63), 2**63 - 1, 0], dtype=np.int64),
    "FP16": np.array([0.5, -2.0, np.inf, 65504.0], dtype=np.float16),
    "FP32": np.array([[1.5, -0.0], [np.inf, -np.inf], [np.nan, 3.4e38]], dtype=np.float32),
    "FP64": np.array([np.pi, -1e308, 5e-324], dtype=np.float64),
    "BF16": np.array([1.0, -3.5, 256.0], dtype=ml_dtypes.bfloat16),
}
BYTES = np.array([[b"", b"abc", "héllo ✓".encode()], [b"\x00\x01", b"x" * 300, b""]], dtype=object)
SAMPLES = {**NUMERIC, "BYTES": BYTES}
TYPED = [dt for dt in SAMPLES if dt not in ("FP16", "BF16")]


def _roundtrip_raw(datatype: str, array: np.ndarray) -> np.ndarray:
    tensor, raw = tensors.make_input("INPUT0", array)
    assert tensor.datatype == datatype
    assert list(tensor.shape) == list(array.shape)
    return decode_tensor("INPUT0", tensor.datatype, tensor.shape, raw, None)


def test_datatypes_cover_kserve() -> None:
    assert set(tensors.DATATYPES) == set(SAMPLES)


@pytest.mark.parametrize("datatype", list(SAMPLES))
def test_raw_roundtrip_every_datatype(datatype: str) -> None:
    array = SAMPLES[datatype]
    decoded = _roundtrip_raw(datatype, array)
    assert decoded.dtype == tensors.datatype_to_dtype(datatype)
    np.testing.assert_array_equal(decoded, array)


@pytest.mark.parametrize("datatype", TYPED)
def test_typed_contents_roundtrip(datatype: str) -> None:
    array = SAMPLES[datatype]
    contents = InferTensorContents()
    tensors.encode_contents(array, contents)
    decoded = decode_tensor("X", datatype, array.shape, None, contents)
    assert decoded.dtype == tensors.datatype_to_dtype(datatype)
    assert decoded.flags.writeable
    np.testing.assert_array_equal(decoded, array)


@pytest.mark.parametrize(
    ("datatype", "field"),
    [
        ("BOOL", "bool_contents"),
        ("INT8", "int_contents"),
        ("INT16", "int_contents"),
        ("INT32", "int_contents"),
        ("INT64", "int64_contents"),
        ("UINT8", "uint_contents"),
        ("UINT16", "uint_contents"),
        ("UINT32", "uint_contents"),
        ("UINT64", "uint64_contents"),
        ("FP32", "fp32_contents"),
        ("FP64", "fp64_contents"),
        ("BYTES", "bytes_contents"),
    ],
)
def test_encode_contents_uses_the_protocol_field(datatype: str, field: str) -> None:
    contents = InferTensorContents()
    tensors.encode_contents(SAMPLES[datatype], contents)
    assert [f.name for f, _ in contents.ListFields()] == [field]


def test_dtype_mapping() -> None:
    assert tensors.datatype_to_dtype("FP32") == np.float32
    assert tensors.datatype_to_dtype("FP32").byteorder in "<="
    assert tensors.datatype_to_dtype("BOOL") == np.bool_
    assert tensors.datatype_to_dtype("BYTES") == np.object_
    assert tensors.datatype_to_dtype("BF16") == ml_dtypes.bfloat16
    assert tensors.dtype_to_datatype(np.dtype(">i4")) == "INT32"
    assert tensors.dtype_to_datatype(np.str_) == "BYTES"
    assert tensors.dtype_to_datatype(np.bytes_) == "BYTES"
    assert tensors.dtype_to_datatype(object) == "BYTES"
    assert tensors.dtype_to_datatype(ml_dtypes.bfloat16) == "BF16"
    for datatype in tensors.DATATYPES:
        assert tensors.dtype_to_datatype(tensors.datatype_to_dtype(datatype)) == datatype
    with pytest.raises(TensorError, match="complex"):
        tensors.dtype_to_datatype(np.complex64)


def test_bf16_without_ml_dtypes(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "ml_dtypes", None)
    with pytest.raises(TensorError, match="ml_dtypes"):
        tensors.datatype_to_dtype("BF16")
    with pytest.raises(TensorError, match="input 'B'.*ml_dtypes"):
        decode_tensor("B", "BF16", [1], b"\x00\x00", None)


def test_big_endian_arrays_encode_little_endian() -> None:
    array = np.array([1, 256], dtype=">u2")
    assert tensors.encode_raw(array) == b"\x01\x00\x00\x01"
    np.testing.assert_array_equal(_roundtrip_raw("UINT16", array), array)


def test_non_contiguous_arrays_encode_in_c_order() -> None:
    array = np.arange(12, dtype=np.int32).reshape(3, 4).T
    np.testing.assert_array_equal(_roundtrip_raw("INT32", array), array)


def test_raw_decode_is_zero_copy_and_read_only() -> None:
    raw = np.arange(16, dtype="<f4").tobytes()
    decoded = decode_tensor("INPUT0", "FP32", [4, 4], raw, None)
    assert np.shares_memory(decoded, np.frombuffer(raw, np.uint8))
    assert not decoded.flags.writeable
    assert decoded.shape == (4, 4)


def test_bytes_str_elements_are_utf8_and_decode_as_bytes() -> None:
    array = np.array(["", "ascii", "ünïcødé", "日本"], dtype=object)
    decoded = _roundtrip_raw("BYTES", array)
    assert decoded.dtype == object
    assert list(decoded) == [s.encode("utf-8") for s in array]
    assert all(type(x) is bytes for x in decoded)


def test_bytes_numpy_string_dtypes() -> None:
    np.testing.assert_array_equal(
        _roundtrip_raw("BYTES", np.array(["ab", "ĉ"])), np.array([b"ab", "ĉ".encode()], object)
    )
    np.testing.assert_array_equal(
        _roundtrip_raw("BYTES", np.array([b"ab", b""])), np.array([b"ab", b""], object)
    )


def test_bytes_layout_is_length_prefixed() -> None:
    raw = tensors.encode_raw(np.array([b"ab", b""], dtype=object))
    assert raw == b"\x02\x00\x00\x00ab\x00\x00\x00\x00"


@pytest.mark.parametrize("shape", [(0,), (2, 0), (0, 3, 1)])
@pytest.mark.parametrize("datatype", list(SAMPLES))
def test_zero_element_tensors(datatype: str, shape: tuple[int, ...]) -> None:
    array = np.empty(shape, dtype=tensors.datatype_to_dtype(datatype))
    decoded = _roundtrip_raw(datatype, array)
    assert decoded.shape == shape
    assert decoded.dtype == array.dtype
    # Typed form with nothing in it, or no contents at all, is an empty tensor too.
    assert decode_tensor("E", datatype, shape, None, InferTensorContents()).shape == shape
    assert decode_tensor("E", datatype, shape, None, None).shape == shape


def test_request_and_response_helpers_roundtrip_through_the_wire() -> None:
    request = ModelInferRequest(model_name="m")
    for name, array in SAMPLES.items():
        tensor, raw = tensors.make_input(name, array)
        request.inputs.append(tensor)
        request.raw_input_contents.append(raw)
    wire = ModelInferRequest.FromString(request.SerializeToString())
    decoded = tensors.decode_inputs(wire)
    assert list(decoded) == list(SAMPLES)
    for name, array in SAMPLES.items():
        np.testing.assert_array_equal(decoded[name], array)

    response = ModelInferResponse(model_name="m")
    for name, array in SAMPLES.items():
        tensor, raw = tensors.make_output(name, array)
        response.outputs.append(tensor)
        response.raw_output_contents.append(raw)
    outputs = tensors.decode_outputs(ModelInferResponse.FromString(response.SerializeToString()))
    for name, array in SAMPLES.items():
        np.testing.assert_array_equal(outputs[name], array)


def test_decode_inputs_and_outputs_accept_typed_contents() -> None:
    request = ModelInferRequest()
    response = ModelInferResponse()
    for name in TYPED:
        array = SAMPLES[name]
        for container in (request.inputs, response.outputs):
            tensor = container.add(name=name, datatype=name, shape=array.shape)
            tensors.encode_contents(array, tensor.contents)
    for decoded in (tensors.decode_inputs(request), tensors.decode_outputs(response)):
        for name in TYPED:
            np.testing.assert_array_equal(decoded[name], SAMPLES[name])


# --- errors: every one is a TensorError that names the tensor ------------------------------------


def test_wrong_raw_size_message() -> None:
    with pytest.raises(TensorError) as info:
        decode_tensor("INPUT0", "FP32", [4, 4], b"\x00" * 60, None)
    assert str(info.value) == "input 'INPUT0': expected 64 bytes of raw data for FP32 [4,4], got 60"
    assert isinstance(info.value, ValueError)


def _contents(**fields: list) -> InferTensorContents:  # type: ignore[type-arg]
    return InferTensorContents(**fields)


def _bytes_raw(*elements: bytes) -> bytes:
    return b"".join(struct.pack("<I", len(e)) + e for e in elements)


@pytest.mark.parametrize(
    ("datatype", "shape", "raw", "contents", "match"),
    [
        ("FP32", [2, -1], b"", None, "negative dimension"),
        ("FP8", [1], b"\x00", None, "unknown datatype 'FP8'"),
        ("INT32", [1], b"\x00" * 4, _contents(int_contents=[1]), "both raw data and typed"),
        ("INT32", [3], None, _contents(int_contents=[1, 2]), "expected 3 values in int_contents"),
        ("INT32", [2], None, _contents(int64_contents=[1, 2]), "belongs in int_contents"),
        ("UINT8", [1], None, _contents(int_contents=[1]), "belongs in uint_contents"),
        ("FP32", [1], None, _contents(fp64_contents=[1.0]), "belongs in fp32_contents"),
        ("FP16", [1], None, _contents(fp32_contents=[1.0]), "FP16 data must be sent as raw"),
        ("BF16", [1], None, _contents(fp32_contents=[1.0]), "BF16 data must be sent as raw"),
        ("INT8", [2], None, _contents(int_contents=[1, 128]), "out of range for INT8"),
        ("UINT16", [1], None, _contents(uint_contents=[70000]), "out of range for UINT16"),
        ("INT16", [1], None, _contents(int_contents=[-40000]), "out of range for INT16"),
        ("FP32", [2], None, None, "no data for FP32"),
        ("BOOL", [2], b"\x01\x02", None, "BOOL raw data"),
        ("INT64", [2], b"\x00" * 15, None, "expected 16 bytes"),
        ("BYTES", [2], _bytes_raw(b"a"), None, "cannot hold"),
        ("BYTES", [2], _bytes_raw(b"ab") + b"\x01\x00", None, "element 1 length prefix"),
        ("BYTES", [1], b"\x05\x00\x00\x00abc", None, "element 0 declares 5 bytes"),
        ("BYTES", [1], _bytes_raw(b"a", b"b"), None, "left after 1 BYTES elements"),
        ("BYTES", [1], _bytes_raw(b"a") + b"\x00", None, "1 bytes of raw data left"),
        ("BYTES", [2], None, _contents(bytes_contents=[b"a"]), "expected 2 values"),
    ],
)
def test_decode_errors_name_the_tensor(
    datatype: str,
    shape: list[int],
    raw: bytes | None,
    contents: InferTensorContents | None,
    match: str,
) -> None:
    with pytest.raises(TensorError, match=match) as info:
        decode_tensor("IN_7", datatype, shape, raw, contents)
    assert str(info.value).startswith("input 'IN_7': ")
    with pytest.raises(TensorError, match="^output 'IN_7': "):
        decode_tensor("IN_7", datatype, shape, raw, contents, kind="output")


def test_huge_bytes_shape_is_rejected_before_allocating() -> None:
    with pytest.raises(TensorError, match="input 'S'"):
        decode_tensor("S", "BYTES", [2**40, 2**20], _bytes_raw(b"a"), None)


@pytest.mark.parametrize("datatype", ["FP32", "BYTES"])
def test_unrepresentable_zero_element_shape(datatype: str) -> None:
    with pytest.raises(TensorError, match="input 'Z': shape"):
        decode_tensor("Z", datatype, [0, 2**62, 2**62], b"", None)


def _request_with(*names: str) -> ModelInferRequest:
    request = ModelInferRequest()
    for name in names:
        tensor, raw = tensors.make_input(name, np.zeros(2, np.float32))
        request.inputs.append(tensor)
        request.raw_input_contents.append(raw)
    return request


def test_decode_inputs_errors() -> None:
    with pytest.raises(TensorError, match="input 'A': appears more than once"):
        tensors.decode_inputs(_request_with("A", "B", "A"))

    missing = _request_with("A", "B")
    del missing.raw_input_contents[1]
    with pytest.raises(TensorError, match="input 'B': 1 raw_input_contents entries for 2"):
        tensors.decode_inputs(missing)

    extra = _request_with("A")
    extra.raw_input_contents.append(b"")
    with pytest.raises(TensorError, match="inputs 'A': 2 raw_input_contents entries for 1"):
        tensors.decode_inputs(extra)

    shm = _request_with("A")
    shm.inputs[0].parameters["shared_memory_region"].string_param = "region"
    with pytest.raises(TensorError, match="input 'A': shared-memory"):
        tensors.decode_inputs(shm)

    both = _request_with("A")
    both.inputs[0].contents.fp32_contents.extend([1.0, 2.0])
    with pytest.raises(TensorError, match="input 'A': has both"):
        tensors.decode_inputs(both)


def test_decode_outputs_errors_say_output() -> None:
    response = ModelInferResponse()
    response.outputs.add(name="OUT", datatype="FP32", shape=[3])
    response.raw_output_contents.append(b"\x00" * 8)
    with pytest.raises(TensorError, match="^output 'OUT': expected 12 bytes"):
        tensors.decode_outputs(response)


def test_encode_errors_name_the_tensor() -> None:
    with pytest.raises(TensorError, match="input 'C': .*no KServe datatype"):
        tensors.make_input("C", np.zeros(2, np.complex64))
    with pytest.raises(TensorError, match="output 'O': BYTES element of type int"):
        tensors.make_output("O", np.array([b"a", 3], dtype=object))
    with pytest.raises(TensorError, match="input 'H': FP16 has no typed contents"):
        tensors.encode_contents(np.zeros(1, np.float16), InferTensorContents(), label="input 'H'")


# --- cross-checks with tritonclient ---------------------------------------------------------------


def _triton_input(name: str, array: np.ndarray, datatype: str) -> triton_grpc.InferInput:
    infer_input = triton_grpc.InferInput(name, list(array.shape), datatype)
    infer_input.set_data_from_numpy(array)
    return infer_input


@pytest.mark.parametrize("datatype", list(SAMPLES))
def test_tritonclient_encoded_inputs_decode_with_ours(datatype: str) -> None:
    array = SAMPLES[datatype]
    infer_input = _triton_input("INPUT0", array, datatype)
    tensor = infer_input._get_tensor()
    decoded = decode_tensor(
        tensor.name, tensor.datatype, tensor.shape, infer_input._get_content(), None
    )
    np.testing.assert_array_equal(decoded, array)
    assert decoded.dtype == tensors.datatype_to_dtype(datatype)


def test_tritonclient_request_decodes_with_ours() -> None:
    inputs = [_triton_input(name, array, name) for name, array in SAMPLES.items()]
    request = _get_inference_request(
        model_name="m",
        inputs=inputs,
        model_version="",
        request_id="r",
        outputs=None,
        sequence_id=0,
        sequence_start=False,
        sequence_end=False,
        priority=0,
        timeout=None,
        parameters=None,
    )
    ours = ModelInferRequest.FromString(request.SerializeToString())
    decoded = tensors.decode_inputs(ours)
    for name, array in SAMPLES.items():
        np.testing.assert_array_equal(decoded[name], array)


def test_our_outputs_decode_with_tritonclient() -> None:
    response = ModelInferResponse(model_name="m")
    for name, array in SAMPLES.items():
        tensor, raw = tensors.make_output(name, array)
        response.outputs.append(tensor)
        response.raw_output_contents.append(raw)
    theirs = triton_service.ModelInferResponse.FromString(response.SerializeToString())
    result = triton_grpc.InferResult(theirs)
    for name, array in SAMPLES.items():
        got = result.as_numpy(name)
        assert got.dtype == tensors.datatype_to_dtype(name)
        np.testing.assert_array_equal(got, array)


def test_our_bytes_decode_with_deserialize_bytes_tensor() -> None:
    flat = BYTES.ravel()
    np.testing.assert_array_equal(deserialize_bytes_tensor(tensors.encode_raw(BYTES)), flat)
