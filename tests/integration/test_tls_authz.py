"""TLS and tokens together, through one real server (``tls`` + ``tokens_file``): an mTLS client
certificate whose common name the tokens file maps to scopes gets exactly those, a bearer token
works over the same mTLS channel, and /metrics over HTTPS still asks for the ops scope."""

from __future__ import annotations

import ssl
import urllib.error
import urllib.request

import numpy as np
import pytest

from sluice.clients import Client, SluiceClientError, tls_credentials
from sluice.server.app import BUNDLED_REPOSITORY
from sluice.server.auth import tokens
from sluice.server.config.tls import TlsFiles
from tests.support.certs import CertificateAuthority

pytestmark = pytest.mark.timeout(180)


def test_a_mapped_client_certificate_and_a_token_over_mtls(make_server, tmp_path):
    ca = CertificateAuthority.create(tmp_path / "pki")
    server, alice = ca.issue("server"), ca.issue("alice", client=True)
    path = tmp_path / "tokens.json"
    tokens.map_certificate(path, "alice", ["infer", "metadata"])
    ops = tokens.create_token(path, "ops-bot", ["ops"])
    running = make_server(BUNDLED_REPOSITORY, model_control="explicit",
                          startup_models=("identity",), metrics_port=0, tokens_file=path,
                          tls=TlsFiles(server.cert, server.key, ca.cert))
    mtls = tls_credentials(ca=ca.cert, cert=alice.cert, key=alice.key)
    rows = np.arange(32, dtype=np.float32).reshape(2, 16)
    with Client(running.address, timeout=30, credentials=mtls) as client:
        np.testing.assert_array_equal(client.infer("identity", {"INPUT0": rows})["OUTPUT0"], rows)
        with pytest.raises(SluiceClientError) as denied:
            client.statistics()
    assert denied.value.code.name == "PERMISSION_DENIED"
    assert "'cert:alice' lacks scope 'ops'" in str(denied.value)
    with Client(running.address, timeout=30, credentials=mtls, token=ops) as client:
        assert client.statistics() is not None  # the token's scope, on the same mTLS channel

    url = f"https://127.0.0.1:{running.server.metrics.port}/metrics"
    context = ssl.create_default_context(cafile=str(ca.cert))
    context.load_cert_chain(alice.cert, alice.key)
    with pytest.raises(urllib.error.HTTPError) as unauthorized:
        urllib.request.urlopen(url, timeout=10, context=context)
    assert unauthorized.value.code == 401
    unauthorized.value.close()
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {ops}"})
    with urllib.request.urlopen(request, timeout=10, context=context) as response:
        assert 'sluice_tls_reloads_total{outcome="success"} 0.0' in response.read().decode()
