"""Reference profiles: built from rows, written, read back, and refused (naming the feature)
when they do not match the model; the drift settings of deployment.yaml; the reference data
readers."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from sluice.server.app import BUNDLED_REPOSITORY
from sluice.server.config.drift import DriftSettings, parse_drift, read_drift
from sluice.server.config.pbtxt import read_model_config
from sluice.server.errors import ModelLoadError
from sluice.server.monitoring.profile import (
    FILENAME,
    build_profile,
    choose_prediction,
    feature_names,
    write_profile,
)
from sluice.server.monitoring.profile_data import DataError, read_reference
from sluice.server.monitoring.profile_load import load_profile

DIGITS = BUNDLED_REPOSITORY / "digits"
CONFIG, _ = read_model_config(DIGITS, "digits")
HELD_OUT = np.load(DIGITS / "test_split.npz")["X"]


def test_the_bundled_profiles_load_and_describe_the_training_rows():
    for version in (1, 2):
        profile = load_profile(CONFIG, DIGITS / str(version))
        assert profile is not None and profile.rows == 1437  # 80% of 1797
        assert [f.name for f in profile.features] == [f"input[{i}]" for i in range(64)]
        assert profile.prediction.output == "label" and profile.prediction.kind == "class"
        assert profile.prediction.classes == tuple(float(c) for c in range(10))
        for f in profile.features:
            assert f.fractions.sum() == pytest.approx(1.0, abs=1e-5)
            assert 0 <= f.min <= f.max <= 16  # digits pixels are 0..16
    assert (DIGITS / "2" / FILENAME).stat().st_size < 40_000


def test_a_written_profile_reads_back_the_same(tmp_path: Path):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(500, 64)).astype(np.float32)
    x[::9, 5] = np.nan
    labels = rng.integers(0, 10, size=500).astype(np.float64)
    profile = build_profile(CONFIG, {"input": x}, labels, ("label", "class"))
    write_profile(tmp_path / FILENAME, profile)
    back = load_profile(CONFIG, tmp_path)
    assert back is not None and back.rows == 500
    f, g = profile.features[5], back.features[5]
    assert g.missing == pytest.approx(56 / 500)
    np.testing.assert_allclose(g.edges, f.edges, rtol=1e-6)
    np.testing.assert_allclose(g.fractions, f.fractions, rtol=1e-6)
    np.testing.assert_allclose(g.ks_cdf, f.ks_cdf, rtol=1e-6)
    assert g.ks_values.size == 256  # continuous: order statistics at 256 levels
    assert back.prediction.bins.fractions == pytest.approx(
        np.bincount(labels.astype(int), minlength=10) / 500, abs=1e-6)


def _broken(tmp_path: Path, change) -> Path:
    doc = json.loads((DIGITS / "2" / FILENAME).read_text())
    change(doc)
    (tmp_path / FILENAME).write_text(json.dumps(doc))
    return tmp_path


@pytest.mark.parametrize(("change", "named"), [
    (lambda d: d["features"].pop(), "feature 'input[63]' is missing from the profile"),
    (lambda d: d["features"].__setitem__(3, {**d["features"][3], "name": "pixel3"}),
     "feature 'pixel3' is not a feature of the model's inputs"),
    (lambda d: d["inputs"].__setitem__(0, {"name": "input", "dims": [8, 9]}),
     "feature 'input[71]': input 'input' has 64 features (input[0] .. input[63]), the profile 72"),
    (lambda d: d["inputs"].__setitem__(0, {"name": "image", "dims": [64]}),
     "feature 'image[0]': the model has no numeric input 'image'"),
    (lambda d: d["features"][7].__setitem__("fractions", [0.5, 0.6]),
     "feature 'input[7]': fractions must be"),
    (lambda d: d["features"][9].update(ks_values=list(range(40_000)),
                                       ks_cdf=[(k + 1) / 40_000 for k in range(40_000)]),
     "feature 'input[9]': at most 16384 bins and 32767 ks_values, not 6 and 40000"),
    (lambda d: d["prediction"].__setitem__("output", "scores"),
     "prediction: the model has no output 'scores'"),
    (lambda d: d["prediction"].__setitem__("kind", "value"),
     "output 'label' is INT64 [1], which is not a 'value' prediction"),
    (lambda d: d.__setitem__("format", "something/else"), "not a reference profile"),
])
def test_a_profile_that_does_not_match_is_a_load_error_naming_the_feature(
        tmp_path: Path, change, named: str):
    version = tmp_path / "2"
    version.mkdir()
    _broken(version, change)
    with pytest.raises(ModelLoadError) as caught:
        load_profile(CONFIG, version)
    message = caught.value.message
    assert named in message, message
    assert message.startswith("model 'digits' version 2: reference_profile.json: ")
    assert str(tmp_path) not in message  # no path leaks


def test_a_version_without_a_profile_has_none_and_bad_json_is_refused(tmp_path: Path):
    assert load_profile(CONFIG, tmp_path) is None
    (tmp_path / FILENAME).write_text("{not json")
    with pytest.raises(ModelLoadError, match="not valid JSON"):
        load_profile(CONFIG, tmp_path)


def test_the_prediction_chosen_by_default():
    assert choose_prediction(CONFIG) == ("label", "class")
    assert choose_prediction(CONFIG, "probabilities") == ("probabilities", "argmax")
    no_label = dataclasses.replace(CONFIG, outputs=CONFIG.outputs[1:])
    assert choose_prediction(no_label) == ("probabilities", "argmax")
    with pytest.raises(ModelLoadError, match="output 'nope' cannot be profiled"):
        choose_prediction(CONFIG, "nope")
    assert feature_names("x", ()) == ["x"] and feature_names("x", (1,)) == ["x"]
    assert feature_names("x", (2, 2)) == ["x[0]", "x[1]", "x[2]", "x[3]"]


def test_drift_settings_from_deployment_yaml(tmp_path: Path):
    assert parse_drift(None) == DriftSettings(0.1, 5000, 3600.0)
    assert parse_drift(False) is None
    assert parse_drift({"sample": 1, "window_rows": 200}) == DriftSettings(1.0, 200, 3600.0)
    for bad, named in (({"sampel": 0.5}, "unknown key 'sampel'"),
                       ({"sample": 0}, "drift.sample: must be a fraction in (0, 1]"),
                       ({"window_rows": 2.5}, "drift.window_rows"),
                       ({"window_s": -1}, "drift.window_s"), ("yes", "must be a mapping")):
        with pytest.raises(ValueError, match=named.replace("(", r"\(").replace(")", r"\)")):
            parse_drift(bad)
    model = tmp_path / "digits"
    model.mkdir()
    assert read_drift(model) == DriftSettings()
    (model / "deployment.yaml").write_text("aliases: {stable: 1}\ndrift: {sample: 0.5}\n")
    assert read_drift(model) == DriftSettings(sample=0.5)
    (model / "deployment.yaml").write_text("drift: false\n")
    assert read_drift(model) is None
    (model / "deployment.yaml").write_text("drift: {window: 3}\n")
    with pytest.raises(ModelLoadError, match="digits/deployment.yaml: drift: unknown"):
        read_drift(model)


def test_reference_rows_from_npz_and_parquet_agree(tmp_path: Path):
    spec = CONFIG.inputs
    np.savez(tmp_path / "x.npz", X=HELD_OUT)
    from_npz = read_reference(tmp_path / "x.npz", list(spec))["input"]
    np.testing.assert_array_equal(from_npz, HELD_OUT)
    columns = {f"input[{j}]": HELD_OUT[:, j] for j in range(64)}
    pq.write_table(pa.table(columns), tmp_path / "wide.parquet")
    np.testing.assert_array_equal(read_reference(tmp_path / "wide.parquet", list(spec))["input"],
                                  HELD_OUT)
    pq.write_table(pa.table({"input": [list(row) for row in HELD_OUT]}),
                   tmp_path / "lists.parquet")
    np.testing.assert_array_equal(read_reference(tmp_path / "lists.parquet", list(spec))["input"],
                                  HELD_OUT)
    del columns["input[17]"]
    pq.write_table(pa.table(columns), tmp_path / "short.parquet")
    with pytest.raises(DataError, match=r"short.parquet: no column 'input' and no feature column "
                                        r"'input\[17\]'"):
        read_reference(tmp_path / "short.parquet", list(spec))
    np.savez(tmp_path / "y.npz", features=HELD_OUT[:, :10])
    with pytest.raises(DataError, match="y.npz: no array named 'input'"):
        read_reference(tmp_path / "y.npz", list(spec))
    shutil.copy(tmp_path / "x.npz", tmp_path / "x.csv")
    with pytest.raises(DataError, match="expected a .npz or .parquet file"):
        read_reference(tmp_path / "x.csv", list(spec))
