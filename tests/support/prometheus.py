"""A real Prometheus for tests: Debian's ``prometheus`` binary on 127.0.0.1, a free port, a
temporary config and data directory, short scrape and evaluation intervals; stopped by its PID.

    prom = start_prometheus(tmp_path, targets=["127.0.0.1:9464"], rule_files=[rules])
    try:
        prom.wait_for_alert("SluiceErrorRateHigh", "firing", timeout_s=60)
    finally:
        prom.stop()

Also: :func:`compressed_rules` (the shipped rules with their ``for:`` and range windows
shortened, so a test sees an alert go pending then firing in seconds) and
:func:`metric_names` (the metric names a PromQL expression reads). No pytest here.
"""

from __future__ import annotations

import json
import re
import shutil
import socket
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

#: Why a test skips where there is no binary (CI installs it: .ci/run).
MISSING = ("{} not found on PATH: install Debian's prometheus package "
           "(apt-get install prometheus; .ci/run does this)")


def find_binary(name: str = "prometheus") -> str | None:
    """The path of ``name`` (``prometheus`` or ``promtool``), or None."""
    return shutil.which(name)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@dataclass
class PrometheusServer:
    """One running Prometheus process (see :func:`start_prometheus`)."""

    process: subprocess.Popen[bytes]
    port: int
    directory: Path
    #: Every state seen per alert, in order, by :meth:`wait_for_alert` (for failure messages).
    seen: dict[str, list[str]] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def get(self, path: str, **params: str) -> Any:
        """GET ``path`` of the HTTP API with ``params``; the decoded JSON body. An error status
        (a bad query is HTTP 400) is returned as its JSON body too, never raised."""
        query = urllib.parse.urlencode(params)
        try:
            with urllib.request.urlopen(f"{self.url}{path}?{query}", timeout=10) as response:
                return json.loads(response.read())
        except urllib.error.HTTPError as exc:
            return json.loads(exc.read())

    def query(self, expr: str) -> dict[str, Any]:
        """``/api/v1/query`` of ``expr`` now: the whole reply (``status``, ``data``, ``error``)."""
        reply: dict[str, Any] = self.get("/api/v1/query", query=expr)
        return reply

    def alerts(self) -> list[dict[str, Any]]:
        """The active alerts (pending or firing) from ``/api/v1/alerts``."""
        alerts: list[dict[str, Any]] = self.get("/api/v1/alerts")["data"]["alerts"]
        return alerts

    def targets_up(self) -> bool:
        """True once every scrape target answered its last scrape."""
        active = self.get("/api/v1/targets")["data"]["activeTargets"]
        return bool(active) and all(t["health"] == "up" for t in active)

    def wait_for_alert(
        self, name: str, state: str, *, timeout_s: float, match: Callable[[dict], bool] = bool,
        poll_s: float = 0.2,
    ) -> dict[str, Any]:
        """Poll until alert ``name`` (one whose labels ``match``) is in ``state``; returns it.
        Every state seen is kept in ``seen[name]`` (``inactive`` when absent)."""
        deadline = time.monotonic() + timeout_s
        history = self.seen.setdefault(name, [])
        while True:
            found = [a for a in self.alerts()
                     if a["labels"].get("alertname") == name and match(a["labels"])]
            now = found[0]["state"] if found else "inactive"
            if not history or history[-1] != now:
                history.append(now)
            if found and now == state:
                return found[0]
            if time.monotonic() > deadline:
                raise AssertionError(f"alert {name} not {state} after {timeout_s}s; states seen: "
                                     f"{history}; log: {self.log_tail()}")
            self.check_alive()
            time.sleep(poll_s)

    def wait_until(self, condition: Callable[[], bool], timeout_s: float, what: str) -> None:
        deadline = time.monotonic() + timeout_s
        while not condition():
            if time.monotonic() > deadline:
                raise AssertionError(f"Prometheus: {what} not after {timeout_s}s; "
                                     f"log: {self.log_tail()}")
            self.check_alive()
            time.sleep(0.2)

    def check_alive(self) -> None:
        if self.process.poll() is not None:
            raise AssertionError(f"Prometheus exited ({self.process.returncode}): "
                                 f"{self.log_tail()}")

    def log_tail(self, chars: int = 2000) -> str:
        log = self.directory / "prometheus.log"
        return log.read_text(errors="replace")[-chars:] if log.exists() else ""

    def stop(self) -> None:
        """SIGTERM to its PID, then SIGKILL if it has not exited within 10 s."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)


def write_config(directory: Path, targets: Iterable[str], rule_files: Iterable[Path],
                 interval_s: float) -> Path:
    """A prometheus.yml scraping ``targets`` every ``interval_s`` with ``rule_files``."""
    every = f"{round(interval_s * 1000)}ms"  # Prometheus durations are integers with a unit
    config = {
        "global": {"scrape_interval": every, "evaluation_interval": every,
                   "scrape_timeout": every},
        "rule_files": [str(p) for p in rule_files],
        "scrape_configs": [{"job_name": "sluice", "static_configs": [{"targets": list(targets)}]}],
    }
    path = directory / "prometheus.yml"
    path.write_text(json.dumps(config, indent=2))  # JSON is YAML
    return path


def start_prometheus(
    directory: Path, *, targets: Iterable[str], rule_files: Iterable[Path] = (),
    interval_s: float = 1.0, binary: str | None = None, ready_timeout_s: float = 60.0,
    port: int | None = None,
) -> PrometheusServer:
    """Start Prometheus in ``directory`` (config, data and log go there) on a free loopback
    port (``port`` when given: one its clients were told before it started); returns once it
    reports ready and has scraped every target once."""
    binary = binary or find_binary()
    if binary is None:
        raise FileNotFoundError(MISSING.format("prometheus"))
    directory.mkdir(parents=True, exist_ok=True)
    config = write_config(directory, targets, rule_files, interval_s)
    for _attempt in range(1 if port else 3):  # a port taken since the probe: another one
        chosen = port or free_port()
        log = (directory / "prometheus.log").open("wb")
        process = subprocess.Popen(
            [binary, f"--config.file={config}", f"--storage.tsdb.path={directory / 'data'}",
             f"--web.listen-address=127.0.0.1:{chosen}", "--log.level=warn",
             "--storage.tsdb.retention.time=1h"],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        )
        log.close()
        server = PrometheusServer(process, chosen, directory)
        try:
            server.wait_until(lambda s=server: _ready(s), ready_timeout_s, "ready")
        except AssertionError:
            server.stop()
            if "address already in use" in server.log_tail():
                continue
            raise
        server.wait_until(server.targets_up, ready_timeout_s, "every target scraped")
        return server
    raise AssertionError("Prometheus found no free port in 3 tries")


def _ready(server: PrometheusServer) -> bool:
    try:
        with urllib.request.urlopen(f"{server.url}/-/ready", timeout=2) as response:
            return bool(response.status == 200)
    except OSError:
        return False


_DURATION = r"\d+(?:ms|s|m|h|d|w|y)"


def compressed_rules(text: str, *, for_s: float, window_s: float) -> str:
    """Rules ``text`` with every ``for:`` set to ``for_s`` and every range ``[5m]`` and
    ``offset 1h`` set to ``window_s``: the same expressions, on a test's time scale."""
    text = re.sub(rf"(\bfor:\s*){_DURATION}", rf"\g<1>{for_s:g}s", text)
    text = re.sub(rf"\[{_DURATION}\]", f"[{window_s:g}s]", text)
    return re.sub(rf"(\boffset\s+){_DURATION}", rf"\g<1>{window_s:g}s", text)


#: PromQL words that look like metric names but are not.
_NOT_METRICS = frozenset({
    "sum", "min", "max", "avg", "count", "by", "without", "on", "ignoring", "group_left",
    "group_right", "and", "or", "unless", "offset", "bool", "rate", "irate", "increase",
    "histogram_quantile", "topk", "bottomk", "abs", "clamp_min", "clamp_max", "time", "vector",
    "scalar", "label_replace", "quantile", "stddev", "delta", "deriv", "avg_over_time",
    "max_over_time", "min_over_time", "sum_over_time", "count_over_time", "le", "inf", "nan",
})


def metric_names(expr: str) -> set[str]:
    """The metric names ``expr`` reads (identifiers not followed by ``(``, outside ``{...}``
    label matchers, ``by (...)`` lists and strings)."""
    expr = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    expr = re.sub(r"\{[^}]*\}", "", expr)
    expr = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", expr)
    expr = re.sub(r"\[[^\]]*\]", "", expr)
    names = set(re.findall(r"\b([a-zA-Z_:][a-zA-Z0-9_:]*)\b(?!\s*\()", expr))
    return {n for n in names if n.lower() not in _NOT_METRICS and not n[0].isdigit()}
