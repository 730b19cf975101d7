"""KServe v2 REST beside gRPC (issue 17 item 1), through one real server: every endpoint through
``tritonclient.http`` and raw HTTP against gRPC's answers, JSON and binary tensors of every
datatype, the status of each bad request, a shed's 503 with Retry-After."""

from __future__ import annotations

import json
import struct
import threading
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from google.protobuf import json_format
from tritonclient.utils import InferenceServerException

from sluice.server.config.settings import ServerConfig
from tests.support.onnx_models import identity_model, write_model
from tests.support.overload import WIDTH, slow_repo, wait_queued
from tests.support.running import start_server

#: Every datatype Sluice serves, with values that test its edges.
VALUES = {
    "BOOL": np.array([[True, False, True]]),
    "UINT8": np.array([[0, 7, 255]], np.uint8),
    "UINT16": np.array([[0, 7, 65535]], np.uint16),
    "UINT32": np.array([[0, 7, 2**32 - 1]], np.uint32),
    "UINT64": np.array([[0, 7, 2**64 - 1]], np.uint64),
    "INT8": np.array([[-128, 0, 127]], np.int8),
    "INT16": np.array([[-(2**15), 0, 2**15 - 1]], np.int16),
    "INT32": np.array([[-(2**31), 0, 2**31 - 1]], np.int32),
    "INT64": np.array([[-(2**63), 0, 2**63 - 1]], np.int64),
    "FP16": np.array([[-1.5, 0.0, 65504.0]], np.float16),
    "FP32": np.array([[-1.25, 0.0, 3.0e38]], np.float32),
    "FP64": np.array([[-1.25, 1e-300, 1e300]], np.float64),
    "BYTES": np.array([[b"", b"caf\xc3\xa9", b"x" * 40]], dtype=object),
}
MAX_BODY = 1 << 20


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    repo = tmp_path_factory.mktemp("rest-repo")
    write_model(repo, "alltypes", identity_model(
        {name: (name, ["batch", 3]) for name in VALUES}))
    write_model(repo, "mixed", identity_model(
        {name: (name, ["batch", 3]) for name in ("FP16", "BOOL", "BYTES", "FP32")}))
    slow_repo(repo, "slow", ms=150, batching="default_queue_policy { max_queue_size: 1 }")
    running = start_server(ServerConfig(
        model_repository=repo, grpc_port=0, http_port=0, metrics_port=None,
        max_message_bytes=MAX_BODY, state_dir=tmp_path_factory.mktemp("rest-state")))
    yield running
    running.stop()


@pytest.fixture(scope="module")
def url(server) -> str:
    return f"127.0.0.1:{server.server.rest.port}"


@pytest.fixture(scope="module")
def clients(server, url):
    with grpcclient.InferenceServerClient(server.address) as g:
        h = httpclient.InferenceServerClient(url)
        yield h, g
        h.close()


def call(url: str, path: str, body: bytes | None = None, headers: dict | None = None,
         method: str | None = None) -> tuple[int, dict[str, str], bytes]:
    """(status, headers, body) of one raw HTTP request."""
    request = urllib.request.Request(f"http://{url}{path}", data=body, headers=headers or {},
                                     method=method)
    try:
        with urllib.request.urlopen(request, timeout=30) as answer:
            return answer.status, dict(answer.headers), answer.read()
    except urllib.error.HTTPError as error:
        return error.code, dict(error.headers), error.read()


def same(rest: dict, reference) -> bool:
    """Whether REST's JSON holds exactly gRPC's ``reference`` message."""
    return json_format.ParseDict(rest, type(reference)()) == reference


def error_of(url: str, path: str, body: bytes, headers: dict | None = None) -> tuple[int, str]:
    status, _, answer = call(url, path, body, headers)
    return status, json.loads(answer)["error"]


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


def binary_body(tensors: list[tuple[str, str, list[int], bytes]], outputs: list[str],
                extra: bytes = b"", announce: dict[str, int] | None = None) -> tuple[bytes, dict]:
    """A request with every input as binary data, built by hand from the extension's text."""
    header = json.dumps({
        "inputs": [{"name": n, "datatype": d, "shape": s,
                    "parameters": {"binary_data_size": (announce or {}).get(n, len(raw))}}
                   for n, d, s, raw in tensors],
        "outputs": [{"name": o, "parameters": {"binary_data": True}} for o in outputs],
    }).encode()
    body = header + b"".join(raw for *_, raw in tensors) + extra
    return body, {"Inference-Header-Content-Length": str(len(header)),
                  "Content-Type": "application/octet-stream"}


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


# -- bad requests -------------------------------------------------------------------------------

INFER = "/v2/models/alltypes/infer"


