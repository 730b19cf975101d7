"""KServe v2 REST beside gRPC (issue 17 item 1), what it refuses and what guards it: the status
of each bad request, a body over the cap, a shed's 503 with Retry-After, servers without REST,
tokens (and their quotas: 429), TLS and mTLS certificate principals as gRPC has them."""

from __future__ import annotations

import json
import threading
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from sluice.server.config.settings import ServerConfig
from tests.support.onnx_models import identity_model, write_model
from tests.support.overload import WIDTH, wait_queued
from tests.support.rest import MAX_BODY, binary_body, call
from tests.support.running import start_server


def error_of(url: str, path: str, body: bytes, headers: dict | None = None) -> tuple[int, str]:
    status, _, answer = call(url, path, body, headers)
    return status, json.loads(answer)["error"]


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


def test_unused_path_is_404_and_wrong_method_405_as_json(url):
    status, headers, body = call(url, "/v2/nothing")
    assert status == 404 and headers["Content-Type"].startswith("application/json")
    assert json.loads(body) == {"error": "no endpoint at '/v2/nothing'"}
    status, headers, body = call(url, INFER)  # a GET
    assert (status, headers["Allow"]) == (405, "POST")
    assert headers["Content-Type"].startswith("application/json")
    assert json.loads(body) == {
        "error": "GET is not allowed on '/v2/models/alltypes/infer' (allowed: POST)"}
    status, headers, body = call(url, "/v2/health/ready", b"{}", method="DELETE")
    assert (status, json.loads(body)["error"]) == (
        405, "DELETE is not allowed on '/v2/health/ready' (allowed: GET)")


def test_servers_without_rest_open_no_port(tmp_path: Path):
    running = start_server(ServerConfig(model_repository=tmp_path, grpc_port=0,
                                        metrics_port=None, state_dir=tmp_path / ".s"))
    try:
        assert running.server.rest is None
    finally:
        running.stop()


def test_tokens_guard_rest_as_they_guard_grpc(tmp_path: Path):
    from sluice.server.auth.tokens import make_quota
    from tests.support.authz import one_token_per_scope

    tokens = one_token_per_scope(tmp_path / "tokens.json")
    tokens.add("quota", ["infer"], make_quota(0.01, 2))  # a burst of 2, then one per 100 s
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
        # A quota: its burst answers, the next is 429 (a rate, not a size: not 413), and
        # nothing was computed for it; another principal's bucket is its own.
        infer = [call(url, "/v2/models/one/infer", body, tokens.header("quota"))
                 for _ in range(3)]
        assert [status for status, _, _ in infer] == [200, 200, 429]
        status, headers, answer = infer[2]
        assert headers["Retry-After"] == "1"
        assert json.loads(answer) == {"error": "'quota' is over its request quota "
                                               "(0.01 requests/s, burst 2)"}
        assert call(url, "/v2/models/one/infer", body, tokens.header("infer"))[0] == 200
        stats = json.loads(call(url, "/v2/models/one/stats", headers=tokens.header("ops"))[2])
        assert stats["model_stats"][0]["inference_count"] == 4  # 1 + 2 of 'quota' + 1
        refused = running.server.access.interceptor.refused
        assert refused["UNAUTHENTICATED"] == 2 and refused["PERMISSION_DENIED"] == 2
        assert refused["RESOURCE_EXHAUSTED"] == 1
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


def test_a_mapped_mtls_certificate_is_the_principal_over_rest(tmp_path: Path):
    import ssl

    from sluice.server.auth import tokens
    from sluice.server.config.tls import TlsFiles
    from tests.support.certs import CertificateAuthority

    ca = CertificateAuthority.create(tmp_path / "pki")
    server, alice = ca.issue("server"), ca.issue("alice", client=True)
    stranger = ca.issue("stranger", client=True)  # signed by the CA, mapped to nothing
    path = tmp_path / "tokens.json"
    tokens.map_certificate(path, "alice", ["infer"])
    metadata = tokens.create_token(path, "reader", ["metadata"])
    repo = tmp_path / "repo"
    write_model(repo, "one", identity_model({"x": ("FP32", ["batch", 2])}))
    running = start_server(ServerConfig(
        model_repository=repo, grpc_port=0, http_port=0, metrics_port=None, tokens_file=path,
        tls=TlsFiles(server.cert, server.key, ca.cert), state_dir=tmp_path / ".s"))
    body = json.dumps({"inputs": [{"name": "IN_x", "datatype": "FP32", "shape": [1, 2],
                                   "data": [1, 2]}]}).encode()

    def https(client, path: str, data: bytes | None = None, headers: dict | None = None):
        context = ssl.create_default_context(cafile=str(ca.cert))
        context.load_cert_chain(client.cert, client.key)
        request = urllib.request.Request(f"https://localhost:{running.server.rest.port}{path}",
                                         data=data, headers=headers or {})
        try:
            with urllib.request.urlopen(request, context=context, timeout=30) as answer:
                return answer.status, json.loads(answer.read() or b"{}")
        except urllib.error.HTTPError as error:
            with error:
                return error.code, json.loads(error.read())

    try:
        status, answer = https(alice, "/v2/models/one/infer", body)
        assert status == 200 and answer["outputs"][0]["data"] == [1.0, 2.0]
        # The certificate's principal has its scopes and no others, named as gRPC names it.
        assert https(alice, "/v2/models/one") == (403, {
            "error": "'cert:alice' lacks scope 'metadata', which "
                     "/inference.GRPCInferenceService/ModelMetadata needs"})
        # A token sent over the same mTLS connection speaks for itself.
        status, answer = https(alice, "/v2/models/one", headers={
            "Authorization": f"Bearer {metadata}"})
        assert status == 200 and answer["name"] == "one"
        # A certificate the CA signed but the tokens file does not map is no principal.
        status, answer = https(stranger, "/v2/models/one/infer", body)
        assert status == 401 and "Authorization: Bearer" in answer["error"]
        # Without a client certificate there is no TLS session at all.
        bare = ssl.create_default_context(cafile=str(ca.cert))
        with pytest.raises((OSError, ssl.SSLError)):
            urllib.request.urlopen(f"https://localhost:{running.server.rest.port}/v2",
                                   context=bare, timeout=10).read()
        refused = running.server.access.interceptor.refused
        assert refused["PERMISSION_DENIED"] == 1 and refused["UNAUTHENTICATED"] == 1
    finally:
        running.stop()
