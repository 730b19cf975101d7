"""``sluice serve --workers 2`` with TLS: every worker serves gRPC over TLS on the shared port,
the supervisor's merged /metrics is HTTPS, and one SIGHUP to the supervisor swaps the
certificate of both workers and of the merged /metrics."""

from __future__ import annotations

import os
import signal
import ssl
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as tc
from tritonclient.utils import InferenceServerException

from tests.support.certs import CertificateAuthority, presented_serial
from tests.support.supervised import Supervised

pytestmark = pytest.mark.timeout(300)

# Each client its own connection, so the kernel may hand it to either worker.
_OWN_CONNECTION = [("grpc.use_local_subchannel_pool", 1)]
PROBES = 12  # new connections per check: both workers get some (each ~1 - 2**-11)


def _scrape(url: str, ca: Path) -> str:
    context = ssl.create_default_context(cafile=str(ca))
    with urllib.request.urlopen(url, timeout=10, context=context) as response:
        return response.read().decode()


def _identity(address: str, ca: Path, rows: np.ndarray) -> np.ndarray:
    with tc.InferenceServerClient(address, ssl=True, root_certificates=str(ca),
                                  channel_args=_OWN_CONNECTION) as client:
        given = tc.InferInput("INPUT0", list(rows.shape), "FP32")
        given.set_data_from_numpy(rows)
        return client.infer("identity", [given], client_timeout=30).as_numpy("OUTPUT0")


def test_workers_serve_tls_and_reload_together_on_sighup(tmp_path):
    ca = CertificateAuthority.create(tmp_path / "pki")
    first = ca.issue("server")
    supervised = Supervised("--tls-cert", str(first.cert), "--tls-key", str(first.key),
                            "--model-control", "explicit", "--load-model", "identity")
    try:
        address, url = supervised.start()
        assert url.startswith("https://")
        metrics_address = url.removeprefix("https://").split("/")[0]
        for k in range(4):
            rows = np.full((2, 16), k, np.float32)
            np.testing.assert_array_equal(_identity(address, ca.cert, rows), rows)
        with tc.InferenceServerClient(address) as plain, pytest.raises(InferenceServerException):
            plain.is_server_live(client_timeout=5)
        body = _scrape(url, ca.cert)
        assert "sluice_workers 2.0" in body
        assert {presented_serial(address, ca.cert) for _ in range(PROBES)} == {first.serial}

        second = ca.issue("server")  # same file names: the new certificate replaces the old
        os.kill(supervised.proc.pid, signal.SIGHUP)
        deadline = time.monotonic() + 60
        while 'sluice_tls_reloads_total{outcome="success"} 2.0' not in _scrape(url, ca.cert):
            assert time.monotonic() < deadline, _scrape(url, ca.cert)
            time.sleep(0.2)
        assert {presented_serial(address, ca.cert) for _ in range(PROBES)} == {second.serial}
        while presented_serial(metrics_address, ca.cert) != second.serial:  # its own reload
            assert time.monotonic() < deadline
            time.sleep(0.2)
        rows = np.arange(32, dtype=np.float32).reshape(2, 16)
        np.testing.assert_array_equal(_identity(address, ca.cert, rows), rows)
        assert supervised.proc.poll() is None and len(supervised.workers()) == 2
        supervised.proc.send_signal(signal.SIGTERM)
        assert supervised.proc.wait(60) == 0
    finally:
        supervised.close()
