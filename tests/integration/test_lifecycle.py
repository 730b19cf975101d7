"""The process as users run it: `sluice serve` in a subprocess, stopped by SIGTERM under load."""

from __future__ import annotations

import re
import signal
import socket
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
import tritonclient.grpc as tc
from tritonclient.utils import InferenceServerException

from tests.support.cli_server import sigterm_under_load, start_cli_server


def test_sigterm_under_load_answers_every_admitted_request_and_exits_0():
    proc, address = start_cli_server("--shutdown-grace", "20")
    outcomes: list[tuple[float, str, str]] = []  # (sent at, status, message)
    lock = threading.Lock()
    stop = threading.Event()
    x = np.random.default_rng(1).standard_normal((8, 3, 32, 32)).astype(np.float32)

    def caller() -> None:
        with tc.InferenceServerClient(address) as client:
            while not stop.is_set():
                tensor = tc.InferInput("image", list(x.shape), "FP32")
                tensor.set_data_from_numpy(x)
                sent = time.monotonic()
                try:
                    result = client.infer("cnn", [tensor], client_timeout=30)
                    assert result.as_numpy("logits").shape == (8, 10)
                    outcome = ("ok", "")
                except InferenceServerException as exc:
                    outcome = (exc.status() or "", exc.message() or "")
                with lock:
                    outcomes.append((sent, *outcome))

    threads = [threading.Thread(target=caller) for _ in range(16)]
    code, _, answered = sigterm_under_load(proc, threads, stop)
    assert code == 0
    ok = sum(1 for _, status, _ in outcomes if status == "ok")
    assert ok > 16
    # A request admitted earlier must never fail: every answer the server gave arrived.
    assert ok == answered, (ok, answered)
    for _, status, message in outcomes:
        if status == "ok":
            continue
        # After SIGTERM new requests are refused explicitly: UNAVAILABLE while draining or
        # once the listener is closed; a call racing the listener's close may be CANCELLED by
        # gRPC before it reaches Sluice.
        assert status in ("StatusCode.UNAVAILABLE", "StatusCode.CANCELLED"), (status, message)


def test_help_is_clear():
    for args in ([], ["serve"], ["infer"], ["stats"]):
        out = subprocess.run([sys.executable, "-m", "sluice.server", *args, "--help"],
                             capture_output=True, text=True, timeout=60)
        assert out.returncode == 0
        assert "usage: sluice" in out.stdout
    serve_help = subprocess.run([sys.executable, "-m", "sluice.server", "serve", "--help"],
                                capture_output=True, text=True, timeout=60).stdout
    for flag in ("--model-repository", "--host", "--grpc-port", "--metrics-port", "--log-level"):
        assert flag in serve_help


def test_port_zero_prints_the_bound_port_before_any_model_loads():
    output: list[str] = []  # what it printed until it listened
    proc, address = start_cli_server("--log-level", "info", output=output)
    try:
        host, port = address.rsplit(":", 1)
        assert host == "127.0.0.1" and int(port) > 0
        # said once, and nothing about metrics, which are off (--metrics-port -1)
        assert output[-1] == f"sluice: gRPC listening on {address}"
        assert not [line for line in output[:-1] if port in line or "metrics" in line]
        # it listens first: no model had started loading (each load logs a line at INFO)
        assert not [line for line in output if "model '" in line], output
        with tc.InferenceServerClient(address) as client:
            assert client.is_server_ready()  # start_cli_server waited for it
    finally:
        proc.send_signal(signal.SIGINT)
        code = proc.wait(30)
        rest = proc.stdout.read()
        proc.stdout.close()
    assert code == 0
    # once its models were loaded it froze its heap out of the collector's full walks
    assert re.search(r"Sluice ready.*\n(.*\n)*.*heap settled: \d+ objects frozen", rest), rest


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "sluice.server", *args], capture_output=True,
                          text=True, timeout=120)


@pytest.mark.parametrize("which", ["grpc", "metrics"])
def test_a_port_in_use_is_one_line_before_any_model_loads(which):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        ports = (["--grpc-port", str(port), "--metrics-port", "0"] if which == "grpc"
                 else ["--grpc-port", "0", "--metrics-port", str(port)])
        # INFO would log each model's load: none may start before the ports are bound
        out = run_cli("serve", *ports, "--log-level", "info")
    assert out.returncode == 1
    lines = (out.stdout + out.stderr).splitlines()
    flag = "--grpc-port" if which == "grpc" else "--metrics-port"
    assert len(lines) == 1 and lines[0].startswith(f"sluice serve: {which} port {port} on "
                                                   "127.0.0.1 ".replace("grpc", "gRPC")), lines
    assert f"pick another with {flag}" in lines[0]


def test_a_missing_repository_is_a_usage_error(tmp_path):
    out = run_cli("serve", "--model-repository", str(tmp_path / "nope"), "--grpc-port", "0")
    assert out.returncode == 2
    assert out.stderr == (f"sluice serve: model repository {tmp_path / 'nope'} is not a "
                          "directory (--model-repository)\n")


def test_sluice_infer_with_given_and_random_inputs(bundled_server, tmp_path):
    b = np.arange(16, dtype=np.float32).reshape(1, 16)
    np.save(tmp_path / "b.npy", b)
    out = run_cli("infer", "add_sub", "--url", bundled_server.address,
                  "--input", "INPUT0=" + str([[1.0] * 16]), "--input", f"INPUT1={tmp_path}/b.npy")
    assert out.returncode == 0, out.stderr
    assert "OUTPUT0 float32 [1, 16]" in out.stdout
    # OUTPUT0 = 1 + b: the printed row starts with 1, 2, 3
    assert "[[ 1.  2.  3." in out.stdout.replace("\n", " ")
    out = run_cli("infer", "digits", "--url", bundled_server.address, "--batch", "3")
    assert out.returncode == 0, out.stderr
    assert "probabilities float32 [3, 10]" in out.stdout and "label int64 [3, 1]" in out.stdout
    out = run_cli("infer", "nope", "--url", bundled_server.address)
    assert out.returncode == 1 and "nope" in out.stderr


def test_sluice_stats_columns_line_up_whatever_the_model_names(bundled_server):
    out = run_cli("stats", "--url", bundled_server.address)
    assert out.returncode == 0, out.stderr
    latency_table = out.stdout.split("\n\n")[0]  # the cost table follows after a blank line
    header, *rows = latency_table.splitlines()
    names = {row.split()[0] for row in rows}
    assert "digits_standardize" in names  # 18 characters: longer than the old fixed column
    ends = {header.index("stage") + len("stage")}
    ends |= {row.index(f" {row.split()[2]} ") + 1 + len(row.split()[2]) for row in rows}
    assert len(ends) == 1  # every stage cell ends where the header's does
    assert {len(row) for row in rows} == {len(header)}


def test_sluice_stats_prints_the_latency_table(bundled_server):
    x = np.ones((1, 16), np.float32)
    with tc.InferenceServerClient(bundled_server.address) as client:
        tensor = tc.InferInput("INPUT0", [1, 16], "FP32")
        tensor.set_data_from_numpy(x)
        for _ in range(10):
            client.infer("identity", [tensor])
    out = run_cli("stats", "identity", "--url", bundled_server.address)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0].split() == ["model", "ver", "stage", "p50", "ms", "p95", "ms", "p99", "ms",
                                "requests"]
    e2e = next(line.split() for line in lines if " e2e " in line)
    p50, p95, p99 = map(float, e2e[3:6])
    assert e2e[0] == "identity" and 0 < p50 <= p95 <= p99
    assert int(e2e[6]) >= 10
