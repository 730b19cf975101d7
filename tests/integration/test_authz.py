"""``sluice serve --tokens``: every RPC needs its scope, through tritonclient, our clients and
the CLI; bad or missing tokens, quotas, /metrics, health without credentials."""

from __future__ import annotations

import asyncio
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
import tritonclient.grpc as tc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from tritonclient.utils import InferenceServerException

from sluice.clients import AdminClient, AsyncClient, Client, PermissionDenied, Unauthenticated
from sluice.server.app import BUNDLED_REPOSITORY
from sluice.server.auth import tokens
from sluice.server.cli import main as cli
from sluice.server.config.settings import ServerConfig
from sluice.server.protocol.access import EXEMPT, SCOPE_OF
from tests.support.authz import Tokens, one_token_per_scope
from tests.support.running import RunningServer, start_server

ROWS = np.arange(32, dtype=np.float32).reshape(2, 16)


@pytest.fixture(scope="module")
def secured(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[RunningServer, Tokens]]:
    root = tmp_path_factory.mktemp("authz")
    made = one_token_per_scope(root / "tokens.json")
    made.add("quota", ["infer"], tokens.make_quota(0.5, 3))
    running = start_server(ServerConfig(
        model_repository=BUNDLED_REPOSITORY, grpc_port=0, metrics_port=0, state_dir=root / "state",
        model_control="explicit", startup_models=("identity",), tokens_file=made.path,
        tokens_reload_s=0.2,
    ))
    yield running, made
    running.stop()


def _status(call) -> str:
    try:
        call()
    except InferenceServerException as exc:
        return exc.status()
    return "OK"


FAMILIES = {
    "infer": lambda c, h: c.infer("identity", [_input()], headers=h),
    "metadata": lambda c, h: c.get_model_metadata("identity", headers=h),
    "ops": lambda c, h: c.get_inference_statistics("identity", headers=h),
    "admin": lambda c, h: c.load_model("identity", headers=h),
}


def _input() -> tc.InferInput:
    tensor = tc.InferInput("INPUT0", list(ROWS.shape), "FP32")
    tensor.set_data_from_numpy(ROWS)
    return tensor


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("token", ["infer", "metadata", "ops", "admin", "all"])
def test_tritonclient_each_family_needs_its_scope(secured, family: str, token: str):
    running, made = secured
    with tc.InferenceServerClient(running.address) as client:
        status = _status(lambda: FAMILIES[family](client, made.header(token)))
    allowed = token in (family, "all")
    assert status == ("OK" if allowed else "StatusCode.PERMISSION_DENIED")


@pytest.mark.parametrize("method", sorted(m for m, s in SCOPE_OF.items() if s != EXEMPT))
def test_every_rpc_refuses_a_token_without_its_scope_naming_the_scope(secured, method: str):
    running, made = secured
    scope = SCOPE_OF[method]
    other = next(name for name in ("infer", "metadata", "ops", "admin") if name != scope)
    streaming = method.endswith(("StreamInfer", "ServerReflectionInfo"))
    with grpc.insecure_channel(running.address) as channel:
        call = channel.stream_stream(method) if streaming else channel.unary_unary(method)

        def send(headers: dict[str, str] | None):
            metadata = tuple(headers.items()) if headers else None
            if streaming:
                return list(call(iter(()), metadata=metadata, timeout=30))
            return call(b"", metadata=metadata, timeout=30)

        with pytest.raises(grpc.RpcError) as denied:
            send(made.header(other))
        assert denied.value.code() == grpc.StatusCode.PERMISSION_DENIED
        assert f"lacks scope '{scope}'" in denied.value.details()
        assert f"'{other}'" in denied.value.details() and method in denied.value.details()
        with pytest.raises(grpc.RpcError) as anonymous:
            send(None)
        assert anonymous.value.code() == grpc.StatusCode.UNAUTHENTICATED
        try:  # with the scope, the call gets past the door (an empty request may still fail)
            send(made.header(scope))
        except grpc.RpcError as exc:
            assert exc.code() not in (grpc.StatusCode.UNAUTHENTICATED,
                                      grpc.StatusCode.PERMISSION_DENIED), exc.details()


@pytest.mark.parametrize("header", [
    None, "Bearer", "Bearer not-a-token", "Basic dXNlcjpwYXNz",
    "Bearer sluice_000000000000_" + "0" * 64,
])
def test_missing_or_bad_tokens_are_unauthenticated(secured, header: str | None):
    running, made = secured
    headers = {"authorization": header} if header is not None else None
    with tc.InferenceServerClient(running.address) as client, \
            pytest.raises(InferenceServerException) as refused:
        client.infer("identity", [_input()], headers=headers)
    assert refused.value.status() == "StatusCode.UNAUTHENTICATED"
    assert "sluice_" not in refused.value.message()  # the token is never echoed


def test_a_wrong_secret_for_a_real_token_id_is_unauthenticated(secured):
    running, made = secured
    token_id = tokens.split_token(made.plain["infer"])[0]
    forged = {"authorization": f"Bearer sluice_{token_id}_{'f' * 64}"}
    with tc.InferenceServerClient(running.address) as client:
        for _ in range(2):
            assert _status(lambda: client.infer("identity", [_input()], headers=forged)) == \
                "StatusCode.UNAUTHENTICATED"


def test_health_needs_no_credentials(secured):
    running, _made = secured
    with grpc.insecure_channel(running.address) as channel:
        reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(),
                                                          timeout=30)
    assert reply.status == health_pb2.HealthCheckResponse.SERVING


