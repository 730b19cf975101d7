"""``sluice serve`` with TLS as users run it, and every other verb reaching it: certificates
swapped by SIGHUP under an open stream, the CLI's TLS and mTLS flags, and the bind rule
(plaintext beyond loopback only with ``--insecure``, and then a warning)."""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import signal
import ssl
import subprocess
import sys
import time
import urllib.request
from collections.abc import AsyncIterator
from pathlib import Path

import numpy as np
import pytest

from sluice.clients import AsyncClient, tls_credentials
from sluice.server.app import BUNDLED_REPOSITORY
from sluice.server.cli import main as cli
from sluice.server.config.tls import TlsFiles
from tests.support.certs import CertificateAuthority, presented_serial
from tests.support.cli_server import start_cli_server

pytestmark = pytest.mark.timeout(240)

IDENTITY_ONLY = ("--model-control", "explicit", "--load-model", "identity")


def _scrape(url: str, ca: Path) -> str:
    context = ssl.create_default_context(cafile=str(ca))
    with urllib.request.urlopen(url, timeout=10, context=context) as response:
        return response.read().decode()


def _metrics_url(proc: subprocess.Popen) -> str:
    """The /metrics URL the server prints right after its gRPC address."""
    assert proc.stdout is not None
    while line := proc.stdout.readline():
        if match := re.search(r"sluice: metrics on (\S+)", line):
            return match.group(1)
    raise AssertionError("no metrics line")


def _stop(proc: subprocess.Popen) -> int:
    """SIGTERM, wait, close its output; the exit status."""
    proc.send_signal(signal.SIGTERM)
    code = proc.wait(60)
    assert proc.stdout is not None
    proc.stdout.read()
    proc.stdout.close()
    return code


