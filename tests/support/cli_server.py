"""``sluice serve`` as users run it: a subprocess on a free port, serving the bundled models."""

from __future__ import annotations

import re
import subprocess
import sys
import time

from server.app import BUNDLED_REPOSITORY


def start_cli_server(*extra: str) -> tuple[subprocess.Popen, str]:
    """Start it with ``extra`` flags; (process, gRPC address) once it listens (60 s at most)."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "server", "serve", "--grpc-port", "0", "--metrics-port", "-1",
         "--model-repository", str(BUNDLED_REPOSITORY), "--log-level", "WARNING", *extra],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    assert proc.stdout is not None
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        match = re.search(r"gRPC listening on (\S+)", line)
        if match:
            return proc, match.group(1)
        if not line and proc.poll() is not None:
            break
    proc.kill()
    raise AssertionError("server did not start")
