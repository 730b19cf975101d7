"""The shipped alerts and dashboard on a real Prometheus (tests/support/prometheus.py) scraping a
real Sluice: a condition produced for real (failing requests) makes its alert go pending, then
firing, through Prometheus's HTTP API; every dashboard panel's query evaluates without error;
every metric the rules and the dashboard read is one Sluice exports (or one listed below as
coming with another part of issue 13).

The rules are the shipped file with its ``for:`` and range windows shortened to seconds
(``compressed_rules``): the same expressions on a test's time scale."""

from __future__ import annotations

import json
import re
import shutil
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as triton
import yaml
from prometheus_client.parser import text_string_to_metric_families
from tritonclient.utils import InferenceServerException

from sluice.server.app import BUNDLED_REPOSITORY
from sluice.server.config.settings import ServerConfig
from tests.support.prometheus import (
    MISSING,
    PrometheusServer,
    compressed_rules,
    find_binary,
    metric_names,
    start_prometheus,
)
from tests.support.running import RunningServer, start_server

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "deploy" / "prometheus" / "sluice-rules.yml"
DASHBOARD = ROOT / "deploy" / "grafana" / "sluice.json"
FOR_S, WINDOW_S = 3, 10
#: Metrics the rules or the dashboard read that this server does not export, and why. The
#: drift, quality and prediction-log names are the ones agreed for issue 13's other parts.
ELSEWHERE = {
    "sluice_drift_psi": "drift (issue 13 item 6)",
    "sluice_prediction_drift": "drift (issue 13 item 6)",
    "sluice_quality": "live quality (issue 13 item 4)",
    "sluice_prediction_log_dropped_total": "prediction log (issue 13 item 2)",
    "sluice_worker_restarts_total": "the supervisor of --workers N (merged_metrics.py)",
    "sluice_gpu_utilization_ratio": "NVML and a GPU (monitoring/gpu.py)",
    "sluice_gpu_memory_used_ratio": "NVML and a GPU (monitoring/gpu.py)",
}

pytestmark = [pytest.mark.slow, pytest.mark.timeout(400)]


@pytest.fixture(scope="module")
def sluice(tmp_path_factory) -> Iterator[RunningServer]:
    repo = tmp_path_factory.mktemp("models")
    for name in ("identity", "digits"):
        shutil.copytree(BUNDLED_REPOSITORY / name, repo / name,
                        ignore=shutil.ignore_patterns("*.py", "__pycache__"))
    running = start_server(ServerConfig(
        model_repository=repo, grpc_port=0, metrics_port=0, price_per_core_hour=0.05,
        state_dir=tmp_path_factory.mktemp("state")))
    yield running
    running.stop()


@pytest.fixture(scope="module")
def prometheus(sluice, tmp_path_factory) -> Iterator[PrometheusServer]:
    if find_binary("prometheus") is None:
        pytest.skip(MISSING.format("prometheus"))
    directory = tmp_path_factory.mktemp("prometheus")
    rules = directory / "sluice-rules.yml"
    rules.write_text(compressed_rules(RULES.read_text(), for_s=FOR_S, window_s=WINDOW_S))
    server = start_prometheus(directory, targets=[f"127.0.0.1:{sluice.server.metrics.port}"],
                              rule_files=[rules], interval_s=1.0)
    yield server
    server.stop()


class Traffic:
    """Requests to a model on a thread until stopped: ``good`` well-formed ones for every
    ``bad`` one with the wrong datatype (INVALID_ARGUMENT, counted as a failure)."""

    def __init__(self, address: str, model: str, rows: np.ndarray, *, good: int, bad: int,
                 pause_s: float = 0.02) -> None:
        self.sent = {"ok": 0, "failed": 0}
        self._stop = threading.Event()
        self._args = (address, model, rows, good, bad, pause_s)
        self._thread = threading.Thread(target=self._main, daemon=True)

    def __enter__(self) -> Traffic:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(30)

    def _main(self) -> None:
        address, model, rows, good, bad, pause_s = self._args
        name = "INPUT0" if model == "identity" else "input"
        client = triton.InferenceServerClient(address)
        right = triton.InferInput(name, list(rows.shape), "FP32")
        right.set_data_from_numpy(rows)
        wrong = triton.InferInput(name, list(rows.shape), "FP64")
        wrong.set_data_from_numpy(rows.astype(np.float64))
        try:
            while not self._stop.is_set():
                for tensor in [right] * good + [wrong] * bad:
                    try:
                        client.infer(model, [tensor], client_timeout=10)
                        self.sent["ok"] += 1
                    except InferenceServerException:
                        self.sent["failed"] += 1
                time.sleep(pause_s)
        finally:
            client.close()


def _exported(running: RunningServer) -> set[str]:
    """Every metric name the server's /metrics has now, as PromQL names them (counters with
    ``_total``, histograms with ``_bucket``/``_sum``/``_count``), samples or not."""
    url = f"http://127.0.0.1:{running.server.metrics.port}/metrics"
    body = urllib.request.urlopen(url, timeout=10).read().decode()
    names = set()
    for family in text_string_to_metric_families(body):
        names.add(family.name)
        names.update(sample.name for sample in family.samples)
        if family.type == "counter":
            names.add(f"{family.name}_total")
        if family.type == "histogram":
            names.update(f"{family.name}{s}" for s in ("_bucket", "_sum", "_count"))
    return names


def _panels(dashboard: dict) -> Iterator[dict]:
    for panel in dashboard["panels"]:
        yield panel
        yield from panel.get("panels", ())


