"""Drift through a real server: held-out digits stay under PSI 0.2 and scaled ones go over it,
as /metrics, the DriftReport RPC and ``sluice drift --json`` report it (checked against PSI and
KS recomputed here with NumPy and scipy from the bundled profile); a profile that does not match
the model fails its load naming the feature; ``sluice profile`` reproduces the bundled profile
from the training split."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as tc
from scipy.stats import ks_2samp

from sluice.clients import Client
from sluice.server.cli import main as cli
from sluice.server.monitoring.profile import FILENAME
from tests.support.metrics import labels, scrape

HELD_OUT_FILE = "test_split.npz"


@pytest.fixture
def drift_repo(repo_copy: Path) -> Path:
    # every request sampled, so the window holds exactly the rows sent
    (repo_copy / "digits" / "deployment.yaml").write_text("drift: {sample: 1.0}\n")
    return repo_copy


@pytest.fixture
def server(make_server, drift_repo: Path):
    return make_server(drift_repo, model_control="explicit", startup_models=("digits",),
                       metrics_port=0, drift_interval_s=3600.0)


def _send(address: str, version: str, x: np.ndarray) -> None:
    with tc.InferenceServerClient(address) as client:
        for lo in range(0, len(x), 40):
            rows = np.ascontiguousarray(x[lo:lo + 40], dtype=np.float32)
            given = tc.InferInput("input", list(rows.shape), "FP32")
            given.set_data_from_numpy(rows)
            client.infer("digits", [given], model_version=version)


def _compute(server) -> None:
    """What the schedule does, now: hand the hub's records over, compute the windows."""
    server.server.monitors.hub.drain()
    server.server.monitors.drift.compute_now()


def _psi_by_hand(profile: dict, x: np.ndarray) -> dict[str, float]:
    out = {}
    for j, feature in enumerate(profile["features"]):
        edges = np.array(feature["edges"])
        counts = np.bincount(np.searchsorted(edges, x[:, j], side="left"),
                             minlength=edges.size + 1)
        live = np.maximum(counts / counts.sum(), 1e-4)
        ref = np.maximum(np.array(feature["fractions"]), 1e-4)
        out[feature["name"]] = float(np.sum((live - ref) * np.log(live / ref)))
    return out


def test_scaled_inputs_drift_and_held_out_inputs_do_not(server, drift_repo, capsys):
    digits = drift_repo / "digits"
    held_out = np.load(digits / HELD_OUT_FILE)["X"]
    profile = json.loads((digits / "2" / FILENAME).read_text())
    training = _training_rows()
    _send(server.address, "2", held_out)
    _send(server.address, "1", held_out * 1.5)
    _compute(server)

    assert cli(["drift", "digits", "--json", "--url", server.address]) == 0
    reports = {r["version"]: r for r in json.loads(capsys.readouterr().out)}
    assert set(reports) == {1, 2}
    calm, drifted = reports[2], reports[1]
    assert calm["rows"] == drifted["rows"] == 360
    assert calm["max_psi"] < 0.2 < drifted["max_psi"]
    by_hand = _psi_by_hand(profile, held_out)
    for feature in calm["features"]:
        assert feature["psi"] == pytest.approx(by_hand[feature["name"]], rel=1e-6, abs=1e-9)
        column = int(feature["name"][6:-1])
        assert feature["ks"] == pytest.approx(
            ks_2samp(held_out[:, column], training[:, column]).statistic, abs=1e-6)
        assert feature["missing_rate"] == 0.0
    scaled_by_hand = _psi_by_hand(json.loads((digits / "1" / FILENAME).read_text()),
                                  held_out * 1.5)
    assert max(scaled_by_hand.values()) > 0.2
    for feature in drifted["features"]:
        assert feature["psi"] == pytest.approx(scaled_by_hand[feature["name"]], rel=1e-6,
                                               abs=1e-9)
    # version 2's labels on held-out rows: close to the training distribution
    assert calm["prediction_kind"] == "class" and calm["prediction_drift"] < 0.1

    metrics = scrape(server)
    psi = {dict(k[1])["feature"]: v for k, v in metrics.items()
           if k[0] == "sluice_drift_psi" and ("version", "1") in k[1]}
    assert len(psi) == 20  # the 20 most drifted features only
    top = sorted(scaled_by_hand.values(), reverse=True)[:20]
    assert sorted(psi.values(), reverse=True) == pytest.approx(top, rel=1e-6)
    assert metrics[("sluice_drift_max_psi", labels(model="digits", version="1"))] == \
        pytest.approx(max(scaled_by_hand.values()), rel=1e-6)
    # per-bin counters cover every feature and add up to the rows sent
    bins = [v for k, v in metrics.items() if k[0] == "sluice_drift_bin_count_total"
            and ("feature", "input[36]") in k[1] and ("version", "2") in k[1]]
    assert len(bins) == len(profile["features"][36]["fractions"]) and sum(bins) == 360
    assert metrics[("sluice_prediction_drift", labels(model="digits", version="2"))] == \
        pytest.approx(calm["prediction_drift"])
    # the windows were coded in drift's worker process, which is still the first one
    assert metrics[("sluice_drift_worker_lost_total", labels())] == 0
    assert metrics[("sluice_drift_worker_cpu_seconds_total", labels())] > 0

    assert cli(["drift", "digits", "--url", server.address]) == 0
    text = capsys.readouterr().out
    assert "digits version 1: 360 rows in the window" in text
    assert "drifted" in text and "reference" in text  # the table flags, the histograms follow


