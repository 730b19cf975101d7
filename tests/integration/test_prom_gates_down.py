"""``--metrics-source prometheus://...`` with no Prometheus answering (issue 15 item 2): the canary
judges nothing, neither promotes nor rolls back, and says why; once it answers, the step is
judged.

The server is built from a ServerConfig naming the source (as ``sluice serve`` does); its canary
is driven here with a fake clock whose ``sleep`` counts ticks, so "ten intervals passed" needs no
wall-clock wait. The first ticks find nothing listening on the port; then a stand-in Prometheus
(an HTTP server answering the query API with fixed numbers) starts there.
"""

from __future__ import annotations

import asyncio
import json
import threading
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from sluice.clients.admin import AdminClient
from sluice.server.fleet.prom_gates import PrometheusEvidence
from sluice.server.rollout.canary import CanaryController
from sluice.server.rollout.canary_plan import CanaryGates
from tests.support.etcd import free_port
from tests.support.metrics import labels, scrape
from tests.support.shadow_models import classifier_repo


class FixedPrometheus(BaseHTTPRequestHandler):
    """/api/v1/query: 40 requests per arm, 4 of the candidate's failed, p50/p99 of 1 ms."""

    queries: list[str] = []

    def do_GET(self) -> None:
        query = urllib.parse.parse_qs(urllib.parse.urlsplit(self.path).query)["query"][0]
        self.queries.append(query)
        value = 0.001 if query.startswith("histogram_quantile") else 40.0
        if 'outcome="failure"' in query:
            value = 4.0 if 'arm="candidate"' in query else 0.0
        body = json.dumps({"status": "success", "data": {"resultType": "vector", "result": [
            {"metric": {}, "value": [0, str(value)]}]}}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        return None


def test_unreachable_prometheus_leaves_the_step_waiting_then_it_is_judged(make_server,
                                                                           tmp_path):
    port = free_port()  # nothing listens there yet
    running = make_server(classifier_repo(tmp_path), metrics_port=0,
                          metrics_source=f"prometheus://127.0.0.1:{port}")
    with AdminClient(running.address) as admin:
        admin.switch("clf", 1, reason="stable")
    evidence = running.server.canary.evidence
    assert isinstance(evidence, PrometheusEvidence)
    assert evidence.base_url == f"http://127.0.0.1:{port}"
    now, ticks = [0.0], [0]
    twelve = asyncio.Event()  # set on the loop: 12 intervals passed, past 5 extensions

    async def sleep(seconds: float) -> None:
        ticks[0] += 1
        now[0] += seconds
        if ticks[0] == 12:
            twelve.set()
        await asyncio.sleep(0.01)

    canary = CanaryController(running.server.router, clock=lambda: now[0], sleep=sleep)
    canary.evidence = evidence  # what the server built from its metrics_source
    gates = CanaryGates(min_requests=20, max_error_rate=0.05, max_p99_ratio=2.0)
    prometheus: ThreadingHTTPServer | None = None

    async def scenario() -> tuple[dict, dict]:
        await canary.start("clf", 3, steps=(50, 100), interval_s=1.0, gates=gates,
                           caller="test")
        await twelve.wait()
        waiting = dict(canary.status("clf") or {})
        nonlocal prometheus
        prometheus = ThreadingHTTPServer(("127.0.0.1", port), FixedPrometheus)
        threading.Thread(target=prometheus.serve_forever, daemon=True).start()
        await asyncio.gather(*canary._tasks)  # the driver ends with the canary
        await canary.close()
        return waiting, dict(canary.status("clf") or {})

    try:
        waiting, finished = running.call(scenario())
    finally:
        if prometheus is not None:
            prometheus.shutdown()
            prometheus.server_close()
    # Twelve intervals without an answer: still at step 0, no extension used, and why.
    assert (waiting["state"], waiting["step"], waiting["extensions"]) == ("running", 0, 0)
    assert waiting["waiting"] == (f"Prometheus at http://127.0.0.1:{port} did not answer "
                                  "(ClientConnectorError)")
    # Then judged on Prometheus's numbers alone (the server itself took no request): 4 / 40.
    assert finished["state"] == "rolled_back"
    assert finished["reason"] == "gate error_rate: candidate 0.10 > 0.05 over 40 requests"
    assert 'sum(increase(sluice_arm_requests_total{model="clf", arm="candidate", version="3", ' \
           'outcome="failure"}[' in "\n".join(FixedPrometheus.queries)
    assert evidence.up is True
    source_up = ("sluice_canary_gate_source_up", labels(source="prometheus"))
    assert scrape(running)[source_up] == 1.0
