"""KServe v2 REST beside gRPC (issue 17 item 1), through one real server: every endpoint through
``tritonclient.http`` and raw HTTP against gRPC's answers, JSON and binary tensors of every
datatype. The refusals, sheds, tokens and TLS are in test_rest_guards.py."""

from __future__ import annotations

import json
import struct

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from google.protobuf import json_format
from tritonclient.utils import InferenceServerException

from tests.support.rest import VALUES, binary_body, call


def same(rest: dict, reference) -> bool:
    """Whether REST's JSON holds exactly gRPC's ``reference`` message."""
    return json_format.ParseDict(rest, type(reference)()) == reference


# -- endpoints ----------------------------------------------------------------------------------


def test_health_and_metadata_equal_grpc(clients, url):
    h, g = clients
    assert h.is_server_live() and h.is_server_ready()
    assert h.is_model_ready("alltypes") and h.is_model_ready("alltypes", "1")
    assert not h.is_model_ready("nope")
    assert same(h.get_server_metadata(), g.get_server_metadata())
    for version in ("", "1"):
        assert same(h.get_model_metadata("alltypes", version),
                    g.get_model_metadata("alltypes", version))
        # The config as Triton writes it: the config itself, dims as JSON numbers.
        config = h.get_model_config("alltypes", version)
        assert config["input"][0]["dims"] == [3]
        assert same(config, g.get_model_config("alltypes", version).config)


def test_statistics_and_repository_equal_grpc(clients, url):
    h, g = clients
    h.infer("alltypes", [_input(d, v, True) for d, v in VALUES.items()])
    for name in ("alltypes", ""):
        stats = h.get_inference_statistics(name)
        assert same(stats, g.get_inference_statistics(name))
        assert isinstance(stats["model_stats"][0]["inference_count"], int)
    status, headers, _ = call(url, "/v2/models/alltypes/versions/1/stats")
    quantiles = json.loads(headers["Sluice-Latency-Quantiles"])
    assert status == 200 and "e2e" in quantiles["alltypes"]["1"]
    index = h.get_model_repository_index()
    reference = g.get_model_repository_index().models
    assert len(index) == len(reference)
    assert all(same(row, model) for row, model in zip(index, reference, strict=True))


def test_unload_then_load_through_rest(clients):
    h, g = clients
    h.unload_model("mixed")
    assert not g.is_model_ready("mixed")
    h.load_model("mixed")
    assert g.is_model_ready("mixed")
    with pytest.raises(InferenceServerException, match="not in the repository") as caught:
        h.load_model("no_such_model")
    assert caught.value.status() == "404"


# -- tensors ------------------------------------------------------------------------------------


def _input(datatype: str, value: np.ndarray, binary: bool) -> httpclient.InferInput:
    tensor = httpclient.InferInput(f"IN_{datatype}", list(value.shape), datatype)
    tensor.set_data_from_numpy(value, binary_data=binary)
    return tensor


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_every_datatype_round_trips_as_grpc_answers_it(clients, binary):
    h, g = clients
    inputs = [_input(d, v, binary) for d, v in VALUES.items()]
    outputs = [httpclient.InferRequestedOutput(f"OUT_{t.name()[3:]}", binary_data=binary)
               for t in inputs]
    answer = h.infer("alltypes", inputs, outputs=outputs, request_id="r-7")
    assert answer.get_response()["id"] == "r-7"
    ginputs = []
    for datatype, value in VALUES.items():
        tensor = grpcclient.InferInput(f"IN_{datatype}", list(value.shape), datatype)
        tensor.set_data_from_numpy(value)
        ginputs.append(tensor)
    reference = g.infer("alltypes", ginputs)
    for tensor in inputs:
        datatype = tensor.name()[3:]
        got = answer.as_numpy(f"OUT_{datatype}")
        if datatype == "BYTES" and not binary:  # JSON carries text; tritonclient gives str
            got = np.vectorize(str.encode, otypes=[object])(got)
        assert got.dtype == reference.as_numpy(f"OUT_{datatype}").dtype or datatype == "BYTES"
        np.testing.assert_array_equal(got, VALUES[datatype])
        np.testing.assert_array_equal(got, reference.as_numpy(f"OUT_{datatype}"))


def test_fp16_as_json_numbers_and_nested_data_by_hand(url):
    body = {"id": "n", "inputs": [
        {"name": "IN_FP16", "datatype": "FP16", "shape": [2, 3], "data": [[1, 2.5, -3], [4, 5, 6]]},
        {"name": "IN_BOOL", "datatype": "BOOL", "shape": [2, 3], "data": [True, False] * 3},
        {"name": "IN_BYTES", "datatype": "BYTES", "shape": [2, 3], "data": list("abcdef")},
        {"name": "IN_FP32", "datatype": "FP32", "shape": [2, 3], "data": [0] * 6},
    ], "outputs": [{"name": "OUT_FP16"}, {"name": "OUT_BOOL"}]}
    status, headers, answer = call(url, "/v2/models/mixed/infer", json.dumps(body).encode())
    assert status == 200 and "Inference-Header-Content-Length" not in headers
    doc = json.loads(answer)
    assert doc["model_name"] == "mixed" and doc["model_version"] == "1" and doc["id"] == "n"
    out = {o["name"]: o for o in doc["outputs"]}
    assert out["OUT_FP16"] == {"name": "OUT_FP16", "datatype": "FP16", "shape": [2, 3],
                               "data": [1.0, 2.5, -3.0, 4.0, 5.0, 6.0]}
    assert out["OUT_BOOL"]["data"] == [True, False] * 3 and len(out) == 2


def test_binary_request_and_response_by_hand(url):
    words = [b"ab", b"", "\u00e9\u4e2d".encode(), b"c", b"d", b"e"]
    raw_bytes = b"".join(struct.pack("<I", len(w)) + w for w in words)
    floats = np.arange(6, dtype="<f4").reshape(2, 3)
    body, headers = binary_body([("IN_BYTES", "BYTES", [2, 3], raw_bytes),
                                 ("IN_FP32", "FP32", [2, 3], floats.tobytes()),
                                 ("IN_FP16", "FP16", [2, 3], bytes(12)),
                                 ("IN_BOOL", "BOOL", [2, 3], bytes(6))],
                                ["OUT_BYTES", "OUT_FP32"])
    status, answer_headers, answer = call(url, "/v2/models/mixed/infer", body, headers)
    assert status == 200, answer
    length = int(answer_headers["Inference-Header-Content-Length"])
    doc = json.loads(answer[:length])
    sizes = [o["parameters"]["binary_data_size"] for o in doc["outputs"]]
    assert [o["name"] for o in doc["outputs"]] == ["OUT_BYTES", "OUT_FP32"]
    assert sizes == [len(raw_bytes), 24] and len(answer) == length + sum(sizes)
    assert answer[length:length + sizes[0]] == raw_bytes
    assert answer[length + sizes[0]:] == floats.tobytes()

