"""TLS and mTLS on the gRPC port and /metrics of a real server (in this process, port 0),
reached by tritonclient and our clients; certificates made per test (tests/support/certs.py).

What must hold: a TLS client that trusts the CA is served and gets its own numbers back; a
plaintext client, a client that trusts another CA, and (with a client CA) a client with no or a
foreign certificate are refused at the handshake, before any RPC; /metrics answers only over
HTTPS, and only to a client with a good certificate when one is required.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as tc
from tritonclient.utils import InferenceServerException

from loadtests.procs import checkout_env
from sluice.clients import AdminClient, AsyncClient, Client, SluiceClientError, tls_credentials
from sluice.server.app import BUNDLED_REPOSITORY, StartError
from sluice.server.config.settings import ServerConfig
from sluice.server.config.tls import TlsFiles
from tests.support.certs import CertificateAuthority, Issued, presented_serial, session_accepted
from tests.support.checkout import ROOT
from tests.support.running import start_server

pytestmark = pytest.mark.timeout(180)

ROWS = np.arange(3 * 16, dtype=np.float32).reshape(3, 16) / 7  # identity answers them as sent


@pytest.fixture
def pki(tmp_path: Path) -> dict[str, object]:
    ca = CertificateAuthority.create(tmp_path / "ca")
    other = CertificateAuthority.create(tmp_path / "other", "someone else's CA")
    return {
        "ca": ca, "other": other, "server": ca.issue("server"),
        "client": ca.issue("alice", client=True),
        "foreign_client": other.issue("mallory", client=True),
    }


def _serve(make_server, pki, *, mutual: bool, metrics: bool = False):
    ca, server = pki["ca"], pki["server"]
    tls = TlsFiles(server.cert, server.key, ca.cert if mutual else None)
    return make_server(BUNDLED_REPOSITORY, model_control="explicit", startup_models=("identity",),
                       tls=tls, metrics_port=0 if metrics else None)


def _triton(address: str, ca: Path, client: Issued | None = None) -> tc.InferenceServerClient:
    return tc.InferenceServerClient(
        address, ssl=True, root_certificates=str(ca),
        private_key=None if client is None else str(client.key),
        certificate_chain=None if client is None else str(client.cert),
    )


def _triton_identity(client: tc.InferenceServerClient) -> np.ndarray:
    given = tc.InferInput("INPUT0", list(ROWS.shape), "FP32")
    given.set_data_from_numpy(ROWS)
    return client.infer("identity", [given], client_timeout=30).as_numpy("OUTPUT0")


def test_tritonclient_and_our_clients_round_trip_over_tls(make_server, pki):
    running = _serve(make_server, pki, mutual=False)
    ca = pki["ca"].cert
    with _triton(running.address, ca) as triton:
        assert triton.is_server_ready()
        np.testing.assert_array_equal(_triton_identity(triton), ROWS)
    credentials = tls_credentials(ca=ca)
    with Client(running.address, timeout=30, credentials=credentials) as client:
        np.testing.assert_array_equal(client.infer("identity", {"INPUT0": ROWS})["OUTPUT0"], ROWS)
    with AdminClient(running.address, credentials=credentials) as admin:
        assert admin.deployment("identity")["model"] == "identity"

    async def async_and_stream() -> list[np.ndarray]:
        async with AsyncClient(running.address, timeout=30, credentials=credentials) as client:
            single = (await client.infer("identity", {"INPUT0": ROWS}))["OUTPUT0"]
            rows = [{"INPUT0": ROWS[i:i + 1] * (i + 1)} for i in range(3)]
            stream = client.stream("identity", rows)
            answered = {r.index: r.outputs["OUTPUT0"] async for r in stream}
            return [single, *(answered[i] for i in range(3))]

    single, *streamed = asyncio.run(async_and_stream())
    np.testing.assert_array_equal(single, ROWS)
    for i, got in enumerate(streamed):
        np.testing.assert_array_equal(got, ROWS[i:i + 1] * (i + 1))
    assert presented_serial(running.address, ca) == pki["server"].serial


def test_a_plaintext_client_or_one_trusting_another_ca_is_refused(make_server, pki):
    running = _serve(make_server, pki, mutual=False)
    with tc.InferenceServerClient(running.address) as plain, pytest.raises(
            InferenceServerException) as refused:
        plain.is_server_live(client_timeout=5)
    assert "UNAVAILABLE" in str(refused.value.status())
    with _triton(running.address, pki["other"].cert) as wrong_ca, pytest.raises(
            InferenceServerException):
        wrong_ca.is_server_live(client_timeout=5)
    with Client(running.address, timeout=5) as ours, pytest.raises(SluiceClientError) as error:
        ours.server_live()
    assert error.value.code.name == "UNAVAILABLE"
    with pytest.raises(ssl.SSLCertVerificationError):
        presented_serial(running.address, pki["other"].cert)


def test_mtls_refuses_a_client_without_a_certificate_or_with_a_foreign_one(make_server, pki):
    running = _serve(make_server, pki, mutual=True)
    ca = pki["ca"].cert
    with _triton(running.address, ca) as anonymous, pytest.raises(InferenceServerException):
        anonymous.is_server_live(client_timeout=5)
    with _triton(running.address, ca, pki["foreign_client"]) as foreign, pytest.raises(
            InferenceServerException):
        foreign.is_server_live(client_timeout=5)
    # refused by TLS itself, below gRPC: the session never carries a byte of HTTP/2
    assert not session_accepted(running.address, ca)
    assert not session_accepted(running.address, ca, pki["foreign_client"])
    assert session_accepted(running.address, ca, pki["client"])
    with _triton(running.address, ca, pki["client"]) as alice:
        np.testing.assert_array_equal(_triton_identity(alice), ROWS)
    good = tls_credentials(ca=ca, cert=pki["client"].cert, key=pki["client"].key)
    with Client(running.address, timeout=30, credentials=good) as client:
        np.testing.assert_array_equal(client.infer("identity", {"INPUT0": ROWS})["OUTPUT0"], ROWS)


def _https(url: str, ca: Path, client: Issued | None = None) -> str:
    context = ssl.create_default_context(cafile=str(ca))
    if client is not None:
        context.load_cert_chain(client.cert, client.key)
    with urllib.request.urlopen(url, timeout=10, context=context) as response:
        return response.read().decode()


def test_metrics_over_https_only(make_server, pki):
    running = _serve(make_server, pki, mutual=False, metrics=True)
    port = running.server.metrics.port
    body = _https(f"https://127.0.0.1:{port}/metrics", pki["ca"].cert)
    assert 'sluice_tls_reloads_total{outcome="success"} 0.0' in body
    assert "sluice_requests_total" in body
    # refused: no answer over plain HTTP (however the client library words the hang-up)
    with pytest.raises((urllib.error.URLError, ConnectionError, http.client.HTTPException)):
        urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read()


def test_metrics_with_mtls_needs_a_client_certificate(make_server, pki):
    running = _serve(make_server, pki, mutual=True, metrics=True)
    url = f"https://127.0.0.1:{running.server.metrics.port}/metrics"
    endpoint = running.server.metrics.endpoint
    assert endpoint is not None
    for client in (None, pki["foreign_client"]):
        with pytest.raises((urllib.error.URLError, ssl.SSLError, ConnectionError,
                            http.client.HTTPException)):
            _https(url, pki["ca"].cert, client)
    # counted on the connection's thread, which may finish just after the client has failed
    deadline = time.monotonic() + 10
    while endpoint.refused_handshakes < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert endpoint.refused_handshakes == 2
    assert "sluice_requests_total" in _https(url, pki["ca"].cert, pki["client"])


@pytest.mark.parametrize("host", ["0.0.0.0", "::"])
def test_a_plaintext_bind_beyond_loopback_is_refused_without_insecure(tmp_path, host):
    config = ServerConfig(model_repository=BUNDLED_REPOSITORY, host=host, grpc_port=0,
                          metrics_port=None, model_control="explicit", state_dir=tmp_path)
    with pytest.raises(StartError) as refused:
        start_server(config)
    assert refused.value.usage
    assert f"refusing to serve plaintext on {host}" in str(refused.value)
    assert "--insecure" in str(refused.value) and "--tls-cert" in str(refused.value)


def _loadgen(address: str, *flags: str) -> tuple[int, dict[str, object] | None]:
    done = subprocess.run(
        [sys.executable, "-m", "loadtests.loadgen", "--target", address, "--model", "identity",
         "--input", "INPUT0:float32:16", "--concurrency", "4", "--count", "40", *flags],
        cwd=ROOT, env=checkout_env(), capture_output=True, text=True, timeout=120)
    lines = done.stdout.strip().splitlines()
    return done.returncode, json.loads(lines[-1]) if lines else None


@pytest.mark.parametrize("mode", ["unary", "stream"])
def test_the_benchmark_load_generator_speaks_mtls(make_server, pki, mode):
    running = _serve(make_server, pki, mutual=True)
    client = pki["client"]
    code, summary = _loadgen(running.address, "--mode", mode, "--tls-ca", str(pki["ca"].cert),
                             "--tls-cert", str(client.cert), "--tls-key", str(client.key))
    assert code == 0 and summary is not None
    assert summary["errors"] == 0 and summary["total"] == 41  # its first call, then 40
    code, _ = _loadgen(running.address, "--mode", mode, "--tls-ca", str(pki["ca"].cert))
    assert code != 0  # no client certificate: not one call gets through
