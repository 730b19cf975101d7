"""XGBoost JSON and LightGBM text models -> Forest: the kernels reproduce Booster.predict.

Models are trained here on scikit-learn's small data sets with fixed seeds, with NaN in 10% of
the training features (so default directions are learned) and in 10% of the test features.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import lightgbm as lgb
import numpy as np
import pytest
import xgboost as xgb
from sklearn.datasets import load_breast_cancer, load_diabetes, load_iris

from sluice.kernels.cpu import forest_predict
from sluice.kernels.forest import MISSING_NONE, MISSING_ZERO
from sluice.kernels.formats import (
    FormatError,
    check_feature_count,
    load_lightgbm_text,
    load_tree_model,
    load_xgboost_json,
)

DATASETS = {"binary": load_breast_cancer, "multiclass": load_iris, "regression": load_diabetes}
ROUNDS = 30


def _data(kind: str, seed: int = 0, zero_frac: float = 0.0):
    """(X_train, y, X_test) as float32 with 10% NaN (and ``zero_frac`` zeros) in both X."""
    x, y = DATASETS[kind](return_X_y=True)
    rng = np.random.default_rng(seed)

    def spoil(a: np.ndarray) -> np.ndarray:
        a = a.astype(np.float32)
        a[rng.random(a.shape) < zero_frac] = 0.0
        a[rng.random(a.shape) < 0.1] = np.nan
        return a

    return spoil(x), y, spoil(x)


def _assert_matches(got: np.ndarray, ref: np.ndarray, kind: str) -> None:
    ref = np.asarray(ref).reshape(got.shape)
    if kind == "regression":  # targets up to ~350: both sides sum float32 leaves
        np.testing.assert_allclose(got, ref, rtol=2e-6, atol=1e-5)
    else:
        np.testing.assert_allclose(got, ref, rtol=0, atol=1e-5)


XGB_OBJECTIVES = {"binary": "binary:logistic", "multiclass": "multi:softprob",
                  "regression": "reg:squarederror"}


@pytest.fixture(scope="module")
def xgb_models(tmp_path_factory) -> dict[str, tuple[xgb.Booster, Path, np.ndarray]]:
    out = {}
    for kind, objective in XGB_OBJECTIVES.items():
        x, y, x_test = _data(kind)
        params = {"objective": objective, "max_depth": 6, "nthread": 2, "seed": 0}
        if kind == "multiclass":
            params["num_class"] = 3
        booster = xgb.train(params, xgb.DMatrix(x, label=y), ROUNDS)
        path = tmp_path_factory.mktemp(f"xgb-{kind}") / "model.json"
        booster.save_model(path)
        out[kind] = (booster, path, x_test)
    return out


@pytest.mark.parametrize("kind", list(XGB_OBJECTIVES))
def test_xgboost_json_matches_booster_predict(xgb_models, kind):
    booster, path, x_test = xgb_models[kind]
    forest = load_xgboost_json(path)
    assert forest.n_trees == ROUNDS * (3 if kind == "multiclass" else 1)
    assert np.isnan(x_test).any()
    _assert_matches(forest_predict(forest, x_test), booster.predict(xgb.DMatrix(x_test)), kind)
    # batch 1 takes the serial kernel
    _assert_matches(forest_predict(forest, x_test[:1]),
                    booster.predict(xgb.DMatrix(x_test[:1])), kind)


@pytest.mark.parametrize("kind", list(XGB_OBJECTIVES))
def test_xgboost_margin_includes_base_score(xgb_models, kind):
    """binary:logistic stores base_score as a probability: the margin starts at its logit."""
    booster, path, x_test = xgb_models[kind]
    forest = dataclasses.replace(load_xgboost_json(path), transform="identity")
    margin = booster.predict(xgb.DMatrix(x_test), output_margin=True)
    np.testing.assert_allclose(forest_predict(forest, x_test), margin.reshape(-1, forest.n_groups),
                               rtol=2e-6, atol=1e-5)


@pytest.mark.parametrize(("objective", "base_score"), [
    ("reg:logistic", 0.3), ("binary:logitraw", 0.3), ("reg:absoluteerror", None),
    ("multi:softprob", 0.2),
])
def test_xgboost_other_objectives_and_base_scores(tmp_path, objective, base_score):
    kind = "multiclass" if objective.startswith("multi") else "binary"
    x, y, x_test = _data(kind, seed=1)
    params = {"objective": objective, "max_depth": 4, "nthread": 2, "seed": 0}
    if kind == "multiclass":
        params["num_class"] = 3
    if base_score is not None:
        params["base_score"] = base_score
    booster = xgb.train(params, xgb.DMatrix(x, label=y), 10)
    booster.save_model(tmp_path / "model.json")
    forest = load_xgboost_json(tmp_path / "model.json")
    _assert_matches(forest_predict(forest, x_test), booster.predict(xgb.DMatrix(x_test)), kind)


def test_xgboost_single_leaf_trees(tmp_path):
    x, y, x_test = _data("binary")
    booster = xgb.train({"objective": "binary:logistic", "gamma": 1e9, "nthread": 2},
                        xgb.DMatrix(x, label=y), 3)
    booster.save_model(tmp_path / "model.json")
    forest = load_xgboost_json(tmp_path / "model.json")
    assert forest.max_depth() == 0
    _assert_matches(forest_predict(forest, x_test), booster.predict(xgb.DMatrix(x_test)),
                    "binary")


LGB_OBJECTIVES = {"binary": "binary", "multiclass": "multiclass", "regression": "regression"}


def _train_lgb(kind: str, tmp: Path, rounds: int = ROUNDS, zero_frac: float = 0.0, **extra):
    x, y, x_test = _data(kind, zero_frac=zero_frac)
    params = {"objective": LGB_OBJECTIVES[kind], "num_leaves": 15, "max_depth": 6,
              "num_threads": 2, "seed": 0, "deterministic": True, "verbose": -1, **extra}
    if kind == "multiclass":
        params["num_class"] = 3
    booster = lgb.train(params, lgb.Dataset(x, label=y), rounds)
    booster.save_model(tmp / "model.txt")
    return booster, load_lightgbm_text(tmp / "model.txt"), x_test


@pytest.mark.parametrize("kind", list(LGB_OBJECTIVES))
def test_lightgbm_text_matches_booster_predict(tmp_path, kind):
    booster, forest, x_test = _train_lgb(kind, tmp_path)
    assert forest.n_trees == booster.num_trees()
    _assert_matches(forest_predict(forest, x_test), booster.predict(x_test), kind)
    _assert_matches(forest_predict(forest, x_test[:1]), booster.predict(x_test[:1]), kind)


def test_lightgbm_zero_as_missing(tmp_path):
    booster, forest, x_test = _train_lgb("binary", tmp_path, zero_frac=0.1,
                                         zero_as_missing=True)
    inner = forest.feature >= 0
    assert np.any(forest.missing_type[inner] == MISSING_ZERO)
    assert forest.compact.n_copies == 4
    assert np.any(x_test == 0)
    # +-tiny values count as zero too (LightGBM's kZeroThreshold)
    x_test[::7, 3] = np.float32(1e-36)
    _assert_matches(forest_predict(forest, x_test), booster.predict(x_test), "binary")


def test_lightgbm_without_missing_values_reads_nan_as_zero(tmp_path):
    booster, forest, x_test = _train_lgb("regression", tmp_path, use_missing=False)
    assert np.all(forest.missing_type[forest.feature >= 0] == MISSING_NONE)
    _assert_matches(forest_predict(forest, x_test), booster.predict(x_test), "regression")


def test_lightgbm_sigmoid_parameter_scales_the_margin(tmp_path):
    booster, forest, x_test = _train_lgb("binary", tmp_path, rounds=10, sigmoid=0.5)
    assert forest.sigmoid_scale == 0.5
    _assert_matches(forest_predict(forest, x_test), booster.predict(x_test), "binary")


def test_lightgbm_single_leaf_tree(tmp_path):
    booster, forest, x_test = _train_lgb("binary", tmp_path, rounds=3, min_gain_to_split=1e9)
    assert forest.n_trees == booster.num_trees() and forest.max_depth() == 0
    _assert_matches(forest_predict(forest, x_test), booster.predict(x_test), "binary")


# --- bad files --------------------------------------------------------------------------------


def test_truncated_json(xgb_models, tmp_path):
    text = xgb_models["binary"][1].read_text()
    (tmp_path / "model.json").write_text(text[: len(text) // 2])
    with pytest.raises(FormatError, match=r"model\.json: invalid or truncated JSON"):
        load_xgboost_json(tmp_path / "model.json")


def _edit_json(src: Path, dst: Path, edit) -> Path:
    doc = json.loads(src.read_text())
    edit(doc)
    dst.write_text(json.dumps(doc))
    return dst


def test_unsupported_xgboost_objective(tmp_path):
    x, y, _ = _data("binary")
    booster = xgb.train({"objective": "rank:pairwise", "nthread": 2},
                        xgb.DMatrix(x, label=y, group=[len(y)]), 2)
    booster.save_model(tmp_path / "model.json")
    with pytest.raises(FormatError, match="objective 'rank:pairwise' is not supported"):
        load_xgboost_json(tmp_path / "model.json")


def test_xgboost_categorical_split(xgb_models, tmp_path):
    def edit(doc):
        doc["learner"]["gradient_booster"]["model"]["trees"][2]["split_type"][0] = 1

    path = _edit_json(xgb_models["binary"][1], tmp_path / "model.json", edit)
    with pytest.raises(FormatError, match="tree 2 has categorical splits"):
        load_xgboost_json(path)


def test_xgboost_missing_field(xgb_models, tmp_path):
    def edit(doc):
        del doc["learner"]["learner_model_param"]

    path = _edit_json(xgb_models["binary"][1], tmp_path / "model.json", edit)
    with pytest.raises(FormatError, match="model.json: missing field 'learner_model_param'"):
        load_xgboost_json(path)


def test_xgboost_child_out_of_range(xgb_models, tmp_path):
    def edit(doc):
        doc["learner"]["gradient_booster"]["model"]["trees"][0]["left_children"][0] = 10_000

    path = _edit_json(xgb_models["binary"][1], tmp_path / "model.json", edit)
    with pytest.raises(FormatError, match="inconsistent model: node 0: left child"):
        load_xgboost_json(path)


def test_unsupported_lightgbm_objective(tmp_path):
    x, y, _ = _data("regression")
    params = {"objective": "lambdarank", "verbose": -1, "num_threads": 2}
    data = lgb.Dataset(x, label=np.minimum(y // 100, 3), group=[len(y)])
    lgb.train(params, data, 2).save_model(tmp_path / "model.txt")
    with pytest.raises(FormatError, match="model.txt: objective 'lambdarank' is not supported"):
        load_lightgbm_text(tmp_path / "model.txt")


def test_lightgbm_categorical_split(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(300, 4))
    x[:, 1] = rng.integers(0, 5, 300)
    params = {"objective": "binary", "verbose": -1, "num_threads": 2, "min_data_per_group": 5}
    data = lgb.Dataset(x, label=(x[:, 1] > 2).astype(float), categorical_feature=[1])
    lgb.train(params, data, 3).save_model(tmp_path / "model.txt")
    with pytest.raises(FormatError, match="model.txt: tree 0 has categorical splits"):
        load_lightgbm_text(tmp_path / "model.txt")


def test_lightgbm_truncated_and_missing_fields(tmp_path):
    _, _, _ = _train_lgb("binary", tmp_path, rounds=2)
    text = (tmp_path / "model.txt").read_text()
    (tmp_path / "model.txt").write_text(text[: text.index("end of trees")])
    with pytest.raises(FormatError, match="truncated LightGBM model"):
        load_lightgbm_text(tmp_path / "model.txt")
    (tmp_path / "model.txt").write_text(text.replace("leaf_value=", "leaf_values=", 1))
    with pytest.raises(FormatError, match="tree 0: missing field 'leaf_value'"):
        load_lightgbm_text(tmp_path / "model.txt")
    (tmp_path / "model.txt").write_text("{}")
    with pytest.raises(FormatError, match="not a LightGBM text model"):
        load_lightgbm_text(tmp_path / "model.txt")


def test_feature_count_mismatch(xgb_models):
    forest = load_xgboost_json(xgb_models["binary"][1])
    check_feature_count(forest, 30, "input 'x'")
    with pytest.raises(FormatError, match="input 'x' has 20 columns but the model reads 30"):
        check_feature_count(forest, 20, "input 'x'")
    with pytest.raises(ValueError, match=r"expected input of shape \[n, 30\]"):
        forest_predict(forest, np.zeros((2, 20), dtype=np.float32))


# --- picking the loader -----------------------------------------------------------------------


def test_load_tree_model_picks_by_file_name_and_model_type(xgb_models, tmp_path):
    src = xgb_models["binary"][1]
    for name in ("model.json", "xgboost.json"):
        version = tmp_path / name.split(".")[0]
        version.mkdir()
        (version / name).write_bytes(src.read_bytes())
        assert load_tree_model(version, None).n_features == 30
        assert load_tree_model(version, "xgboost_json").n_features == 30
        with pytest.raises(FormatError, match="no tree model file.*model.txt"):
            load_tree_model(version, "lightgbm")
    lgb_dir = tmp_path / "lgb"
    lgb_dir.mkdir()
    _train_lgb("multiclass", lgb_dir, rounds=2)
    assert load_tree_model(lgb_dir, None).n_groups == 3
    assert load_tree_model(lgb_dir, "lightgbm").transform == "softmax"


def test_load_tree_model_refusals(xgb_models, tmp_path):
    for model_type in ("xgboost", "treelite_checkpoint"):
        with pytest.raises(FormatError, match="not supported, save the model as JSON"):
            load_tree_model(tmp_path, model_type)
    with pytest.raises(FormatError, match="unknown model_type 'onnx'"):
        load_tree_model(tmp_path, "onnx")
    with pytest.raises(FormatError, match="no tree model file"):
        load_tree_model(tmp_path, None)
    (tmp_path / "xgboost.model").write_bytes(b"binary")
    with pytest.raises(FormatError, match="binary model format is not supported"):
        load_tree_model(tmp_path, None)
    (tmp_path / "model.json").write_bytes(xgb_models["binary"][1].read_bytes())
    (tmp_path / "model.txt").write_text("tree\n")
    with pytest.raises(FormatError, match="more than one tree model file"):
        load_tree_model(tmp_path, None)
