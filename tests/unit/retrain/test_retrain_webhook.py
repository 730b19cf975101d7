"""The Alertmanager receiver: payload validation naming the field, which alerts ask for which
model, and at most one retrain per model at a time, over real HTTP. The retrain it starts is a
function handed in (here one that waits for the test to let it finish)."""

from __future__ import annotations

import json
import threading
import time
import urllib.error
import urllib.request

import pytest

from sluice.server.retrain.webhook import PayloadError, RetrainWebhook, models_asked


def alert(model: str | None, status: str = "firing", name: str = "SluiceFeaturePsiHigh") -> dict:
    labels = {"alertname": name, "severity": "ticket"}
    if model is not None:
        labels["model"] = model
    return {"status": status, "labels": labels, "annotations": {}, "startsAt":
            "2026-01-01T00:00:00Z", "endsAt": "0001-01-01T00:00:00Z", "fingerprint": "f"}


def payload(*alerts: dict) -> dict:
    return {"version": "4", "groupKey": "{}:{}", "truncatedAlerts": 0, "status": "firing",
            "receiver": "retrain", "groupLabels": {}, "commonLabels": {},
            "commonAnnotations": {}, "externalURL": "http://am:9093", "alerts": list(alerts)}


def test_firing_alerts_with_a_model_label_ask_for_that_model_once():
    models, ignored = models_asked(payload(
        alert("digits"), alert("cnn"), alert("digits", name="Other"), alert("x", "resolved"),
        alert(None)))
    assert models == ["digits", "cnn"]
    assert ignored == [{"alert": "SluiceFeaturePsiHigh", "reason": "resolved"},
                       {"alert": "SluiceFeaturePsiHigh", "reason": "no 'model' label"}]
    models, ignored = models_asked(payload(alert("digits"), alert("cnn", name="Other")),
                                   alertnames=["Other"])
    assert models == ["cnn"]
    assert ignored == [{"alert": "SluiceFeaturePsiHigh", "reason": "alertname not on --alert"}]


@pytest.mark.parametrize(("body", "message"), [
    ([], "the body must be a JSON object"),
    ({"alerts": []}, "field 'version' must be \"4\""),
    ({"version": "4", "alerts": {}}, "field 'alerts' must be a list"),
    ({"version": "4", "alerts": ["x"]}, r"alerts\[0\] must be an object"),
    ({"version": "4", "alerts": [{"status": "pending", "labels": {}}]},
     r"alerts\[0\].status must be \"firing\" or \"resolved\", got 'pending'"),
    ({"version": "4", "alerts": [{"status": "firing", "labels": {"model": 3}}]},
     r"alerts\[0\].labels must be an object of strings"),
])
def test_a_payload_that_is_not_alertmanagers_is_refused_naming_the_field(body, message):
    with pytest.raises(PayloadError, match=message):
        models_asked(body)


def _post(port: int, body: bytes) -> tuple[int, dict]:
    request = urllib.request.Request(f"http://127.0.0.1:{port}/", data=body, method="POST",
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=10) as reply:
            return reply.status, json.loads(reply.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def _status(port: int) -> dict:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/status", timeout=10) as reply:
        return json.loads(reply.read())


def test_one_retrain_per_model_at_a_time_off_the_answering_thread():
    release = threading.Event()
    runs: list[tuple[str, str]] = []

    def run(model: str) -> str:
        runs.append((model, threading.current_thread().name))
        release.wait(30)
        return "done"

    hook = RetrainWebhook(run, lambda model: model == "digits", port=0)
    hook.start()
    try:
        body = json.dumps(payload(alert("digits"), alert("unknown"))).encode()
        assert _post(hook.port, body) == (200, {
            "started": ["digits"], "running": [],
            "ignored": [{"model": "unknown", "reason": "no retrain.yaml for this model"}]})
        assert _post(hook.port, body)[1]["running"] == ["digits"]  # still busy: not started
        assert _status(hook.port)["running"] == ["digits"]
        release.set()
        deadline = time.monotonic() + 30
        while _status(hook.port)["running"] and time.monotonic() < deadline:
            time.sleep(0.02)
        assert _post(hook.port, body)[1]["started"] == ["digits"]
        assert _post(hook.port, b"{not json")[0] == 400
        status, reply = _post(hook.port, json.dumps({"version": "3", "alerts": []}).encode())
        assert status == 400 and reply["error"].startswith("field 'version' must be \"4\"")
    finally:
        release.set()
        hook.close(timeout_s=30)
    assert runs == [("digits", "sluice-retrain:digits")] * 2
    assert hook.counts["started"] == 2 and hook.counts["running"] == 1
    assert hook.counts["rejected"] == 2 and hook.counts["requests"] == 5