def _substituted(expr: str, model: str, version: str) -> str:
    """A panel's query as Grafana sends it with ``model`` and ``version`` chosen."""
    for name, value in (("__rate_interval", f"{WINDOW_S}s"), ("__interval", "2s"),
                        ("__range", "5m"), ("model", model), ("version", version)):
        expr = expr.replace(f"${{{name}}}", value).replace(f"${name}", value)
    return expr


def test_failing_requests_raise_the_error_rate_alert_pending_then_firing(sluice, prometheus):
    rows = np.ones((1, 16), np.float32)
    with Traffic(sluice.address, "identity", rows, good=1, bad=1) as traffic:
        pending = prometheus.wait_for_alert(
            "SluiceErrorRateHigh", "pending", timeout_s=120,
            match=lambda labels: labels.get("model") == "identity")
        firing = prometheus.wait_for_alert(
            "SluiceErrorRateHigh", "firing", timeout_s=60,
            match=lambda labels: labels.get("model") == "identity")
    assert traffic.sent["failed"] > 0 and traffic.sent["ok"] > 0, traffic.sent
    history = prometheus.seen["SluiceErrorRateHigh"]
    assert history.index("pending") < history.index("firing"), history
    assert firing["labels"] == {"alertname": "SluiceErrorRateHigh", "model": "identity",
                                "version": "1", "severity": "page"}
    assert firing["annotations"]["runbook_url"] == "docs/runbooks/SluiceErrorRateHigh.md"
    # Half the requests failed; the rule's value is the failure share of the window.
    assert 0.3 < float(firing["value"]) < 0.7, firing
    assert pending["labels"] == firing["labels"]
    # Wrong datatypes are failures, not sheds: no shed alert for them.
    assert not [a for a in prometheus.alerts() if a["labels"]["alertname"] == "SluiceShedRateHigh"]


def test_every_dashboard_panel_query_evaluates_on_prometheus(sluice, prometheus):
    with Traffic(sluice.address, "identity", np.ones((2, 16), np.float32), good=3, bad=0):
        prometheus.wait_until(
            lambda: prometheus.query(
                f'sum(rate(sluice_inference_rows_total{{model="identity"}}[{WINDOW_S}s]))'
            )["data"]["result"], 60, "identity's rows scraped")
    dashboard = json.loads(DASHBOARD.read_text())
    ids = [panel["id"] for panel in _panels(dashboard)]
    assert len(ids) == len(set(ids)), "panel ids repeat"
    queries = [(panel["title"], target["expr"]) for panel in _panels(dashboard)
               for target in panel.get("targets", ())]
    assert len(queries) >= 18
    failures = []
    for title, expr in queries:
        reply = prometheus.query(_substituted(expr, "identity", "1"))
        if reply["status"] != "success":
            failures.append(f"{title}: {reply.get('error')}")
    assert not failures, failures
    rows = prometheus.query(_substituted(queries[0][1], "identity", "1"))["data"]["result"]
    assert {r["metric"]["outcome"] for r in rows} >= {"success"}, rows
    # The template variables: label_values(metric{...}, label) is Prometheus's label API.
    for variable in dashboard["templating"]["list"]:
        found = re.fullmatch(r"label_values\((.+), (\w+)\)", variable.get("definition", ""))
        if found is None:
            continue
        match = _substituted(found.group(1), "identity", "1")
        reply = prometheus.get(f"/api/v1/label/{found.group(2)}/values", **{"match[]": match})
        assert reply["status"] == "success", (variable["name"], reply)
        assert reply["data"], f"variable {variable['name']} has no values"


def test_the_rules_and_the_dashboard_read_only_metrics_that_exist(sluice, prometheus):
    exported = _exported(sluice)
    dashboard = json.loads(DASHBOARD.read_text())
    exprs = [target["expr"] for panel in _panels(dashboard) for target in panel.get("targets", ())]
    exprs += [rule["expr"] for group in yaml.safe_load(RULES.read_text())["groups"]
              for rule in group["rules"]]
    read = set().union(*map(metric_names, exprs))
    assert {"sluice_requests_total", "sluice_model_cpu_seconds_total", "sluice_shed_total",
            "process_cpu_seconds_total", "sluice_drift_psi"} <= read
    unknown = read - exported - set(ELSEWHERE)
    assert not unknown, f"read but never exported: {sorted(unknown)}"
    unused = set(ELSEWHERE) - read
    assert not unused, f"listed but read by no rule or panel: {sorted(unused)}"


def test_drifted_inputs_raise_the_feature_drift_alert(sluice, prometheus):
    x = np.load(BUNDLED_REPOSITORY / "digits" / "test_split.npz")["X"]
    drifted = np.ascontiguousarray(x[:8] * 2.0 + 4.0, dtype=np.float32)  # scaled and shifted
    with Traffic(sluice.address, "digits", drifted, good=4, bad=0, pause_s=0.0):
        time.sleep(2)
        if "sluice_drift_psi" not in _exported(sluice):
            pytest.skip("this server exports no sluice_drift_psi: drift (issue 13 item 6) is not "
                        "on this branch; the integrator enables this test by merging it")
        firing = prometheus.wait_for_alert(
            "SluiceFeatureDrift", "firing", timeout_s=180,
            match=lambda labels: labels.get("model") == "digits")
    assert "pending" in prometheus.seen["SluiceFeatureDrift"]
    assert firing["labels"]["severity"] == "ticket"
    assert float(firing["value"]) > 0.2