def _until(condition, timeout_s: float = 30.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"still not {what} after {timeout_s}s"
        time.sleep(0.1)


def test_sighup_swaps_the_certificate_while_an_open_stream_keeps_working(tmp_path):
    ca = CertificateAuthority.create(tmp_path / "pki")
    first = ca.issue("server")
    output: list[str] = []
    proc, address = start_cli_server(
        "--tls-cert", str(first.cert), "--tls-key", str(first.key), "--metrics-port", "0",
        *IDENTITY_ONLY, output=output,
        client_args={"ssl": True, "root_certificates": str(ca.cert)})
    try:
        metrics_url = _metrics_url(proc)
        assert metrics_url.startswith("https://127.0.0.1:")
        metrics_address = metrics_url.removeprefix("https://").split("/")[0]
        assert presented_serial(address, ca.cert) == first.serial
        assert presented_serial(metrics_address, ca.cert) == first.serial
        second_serial = asyncio.run(_stream_across_reloads(proc, address, ca, metrics_url))
        assert second_serial != first.serial
        assert proc.poll() is None
    finally:
        code = _stop(proc)
    assert code == 0


async def _stream_across_reloads(proc, address: str, ca: CertificateAuthority,
                                 metrics_url: str) -> int:
    """One ModelStreamInfer call open across a good reload and a refused one; each answer is
    checked against the rows sent. Returns the serial of the certificate after the reload."""
    sends: asyncio.Queue[np.ndarray | None] = asyncio.Queue()

    async def rows() -> AsyncIterator[dict[str, np.ndarray]]:
        while (row := await sends.get()) is not None:
            yield {"INPUT0": row}

    def row(k: int) -> np.ndarray:
        return np.full((1, 16), k, np.float32) + np.arange(16, dtype=np.float32) / 16

    async with AsyncClient(address, timeout=120, credentials=tls_credentials(ca=ca.cert)) as c:
        stream = c.stream("identity", rows())

        async def exchange(k: int) -> None:
            await sends.put(row(k))
            result = await anext(stream)
            assert result.index == k and result.error is None
            np.testing.assert_array_equal(result.outputs["OUTPUT0"], row(k))

        await exchange(0)
        # the same files, a new certificate
        second = await asyncio.to_thread(ca.issue, "server", file_stem="server")
        os.kill(proc.pid, signal.SIGHUP)
        await asyncio.to_thread(
            _until, lambda: presented_serial(address, ca.cert) == second.serial,
            what="serving the new certificate")
        metrics_address = metrics_url.removeprefix("https://").split("/")[0]
        assert presented_serial(metrics_address, ca.cert) == second.serial
        await exchange(1)  # the stream opened before the reload still answers

        # A key that is not the certificate's: refused, counted, the new certificate stays.
        third = await asyncio.to_thread(ca.issue, "server", file_stem="mismatched")
        await asyncio.to_thread(shutil.copyfile, third.key, second.key)
        os.kill(proc.pid, signal.SIGHUP)
        failure = 'sluice_tls_reloads_total{outcome="failure"} 1.0'
        await asyncio.to_thread(_until, lambda: failure in _scrape(metrics_url, ca.cert),
                                what="counting the failed reload")
        assert 'sluice_tls_reloads_total{outcome="success"} 1.0' in _scrape(metrics_url, ca.cert)
        assert presented_serial(address, ca.cert) == second.serial
        await exchange(2)
        await sends.put(None)
        assert [r async for r in stream] == []
    return second.serial


def test_every_verb_takes_the_tls_flags(make_server, tmp_path, capsys):
    ca = CertificateAuthority.create(tmp_path / "pki")
    server, alice = ca.issue("server"), ca.issue("alice", client=True)
    running = make_server(BUNDLED_REPOSITORY, model_control="explicit",
                          startup_models=("identity",),
                          tls=TlsFiles(server.cert, server.key, ca.cert))
    url = ["--url", running.address]
    mtls = ["--tls-ca", str(ca.cert), "--tls-cert", str(alice.cert), "--tls-key", str(alice.key)]
    values = "[" + ",".join(str(v) for v in range(16)) + "]"

    assert cli(["infer", "identity", "--input", f"INPUT0=[{values}]", *url, *mtls]) == 0
    out = capsys.readouterr().out
    assert "answered by identity version 1" in out
    assert "[[ 0.  1.  2.  3.  4.  5.  6.  7.  8.  9. 10. 11. 12. 13. 14. 15.]]" in out
    # the flags may stand before the verb too, like --url
    assert cli([*mtls, "repo", "index", "--json", *url]) == 0
    assert '"name": "identity"' in capsys.readouterr().out
    assert cli(["deploy", "identity", "status", *url, *mtls]) == 0
    assert "model identity" in capsys.readouterr().out
    assert cli(["stats", "identity", *url, *mtls]) == 0
    capsys.readouterr()

    # without a client certificate the server refuses it: one line, exit status 1
    assert cli(["repo", "index", *url, "--tls-ca", str(ca.cert)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("sluice repo index: [UNAVAILABLE]")
    assert err.count("\n") == 1 and "Traceback" not in err
    # a certificate without its key, or a file that cannot be read: usage errors, no call made
    assert cli(["repo", "index", *url, "--tls-cert", str(alice.cert)]) == 2
    assert "--tls-cert and --tls-key go together" in capsys.readouterr().err
    missing = tmp_path / "nowhere.pem"
    assert cli(["deploy", "identity", "status", *url, "--tls-ca", str(missing)]) == 2
    assert capsys.readouterr().err.startswith(f"sluice deploy: --tls-ca {missing}: cannot read")


def _serve_cli(*flags: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "sluice.server", "serve", "--grpc-port", "0", "--metrics-port",
         "-1", "--model-repository", str(BUNDLED_REPOSITORY), "--model-control", "explicit",
         *flags], capture_output=True, text=True, timeout=120)


def test_a_plaintext_bind_beyond_loopback_needs_insecure_and_warns(tmp_path):
    refused = _serve_cli("--host", "0.0.0.0")
    assert refused.returncode == 2
    assert refused.stderr.startswith("sluice serve: refusing to serve plaintext on 0.0.0.0")
    assert "Traceback" not in refused.stderr

    output: list[str] = []
    proc, address = start_cli_server("--host", "0.0.0.0", "--insecure", *IDENTITY_ONLY,
                                     output=output)
    try:
        assert address.startswith("0.0.0.0:")
        assert any("WARNING" in line and "serving plaintext gRPC and /metrics on 0.0.0.0 "
                   "(--insecure)" in line for line in output), output
    finally:
        _stop(proc)
    # TLS needs no --insecure and logs no warning; loopback needs neither
    ca = CertificateAuthority.create(tmp_path / "pki")
    server = ca.issue("server")
    for flags in (["--tls-cert", str(server.cert), "--tls-key", str(server.key)], []):
        output = []
        extra = ["--host", "0.0.0.0"] if flags else []
        # (the server prints 0.0.0.0:PORT; its certificate names localhost)
        client_args = {"ssl": True, "root_certificates": str(ca.cert), "channel_args": [
            ("grpc.ssl_target_name_override", "localhost")]} if flags else None
        proc, _ = start_cli_server(*extra, *flags, *IDENTITY_ONLY, output=output,
                                   client_args=client_args)
        _stop(proc)
        assert not any("plaintext" in line for line in output), output


@pytest.mark.parametrize(("flags", "message"), [
    (["--tls-cert", "a.pem"], "--tls-cert and --tls-key go together"),
    (["--tls-client-ca", "ca.pem"], "--tls-client-ca needs --tls-cert and --tls-key"),
])
def test_serve_refuses_half_a_tls_configuration(flags, message):
    refused = _serve_cli(*flags)
    assert refused.returncode == 2
    assert refused.stderr == f"sluice serve: {message}" + refused.stderr.split(message, 1)[1]
    assert refused.stderr.count("\n") == 1


def test_serve_names_a_certificate_file_it_cannot_use(tmp_path):
    ca = CertificateAuthority.create(tmp_path / "pki")
    server, other = ca.issue("server"), ca.issue("other")
    refused = _serve_cli("--tls-cert", str(server.cert), "--tls-key", str(other.key))
    assert refused.returncode == 2
    assert refused.stderr == (f"sluice serve: --tls-key {other.key} is not the key of "
                              f"--tls-cert {server.cert}\n")
