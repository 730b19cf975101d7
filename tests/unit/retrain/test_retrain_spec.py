"""retrain.yaml: the bundled digits file, unknown keys named with their block, bad values named."""

from __future__ import annotations

from pathlib import Path

import pytest

from sluice.server.app import BUNDLED_REPOSITORY
from sluice.server.retrain.spec import SpecError, parse_spec, read_spec

MINIMAL = "train: {command: [\"{python}\", train.py]}\n"


def _parse(text: str):
    return parse_spec(text, "m", Path("/models/m"))


def test_the_bundled_digits_spec_reads_as_written():
    spec = read_spec(BUNDLED_REPOSITORY / "digits", "digits")
    assert spec.fetch.training_data == "train_split.npz" and spec.fetch.since_days == 30
    assert (spec.validate.min_rows, spec.validate.classes) == (500, 10)
    assert spec.train.command == ("{python}", "train.py", "--data", "{data}", "--output",
                                  "{output}")
    assert (spec.evaluate.metric, spec.evaluate.margin) == ("accuracy", 0.005)
    assert spec.deploy.canary_steps == (5.0, 25.0, 50.0, 100.0)
    assert dict(spec.deploy.canary_gates) == {"max_error_rate": 0.01, "max_p99_ratio": 2.0,
                                              "min_agreement": 0.8}
    for name in (spec.fetch.training_data, spec.evaluate.holdout):
        assert spec.path(name).is_file()
    assert (spec.model_dir / "train.py").is_file()


def test_defaults_fill_what_is_not_written():
    spec = _parse(MINIMAL)
    assert spec.fetch.input == "input" and spec.fetch.training_data is None
    assert spec.evaluate.holdout == "test_split.npz" and spec.evaluate.margin == 0.0
    assert spec.deploy.shadow_sample == 1.0 and spec.deploy.canary_steps == ()


@pytest.mark.parametrize(("text", "message"), [
    ("trian: {}\n" + MINIMAL, r"unknown key 'trian' \(expected fetch, validate, train, "
     r"evaluate, deploy\)"),
    ("evaluate: {margn: 0.1}\n" + MINIMAL, "unknown key 'evaluate.margn'"),
    ("deploy: {canary: {gates: {max_latency: 1}}}\n" + MINIMAL,
     "unknown key 'deploy.canary.gates.max_latency'"),
    ("fetch: {input: x}\n", "block 'train' \\(with its 'command'\\) is required"),
    ("train: {command: python train.py}\n", "'train.command' must be a non-empty list"),
    ("evaluate: {metric: auc}\n" + MINIMAL, "'evaluate.metric' must be one of accuracy, "
     "macro_f1, not 'auc'"),
    ("evaluate: {margin: 2}\n" + MINIMAL, "'evaluate.margin' must be in \\[0, 1\\], not 2"),
    ("validate: {min_rows: 0}\n" + MINIMAL, "'validate.min_rows' must be an integer >= 1"),
    ("deploy: {shadow: {sample: 0}}\n" + MINIMAL,
     "'deploy.shadow.sample' must be in \\(0, 1\\]"),
    ("- a list\n", "the file must be a mapping"),
    ("train: [unclosed\n", "not valid YAML at line 2"),
])
def test_a_wrong_spec_is_refused_naming_the_key(text, message):
    with pytest.raises(SpecError, match="^m/retrain.yaml: " + message):
        _parse(text)


def test_a_model_without_retrain_yaml_says_so(tmp_path):
    with pytest.raises(SpecError, match="model 'm' has no retrain.yaml"):
        read_spec(tmp_path, "m")


def test_files_outside_the_model_directory_are_refused(tmp_path):
    spec = parse_spec(MINIMAL, "m", tmp_path)
    with pytest.raises(SpecError, match="'../secret.npz' is outside the model directory"):
        spec.path("../secret.npz")


@pytest.mark.parametrize(("model", "message"), [
    ("../etc", "invalid model name '../etc'"),
    ("nosuch", "the repository has no model 'nosuch'"),
])
def test_sluice_retrain_names_a_model_it_cannot_retrain_with_status_2(capsys, model, message):
    from sluice.server.cli import main

    assert main(["retrain", model, "--url", "127.0.0.1:1"]) == 2
    assert capsys.readouterr().err.startswith(f"sluice retrain: {message}")