def test_a_profile_that_does_not_match_fails_the_load_naming_the_feature(make_server,
                                                                         drift_repo):
    path = drift_repo / "digits" / "2" / FILENAME
    doc = json.loads(path.read_text())
    doc["features"][12]["name"] = "input[12b]"
    path.write_text(json.dumps(doc))
    running = make_server(drift_repo, model_control="explicit", startup_models=("digits",))
    with Client(running.address) as client:
        rows = [r for r in client.repository_index(timeout=10.0) if r["name"] == "digits"]
    assert rows and rows[0]["state"] == "UNAVAILABLE"
    assert ("model 'digits' version 2: reference_profile.json: feature 'input[12b]' is not a "
            "feature of the model's inputs") in rows[0]["reason"]


def test_a_model_without_a_profile_has_no_drift_report(server, capsys):
    assert cli(["drift", "identity", "--url", server.address]) == 1
    assert "has no drift window" in capsys.readouterr().err


def _training_rows() -> np.ndarray:
    import sys

    from sluice.server.app import BUNDLED_REPOSITORY

    sys.path.insert(0, str(BUNDLED_REPOSITORY))
    try:
        import build_profiles
    finally:
        sys.path.remove(str(BUNDLED_REPOSITORY))
    return build_profiles.training_rows()


def test_sluice_profile_reproduces_the_bundled_profile(repo_copy, tmp_path, capsys):
    data = tmp_path / "digits_train.npz"  # the name build_profiles.py gives it
    np.savez(data, input=_training_rows())
    (repo_copy / "digits" / "2" / FILENAME).unlink()
    assert cli(["profile", "digits", "--version", "2", "--data", str(data),
                "--model-repository", str(repo_copy)]) == 0
    assert "wrote digits/2/reference_profile.json: 1437 rows, 64 features, prediction 'label' " \
        "(class)" in capsys.readouterr().out
    from sluice.server.app import BUNDLED_REPOSITORY

    assert (repo_copy / "digits" / "2" / FILENAME).read_text() == \
        (BUNDLED_REPOSITORY / "digits" / "2" / FILENAME).read_text()
    assert cli(["profile", "digits", "--data", str(tmp_path / "missing.npz"),
                "--model-repository", str(repo_copy)]) == 2
    assert "missing.npz: not a readable .npz file" in capsys.readouterr().err