def _fp32(data) -> bytes:
    return json.dumps({"inputs": [
        {"name": "IN_FP32", "datatype": "FP32", "shape": [1, 3], "data": data}]}).encode()


def test_each_bad_request_gets_its_status_naming_the_field(url, server):
    cases = [
        (b'{"inputs": [', 400, "not valid JSON"),
        (b'[1, 2]', 400, "JSON object"),
        (_fp32([1, 2]), 400, "input 'IN_FP32': shape [1, 3] needs 3 values, 'data' holds 2"),
        (_fp32([1, "x", 3]), 400, "input 'IN_FP32': value 1 (x) is not a FP32 value"),
        (_fp32([1, True, 3]), 400, "value 1 (True) is not a FP32 value"),
        (json.dumps({"inputs": [{"name": "IN_INT8", "datatype": "INT8", "shape": [1, 3],
                                 "data": [1, 2, 300]}]}).encode(), 400, "out of range for INT8"),
        (json.dumps({"inputs": [{"name": "IN_FP32", "datatype": "FP9", "shape": [1],
                                 "data": [1]}]}).encode(), 400, "unknown datatype 'FP9'"),
        (json.dumps({"inputs": [], "parameters": {"priority": -1}}).encode(), 400,
         "parameter 'priority'"),
        (json.dumps({"inputs": [], "parameters": {"log_file": "x"}}).encode(), 400,
         "parameter 'log_file'"),
    ]
    for body, status, needle in cases:
        got = error_of(url, INFER, body)
        assert got[0] == status and needle in got[1], (body, got)
    assert error_of(url, "/v2/models/nope/infer", _fp32([1, 2, 3]))[0] == 404
    assert error_of(url, "/v2/models/alltypes/versions/9/infer", _fp32([1, 2, 3]))[0] == 404
    assert call(url, "/v2/models/nope")[0] == 404


def test_binary_sections_that_do_not_add_up_are_400(url):
    raw = np.ones((1, 3), "<f4").tobytes()
    short, headers = binary_body([("IN_FP32", "FP32", [1, 3], raw)], [],
                                 announce={"IN_FP32": 16})
    status, message = error_of(url, INFER, short, headers)
    assert status == 400 and message == ("input 'IN_FP32': binary_data_size 16 runs past the end "
                                         "of the binary data (12 bytes left)")
    mismatch, headers = binary_body([("IN_FP32", "FP32", [1, 3], raw[:8])], [])
    status, message = error_of(url, INFER, mismatch, headers)
    assert status == 400 and "input 'IN_FP32': expected 12 bytes" in message
    extra, headers = binary_body([("IN_FP32", "FP32", [1, 3], raw)], [], extra=b"zz")
    assert error_of(url, INFER, extra, headers) == (
        400, "2 bytes of binary data follow the inputs' binary_data_size (12 bytes announced)")
    body, headers = binary_body([("IN_FP32", "FP32", [1, 3], raw)], [])
    headers["Inference-Header-Content-Length"] = str(len(body) + 1)
    assert error_of(url, INFER, body, headers) == (
        400, f"header 'Inference-Header-Content-Length' ({len(body) + 1}) is past the end of "
        f"the body ({len(body)} bytes)")


def test_a_body_over_the_cap_is_413_before_it_is_read(url, server):
    import socket

    before = server.server.servicer.refusals.counts["resource_exhausted"]
    with socket.create_connection(tuple(url.split(":")[:1]) + (int(url.split(":")[1]),)) as s:
        # Announce a body far over the cap and send none of it: the answer comes anyway.
        s.sendall(f"POST {INFER} HTTP/1.1\r\nHost: x\r\nContent-Length: {MAX_BODY + 1}\r\n"
                  "Content-Type: application/json\r\n\r\n".encode())
        s.settimeout(10)
        answer = s.recv(65536)
    assert answer.startswith(b"HTTP/1.1 413"), answer
    assert b"exceeds the server's 1048576 bytes" in answer
    assert server.server.servicer.refusals.counts["resource_exhausted"] == before + 1
    assert call(url, "/v2/health/ready")[0] == 200  # and it keeps serving


# -- parameters and sheds -----------------------------------------------------------------------


def _slow_body(**parameters) -> bytes:
    return json.dumps({"inputs": [{"name": "IN_x", "datatype": "FP32", "shape": [1, WIDTH],
                                   "data": [1.0] * WIDTH}], "parameters": parameters}).encode()


