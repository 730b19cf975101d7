"""The REST codec (server/protocol/rest/codec.py) without a server: every datatype as JSON and as
binary data, both ways, against tritonclient.http's own encoder and result parser (Triton's
reading of the protocol, not ours) and hand-built bytes; each malformed body -> its exact error,
raised before any tensor is handed on."""

from __future__ import annotations

import json
import struct

import ml_dtypes
import numpy as np
import pytest
import tritonclient.http as httpclient
from tritonclient.http._infer_result import InferResult
from tritonclient.http._utils import _get_inference_request

from sluice.proto.datatypes import TensorError
from sluice.server.config.settings import RequestLimits
from sluice.server.errors import InvalidInput, ResourceExhausted, Unimplemented
from sluice.server.protocol.rest import codec
from sluice.server.types import InferResponse
from tests.support.rest import VALUES

ALL = {**VALUES, "BF16": np.array([[-1.5, 0.0, 3.0e38]], dtype=ml_dtypes.bfloat16)}
NUMPY = {"BYTES": object, "BF16": ml_dtypes.bfloat16}


def _dtype(datatype: str) -> np.dtype:
    return np.dtype(NUMPY.get(datatype, ALL[datatype].dtype))


def _triton_body(datatype: str, binary: bool) -> tuple[bytes, str | None]:
    tensor = httpclient.InferInput(f"IN_{datatype}", [1, 3], datatype)
    tensor.set_data_from_numpy(ALL[datatype], binary_data=binary)
    body, json_size = _get_inference_request(
        [tensor], "req-7", [httpclient.InferRequestedOutput(f"OUT_{datatype}", binary)],
        0, False, False, 3, None, None)
    return body, None if json_size is None else str(json_size)


def _decode(body: bytes, header: str | None = None, limits: RequestLimits | None = None):
    return codec.decode_infer(body, header, "m", "", limits)


def _json_body(*inputs: dict, **doc) -> bytes:
    return json.dumps({"inputs": list(inputs), **doc}).encode()


def _tensor(data, datatype: str = "FP32", shape=(1, 3), name: str = "x", **extra) -> dict:
    return {"name": name, "datatype": datatype, "shape": list(shape), "data": data, **extra}


def _answer(decoded: codec.Decoded, outputs: dict[str, np.ndarray]) -> InferResult:
    body, header = codec.encode_infer(InferResponse("m", "1", outputs, "req-7"), decoded)
    return InferResult.from_response_body(body, header_length=header)


# -- every datatype, both ways -------------------------------------------------------------------


@pytest.mark.parametrize("binary", [False, True], ids=["json", "binary"])
@pytest.mark.parametrize("datatype", [d for d in ALL if d != "BF16"])
def test_tritonclient_requests_decode_and_answers_parse_back(datatype: str, binary: bool):
    body, header = _triton_body(datatype, binary)
    assert (header is not None) == binary
    decoded = _decode(body, header)
    request = decoded.request
    assert (request.model_name, request.id, request.priority) == ("m", "req-7", 3)
    assert request.requested_outputs == (f"OUT_{datatype}",)
    array = request.inputs[f"IN_{datatype}"]
    assert array.dtype == _dtype(datatype) and array.shape == (1, 3)
    np.testing.assert_array_equal(array, ALL[datatype])
    assert decoded.binary == {f"OUT_{datatype}": binary}

    result = _answer(decoded, {f"OUT_{datatype}": array})
    back = result.as_numpy(f"OUT_{datatype}")
    output = result.get_output(f"OUT_{datatype}")
    assert output["datatype"] == datatype and output["shape"] == [1, 3]
    assert ("data" in output) != binary
    assert result.get_response()["id"] == "req-7"
    if datatype == "BYTES" and not binary:  # JSON carries text: tritonclient reads str back
        back = np.array([v.encode() for v in back.ravel()], dtype=object).reshape(1, 3)
    np.testing.assert_array_equal(back.reshape(1, 3), ALL[datatype])


