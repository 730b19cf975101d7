"""The REST codec's decode plans (server/protocol/rest/plans.py): a body decoded by the plan of
its JSON part is the request a full decode gives (the full decode without plans is the
reference), and a body that does not fit its plan gets the full decode's own error. The kept
heads of binary answers (rest/heads.py) write the bytes the full encoding writes."""

from __future__ import annotations

import json
import struct

import numpy as np
import pytest

from sluice.proto.datatypes import TensorError
from sluice.server.config.settings import RequestLimits
from sluice.server.errors import InvalidInput, ResourceExhausted
from sluice.server.protocol.rest import codec
from sluice.server.types import InferRequest, InferResponse
from tests.support.rest import VALUES

LIMITS = RequestLimits(max_element_bytes=8)


def _raw(array: np.ndarray) -> bytes:
    if array.dtype == object:
        return b"".join(struct.pack("<I", len(b)) + b for b in array.ravel())
    return array.astype(array.dtype.newbyteorder("<")).tobytes()


def _body(arrays: dict[str, np.ndarray], *, outputs=("OUT",), **doc) -> tuple[bytes, str]:
    raws = {name: _raw(a) for name, a in arrays.items()}
    header = json.dumps({
        **doc,
        "inputs": [{"name": name, "datatype": datatype_of(a), "shape": list(a.shape),
                    "parameters": {"binary_data_size": len(raws[name])}}
                   for name, a in arrays.items()],
        "outputs": [{"name": o, "parameters": {"binary_data": True}} for o in outputs],
    }).encode()
    return header + b"".join(raws.values()), str(len(header))


def datatype_of(array: np.ndarray) -> str:
    return next(d for d, v in VALUES.items() if v.dtype == array.dtype)


def _same(planned: codec.Decoded, full: codec.Decoded) -> None:
    a, b = planned.request, full.request
    assert (a.model_name, a.model_version, a.id, a.requested_outputs, a.parameters,
            a.priority, a.deadline) == (b.model_name, b.model_version, b.id,
                                        b.requested_outputs, b.parameters, b.priority,
                                        b.deadline)
    assert list(a.inputs) == list(b.inputs)
    for name, array in b.inputs.items():
        assert a.inputs[name].dtype == array.dtype and a.inputs[name].shape == array.shape
        np.testing.assert_array_equal(a.inputs[name], array)
    assert (planned.binary, planned.binary_default) == (full.binary, full.binary_default)


def test_every_datatype_decodes_by_plan_as_in_full():
    plans = codec.Plans()
    arrays = {f"IN_{d}": v for d, v in VALUES.items() if d != "BYTES"}
    arrays["IN_BYTES"] = np.array([[b"", b"ab", b"x" * 8]], dtype=object)
    body, header = _body(arrays, parameters={"priority": 2, "binary_data_output": True})
    first = codec.decode_infer(body, header, "m", "1", LIMITS, plans)
    assert len(plans) == 1
    full = codec.decode_infer(body, header, "m", "1", LIMITS)
    _same(first, full)
    # The same JSON part with other data: decoded by the plan, as a full decode has it.
    other = {name: (a[:, ::-1].copy()) for name, a in arrays.items()}
    body2, header2 = _body(other, parameters={"priority": 2, "binary_data_output": True})
    assert body2[:int(header2)] == body[:int(header)]
    planned = codec.decode_infer(body2, header2, "m", "1", LIMITS, plans)
    assert plans.hits == 1
    _same(planned, codec.decode_infer(body2, header2, "m", "1", LIMITS))
    assert planned.request.signature is None  # a BYTES input: its size varies
    assert planned.request.parameters is not first.request.parameters  # each its own


def test_a_fixed_size_request_carries_its_signature():
    plans = codec.Plans()
    body, header = _body({"INPUT0": np.arange(16, dtype=np.float32).reshape(1, 16)})
    codec.decode_infer(body, header, "identity", "", None, plans)
    request = codec.decode_infer(body, header, "identity", "", None, plans).request
    assert plans.hits == 1
    assert request.signature == (("INPUT0", "FP32", (1, 16)),)
    np.testing.assert_array_equal(request.inputs["INPUT0"], np.arange(16).reshape(1, 16))
    # Another model or version is another plan.
    codec.decode_infer(body, header, "identity", "2", None, plans)
    assert len(plans) == 2


