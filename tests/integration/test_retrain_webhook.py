"""``sluice retrain-webhook`` as users run it (a process of its own beside the server): an
Alertmanager payload naming digits starts a real retrain, which puts a better version into a
shadow and a canary on the running server; a payload that is not Alertmanager's is refused."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from sluice.clients import AdminClient
from tests.support.retrain_repo import COPY, digits_v1_repo, retrain_yaml


def _post(url: str, body: bytes) -> tuple[int, dict]:
    request = urllib.request.Request(url, data=body, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=10) as reply:
            return reply.status, json.loads(reply.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def test_an_alert_naming_digits_retrains_it_into_a_canary(make_server, tmp_path: Path):
    repo = digits_v1_repo(tmp_path)
    (repo / "digits" / "retrain.yaml").write_text(
        retrain_yaml(["{python}", "-c", COPY, str(tmp_path / "mlp.onnx"), "{output}"]))
    server = make_server(repo, state_dir=tmp_path / "state")
    proc = subprocess.Popen(
        [sys.executable, "-m", "sluice.server", "retrain-webhook", "--port", "0", "--url",
         server.address, "--model-repository", str(repo), "--state-dir",
         str(tmp_path / "state"), "--alert", "SluiceAccuracyDrop"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        match = re.search(r"listening on (http://\S+/)", line)
        assert match, line
        url = match.group(1)
        assert _post(url, b'{"alerts": []}') == (400, {
            "error": "field 'version' must be \"4\" (Alertmanager's webhook payload version), "
                     "got None"})
        firing = {"version": "4", "status": "firing", "receiver": "retrain", "alerts": [
            {"status": "firing", "labels": {"alertname": "SluiceAccuracyDrop",
                                            "model": "digits", "severity": "ticket"}},
            {"status": "firing", "labels": {"alertname": "SluiceHighP99", "model": "digits"}},
        ]}
        status, reply = _post(url, json.dumps(firing).encode())
        assert (status, reply["started"]) == (200, ["digits"])
        assert reply["ignored"] == [{"alert": "SluiceHighP99",
                                     "reason": "alertname not on --alert"}]
        deadline = time.monotonic() + 120
        with AdminClient(server.address) as admin:
            while (admin.deployment("digits")["canary"] is None
                   and time.monotonic() < deadline):
                time.sleep(0.1)
            d = admin.deployment("digits")
        assert d["canary"] is not None, "no canary within 120 s"
        assert (d["canary"]["state"], d["canary"]["candidate_version"]) == ("running", 2)
        assert [s["version"] for s in d["shadows"]] == [2]
    finally:
        proc.terminate()
        out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 0
    assert "retrain digits: canary: version 2 over stable 1" in out