def test_a_quota_answers_resource_exhausted_after_its_burst_then_refills(secured):
    running, made = secured
    with tc.InferenceServerClient(running.address) as client:
        send = lambda: _status(lambda: client.infer(  # noqa: E731
            "identity", [_input()], headers=made.header("quota")))
        statuses = [send() for _ in range(4)]  # burst 3 at 0.5/s: a 4th within 2 s is over
        assert statuses == ["OK"] * 3 + ["StatusCode.RESOURCE_EXHAUSTED"]
        with pytest.raises(InferenceServerException, match=r"'quota' is over its request quota "
                           r"\(0.5 requests/s, burst 3\)"):
            client.infer("identity", [_input()], headers=made.header("quota"))
        time.sleep(2.2)
        assert send() == "OK"
        # another principal's bucket is its own
        assert _status(lambda: client.infer("identity", [_input()],
                                            headers=made.header("infer"))) == "OK"


def test_our_clients_send_the_token(secured, monkeypatch: pytest.MonkeyPatch):
    running, made = secured
    monkeypatch.delenv("SLUICE_TOKEN", raising=False)
    with Client(running.address, token=made.plain["infer"]) as client:
        outputs = client.infer("identity", {"INPUT0": ROWS})
    np.testing.assert_array_equal(outputs["OUTPUT0"], ROWS)
    with Client(running.address) as client, pytest.raises(Unauthenticated):
        client.infer("identity", {"INPUT0": ROWS})
    monkeypatch.setenv("SLUICE_TOKEN", made.plain["metadata"])
    with Client(running.address) as client:  # $SLUICE_TOKEN
        assert client.model_metadata("identity")["name"] == "identity"
        with pytest.raises(PermissionDenied, match="lacks scope 'infer'"):
            client.infer("identity", {"INPUT0": ROWS})
    with AdminClient(running.address, token=made.plain["ops"]) as admin:
        assert admin.deployment("identity")["model"] == "identity"
        with pytest.raises(PermissionDenied, match="lacks scope 'admin'"):
            admin.set_routes("identity", {"a": 1.0})

    async def infer_async() -> np.ndarray:
        async with AsyncClient(running.address, token=made.plain["infer"]) as client:
            return (await client.infer("identity", {"INPUT0": ROWS}))["OUTPUT0"]

    np.testing.assert_array_equal(asyncio.run(infer_async()), ROWS)


def test_the_cli_sends_token_or_sluice_token(secured, monkeypatch, capsys):
    running, made = secured
    monkeypatch.delenv("SLUICE_TOKEN", raising=False)
    assert cli(["repo", "index", "--url", running.address]) == 1
    assert "credentials required" in capsys.readouterr().err
    assert cli(["repo", "index", "--url", running.address, "--token", made.plain["metadata"]]) == 0
    assert "identity" in capsys.readouterr().out
    monkeypatch.setenv("SLUICE_TOKEN", made.plain["infer"])
    assert cli(["repo", "index", "--url", running.address]) == 1
    assert "lacks scope 'metadata'" in capsys.readouterr().err
    assert cli(["stats", "identity", "--url", running.address, "--token", made.plain["ops"]]) == 0


def test_metrics_need_the_ops_scope(secured):
    running, made = secured
    url = f"http://127.0.0.1:{running.server.metrics.port}/metrics"

    def get(token: str | None) -> tuple[int, str]:
        request = urllib.request.Request(
            url, headers={"Authorization": f"Bearer {token}"} if token else {})
        try:
            with urllib.request.urlopen(request, timeout=30) as reply:
                return reply.status, reply.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode()

    assert get(None)[0] == 401
    assert get("sluice_000000000000_" + "0" * 64)[0] == 401
    status, body = get(made.plain["infer"])
    assert status == 403 and "lacks scope 'ops'" in body
    status, body = get(made.plain["ops"])
    assert status == 200 and "sluice_auth_refused_total" in body


def test_a_revoked_token_stops_working(tmp_path: Path):
    made = Tokens(tmp_path / "tokens.json")
    made.add("temp", ["metadata"])
    made.add("stays", ["metadata"])
    running = start_server(ServerConfig(
        model_repository=BUNDLED_REPOSITORY, grpc_port=0, metrics_port=None,
        state_dir=tmp_path / "state", model_control="explicit", startup_models=(),
        tokens_file=made.path, tokens_reload_s=0.1))
    try:
        with tc.InferenceServerClient(running.address) as client:
            assert client.is_server_live(headers=made.header("temp"))
            assert cli(["token", "revoke", "temp", "--tokens", str(made.path)]) == 0
            deadline = time.monotonic() + 30
            while _status(lambda: client.is_server_live(headers=made.header("temp"))) == "OK":
                assert time.monotonic() < deadline, "the revoked token still works"
                time.sleep(0.1)
            assert _status(lambda: client.is_server_live(headers=made.header("temp"))) == \
                "StatusCode.UNAUTHENTICATED"
            assert client.is_server_live(headers=made.header("stays"))
    finally:
        running.stop()


def test_an_unusable_tokens_file_stops_the_start_naming_the_entry(tmp_path: Path):
    from sluice.server.app import StartError

    bad = tmp_path / "tokens.json"
    bad.write_text('{"format": "sluice-tokens/1", "tokens": [{"name": "x"}]}')
    with pytest.raises(StartError, match=r"tokens\[0\]"):
        start_server(ServerConfig(model_repository=BUNDLED_REPOSITORY, grpc_port=0,
                                  metrics_port=None, state_dir=tmp_path / "s",
                                  model_control="explicit", tokens_file=bad))
