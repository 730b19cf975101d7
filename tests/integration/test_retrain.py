"""``sluice retrain digits`` against a real server over a private copy of the digits model.

The repository holds digits version 1 only. Trainers here are real commands: the bundled
``digits/train.py`` (scikit-learn + skl2onnx; that test skips without them), or one-line Python
commands that copy a real ONNX file (version 2's MLP, version 1 itself, the identity model) or
write garbage, so that the pipeline's paths (better, not better, failed at a step) run without
scikit-learn. Accuracies are recomputed here with onnxruntime on the held-out split.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from sluice.clients import AdminClient, Client
from sluice.server.app import BUNDLED_REPOSITORY
from sluice.server.cli import main as cli
from tests.support.retrain_repo import (
    COPY,
    DIGITS,
    accuracy,
    digits_v1_repo,
    retrain_yaml,
)
from tests.support.running import RunningServer


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    return digits_v1_repo(tmp_path)


@pytest.fixture
def server(make_server: Callable[..., RunningServer], repo: Path, tmp_path: Path
           ) -> RunningServer:
    return make_server(repo, state_dir=tmp_path / "state")


def run_retrain(server: RunningServer, repo: Path, tmp_path: Path, capsys, *extra: str
                ) -> tuple[int, dict, str]:
    """(exit status, the --json outcome, the step lines printed before it)."""
    code = cli(["retrain", "digits", "--json", "--url", server.address, "--model-repository",
                str(repo), "--state-dir", str(tmp_path / "state"), *extra])
    out = capsys.readouterr().out
    steps, _, outcome = out.partition("\n{")
    return code, json.loads("{" + outcome), steps


def untouched(server: RunningServer, repo: Path) -> None:
    """Version 1 alone serves, with no deployment change, and no version 2 was written."""
    assert sorted(p.name for p in (repo / "digits").iterdir() if p.name.isdigit()) == ["1"]
    with AdminClient(server.address) as admin, Client(server.address) as client:
        d = admin.deployment("digits")
        assert (d["routes"], d["aliases"], d["shadows"], d["canary"]) == ([], [], [], None)
        rows = client.repository_index(ready_only=True)
    assert [r["version"] for r in rows if r["name"] == "digits"] == ["1"]


def test_a_better_candidate_becomes_version_2_with_a_shadow_and_a_canary(server, repo, tmp_path,
                                                                          capsys):
    mlp = tmp_path / "mlp.onnx"
    (repo / "digits" / "retrain.yaml").write_text(
        retrain_yaml(["{python}", "-c", COPY, str(mlp), "{output}"]))
    code, outcome, steps = run_retrain(server, repo, tmp_path, capsys)
    assert code == 0, steps
    assert (outcome["outcome"], outcome["version"], outcome["serving_version"]) == (
        "deployed", 2, 1)
    assert outcome["figures"]["serving_score"] == accuracy(DIGITS / "1" / "model.onnx") == 0.975
    assert outcome["figures"]["candidate_score"] == accuracy(mlp)
    assert outcome["figures"]["training_rows"] == outcome["figures"]["train_rows"] == 1437
    # one line per step, in order, each with its figures
    lines = steps.splitlines()
    assert [line.split(":")[1].strip() for line in lines] == [
        "serving", "fetch", "validate", "train", "evaluate", "publish", "load", "shadow",
        "canary"]
    assert "accuracy on 360 held-out rows: candidate 0.9861, serving version 1 0.9750" in steps
    assert (repo / "digits" / "2" / "model.onnx").read_bytes() == mlp.read_bytes()
    provenance = json.loads((repo / "digits" / "2" / "retrain.json").read_text())
    assert provenance["serving_version"] == 1
    with AdminClient(server.address) as admin, Client(server.address) as client:
        d = admin.deployment("digits")
        assert [r["version"] for r in client.repository_index(ready_only=True)
                if r["name"] == "digits"] == ["1", "2"]
    assert [(s["version"], s["sample"]) for s in d["shadows"]] == [(2, 1.0)]
    canary = d["canary"]
    assert (canary["state"], canary["stable_version"], canary["candidate_version"],
            canary["steps"], canary["percent"]) == ("running", 1, 2, [5.0, 50.0, 100.0], 5.0)
    assert {a["name"]: a["version"] for a in d["aliases"]} == {"stable": 1, "candidate": 2}
    audit = [json.loads(line) for line in (tmp_path / "state" / "audit.jsonl").read_text()
             .splitlines()]
    assert {e["caller"] for e in audit} == {"sluice-retrain"}
    # a second run while the canary runs changes nothing and says why
    code, outcome, _ = run_retrain(server, repo, tmp_path, capsys)
    assert (code, outcome["step"]) == (1, "serving")
    assert "a canary of version 2 runs" in outcome["message"]


def test_a_candidate_no_better_than_serving_changes_nothing(server, repo, tmp_path, capsys):
    mlp = tmp_path / "mlp.onnx"
    (repo / "digits" / "retrain.yaml").write_text(
        retrain_yaml(["{python}", "-c", COPY, str(mlp), "{output}"], margin=0.05))
    code, outcome, steps = run_retrain(server, repo, tmp_path, capsys)
    assert (code, outcome["outcome"], outcome["step"]) == (0, "kept", "evaluate")
    assert "(+0.0111; margin 0.05): not better, nothing changes" in steps
    untouched(server, repo)


BAD_TRAINERS = {
    "exits non-zero": (["{python}", "-c", "import sys; print('no GPU found'); sys.exit(3)"],
                       "train", "the command exited with status 3; its last output: no GPU found"),
    "writes nothing": (["{python}", "-c", "pass"], "train", "exited 0 but wrote no model"),
    "writes garbage": (["{python}", "-c", "import sys; open(sys.argv[1], 'wb').write(b'x' * 64)",
                        "{output}"], "evaluate",
                       "candidate (the trainer's model): model 'digits' version candidate: "
                       "onnxruntime could not load model.onnx"),
    "writes another model": (["{python}", "-c", COPY,
                              str(BUNDLED_REPOSITORY / "identity" / "1" / "model.onnx"),
                              "{output}"], "evaluate",
                             "model 'digits': input 'input' is not in the model file "
                             "(it has ['INPUT0'])"),
}


@pytest.mark.parametrize("case", sorted(BAD_TRAINERS))
def test_a_trainer_that_fails_or_writes_a_bad_model_stops_the_run_and_serving_is_untouched(
        server, repo, tmp_path, capsys, case):
    command, step, message = BAD_TRAINERS[case]
    (repo / "digits" / "retrain.yaml").write_text(retrain_yaml(command))
    code, outcome, steps = run_retrain(server, repo, tmp_path, capsys)
    assert (code, outcome["outcome"], outcome["step"]) == (1, "failed", step)
    assert message in outcome["message"]
    assert f"{step} failed: " in steps and "serving unchanged" in steps
    untouched(server, repo)


def test_too_few_rows_fail_validation_before_any_training(server, repo, tmp_path, capsys):
    (repo / "digits" / "retrain.yaml").write_text(retrain_yaml(
        ["{python}", "-c", "raise SystemExit('never run')"], min_rows=5000))
    code, outcome, _ = run_retrain(server, repo, tmp_path, capsys)
    assert (code, outcome["step"]) == (1, "validate")
    assert outcome["message"] == "minimum rows: 1437 rows, validate.min_rows needs 5000"
    untouched(server, repo)


def test_an_unknown_key_in_retrain_yaml_is_a_usage_error(server, repo, tmp_path, capsys):
    (repo / "digits" / "retrain.yaml").write_text("train: {command: [x]}\nevaluate: {margn: 1}\n")
    code = cli(["retrain", "digits", "--url", server.address, "--model-repository", str(repo)])
    assert code == 2
    assert capsys.readouterr().err.strip() == (
        "sluice retrain: digits/retrain.yaml: unknown key 'evaluate.margn' (expected holdout, "
        "output, metric, margin)")


# -- the whole loop: logged requests + their feedback make a better model ----------------------


def _trainer_python() -> str | None:
    """An interpreter with what digits/train.py needs: $SLUICE_TRAIN_PYTHON, else this one."""
    import os

    for python in (os.environ.get("SLUICE_TRAIN_PYTHON"), sys.executable):
        if python and subprocess.run([python, "-c", "import sklearn, skl2onnx, onnx"],
                                     capture_output=True).returncode == 0:
            return python
    return None


def test_retrain_digits_learns_from_logged_requests_and_their_feedback(
        make_server, repo, tmp_path, capsys):
    from tests.support.retrain_logs import finished, write_feedback, write_prediction_log

    python = _trainer_python()
    if python is None:
        pytest.skip("digits/train.py needs scikit-learn, skl2onnx and onnx: install them here "
                    "(the models extra) or name an interpreter that has them in "
                    "$SLUICE_TRAIN_PYTHON")
    model = repo / "digits"
    split = np.load(model / "train_split.npz")
    x, y = split["X"], split["y"]
    rng = np.random.default_rng(7)
    # The serving version learned from a small, skewed sample: digits 5-9 barely seen.
    skewed = np.concatenate([rng.choice(np.flatnonzero(y == c), 30 if c < 5 else 2,
                                        replace=False) for c in range(10)])
    np.savez(model / "skewed.npz", X=x[skewed], y=y[skewed])
    subprocess.run([python, "train.py", "--data", "skewed.npz", "--output", "1/model.onnx"],
                   cwd=model, check=True, capture_output=True)
    before = accuracy(model / "1" / "model.onnx")
    server = make_server(repo, state_dir=tmp_path / "state")

    # Live traffic: 60 requests of 5 rows of one digit each (6 per digit), rows the serving
    # version never learned from; answered by version 1 and logged with their inputs.
    pool = {c: rng.permutation(np.setdiff1d(np.flatnonzero(y == c), skewed)) for c in range(10)}
    requests = [pool[i % 10][5 * (i // 10):5 * (i // 10) + 5] for i in range(60)]
    records = []
    with Client(server.address) as client:
        for i, rows in enumerate(requests):
            request = client.build_request("digits", {"input": x[rows]}, request_id=f"r{i}")
            response = client.infer_request(request)
            label = np.frombuffer(response.raw_output_contents[0], np.int64)
            records.append(finished(response.id, x[rows], label=label.copy()))
    assert [r.id for r in records] == [f"r{i}" for i in range(60)]
    log_dir = tmp_path / "log"
    feedback_dir = log_dir / "feedback"  # where sluice feedback logs labels
    write_prediction_log(log_dir, records)
    # The truth: requests 0-49 by id, 50-54 row by row, 55-59 not yet; 3 ids nobody logged.
    labels: list[tuple] = [(f"r{i}", i % 10) for i in range(50)]
    labels += [(f"r{i}", j, int(y[requests[i][j]])) for i in range(50, 55) for j in range(5)]
    labels += [("nobody", 1), ("ghost", 2), ("r999", 3)]
    write_feedback(feedback_dir, "digits", labels)
    (model / "retrain.yaml").write_text(retrain_yaml(
        ["{python}", "train.py", "--data", "{data}", "--output", "{output}"], margin=0.1,
        training="skewed.npz", min_rows=300))

    code, outcome, steps = run_retrain(
        server, repo, tmp_path, capsys, "--python", python, "--prediction-log-dir",
        str(log_dir))
    assert code == 0, steps
    figures = outcome["figures"]
    assert (figures["training_rows"], figures["logged_requests"]) == (160, 60)
    assert figures["logged_rows_labelled"] == 275 and figures["logged_rows_unlabelled"] == 25
    assert figures["feedback_unknown_ids"] == 3 and figures["train_rows"] == 435
    after = accuracy(model / "2" / "model.onnx")
    assert figures["serving_score"] == before and figures["candidate_score"] == after
    assert after > before + 0.1, (before, after)
    with AdminClient(server.address) as admin:
        d = admin.deployment("digits")
    assert [s["version"] for s in d["shadows"]] == [2]
    assert (d["canary"]["state"], d["canary"]["candidate_version"]) == ("running", 2)


def test_a_second_run_of_the_same_model_is_refused_while_one_holds_the_lock(
        server, repo, tmp_path, capsys):
    import fcntl

    (repo / "digits" / "retrain.yaml").write_text(
        retrain_yaml(["{python}", "-c", COPY, str(tmp_path / "mlp.onnx"), "{output}"]))
    lock = tmp_path / "state" / "retrain" / "digits.lock"
    lock.parent.mkdir(parents=True)
    with open(lock, "a") as held:  # another process's run, as the pipeline takes it
        fcntl.flock(held, fcntl.LOCK_EX)
        code, outcome, _ = run_retrain(server, repo, tmp_path, capsys)
    assert (code, outcome["step"], outcome["message"]) == (
        1, "start", "another retrain of model 'digits' is running")
    untouched(server, repo)


def test_the_quality_gate_goes_to_the_canary_or_the_run_says_this_server_lacks_it(
        server, repo, tmp_path, capsys):
    """deploy.canary.gates may name the quality gate (max_accuracy_drop); where this Sluice's
    canary has no such gate yet, the run stops before anything changes, naming it."""
    import inspect

    spec = json.loads(retrain_yaml(["{python}", "-c", COPY, str(tmp_path / "mlp.onnx"),
                                    "{output}"]))
    spec["deploy"]["canary"]["gates"]["max_accuracy_drop"] = 0.02
    (repo / "digits" / "retrain.yaml").write_text(json.dumps(spec))
    code, outcome, _ = run_retrain(server, repo, tmp_path, capsys)
    if "max_accuracy_drop" in inspect.signature(AdminClient.start_canary).parameters:
        assert (code, outcome["outcome"]) == (0, "deployed")
        with AdminClient(server.address) as admin:
            gates = admin.deployment("digits")["canary"]["gates"]
        assert gates["max_accuracy_drop"] == 0.02
    else:
        assert (code, outcome["step"], outcome["message"]) == (
            1, "serving", "this Sluice's canary has no gate 'max_accuracy_drop' "
            "(deploy.canary.gates)")
        untouched(server, repo)
