"""``sluice serve`` as users run it: a subprocess on a free port, serving the bundled models."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import threading
import time
from typing import Any

import tritonclient.grpc as tc

from sluice.server.app import BUNDLED_REPOSITORY


def start_cli_server(
    *extra: str, output: list[str] | None = None, client_args: dict[str, Any] | None = None
) -> tuple[subprocess.Popen, str]:
    """Start it with ``extra`` flags; (process, gRPC address) once it is ready (it listens at
    once; ServerReady turns true once its models are loaded; 60 s for each at most).
    ``output`` collects the lines it printed until it listened (stdout and stderr).
    ``client_args``: what tritonclient needs to reach it (``ssl``, ``root_certificates``, ...)."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "sluice.server", "serve", "--grpc-port", "0", "--metrics-port", "-1",
         "--model-repository", str(BUNDLED_REPOSITORY), "--log-level", "WARNING", *extra],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    assert proc.stdout is not None
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if output is not None and line:
            output.append(line.rstrip("\n"))
        match = re.search(r"gRPC listening on (\S+)", line)
        if match:
            address = match.group(1)
            if wait_ready(address, proc, client_args=client_args):
                return proc, address
            break
        if not line and proc.poll() is not None:
            break
    proc.kill()
    raise AssertionError("server did not start")


def wait_ready(address: str, proc: subprocess.Popen, timeout_s: float = 60,
               client_args: dict[str, Any] | None = None) -> bool:
    """Whether the server at ``address`` reported ServerReady within ``timeout_s`` (polled, as
    a Triton client waits for a server; False at once if ``proc`` exits)."""
    deadline = time.monotonic() + timeout_s
    with tc.InferenceServerClient(address, **(client_args or {})) as client:
        while time.monotonic() < deadline and proc.poll() is None:
            if client.is_server_ready():
                return True
            time.sleep(0.05)
    return False


def sigterm_under_load(proc: subprocess.Popen, threads: list[threading.Thread],
                       stop: threading.Event, load_s: float = 1.5) -> tuple[int, float, int]:
    """Start the callers, let them load the server for ``load_s``, SIGTERM it, wait for its exit,
    then stop and join the callers. (exit code, the monotonic instant of the signal, the number
    of requests the server says it answered in all: its last line)."""
    for t in threads:
        t.start()
    time.sleep(load_s)
    signalled = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    code = proc.wait(60)
    assert proc.stdout is not None
    output = proc.stdout.read()
    proc.stdout.close()
    stop.set()
    for t in threads:
        t.join(60)
    match = re.search(r"sluice: stopped; (\d+) requests answered", output)
    assert match, output[-2000:]
    return code, signalled, int(match.group(1))
