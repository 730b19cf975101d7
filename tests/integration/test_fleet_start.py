"""``sluice serve --state-store``: a bad value is a usage error, and an etcd that does not answer
stops the start with one line naming the store (issue 15)."""

from __future__ import annotations

import subprocess
import sys

from tests.support.etcd import free_port


def test_sluice_serve_refuses_a_bad_store_as_a_usage_error_before_starting():
    done = subprocess.run(
        [sys.executable, "-m", "sluice.server", "serve", "--state-store", "http://h:1/x"],
        capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert "--state-store" in done.stderr and "expected etcd://HOST:PORT/PREFIX" in done.stderr


def test_sluice_serve_with_no_etcd_answering_exits_naming_the_store():
    port = free_port()  # nothing listens there
    done = subprocess.run(
        [sys.executable, "-m", "sluice.server", "serve", "--grpc-port", "0", "--metrics-port",
         "-1", "--state-store", f"etcd://127.0.0.1:{port}/fleet"],
        capture_output=True, text=True, timeout=60)
    assert done.returncode == 1, done.stderr[-2000:]
    assert (f"--state-store: deployment state store etcd 127.0.0.1:{port} prefix '/fleet' is "
            "unreachable: reading the deployment state failed") in done.stderr
    assert "Traceback" not in done.stderr


def test_sluice_serve_refuses_a_bad_metrics_source_as_a_usage_error():  # fleet gates
    done = subprocess.run(
        [sys.executable, "-m", "sluice.server", "serve", "--metrics-source",
         "prometheus://user:secret@h:9090"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert "--metrics-source" in done.stderr and "no credentials" in done.stderr
    assert "secret" not in done.stderr
