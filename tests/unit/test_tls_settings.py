"""Transport security settings without a server: reading and checking certificate files, the
bind rule, the CLI's TLS flags, and the /metrics endpoint's handshakes on real sockets."""

from __future__ import annotations

import socket
import ssl
import urllib.request
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from prometheus_client import CollectorRegistry, Counter

from sluice.server.cli import _parser
from sluice.server.cli_connect import ConnectionFlagError, connection
from sluice.server.config.tls import (
    BindRefused,
    TlsError,
    TlsFiles,
    check_bind,
    is_loopback,
    load_tls,
)
from sluice.server.metrics_http import MetricsEndpoint
from tests.support.certs import CertificateAuthority, presented_serial


@pytest.fixture
def ca(tmp_path: Path) -> CertificateAuthority:
    return CertificateAuthority.create(tmp_path / "pki")


def test_load_tls_reads_what_the_files_hold(ca):
    server = ca.issue("server")
    material = load_tls(TlsFiles(server.cert, server.key, ca.cert))
    assert material.cert_chain == server.cert.read_bytes()
    assert material.key == server.key.read_bytes()
    assert material.client_ca == ca.cert.read_bytes()
    assert material.http_context.verify_mode == ssl.CERT_REQUIRED
    assert material.http_context.minimum_version == ssl.TLSVersion.TLSv1_2
    plain = load_tls(TlsFiles(server.cert, server.key))
    assert plain.client_ca is None and plain.http_context.verify_mode == ssl.CERT_NONE


def test_each_bad_file_is_named_with_its_flag(ca, tmp_path):
    server, other = ca.issue("server"), ca.issue("other")
    missing = tmp_path / "missing.pem"
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n")
    cases = [
        (TlsFiles(missing, server.key), f"--tls-cert {missing}: cannot read it (No such file"),
        (TlsFiles(server.cert, missing), f"--tls-key {missing}: cannot read it"),
        (TlsFiles(server.cert, other.key),
         f"--tls-key {other.key} is not the key of --tls-cert {server.cert}"),
        (TlsFiles(garbage, server.key), f"--tls-cert {garbage} / --tls-key {server.key}: not a "
         "PEM certificate chain and its key"),
        (TlsFiles(server.cert, server.key, garbage), f"--tls-client-ca {garbage}: not PEM CA "
         "certificates"),
        (TlsFiles(server.cert, server.key, missing), f"--tls-client-ca {missing}: cannot read"),
    ]
    for files, message in cases:
        with pytest.raises(TlsError) as error:
            load_tls(files)
        assert str(error.value).startswith(message), (files, str(error.value))


def test_an_encrypted_key_is_refused_without_asking_for_a_password(ca, tmp_path):
    server = ca.issue("server")
    key = serialization.load_pem_private_key(server.key.read_bytes(), None)
    locked = tmp_path / "locked.key"
    locked.write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"secret")))
    with pytest.raises(TlsError, match=f"--tls-key {locked}: the key is encrypted"):
        load_tls(TlsFiles(server.cert, locked))


@pytest.mark.parametrize(("host", "loopback"), [
    ("127.0.0.1", True), ("127.3.2.1", True), ("::1", True), ("[::1]", True),
    ("localhost", True), ("0.0.0.0", False), ("::", False), ("", False), ("10.1.2.3", False),
    ("no-such-host.invalid", False),
])
def test_is_loopback(host, loopback):
    assert is_loopback(host) is loopback


def test_the_bind_rule():
    assert check_bind(["127.0.0.1", "::1"], tls=False, insecure=False) is None
    assert check_bind(["0.0.0.0"], tls=True, insecure=False) is None
    with pytest.raises(BindRefused, match=r"refusing to serve plaintext on 0\.0\.0\.0, which"):
        check_bind(["0.0.0.0", "0.0.0.0"], tls=False, insecure=False)
    # the metrics address counts too
    with pytest.raises(BindRefused, match=r"on \(all addresses\)"):
        check_bind(["127.0.0.1", ""], tls=False, insecure=False)
    warning = check_bind(["127.0.0.1", "10.1.2.3"], tls=False, insecure=True)
    assert warning is not None and warning.startswith(
        "serving plaintext gRPC and /metrics on 10.1.2.3 (--insecure)")


@pytest.mark.parametrize("argv", [
    ["--tls-ca", "a.pem", "repo", "index"],
    ["repo", "--tls-ca", "a.pem", "index"],
    ["repo", "index", "--tls-ca", "a.pem"],
    ["--tls-ca", "b.pem", "deploy", "m", "status", "--tls-ca", "a.pem"],  # the last one wins
])
def test_tls_flags_may_stand_anywhere(argv):
    args = _parser().parse_args(argv)
    assert args.tls_ca == Path("a.pem") and args.tls_cert is None and args.tls_key is None


def test_no_tls_flag_is_a_plaintext_connection_and_half_a_pair_is_refused(ca):
    assert connection(_parser().parse_args(["repo", "index"])) == {"token": None}
    alice = ca.issue("alice", client=True)
    with pytest.raises(ConnectionFlagError, match="--tls-cert and --tls-key go together"):
        connection({"tls_key": alice.key})
    creds = connection({"tls_ca": ca.cert, "tls_cert": alice.cert, "tls_key": alice.key})
    assert set(creds) == {"credentials", "token"}


def test_serve_has_its_own_tls_flags():
    args = _parser().parse_args(["serve", "--tls-cert", "s.pem", "--tls-key", "s.key",
                                 "--tls-client-ca", "ca.pem", "--insecure"])
    assert (args.tls_cert, args.tls_key, args.tls_client_ca) == (
        Path("s.pem"), Path("s.key"), Path("ca.pem"))
    assert args.insecure
    plain = _parser().parse_args(["serve"])
    assert plain.tls_cert is None and plain.tls_client_ca is None and not plain.insecure


def _registry() -> CollectorRegistry:
    registry = CollectorRegistry()
    Counter("probe_hits", "A counter only this test's registry has.", registry=registry).inc(3)
    return registry


def test_a_client_that_never_finishes_its_handshake_holds_up_no_scrape(ca):
    server = ca.issue("server")
    material = load_tls(TlsFiles(server.cert, server.key))
    endpoint = MetricsEndpoint(_registry(), "127.0.0.1", 0, material.http_context)
    context = ssl.create_default_context(cafile=str(ca.cert))
    try:
        with socket.create_connection(("127.0.0.1", endpoint.port)):  # connects, says nothing
            # A handshake on the accepting thread would hold this scrape past its timeout (and
            # past the silent client's 10 s handshake allowance).
            with urllib.request.urlopen(f"https://127.0.0.1:{endpoint.port}/metrics",
                                        timeout=8, context=context) as response:
                body = response.read().decode()
            assert "probe_hits_total 3.0" in body
    finally:
        endpoint.close()


def test_replacing_the_context_changes_what_new_connections_get(ca):
    first, second = ca.issue("server"), ca.issue("server", file_stem="second")
    endpoint = MetricsEndpoint(_registry(), "127.0.0.1", 0,
                               load_tls(TlsFiles(first.cert, first.key)).http_context)
    try:
        address = f"127.0.0.1:{endpoint.port}"
        assert presented_serial(address, ca.cert) == first.serial
        endpoint.replace_context(load_tls(TlsFiles(second.cert, second.key)).http_context)
        assert presented_serial(address, ca.cert) == second.serial
        assert endpoint.scheme == "https"
    finally:
        endpoint.close()