def test_bf16_both_ways():
    # tritonclient sends BF16 only as binary data; as JSON it is numbers, rounded to BF16.
    body, header = _triton_body("BF16", True)
    decoded = _decode(body, header)
    array = decoded.request.inputs["IN_BF16"]
    assert array.dtype == ml_dtypes.bfloat16
    np.testing.assert_array_equal(array, ALL["BF16"])
    raw = _answer(decoded, {"OUT_BF16": array})
    assert raw.get_output("OUT_BF16")["parameters"] == {"binary_data_size": 6}

    decoded = _decode(_json_body(_tensor([1.0, -3.5, 1.00390625], "BF16"),
                                 outputs=[{"name": "y"}]))
    array = decoded.request.inputs["x"]
    assert array.dtype == ml_dtypes.bfloat16
    assert array.astype(np.float32).tolist() == [[1.0, -3.5, 1.0]]  # 1+2**-8: to even, 1.0
    assert _answer(decoded, {"y": array}).get_output("y")["data"] == [1.0, -3.5, 1.0]


def test_binary_bytes_by_hand_in_order_beside_json():
    # Two binary inputs and a JSON one between them; the sections follow the inputs' order.
    strings = [b"", b"caf\xc3\xa9", b"\x00\xff"]
    raw_bytes = b"".join(struct.pack("<I", len(s)) + s for s in strings)
    raw_ints = struct.pack("<3h", -2, 0, 32767)
    header = json.dumps({"inputs": [
        {"name": "s", "datatype": "BYTES", "shape": [3],
         "parameters": {"binary_data_size": len(raw_bytes)}},
        _tensor([[True], [False]], "BOOL", (2, 1), name="b"),
        {"name": "i", "datatype": "INT16", "shape": [1, 3],
         "parameters": {"binary_data_size": 6}},
    ], "parameters": {"binary_data_output": True}}).encode()
    decoded = _decode(header + raw_bytes + raw_ints, str(len(header)))
    inputs = decoded.request.inputs
    assert inputs["s"].tolist() == strings
    assert inputs["b"].tolist() == [[True], [False]]
    assert inputs["i"].dtype == np.dtype("<i2") and inputs["i"].tolist() == [[-2, 0, 32767]]
    assert decoded.request.requested_outputs is None and decoded.binary_default

    body, length = codec.encode_infer(InferResponse("m", "1", dict(inputs)), decoded)
    doc = json.loads(body[:length])
    assert [o["parameters"]["binary_data_size"] for o in doc["outputs"]] == [
        len(raw_bytes), 2, 6]
    assert body[length:] == raw_bytes + b"\x01\x00" + raw_ints


def test_each_output_may_override_binary_data_output():
    doc = _json_body(_tensor([1, 2, 3]), parameters={"binary_data_output": True},
                     outputs=[{"name": "a", "parameters": {"binary_data": False}},
                              {"name": "b"}])
    decoded = _decode(doc)
    assert decoded.binary == {"a": False, "b": None}
    values = np.array([[1.5, 2, 3]], "<f4")
    body, length = codec.encode_infer(
        InferResponse("m", "1", {"a": values, "b": values}), decoded)
    outputs = json.loads(body[:length])["outputs"]
    assert outputs[0]["data"] == [1.5, 2.0, 3.0] and "parameters" not in outputs[0]
    assert outputs[1]["parameters"] == {"binary_data_size": 12}
    assert body[length:] == values.tobytes()
    # All JSON: no header length, one JSON document, the response parameters kept.
    plain, length = codec.encode_infer(
        InferResponse("m", "1", {"a": values}, "", {"sequence_end": True}),
        _decode(_json_body(_tensor([1, 2, 3]))))
    assert length is None and json.loads(plain) == {
        "model_name": "m", "model_version": "1", "parameters": {"sequence_end": True},
        "outputs": [{"name": "a", "datatype": "FP32", "shape": [1, 3],
                     "data": [1.5, 2.0, 3.0]}]}