def test_a_shed_is_503_with_retry_after(url, server):
    answers: list[int] = []
    threads = [threading.Thread(target=lambda: answers.append(
        call(url, "/v2/models/slow/infer", _slow_body())[0])) for _ in range(2)]
    threads[0].start()
    assert _wait(lambda: server.server.repository.get("slow").queue_stats()["queued_requests"]
                 == 0 and server.server.servicer.in_flight == 1)
    threads[1].start()
    wait_queued(server, "slow", 1)
    status, headers, body = call(url, "/v2/models/slow/infer", _slow_body(priority=1))
    for thread in threads:
        thread.join(30)
    assert answers == [200, 200]
    assert status == 503, body
    assert headers["Sluice-Shed-Reason"] == "queue_full"
    pushback_ms = int(headers["Sluice-Retry-After-Ms"])
    assert pushback_ms >= 1 and int(headers["Retry-After"]) == -(-pushback_ms // 1000)
    assert "model 'slow:1': queue full" in json.loads(body)["error"]


def test_sticky_key_must_be_a_string(url):
    status, message = error_of(url, "/v2/models/slow/infer", _slow_body(sticky_key=5))
    assert status == 400 and "sticky_key" in message


def _wait(condition, timeout_s: float = 10.0) -> bool:
    import time

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.005)
    return False


def test_unused_path_is_404_and_wrong_method_405(url):
    assert call(url, "/v2/nothing")[0] == 404
    assert call(url, INFER)[0] == 405


def test_servers_without_rest_open_no_port(tmp_path: Path):
    running = start_server(ServerConfig(model_repository=tmp_path, grpc_port=0,
                                        metrics_port=None, state_dir=tmp_path / ".s"))
    try:
        assert running.server.rest is None
    finally:
        running.stop()


def test_tokens_guard_rest_as_they_guard_grpc(tmp_path: Path):
    from tests.support.authz import one_token_per_scope

    tokens = one_token_per_scope(tmp_path / "tokens.json")
    repo = tmp_path / "repo"
    write_model(repo, "one", identity_model({"x": ("FP32", ["batch", 2])}))
    running = start_server(ServerConfig(
        model_repository=repo, grpc_port=0, http_port=0, metrics_port=None,
        tokens_file=tokens.path, state_dir=tmp_path / ".s"))
    try:
        url = f"127.0.0.1:{running.server.rest.port}"
        body = json.dumps({"inputs": [{"name": "IN_x", "datatype": "FP32", "shape": [1, 2],
                                       "data": [1, 2]}]}).encode()
        assert call(url, "/v2/health/ready")[0] == 200  # probes need no token
        status, headers, answer = call(url, "/v2")
        assert (status, headers["WWW-Authenticate"]) == (401, "Bearer")
        assert "Authorization: Bearer" in json.loads(answer)["error"]
        assert call(url, "/v2", headers={"Authorization": "Bearer nope"})[0] == 401
        status, message = error_of(url, "/v2/models/one/infer", body, tokens.header("metadata"))
        assert status == 403 and "lacks scope 'infer'" in message
        status, _, answer = call(url, "/v2/models/one/infer", body, tokens.header("infer"))
        assert status == 200 and json.loads(answer)["outputs"][0]["data"] == [1.0, 2.0]
        assert call(url, "/v2/repository/models/one/unload", b"", tokens.header("infer"))[0] \
            == 403
        assert call(url, "/v2/models/one/stats", headers=tokens.header("ops"))[0] == 200
        refused = running.server.access.interceptor.refused
        assert refused["UNAUTHENTICATED"] == 2 and refused["PERMISSION_DENIED"] == 2
    finally:
        running.stop()


def test_rest_speaks_tls_when_the_server_does_and_after_a_reload(tmp_path: Path):
    import http.client
    import ssl

    from sluice.server.config.tls import TlsFiles
    from tests.support.certs import CertificateAuthority

    ca = CertificateAuthority.create(tmp_path)
    issued = ca.issue("server")
    repo = tmp_path / "repo"
    write_model(repo, "one", identity_model({"x": ("FP32", ["batch", 2])}))
    running = start_server(ServerConfig(
        model_repository=repo, grpc_port=0, http_port=0, metrics_port=None,
        tls=TlsFiles(issued.cert, issued.key, None), state_dir=tmp_path / ".s"))
    try:
        rest = running.server.rest
        context = ssl.create_default_context(cafile=str(ca.cert))

        def metadata() -> str:
            with urllib.request.urlopen(f"https://localhost:{rest.port}/v2/models/one",
                                        context=context, timeout=10) as answer:
                return json.loads(answer.read())["name"]

        assert rest.scheme == "https" and metadata() == "one"
        assert running.call(running.server.tls.reload())
        assert metadata() == "one"  # new connections get the reloaded context
        with pytest.raises((OSError, http.client.HTTPException)):  # no plaintext answer
            urllib.request.urlopen(f"http://localhost:{rest.port}/v2/models/one", timeout=10)
    finally:
        running.stop()