@pytest.mark.parametrize("cut", [-4, 4], ids=["short", "long"])
def test_a_body_that_does_not_fit_its_plan_gets_the_full_decodes_error(cut: int):
    plans = codec.Plans()
    body, header = _body({"x": np.ones((1, 3), np.float32)})
    codec.decode_infer(body, header, "m", "", None, plans)
    bad = body[:cut] if cut < 0 else body + bytes(cut)
    with pytest.raises(InvalidInput) as full:
        codec.decode_infer(bad, header, "m", "", None)
    with pytest.raises(InvalidInput) as planned:
        codec.decode_infer(bad, header, "m", "", None, plans)
    assert str(planned.value) == str(full.value)
    assert plans.hits == 0


@pytest.mark.parametrize("b, t, error", [
    ((b"b", b"a"), (1, 2), TensorError),  # a BOOL byte that is not 0 or 1
    ((b"ab", b""), (1, 0), ResourceExhausted),  # a BYTES element past max_element_bytes
], ids=["bool", "bytes"])
def test_bool_and_bytes_contents_are_checked_per_body(b, t, error):
    limits = RequestLimits(max_element_bytes=1)
    plans = codec.Plans()
    body, header = _body({"b": np.array([[b"a", b"b"]], dtype=object),
                          "t": np.array([[True, False]])})
    codec.decode_infer(body, header, "m", "", limits, plans)
    codec.decode_infer(body, header, "m", "", limits, plans)
    assert plans.hits == 1
    # The same JSON part (10 bytes of BYTES, 2 of BOOL), other contents.
    bad = body[:int(header)] + b"".join(struct.pack("<I", len(e)) + e for e in b) + bytes(t)
    with pytest.raises(error) as full:
        codec.decode_infer(bad, header, "m", "", limits)
    with pytest.raises(error) as planned:
        codec.decode_infer(bad, header, "m", "", limits, plans)
    assert str(planned.value) == str(full.value)


def test_bodies_with_an_id_or_json_data_are_not_planned():
    plans = codec.Plans()
    body, header = _body({"x": np.ones((1, 3), np.float32)}, id="r-1")
    assert codec.decode_infer(body, header, "m", "", None, plans).request.id == "r-1"
    data = json.dumps({"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 1],
                                   "data": [1.5]}]}).encode()
    codec.decode_infer(data, None, "m", "", None, plans)
    assert len(plans) == 0


# -- heads of binary answers ---------------------------------------------------------------------


def _decoded(outputs: dict[str, bool | None], default: bool = False) -> codec.Decoded:
    return codec.Decoded(InferRequest("m", "", {}), outputs, default)


@pytest.mark.parametrize("request_id", ["", "r-1", 'caf\u00e9 "q" \\ \x01'])
def test_a_kept_head_writes_the_bytes_a_full_encoding_writes(request_id: str):
    heads = codec.Heads()
    outputs = {f'OUT_{d} \u00e9"': v for d, v in VALUES.items()}
    decoded = _decoded({name: True for name in outputs})
    for _ in range(2):
        for rid in (request_id, "other-id"):
            response = InferResponse("m\u00e9", "1", outputs, rid)
            assert (codec.encode_infer(response, decoded, heads)
                    == codec.encode_infer(response, decoded))
    assert len(heads) == (1 if request_id else 2)
    # Other shapes or sizes: another head.
    response = InferResponse("m\u00e9", "1", {"OUT_FP32 \u00e9\"": np.ones((2, 3), np.float32)},
                             "x")
    decoded = _decoded({}, default=True)
    assert codec.encode_infer(response, decoded, heads) == codec.encode_infer(response, decoded)


def test_answers_with_json_outputs_or_parameters_are_written_in_full():
    heads = codec.Heads()
    outputs = {"a": np.ones((1, 2), np.float32), "b": np.zeros((1, 2), np.int8)}
    for decoded, parameters in (
        (_decoded({"a": True, "b": False}), {}),
        (_decoded({"a": True}, default=False), {}),
        (_decoded({"a": True, "b": True}), {"sequence_end": True}),
    ):
        response = InferResponse("m", "1", outputs, "r", parameters)
        assert (codec.encode_infer(response, decoded, heads)
                == codec.encode_infer(response, decoded))
    assert len(heads) == 0