def test_nested_and_scalar_json_data_read_in_row_major_order():
    nested = _decode(_json_body(_tensor([[[1, 2], [3, 4]], [[5, 6], [7, 8]]], "INT32",
                                        (2, 2, 2))))
    assert nested.request.inputs["x"].tolist() == [[[1, 2], [3, 4]], [[5, 6], [7, 8]]]
    scalar = _decode(_json_body(_tensor(7.5, "FP64", ())))
    assert scalar.request.inputs["x"].shape == () and scalar.request.inputs["x"] == 7.5
    empty = _decode(_json_body(_tensor([], "INT64", (0, 3))))
    assert empty.request.inputs["x"].shape == (0, 3)
    request = _decode(_json_body(_tensor([1, 2, 3]), parameters={
        "priority": 2, "timeout": 5000, "sticky_key": "user-9"})).request
    assert request.priority == 2
    assert request.parameters == {"priority": 2, "timeout": 5000, "sticky_key": "user-9"}


# -- malformed bodies: the precise error ---------------------------------------------------------

BAD = [
    (b"{", InvalidInput, "the request is not valid JSON: Expecting property name enclosed in "
     "double quotes at line 1 column 2"),
    (b'{"id": "\xff"}', InvalidInput,
     "the request is not valid JSON (not UTF-8, or nested too deep)"),
    (b"[]", InvalidInput, "the request must be a JSON object"),
    (b"{}", InvalidInput, "field 'inputs' must be a list of tensors"),
    (_json_body(outputs={}), InvalidInput, "field 'outputs' must be a list"),
    (_json_body(id=5), InvalidInput, "field 'id' must be a string"),
    (_json_body(parameters=[1]), InvalidInput, "request 'parameters' must be a JSON object"),
    (_json_body(parameters={"p": [1]}), InvalidInput,
     "request parameter 'p' must be a boolean, number or string"),
    (_json_body(parameters={"binary_data_output": 1}), InvalidInput,
     "parameter 'binary_data_output' must be true or false"),
    (_json_body(parameters={"priority": -1}), InvalidInput,
     "parameter 'priority' must be a non-negative integer"),
    (_json_body(parameters={"trace_file": "/etc/x"}), InvalidInput,
     "parameter 'trace_file': Sluice takes no file or directory names from requests"),
    (_json_body(7), InvalidInput, "inputs[0] must be an object with a string 'name'"),
    (_json_body({"name": 3}), InvalidInput, "inputs[0] must be an object with a string 'name'"),
    (_json_body(_tensor([1], "FP8")), InvalidInput, "input 'x': unknown datatype 'FP8'"),
    (_json_body(_tensor([1], "FP32", (1, -3))), InvalidInput,
     "input 'x': 'shape' must be a list of non-negative integers"),
    (_json_body(_tensor([1], "FP32", (1.0,))), InvalidInput,
     "input 'x': 'shape' must be a list of non-negative integers"),
    (_json_body(_tensor([1, 2], "FP32", (1, 3), "x"), _tensor([1, 2, 3])), InvalidInput,
     "input 'x': shape [1, 3] needs 3 values, 'data' holds 2"),
    (_json_body(_tensor([1, 2, 3]), _tensor([1, 2, 3])), InvalidInput,
     "input 'x': appears more than once"),
    (_json_body(_tensor({"a": 1})), InvalidInput, "input 'x': 'data' must be a list of values"),
    (_json_body(_tensor([1, [2], 3])), InvalidInput,
     "input 'x': 'data' must hold only numbers, booleans or strings"),
    (_json_body(_tensor([1, None, 3])), InvalidInput,
     "input 'x': 'data' must hold only numbers, booleans or strings"),
    (_json_body(_tensor([1, "2", 3])), InvalidInput, "input 'x': value 1 (2) is not a FP32 value"),
    (_json_body(_tensor([1, 2.5, 3], "INT32")), InvalidInput,
     "input 'x': value 1 (2.5) is not a INT32 value"),
    (_json_body(_tensor([True, 1, 0], "INT8")), InvalidInput,
     "input 'x': value 0 (True) is not a INT8 value"),
    (_json_body(_tensor([True, 1, 0], "BOOL")), InvalidInput,
     "input 'x': value 1 (1) is not a BOOL value"),
    (_json_body(_tensor(["a", 1, "c"], "BYTES")), InvalidInput,
     "input 'x': BYTES value 1 must be a string"),
    (_json_body(_tensor([0, 1, 256], "UINT8")), InvalidInput,
     "input 'x': a value is out of range for UINT8"),
    (_json_body(_tensor([0, -1, 2], "UINT64")), InvalidInput,
     "input 'x': a value is out of range for UINT64"),
    (_json_body(_tensor([0, 2**63, 2], "INT64")), InvalidInput,
     "input 'x': a value is out of range for INT64"),
    (_json_body(_tensor([0, 1e6, 2], "FP16")), InvalidInput,
     "input 'x': a value is out of range for FP16"),
    (_json_body(_tensor([0, 1e39, 2], "FP32")), InvalidInput,
     "input 'x': a value is out of range for FP32"),
    (_json_body(_tensor([0, 1e39, 2], "BF16")), InvalidInput,
     "input 'x': a value is out of range for BF16"),
    (_json_body(_tensor([0, 10**400, 2], "FP64")), InvalidInput,
     "input 'x': a value is out of range for FP64"),
    (_json_body({"name": "x", "datatype": "FP32", "shape": [1]}), InvalidInput,
     "input 'x': has neither 'data' nor binary_data_size"),
    (_json_body(_tensor([1], "FP32", (1,), parameters={"binary_data_size": 4})), InvalidInput,
     "input 'x': has both 'data' and binary_data_size"),
    (_json_body({"name": "x", "datatype": "FP32", "shape": [1],
                 "parameters": {"binary_data_size": -4}}), InvalidInput,
     "input 'x': 'binary_data_size' must be a non-negative integer"),
    (_json_body({"name": "x", "datatype": "FP32", "shape": [1],
                 "parameters": {"binary_data_size": 4}}), InvalidInput,
     "input 'x': binary_data_size 4 runs past the end of the binary data (0 bytes left)"),
    (_json_body(_tensor([1], "FP32", (1,), parameters={"shared_memory_region": "r"})),
     Unimplemented, "input 'x': shared memory is not supported"),
    (_json_body(_tensor([1, 2, 3]), outputs=[{"name": 1}]), InvalidInput,
     "outputs[0] must be an object with a string 'name'"),
    (_json_body(_tensor([1, 2, 3]), outputs=[{"name": "y", "parameters": {"binary_data": 1}}]),
     InvalidInput, "output 'y': 'binary_data' must be true or false"),
    (_json_body(_tensor([1, 2, 3]), outputs=[{"name": "y", "parameters": {
        "classification": 2}}]), Unimplemented,
     "output 'y': the classification extension is not supported"),
]


