"""Ground truth and live quality through a real server: the bundled digits model answers its own
held-out split (test_split.npz), labels come back by request id (``sluice feedback`` with CSV and
Parquet files, and AdminClient), and the numbers the server reports are the ones computed here
from the very answers the client received (numpy, and scikit-learn where installed).

Needs the servicer to offer finished requests to the monitor hub (the quality branch's minimal
hand-off, or the prediction log branch's).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest
import tritonclient.grpc as tc

from sluice.clients import AdminClient
from sluice.server.app import BUNDLED_REPOSITORY
from sluice.server.cli import main as cli
from tests.support.metrics import labels, scrape

SPLIT = np.load(BUNDLED_REPOSITORY / "digits" / "test_split.npz")
X, Y = SPLIT["X"].astype(np.float32), SPLIT["y"].astype(np.int64)
#: How far the accuracy estimated from confidence may be from the measured accuracy on digits'
#: held-out split (version 2, the MLP: mean top probability 0.9784, accuracy 355/360 = 0.9861).
ESTIMATE_TOLERANCE = 0.02


def digits_repo(root: Path, deployment: str | None = None) -> Path:
    shutil.copytree(BUNDLED_REPOSITORY / "digits", root / "digits")
    if deployment is not None:  # live quality stays on: it is what these tests watch
        (root / "digits" / "deployment.yaml").write_text(deployment + "quality: {}\n")
    return root


def ask(address: str, rows_per_request: int, prefix: str) -> list[dict]:
    """The split in requests of ``rows_per_request`` rows with ids ``prefix<i>``; per request:
    id, first row, version, arm, label and probabilities as received."""
    answers = []
    with tc.InferenceServerClient(address) as client:
        for i, start in enumerate(range(0, len(X), rows_per_request)):
            rows = X[start:start + rows_per_request]
            given = tc.InferInput("input", list(rows.shape), "FP32")
            given.set_data_from_numpy(rows)
            result = client.infer("digits", [given], request_id=f"{prefix}{i}")
            reply = result.get_response()
            arm = reply.parameters["sluice_arm"].string_param if (
                "sluice_arm" in reply.parameters) else ""
            answers.append({"id": reply.id, "start": start, "version": int(reply.model_version),
                            "arm": arm, "label": result.as_numpy("label").reshape(-1),
                            "probabilities": result.as_numpy("probabilities")})
    return answers


def hand_f1_macro(truth: np.ndarray, predicted: np.ndarray) -> float:
    """Macro F1 over the classes seen as a label or a prediction, from the definition."""
    scores = []
    for c in np.union1d(truth, predicted):
        tp = np.sum((truth == c) & (predicted == c))
        precision = tp / max(np.sum(predicted == c), 1)
        recall = tp / max(np.sum(truth == c), 1)
        scores.append(0.0 if tp == 0 else 2 * precision * recall / (precision + recall))
    return float(np.mean(scores))


def only_window(report: dict, version: int, arm: str = "") -> dict:
    [window] = [w for w in report["windows"] if (w["version"], w["arm"]) == (version, arm)]
    return window


def test_feedback_joins_answers_and_quality_is_what_the_answers_give(
    make_server, tmp_path, capsys
):
    log_dir = tmp_path / "log"
    running = make_server(digits_repo(tmp_path / "models"), metrics_port=0,
                          prediction_log_dir=log_dir)
    answers = ask(running.address, 4, "q")  # 90 requests of 4 rows, all by version 2
    assert {(a["version"], a["arm"]) for a in answers} == {(2, "")}
    predicted = np.concatenate([a["label"] for a in answers])
    top = np.concatenate([a["probabilities"] for a in answers]).max(axis=1)

    # Requests 0..59 labelled row by row from a CSV, with three bad lines and an unknown id.
    lines = ["id,row,label"] + [f"q{i},{r},{Y[4 * i + r]}" for i in range(60) for r in range(4)]
    lines[5:5] = [",0,1", "q3,0,seven", "q3,9,1", "never-seen,0,4"]  # lines 6..9
    csv_file = tmp_path / "labels.csv"
    csv_file.write_text("\n".join(lines) + "\n")
    url = ["--url", running.address]
    assert cli(["feedback", "digits", "--file", str(csv_file), *url]) == 1
    out = capsys.readouterr().out
    assert out.splitlines() == [
        "model digits: 242 labels sent, 240 joined (0 rows relabelled), 1 unknown ids, "
        "3 refused; 241 logged",
        "  line 6: id is empty",
        "  line 7: id 'q3': label 'seven' is not a number",
        "  line 8: id 'q3': row 9: request 'q3' had 4 row(s)",
    ]
    with AdminClient(running.address) as admin:
        w = only_window(admin.quality("digits"), 2)
    right = predicted[:240] == Y[:240]
    assert (w["predicted_rows"], w["labelled_rows"]) == (360, 240)
    m = w["metrics"]
    assert m["accuracy"] == right.mean() and m["labelled_share"] == 240 / 360
    assert m["f1_macro"] == pytest.approx(hand_f1_macro(Y[:240], predicted[:240]), rel=1e-12)
    assert m["estimated_accuracy"] == pytest.approx(top.mean(), rel=1e-6)
    assert m["estimated_accuracy_labelled"] == pytest.approx(top[:240].mean(), rel=1e-6)
    metrics = pytest.importorskip("sklearn.metrics")
    assert m["f1_macro"] == pytest.approx(
        metrics.f1_score(Y[:240], predicted[:240], average="macro"), rel=1e-12)
    assert m["precision_macro"] == pytest.approx(
        metrics.precision_score(Y[:240], predicted[:240], average="macro"), rel=1e-12)
    confusion = metrics.confusion_matrix(Y[:240], predicted[:240], labels=range(10))
    assert {(c["label"], c["predicted"]): c["rows"] for c in w["confusion"]} == {
        (t, p): int(confusion[t, p]) for t in range(10) for p in range(10) if confusion[t, p]}

    # The rest arrive late, from Parquet; one row first wrongly, then corrected (last wins).
    wrong = (Y[240] + 1) % 10
    late = {"id": [f"q{i}" for i in range(60, 90) for _ in range(4)] + ["q60"],
            "row": [r for _ in range(60, 90) for r in range(4)] + [0],
            "label": [int(wrong)] + [int(y) for y in Y[241:]] + [int(Y[240])]}
    pq.write_table(pa.table(late), tmp_path / "late.parquet")
    assert cli(["feedback", "digits", "--file", str(tmp_path / "late.parquet"), *url]) == 0
    assert "121 labels sent, 121 joined (1 rows relabelled)" in capsys.readouterr().out
    assert cli(["quality", "digits", "--json", *url]) == 0
    report = json.loads(capsys.readouterr().out)
    w = only_window(report, 2)
    accuracy = float(np.mean(predicted == Y))
    assert (w["labelled_rows"], w["metrics"]["accuracy"]) == (360, accuracy)
    assert accuracy == 355 / 360  # the MLP on its held-out split
    # Before labels, the estimate; now beside the measure, within the stated tolerance.
    assert abs(w["metrics"]["estimated_accuracy"] - accuracy) <= ESTIMATE_TOLERANCE
    assert w["metrics"]["estimate_error"] == pytest.approx(top.mean() - accuracy, rel=1e-5)
    assert sum(w["confidence_histogram"]) == 360
    assert report["counts"]["joined"] == 361 and report["counts"]["unknown"] == 1
    assert cli(["quality", "digits", *url]) == 0
    assert f"accuracy {accuracy:.4f}" in capsys.readouterr().out

    sample = scrape(running)
    key = dict(model="digits", version="2", arm="")
    assert sample[("sluice_quality", labels(**key, metric="accuracy"))] == accuracy
    assert sample[("sluice_quality_rows", labels(**key, kind="labelled"))] == 360
    assert sample[("sluice_prediction_confidence_count", labels(**key))] == 360
    assert sample[("sluice_feedback_labels_total",
                   labels(model="digits", outcome="joined"))] == 361

    # Every valid label is in the feedback log, readable as one Hive-partitioned table.
    table = ds.dataset(log_dir / "feedback", partitioning="hive").to_table().to_pydict()
    assert len(table["id"]) == 241 + 121
    assert set(table["model"]) == {"digits"} and set(table["version"]) == {2, None}
    assert table["id"].count("never-seen") == 1


def test_a_label_file_that_cannot_be_read_is_refused_whole(make_server, tmp_path, capsys):
    running = make_server(digits_repo(tmp_path / "models"))
    url = ["--url", running.address]
    broken = tmp_path / "broken.parquet"
    broken.write_bytes(b"PAR1 not really")
    (tmp_path / "no_id.csv").write_text("request,label\nq1,3\n")
    (tmp_path / "labels.txt").write_text("id,label\n")
    for name, message in (
        ("broken.parquet", "broken.parquet: not a readable parquet file"),
        ("no_id.csv", "no_id.csv: needs columns id and label (or value), and optionally row; "
                      "found request, label"),
        ("labels.txt", "labels.txt: expected a .csv or .parquet file"),
        ("missing.csv", "missing.csv: no such file"),
    ):
        assert cli(["feedback", "digits", "--file", str(tmp_path / name), *url]) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"sluice feedback: {message}") and "Traceback" not in err
        assert str(tmp_path) not in err


def test_quality_per_arm_under_a_90_10_route(make_server, tmp_path):
    repo = digits_repo(tmp_path / "models", "aliases: {stable: 2, candidate: 1}\n"
                                            "routes: {stable: 90, candidate: 10}\n")
    running = make_server(repo)
    answers = ask(running.address, 1, "r")  # 360 requests of one row
    arms = {(a["version"], a["arm"]) for a in answers}
    assert arms == {(2, "stable"), (1, "candidate")}
    share = sum(a["arm"] == "candidate" for a in answers) / len(answers)
    assert abs(share - 0.10) <= 0.05, share
    with AdminClient(running.address) as admin:
        result = admin.feedback("digits", [(a["id"], None, int(Y[a["start"]])) for a in answers])
        assert (result["joined"], result["unknown"], result["invalid"]) == (360, 0, 0)
        report = admin.quality("digits")
    for version, arm in arms:
        mine = [a for a in answers if a["arm"] == arm]
        predicted = np.array([a["label"][0] for a in mine])
        truth = Y[[a["start"] for a in mine]]
        w = only_window(report, version, arm)
        assert (w["predicted_rows"], w["labelled_rows"]) == (len(mine), len(mine))
        assert w["metrics"]["accuracy"] == float(np.mean(predicted == truth))
        assert w["metrics"]["f1_macro"] == pytest.approx(hand_f1_macro(truth, predicted),
                                                         rel=1e-12)
