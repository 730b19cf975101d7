"""The Admin service through a real server: AdminClient, the ``sluice deploy`` / ``sluice shadow``
commands, the audit log, and a canary whose candidate really fails rolling back on its own.

Models (tests/support/shadow_models.py): ``clf`` version 1 = identity (live), 2 = scaled,
3 = an ONNX graph whose Gather index goes out of bounds for inputs >= 8 (a run-time fault in
onnxruntime, not a mock).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from sluice.clients import AdminClient, Client, InvalidInput, ModelNotFound, ServerError
from sluice.server.cli import main as cli
from tests.support.metrics import labels, scrape
from tests.support.running import RunningServer
from tests.support.shadow_models import CLASSES, FAULT_TABLE, classifier_repo

MODEL = "clf"
ROWS = np.arange(2 * CLASSES, dtype=np.float32).reshape(2, CLASSES) % 4 + FAULT_TABLE + 1


@pytest.fixture
def running(make_server: Callable[..., RunningServer], tmp_path: Path) -> RunningServer:
    repo = classifier_repo(tmp_path / "models")
    return make_server(repo, state_dir=tmp_path / "state")


def audit(tmp_path: Path) -> list[dict]:
    path = tmp_path / "state" / "audit.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()]


def served_version(client: Client, **kwargs) -> str:
    request = client.build_request(MODEL, {"IN_x": np.ones((1, CLASSES), np.float32)}, **kwargs)
    return client.infer_request(request).model_version


def test_routes_alias_switch_and_rollback(running: RunningServer, tmp_path: Path) -> None:
    with AdminClient(running.address, caller="alice") as admin, Client(running.address) as client:
        assert admin.deployment(MODEL)["routes"] == []
        state = admin.set_routes(MODEL, {"1": 90, "2": 10}, reason="A/B")
        assert [(r["arm"], r["version"], r["weight"]) for r in state["routes"]] == [
            ("v1", 1, 90.0), ("v2", 2, 10.0)]
        state = admin.set_alias(MODEL, "stable", 1)
        assert state["aliases"] == [{"name": "stable", "version": 1}]
        assert served_version(client, version="stable") == "1"

        state = admin.switch(MODEL, 2, reason="blue-green")
        assert [(r["arm"], r["version"]) for r in state["routes"]] == [("stable", 2)]
        assert {served_version(client) for _ in range(10)} == {"2"}

        state = admin.rollback(MODEL, reason="oops")
        assert [r["version"] for r in state["routes"]] == [1, 2]
        assert state["aliases"] == [{"name": "stable", "version": 1}]

        with pytest.raises(ModelNotFound, match="version 9"):
            admin.set_alias(MODEL, "stable", 9)
        with pytest.raises(ModelNotFound, match="'nope'"):
            admin.deployment("nope")
        with pytest.raises(InvalidInput, match="weight"):
            admin.set_routes(MODEL, {"1": 0})
        with pytest.raises(ModelNotFound, match="no shadow"):
            admin.stop_shadow(MODEL, 2)
        with pytest.raises(ServerError, match="no running canary"):
            admin.abort_canary(MODEL)

    records = audit(tmp_path)
    assert [r["action"] for r in records] == [
        "set_routes", "set_alias", "switch", "rollback"]
    assert {r["caller"] for r in records} == {"alice"}
    assert records[2]["reason"] == "blue-green"
    assert records[2]["before"]["aliases"] == {"stable": 1}
    assert records[2]["after"]["routes"] == [{"arm": "stable", "version": 2, "weight": 1.0}]


def test_cli_deploy_and_shadow_report(
    running: RunningServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    read = ["--url", running.address]  # read-only commands take no audit options
    url = [*read, "--caller", "bob"]
    assert cli(["deploy", MODEL, "routes", "1=3", "2=1", *url]) == 0
    out = capsys.readouterr().out
    assert "v1 (v1) 75%" in out and "v2 (v2) 25%" in out
    assert cli(["deploy", MODEL, "alias", "stable=1", *url]) == 0
    assert cli(["deploy", MODEL, "switch", "stable", *url, "--reason", "go"]) == 0
    assert "stable (v1) 100%" in capsys.readouterr().out
    assert cli(["infer", MODEL, "--url", running.address]) == 0
    assert "answered by clf version 1 (arm stable)\n" in capsys.readouterr().out
    assert cli(["deploy", MODEL, "shadow", "start", "2", "--sample", "1", *url]) == 0
    assert "v2 at 100%" in capsys.readouterr().out
    assert cli(["shadow", "report", MODEL, *read]) == 0
    assert capsys.readouterr().out == (
        "model clf: shadow of v2 running; no traffic yet (comparisons appear as requests "
        "arrive)\n")

    inputs = {"IN_x": np.eye(CLASSES, dtype=np.float32)}
    with Client(running.address) as client:
        for _ in range(5):
            client.infer(MODEL, inputs)
    with AdminClient(running.address) as admin:
        # Comparisons happen off the request path, in idle time (a SCHED_IDLE thread that a CPU
        # hog can starve for seconds: 3 of 5 after 5 s in stress loop B, run 5): wait for
        # them, up to a minute.
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            reports = admin.shadow_report(MODEL)
            if reports and reports[0]["compared"] == 5:
                break
            time.sleep(0.05)
    assert cli(["shadow", "report", MODEL, "--json", *read]) == 0
    [report] = json.loads(capsys.readouterr().out)
    assert (report["live_version"], report["shadow_version"]) == (1, 2)
    assert report["mirrored"] == 5 and report["compared"] == 5
    # eye(4) rows: identity and the candidate (last column doubled) both pick the diagonal
    assert report["label_rows"] == 5 * CLASSES and report["agreement"] == 1.0
    assert cli(["shadow", "report", MODEL, *read]) == 0
    table = capsys.readouterr().out
    assert table.startswith(f"model {MODEL}\n") and "agree" in table

    assert cli(["deploy", MODEL, "shadow", "stop", *url]) == 0
    assert "shadows: none" in capsys.readouterr().out
    assert cli(["deploy", MODEL, "status", "--json", *read]) == 0
    status = json.loads(capsys.readouterr().out)
    assert status["model"] == MODEL and status["shadows"] == []
    assert {a["arm"] for a in status["arms"]} >= {"stable"}

    assert cli(["deploy", MODEL, "alias", "stable=9", *url]) == 1
    assert "version 9" in capsys.readouterr().err
    assert cli(["deploy", MODEL, "rollback", *url]) == 0
    assert "shadows: v2 at 100%" in capsys.readouterr().out
    assert {r["caller"] for r in audit(tmp_path)} == {"bob"}
    assert audit(tmp_path)[2]["reason"] == "go"


def test_a_failing_canary_rolls_back_on_its_own(running: RunningServer, tmp_path: Path) -> None:
    inputs = {"IN_x": ROWS}  # values >= FAULT_TABLE: version 3 fails at run time, 1 does not
    with AdminClient(running.address, caller="carol") as admin, Client(running.address) as client:
        admin.switch(MODEL, 1)
        state = admin.start_canary(MODEL, 3, steps=(50, 100), interval_s=60,
                                   max_error_rate=0.01, min_requests=10)
        assert state["canary"]["state"] == "running" and state["canary"]["percent"] == 50
        assert {(r["arm"], r["version"]) for r in state["routes"]} == {
            ("stable", 1), ("candidate", 3)}
        with pytest.raises(ServerError, match="runs a canary"):
            admin.switch(MODEL, 2)

        errors = 0
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                client.infer(MODEL, inputs, timeout=5)
            except ServerError:
                errors += 1
            canary = admin.deployment(MODEL)["canary"]
            if canary["state"] != "running":
                break
            time.sleep(0.02)
        assert canary["state"] == "rolled_back", canary
        assert errors >= 10
        # Long before the 60 s step would have ended: the early error gate fired.
        assert time.monotonic() < deadline
        state = admin.deployment(MODEL)
        assert [(r["arm"], r["version"], r["weight"]) for r in state["routes"]] == [
            ("stable", 1, 100.0)]
        for _ in range(20):  # every caller is back on the stable version
            assert client.infer(MODEL, inputs)["OUT_x"].shape == (2, CLASSES)

    last = audit(tmp_path)[-1]
    assert last["action"] == "canary_rollback" and last["caller"] == "sluice-canary"
    assert last["reason"].startswith("gate error_rate: candidate 1.00 > 0.01 over ")
    assert last["reason"] == canary["reason"]
    assert last["after"]["canary"]["state"] == "rolled_back"
    assert [r["action"] for r in audit(tmp_path)] == ["switch", "canary_start", "canary_rollback"]


def test_a_promoted_shadow_is_listed_nowhere_and_arms_count_by_version(
    make_server: Callable[..., RunningServer], tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Shadow v2 compares 3 requests of v1, then a switch promotes v2: deploy status, shadow
    report and /metrics no longer show a shadow of v2, and the arm table keeps v1's 3 requests
    apart from v2's 2. A rollback brings the shadow back."""
    running = make_server(classifier_repo(tmp_path / "models"), state_dir=tmp_path / "state",
                          metrics_port=0)
    inputs = {"IN_x": np.eye(CLASSES, dtype=np.float32)}
    with AdminClient(running.address) as admin, Client(running.address) as client:
        admin.switch(MODEL, 1)
        admin.start_shadow(MODEL, 2, sample=1.0)
        for _ in range(3):
            client.infer(MODEL, inputs)
        deadline = time.monotonic() + 60  # comparisons happen off the request path, when idle
        while time.monotonic() < deadline:
            if [r["compared"] for r in admin.shadow_report(MODEL)] == [3]:
                break
            time.sleep(0.05)
        pair = labels(live_version="1", model="clf", shadow_version="2")
        assert scrape(running)[("sluice_shadow_compared_total", pair)] == 3.0

        assert admin.switch(MODEL, 2)["shadows"] == []
        assert admin.shadow_report(MODEL) == []
        for _ in range(2):
            client.infer(MODEL, inputs)
        state = admin.deployment(MODEL)
    assert state["shadows"] == []
    assert [(a["arm"], a["version"], a["requests"]) for a in state["arms"]] == [
        ("stable", 1, 3), ("stable", 2, 2)]
    samples = scrape(running)
    assert not [name for name, _ in samples if name.startswith("sluice_shadow_")]
    arms = {key: value for (name, key), value in samples.items()
            if name == "sluice_arm_requests_total" and dict(key)["outcome"] == "success"}
    assert arms == {labels(arm="stable", model="clf", outcome="success", version="1"): 3.0,
                    labels(arm="stable", model="clf", outcome="success", version="2"): 2.0}

    read = ["--url", running.address]
    assert cli(["deploy", MODEL, "status", *read]) == 0
    status = capsys.readouterr().out
    assert "shadows: none" in status
    assert [line.split()[:3] for line in status.splitlines()[-3:]] == [
        ["arm", "version", "requests"], ["stable", "1", "3"], ["stable", "2", "2"]]
    assert cli(["shadow", "report", MODEL, *read]) == 0
    assert capsys.readouterr().out.startswith("no shadow comparisons")
    assert cli(["deploy", MODEL, "rollback", *read, "--caller", "bob"]) == 0
    assert "shadows: v2 at 100%" in capsys.readouterr().out