@pytest.mark.parametrize(("body", "error", "message"), BAD, ids=[m[:48] for *_, m in BAD])
def test_a_malformed_body_is_refused_naming_the_field(body: bytes, error: type, message: str):
    with pytest.raises(error) as refused:
        _decode(body)
    assert str(refused.value) == message


def _binary(size: int, raw: bytes, **header) -> tuple[bytes, str]:
    doc = json.dumps({"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 3],
                                  "parameters": {"binary_data_size": size}}], **header}).encode()
    return doc + raw, str(len(doc))


@pytest.mark.parametrize(("body", "header", "error", "message"), [
    (*_binary(12, bytes(8)), InvalidInput,
     "input 'x': binary_data_size 12 runs past the end of the binary data (8 bytes left)"),
    (*_binary(8, bytes(8)), TensorError,
     "input 'x': expected 12 bytes of raw data for FP32 [1,3], got 8"),
    (*_binary(12, bytes(14)), InvalidInput,
     "2 bytes of binary data follow the inputs' binary_data_size (12 bytes announced)"),
    (_binary(12, bytes(12))[0], "9999", InvalidInput,
     "header 'Inference-Header-Content-Length' (9999) is past the end of the body (116 bytes)"),
    (_binary(12, bytes(12))[0], "-1", InvalidInput,
     "header 'Inference-Header-Content-Length' (-1) is past the end of the body (116 bytes)"),
    (_binary(12, bytes(12))[0], "ten", InvalidInput,
     "header 'Inference-Header-Content-Length' must be a byte count, got 'ten'"),
    (_binary(12, bytes(12))[0], "20", InvalidInput,
     "the request is not valid JSON: Expecting value at line 1 column 21"),
])
def test_a_binary_section_that_does_not_add_up_is_refused(body, header, error, message):
    with pytest.raises(error) as refused:
        _decode(body, header)
    assert str(refused.value) == message


