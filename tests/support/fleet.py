"""Sluice replicas of one fleet: ``sluice serve --state-store etcd://...`` subprocesses on free
ports, their output read by a thread, their /metrics scraped; stopped or killed by PID."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import tritonclient.grpc as tc

from sluice.server.app import BUNDLED_REPOSITORY
from tests.support.cli_server import wait_ready
from tests.support.supervised import scrape


class Replica:
    """One ``sluice serve`` of the fleet serving ``models`` (explicit model control)."""

    def __init__(self, state_store: str, *extra: str, models: tuple[str, ...] = ("digits",),
                 lease_s: int = 2, repository: Path = BUNDLED_REPOSITORY) -> None:
        loads = [arg for name in models for arg in ("--load-model", name)]
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "sluice.server", "serve", "--grpc-port", "0",
             "--metrics-port", "0", "--log-level", "WARNING",
             "--model-repository", str(repository), "--model-control", "explicit",
             *loads, "--state-store", state_store, "--leader-lease", str(lease_s), *extra],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        self.address = ""
        self.metrics_url = ""

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))

    def wait_for(self, pattern: str, timeout_s: float = 60) -> re.Match[str]:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            for line in list(self.lines):
                if match := re.search(pattern, line):
                    return match
            if self.proc.poll() is not None:
                break
            time.sleep(0.02)
        raise AssertionError(f"no line matching {pattern!r}; output: {self.output()}")

    def wait_listening(self) -> Replica:
        """Once it listens (its models may still load): the addresses are known."""
        self.address = self.wait_for(r"gRPC listening on (\S+)").group(1)
        self.metrics_url = self.wait_for(r"metrics on (\S+)").group(1)
        return self

    def start(self) -> Replica:
        """Once ServerReady is true."""
        self.wait_listening()
        assert wait_ready(self.address, self.proc), self.output()
        return self

    @property
    def metrics_target(self) -> str:
        """``host:port`` of its /metrics, as a Prometheus scrape target."""
        return self.metrics_url.split("//", 1)[-1].split("/", 1)[0]

    def metric(self, name: str) -> float | None:
        return scrape(self.metrics_url).get(name)

    def infer_version(self, client: tc.InferenceServerClient, model: str = "digits") -> str:
        """The version that answers a request naming none (what the routes decide)."""
        inp = tc.InferInput("input", [1, 64], "FP32")
        inp.set_data_from_numpy(np.zeros((1, 64), np.float32))
        return str(client.infer(model, [inp]).get_response().model_version)

    def output(self) -> str:
        return "\n".join(self.lines[-40:])

    def kill(self) -> None:
        """SIGKILL: no lease released, nothing flushed (a crash)."""
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(30)
        self._close_output()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self._close_output()

    def _close_output(self) -> None:
        self._reader.join(10)
        if self.proc.stdout is not None and not self.proc.stdout.closed:
            self.proc.stdout.close()
