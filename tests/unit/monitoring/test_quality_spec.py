"""Which output live quality reads, decided from the bundled models' own configs and from
deployment.yaml's quality block."""

from __future__ import annotations

import pytest

from sluice.server.app import BUNDLED_REPOSITORY
from sluice.server.config.deployment_file import parse_deployment
from sluice.server.config.model import ModelConfig
from sluice.server.config.pbtxt import read_model_config
from sluice.server.config.quality_file import QualityDeclared, parse_quality, read_quality
from sluice.server.errors import ModelLoadError
from sluice.server.monitoring.quality_spec import QualitySpec, decide
from sluice.server.types import TensorSpec


def bundled(name: str) -> ModelConfig:
    return read_model_config(BUNDLED_REPOSITORY / name, name)[0]


def spec_of(config: ModelConfig, **declared) -> QualitySpec | str:
    return decide(config, QualityDeclared(**declared), window_rows=100, window_s=None)


def test_the_bundled_models_are_read_as_their_outputs_say():
    assert spec_of(bundled("digits")) == QualitySpec(
        "classifier", "label", "probabilities", 10, window_rows=100, window_s=None)
    assert spec_of(bundled("cnn")) == QualitySpec("classifier", None, "logits", 10, 100, None)
    # three outputs of three values per row: nothing says which one is the prediction
    assert spec_of(bundled("digits_pipeline")) == (
        "outputs top_probabilities, top_classes, top_labels do not say which is the "
        "prediction: name it as quality.prediction (and quality.kind) in deployment.yaml")


def test_a_single_value_per_row_is_a_regression_and_declarations_win():
    reg = ModelConfig(name="r", max_batch_size=4, outputs=(TensorSpec("y", "FP32", (1,)),))
    assert spec_of(reg) == QualitySpec("regressor", "y", None, None, 100, None)
    two = ModelConfig(name="t", max_batch_size=4, outputs=(
        TensorSpec("a", "FP32", (1,)), TensorSpec("b", "FP32", (1,))))
    assert isinstance(spec_of(two), str)
    assert spec_of(two, prediction="b", window_rows=7, window_s=2.0) == QualitySpec(
        "regressor", "b", None, None, 7, 2.0)
    assert spec_of(two, prediction="c") == (
        "quality.prediction: model 't' has no output 'c' (outputs: a, b)")
    assert spec_of(bundled("digits"), enabled=False) == (
        "off in deployment.yaml (quality.enabled: false)")


def test_without_a_quality_block_live_quality_is_off(tmp_path):
    (tmp_path / "m").mkdir()
    assert read_quality(tmp_path / "m") == QualityDeclared(present=False)  # no file
    (tmp_path / "m" / "deployment.yaml").write_text("logging: {sample: 1}\n")
    declared = read_quality(tmp_path / "m")
    assert not declared.present
    assert spec_of(bundled("cnn"), present=False).startswith(
        "off: deployment.yaml has no quality block")
    (tmp_path / "m" / "deployment.yaml").write_text("quality: {}\n")
    assert read_quality(tmp_path / "m") == QualityDeclared()


@pytest.mark.parametrize(("block", "message"), [
    ("quality: {kind: ranking}", "quality.kind: must be one of classifier, regressor"),
    ("quality: {window_rows: 0}", "quality.window_rows: must be a whole number >= 1, not 0"),
    ("quality: {window_s: -1}", "quality.window_s: must be a number of seconds > 0, not -1"),
    ("quality: {predict: label}", "quality: unknown key(s) ['predict']"),
    ("quality: [label]", "quality: must be a mapping"),
])
def test_a_bad_quality_block_is_an_error_naming_the_file_and_key(tmp_path, block, message):
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "deployment.yaml").write_text(block + "\n")
    with pytest.raises(ModelLoadError) as caught:
        read_quality(tmp_path / "m")
    assert caught.value.message.startswith(f"m/deployment.yaml: {message}")


def test_the_deployment_reader_allows_the_quality_block_and_ignores_it():
    declared = parse_deployment("routes: {1: 1}\nquality: {prediction: label}\n")
    assert "quality" not in declared and declared["routes"][0]["version"] == 1
    assert parse_quality({"prediction": "label"}) == QualityDeclared(prediction="label")


def _top_by_row(scores):
    """The reference, one row at a time: the row's largest score when the row is a distribution
    (every score in [0, 1], summing to 1 within 1e-3), else the largest softmax entry."""
    import math

    out = []
    for row in scores.tolist():
        top = max(row) if not any(math.isnan(v) for v in row) else math.nan
        if all(0.0 <= v <= 1.0 for v in row) and abs(math.fsum(row) - 1.0) <= 1e-3:
            out.append(top)
        else:
            out.append(1.0 / sum(math.exp(v - top) for v in row) if not math.isnan(top)
                       and not math.isinf(top) else math.nan)
    return out


@pytest.mark.parametrize("kind", ["distributions", "logits", "mixed", "odd"])
def test_the_top_class_probability_matches_a_row_by_row_reference(kind):
    import numpy as np

    from sluice.server.monitoring.quality_spec import read_rows

    rng = np.random.default_rng(3)
    dist = rng.dirichlet(np.ones(7), size=40)
    logits = rng.standard_normal((40, 7)) * 3
    scores = {"distributions": dist, "logits": logits,
              "mixed": np.where((np.arange(40) % 3 == 0)[:, None], logits, dist)}.get(kind)
    if kind == "odd":  # NaN, +-inf, all-zero rows, in-range rows that do not sum to 1
        scores = dist.copy()
        scores[0, 2] = np.nan
        scores[1, 4] = np.inf
        scores[2, 1] = -np.inf
        scores[3] = 0.0
        scores[4] = 0.5
    spec = QualitySpec(kind="classifier", prediction=None, scores="p", classes=7,
                       window_rows=100, window_s=None)
    predicted, confidence = read_rows(spec, {"p": scores.astype(np.float32)})
    wide = scores.astype(np.float32).astype(np.float64)
    assert predicted.tolist() == wide.argmax(axis=1).tolist()
    np.testing.assert_allclose(confidence, _top_by_row(wide), rtol=1e-12, equal_nan=True)