def test_bytes_sections_with_a_bad_length_prefix_are_refused():
    raw = struct.pack("<I", 9) + b"abc"  # announces 9 bytes, holds 3
    doc = json.dumps({"inputs": [{"name": "s", "datatype": "BYTES", "shape": [1],
                                  "parameters": {"binary_data_size": len(raw)}}]}).encode()
    with pytest.raises(TensorError, match=r"^input 's': "):
        _decode(doc + raw, str(len(doc)))


def test_limits_are_checked_on_what_a_tensor_declares():
    limits = RequestLimits(max_inputs=1, max_outputs=1, max_rank=2, max_elements=6,
                           max_element_bytes=4, max_parameters=1)
    cases = [
        (_json_body(_tensor([1]), _tensor([1])),
         "request has 2 inputs; the server allows at most 1 (max_request_inputs)"),
        (_json_body(_tensor([1]), outputs=[{"name": "a"}, {"name": "b"}]),
         "request asks for 2 outputs; the server allows at most 1 (max_request_outputs)"),
        (_json_body(_tensor([1], shape=(1, 1, 1))),
         "an input has 3 dimensions; the server allows at most 2 (max_tensor_rank)"),
        # Declared, not sent: the cap holds before any data is converted.
        (_json_body(_tensor([1], shape=(1000000, 1000000))),
         "input 'x': dimension 1000000 of shape [1000000,1000000] exceeds the server's 6 "
         "elements per tensor (max_tensor_elements)"),
        (_json_body(_tensor(["abcde"], "BYTES", (1,))),
         "input 'x': BYTES element 0 holds 5 bytes; the server allows at most 4 "
         "(max_element_bytes)"),
        (_json_body(_tensor([1]), parameters={"a": 1, "b": 2}),
         "request has 2 parameters; the server allows at most 1 (max_request_parameters)"),
    ]
    for body, message in cases:
        with pytest.raises(ResourceExhausted) as refused:
            _decode(body, limits=limits)
        assert str(refused.value) == message


def test_an_output_that_json_cannot_carry_is_refused_naming_it():
    decoded = _decode(_json_body(_tensor([1, 2, 3])))
    bad = np.array([b"\xff"], dtype=object)
    with pytest.raises(InvalidInput, match=r"^output 'y': holds bytes that are not UTF-8; ask "
                       r"for it with parameter binary_data: true$"):
        codec.encode_infer(InferResponse("m", "1", {"y": bad}), decoded)
    body, length = codec.encode_infer(InferResponse("m", "1", {"y": bad}), _decode(_json_body(
        _tensor([1, 2, 3]), outputs=[{"name": "y", "parameters": {"binary_data": True}}])))
    assert body[length:] == b"\x01\x00\x00\x00\xff"
    with pytest.raises(TensorError, match="complex"):
        codec.encode_infer(InferResponse("m", "1", {"y": np.zeros(2, np.complex64)}), decoded)
