"""What the Kubernetes manifests and the images' HEALTHCHECK ask of a server, asked of a real
one: `sluice serve` started with the Deployment's own container args answers grpc.health.v1
Check SERVING on its gRPC port (as kubelet's grpc probes and `sluice health` ask), serves
/metrics where the ServiceMonitor scrapes, with the series the Prometheus adapter turns into
the autoscaler's metrics; and `sluice health` fails, naming the server, where nothing serves."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import urllib.request
from collections.abc import Iterator

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from sluice.clients import Client
from tests.support.cli_server import start_cli_server
from tests.support.k8s import one


@pytest.fixture(scope="module")
def pod_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str]]:
    """A server started as the cpu overlay's container is (its args), on free ports; yields
    (gRPC address, metrics address)."""
    [container] = one("overlays/cpu", "Deployment")["spec"]["template"]["spec"]["containers"]
    state = tmp_path_factory.mktemp("pod-state")
    proc, address = start_cli_server(
        *container["args"], "--state-dir", str(state), "--metrics-port", "0",
        "--model-control", "explicit", "--load-model", "identity")
    assert proc.stdout is not None
    metrics = re.search(r"metrics on http://(\S+)/metrics", proc.stdout.readline())
    assert metrics, "the server printed no metrics address"
    yield address, metrics.group(1)
    proc.send_signal(signal.SIGTERM)
    proc.wait(30)
    proc.stdout.close()


def test_the_probed_port_answers_grpc_health_serving(pod_server) -> None:
    address, _ = pod_server
    with grpc.insecure_channel(address) as channel:
        reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(),
                                                          timeout=10)
    assert reply.status == health_pb2.HealthCheckResponse.SERVING


def _sluice(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "sluice.server", *args],
                          capture_output=True, text=True, timeout=60)


def test_sluice_health_is_the_images_health_check(pod_server, capsys) -> None:
    from sluice.server.cli import main

    address, _ = pod_server
    # As the HEALTHCHECK runs it: its own process.
    ok = subprocess.run([sys.executable, "-m", "sluice.server", "health", "--url", address],
                        capture_output=True, text=True, timeout=60)
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout.strip() == f"{address}: server is SERVING"
    capsys.readouterr()
    assert main(["health", "--url", address, "--service", "no.such.Service"]) == 1
    assert "[NOT_FOUND]" in capsys.readouterr().err
    # Port 9 (discard): nothing listens there on loopback.
    assert main(["health", "--url", "127.0.0.1:9", "--timeout", "2"]) == 1
    assert capsys.readouterr().err.startswith(
        "sluice health: 127.0.0.1:9: server not healthy: [")


def test_metrics_are_where_the_service_monitor_scrapes_with_the_autoscalers_series(
        pod_server) -> None:
    address, metrics = pod_server
    with Client(address, timeout=10.0) as client:
        client.infer("identity", {"INPUT0": np.ones((2, 16), np.float32)})
    monitor = one("overlays/cpu", "ServiceMonitor")
    path = monitor["spec"]["endpoints"][0]["path"]
    with urllib.request.urlopen(f"http://{metrics}{path}", timeout=10) as reply:
        text = reply.read().decode()
    for series in ("sluice_queue_depth_requests", "sluice_queue_duration_seconds_count",
                   "sluice_queue_duration_seconds_sum"):
        assert re.search(rf'^{series}{{model="identity",version="1"}} ', text, re.M), series
