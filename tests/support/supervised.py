"""``sluice serve --workers N`` in a subprocess, read by a thread, and its merged /metrics."""

from __future__ import annotations

import re
import subprocess
import sys
import threading
import time
import urllib.request

import psutil

from sluice.server.app import BUNDLED_REPOSITORY


class Supervised:
    """A ``sluice serve --workers N`` subprocess whose output is read by a thread."""

    def __init__(self, *extra: str, workers: int = 2) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "sluice.server", "serve", "--workers", str(workers),
             "--grpc-port", "0", "--metrics-port", "0", "--log-level", "WARNING",
             "--model-repository", str(BUNDLED_REPOSITORY), *extra],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))

    def wait_for(self, pattern: str, timeout_s: float = 120) -> re.Match[str]:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            for line in list(self.lines):
                if match := re.search(pattern, line):
                    return match
            if self.proc.poll() is not None and not self._reader.is_alive():
                break
            time.sleep(0.05)
        raise AssertionError(f"no line matching {pattern!r}:\n" + "\n".join(self.lines[-40:]))

    def start(self) -> tuple[str, str]:
        """Wait until serving; returns (gRPC address, metrics URL)."""
        address = self.wait_for(r"sluice: gRPC listening on (\S+)").group(1)
        url = self.wait_for(r"sluice: metrics on (\S+)").group(1)
        return address, url

    def workers(self) -> list[psutil.Process]:
        return psutil.Process(self.proc.pid).children()

    def close(self) -> None:
        if self.proc.poll() is None:
            for child in self.workers():
                child.kill()
            self.proc.kill()
            self.proc.wait(30)
        self._reader.join(30)
        assert self.proc.stdout is not None
        self.proc.stdout.close()


def scrape(url: str) -> dict[str, float]:
    """Every sample of the supervisor's /metrics, keyed by its exposition line minus value.
    The supervisor answers within its 2 s per-worker timeout plus merging; the 30 s here only
    bounds a starved machine (10 s ran out once with three suites and a CPU hog on two cores,
    while a killed worker restarted)."""
    body = urllib.request.urlopen(url, timeout=30).read().decode()
    out = {}
    for line in body.splitlines():
        if line and not line.startswith("#"):
            key, value = line.rsplit(" ", 1)
            out[key] = float(value)
    return out
