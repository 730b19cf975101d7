"""Canary gates judged on the FLEET's numbers (issue 15 item 2): a real etcd, three
``sluice serve`` replicas, and, for ``--metrics-source``, a real Prometheus scraping them.

The candidate (``clf`` version 3, :func:`tests.support.shadow_models.faulty_model`) answers
every row below 8 exactly as the stable identity (version 1) does, and fails for real
(onnxruntime: index out of bounds) on a row holding 9. The same traffic goes to every replica,
except that one replica that does NOT drive the canary gets only rows holding 9: the candidate
fails on that replica's share alone (a third of the fleet's candidate requests), and the
driver, whose own candidate requests all succeed, must roll it back on the fleet's numbers.
Without the fleet's numbers it would promote the candidate after its two steps.
"""

from __future__ import annotations

import re
import signal
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as tc
from tritonclient.utils import InferenceServerException

from sluice.clients.admin import AdminClient
from sluice.server.fleet import prom_gates
from tests.support import prometheus
from tests.support.etcd import MISSING, EtcdServer, find_binary, free_port, start_etcd
from tests.support.fleet import Replica
from tests.support.shadow_models import classifier_repo

pytestmark = pytest.mark.skipif(find_binary() is None, reason=MISSING)

GOOD = np.array([[1.0, 2.0, 3.0, 7.0]], np.float32)  # both versions answer it unchanged
BAD = np.array([[9.0, 2.0, 3.0, 7.0]], np.float32)  # the candidate's run fails on it
CANDIDATE_FAILED = ('sluice_arm_requests_total{arm="candidate",model="clf",outcome="failure",'
                    'version="3"}')
CANDIDATE_OK = CANDIDATE_FAILED.replace("failure", "success")
CANDIDATE_TOTAL = 'sluice_arm_requests_total{model="clf", arm="candidate", version="3"}'


@pytest.fixture(scope="module")
def etcd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EtcdServer]:
    server = start_etcd(tmp_path_factory.mktemp("etcd"))
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return classifier_repo(tmp_path_factory.mktemp("repo"))


def start_fleet(state_store: str, repository: Path, *extra: str,
                metrics_ports: tuple[int, ...] = (0, 0, 0)) -> list[Replica]:
    """Three replicas of ``clf``, started side by side (not waited for)."""
    return [Replica(state_store, "--fleet-counters-interval", "0.5", "--metrics-port", str(port),
                    *extra, models=("clf",), repository=repository) for port in metrics_ports]


def wait_until(condition: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not after {timeout_s}s")
        time.sleep(0.05)


def one_row(x: np.ndarray) -> list[tc.InferInput]:
    inp = tc.InferInput("IN_x", list(x.shape), "FP32")
    inp.set_data_from_numpy(x)
    return [inp]


def canary_with_one_failing_replica(replicas: list[Replica]) -> tuple[dict, int, int, list]:
    """Baseline clf on version 1, a canary of version 3 (steps 50 and 100 %, 4 s each), traffic
    through every replica with only the rows the candidate fails on sent to one replica that
    does not drive the canary. Returns (the finished canary record, the driver, the failing
    replica, each replica's answers by arm)."""
    for replica in replicas:
        replica.start()
    admins = [AdminClient(r.address) for r in replicas]
    clients = [tc.InferenceServerClient(r.address) for r in replicas]
    stop = threading.Event()
    answered = [Counter() for _ in replicas]
    problems: list[str] = []
    try:
        admins[0].switch("clf", 1, reason="baseline")
        wait_until(lambda: all(a.deployment("clf")["routes"] for a in admins), 5, "baseline")
        leaders: list[int] = []

        def one_leader() -> bool:
            leaders[:] = [i for i, r in enumerate(replicas)
                          if r.metric('sluice_canary_leader{store="etcd"}') == 1.0]
            return len(leaders) == 1

        wait_until(one_leader, 15, "one canary driver")
        leader = leaders[0]
        failing = (leader + 1) % 3

        def traffic() -> None:
            while not stop.is_set():
                for i, client in enumerate(clients):
                    x = BAD if i == failing else GOOD
                    try:
                        result = client.infer("clf", one_row(x))
                    except InferenceServerException as exc:
                        answered[i]["failed"] += 1
                        if i != failing:
                            problems.append(f"replica {i}: {exc}")
                        continue
                    if not np.array_equal(result.as_numpy("OUT_x"), x):
                        problems.append(f"replica {i}: wrong rows {result.as_numpy('OUT_x')}")
                    arm = result.get_response().parameters["sluice_arm"].string_param
                    answered[i][arm] += 1
                time.sleep(0.004)

        caller = threading.Thread(target=traffic)
        caller.start()
        try:
            admins[failing].start_canary(
                "clf", 3, steps=[50, 100], interval_s=4.0, max_error_rate=0.05,
                min_requests=30, max_p99_ratio=100.0, reason="fleet gates")
            wait_until(lambda: admins[leader].deployment("clf")["canary"]["state"] != "running",
                       30, "the canary finished")
        finally:
            stop.set()
            caller.join(30)
        assert not problems, problems[:5]
        return admins[leader].deployment("clf")["canary"], leader, failing, answered
    finally:
        for client in [*admins, *clients]:
            client.close()


def check_rolled_back_on_the_fleet(replicas, canary, leader, failing, answered) -> None:
    assert canary["state"] == "rolled_back", canary
    found = re.fullmatch(r"gate error_rate: candidate (\d\.\d\d) > 0\.05 over (\d+) requests",
                         canary["reason"])
    assert found, canary["reason"]
    # One replica in three fails every candidate request it gets (the traffic is spread evenly
    # and each replica routes half of it to the candidate): about a third of the fleet's.
    assert 0.15 <= float(found.group(1)) <= 0.55, canary["reason"]
    assert int(found.group(2)) >= 30
    # Each replica's own /metrics, read directly: the driver saw candidate successes and no
    # candidate failure of its own, so only the fleet's numbers could roll the canary back.
    own = [r.metric(CANDIDATE_FAILED) or 0.0 for r in replicas]
    assert own[leader] == 0.0 and (replicas[leader].metric(CANDIDATE_OK) or 0.0) > 0, own
    assert own[failing] > 0 and own[failing] == answered[failing]["failed"], (own, answered)
    assert answered[leader]["candidate"] > 0 and answered[leader]["failed"] == 0, answered


def _value(prom: prometheus.PrometheusServer, expr: str) -> float | None:
    result = prom.query(expr)["data"]["result"]
    return float(result[0]["value"][1]) if result else None


def stop_all(replicas: list[Replica]) -> None:
    for replica in replicas:  # all drain at once, then each is waited for
        if replica.proc.poll() is None:
            replica.proc.send_signal(signal.SIGTERM)
    for replica in replicas:
        replica.stop()


def test_a_canary_judged_on_fleet_counters_in_etcd_rolls_back_when_one_replica_fails(
        etcd, repository):
    replicas = start_fleet(etcd.state_store("gates-etcd"), repository)
    try:
        canary, leader, failing, answered = canary_with_one_failing_replica(replicas)
        check_rolled_back_on_the_fleet(replicas, canary, leader, failing, answered)
        assert {r.metric('sluice_fleet_counters_up{store="etcd"}') for r in replicas} == {1.0}
    finally:
        stop_all(replicas)


@pytest.mark.skipif(prometheus.find_binary() is None,
                    reason=prometheus.MISSING.format("prometheus"))
def test_a_canary_judged_with_promql_rolls_back_when_one_replica_fails(etcd, repository,
                                                                         tmp_path):
    port, metrics_ports = free_port(), (free_port(), free_port(), free_port())
    replicas = start_fleet(etcd.state_store("gates-prom"), repository,
                           "--metrics-source", f"prometheus://127.0.0.1:{port}",
                           metrics_ports=metrics_ports)
    prom = None
    try:  # Prometheus starts while the replicas load (their /metrics ports are known)
        prom = prometheus.start_prometheus(
            tmp_path / "prometheus", targets=[f"127.0.0.1:{p}" for p in metrics_ports],
            interval_s=0.5, port=port)
        canary, leader, failing, answered = canary_with_one_failing_replica(replicas)
        check_rolled_back_on_the_fleet(replicas, canary, leader, failing, answered)
        # Judged by PromQL, not by etcd counters: no replica published any.
        assert {r.metric('sluice_fleet_counters_up{store="etcd"}') for r in replicas} == {None}
        assert replicas[leader].metric(
            'sluice_canary_gate_source_up{source="prometheus"}') == 1.0
        # Every gate's query, the agreement and accuracy ones this canary did not ask for
        # included, is one this Prometheus accepts; the candidate's requests over the last
        # minute are the ones the replicas counted themselves.
        queries = {**prom_gates.arm_queries("clf", "candidate", 3, "1m"),
                   **prom_gates.agreement_queries("clf", 3),
                   **prom_gates.accuracy_queries("clf", "candidate", 3)}
        for what, expr in queries.items():
            assert prom.query(expr)["status"] == "success", (what, prom.query(expr))
        counted = sum((r.metric(CANDIDATE_OK) or 0) + (r.metric(CANDIDATE_FAILED) or 0)
                      for r in replicas)
        prom.wait_until(lambda: _value(prom, f"sum({CANDIDATE_TOTAL})") == counted, 10,
                        "the last scrape of the candidate's counters")
    finally:
        stop_all(replicas)
        if prom is not None:
            prom.stop()
