"""MLflow models served as they are, through a real server: each flavor saved with the mlflow
package, served without importing mlflow, and compared with what MLflow's own pyfunc ``predict``
answers on the same rows; other flavors and pickled models fail their load naming why."""

from __future__ import annotations

import importlib
import shutil
import warnings
from types import ModuleType

import lightgbm as lgb
import numpy as np
import pandas as pd
import pytest
import tritonclient.grpc as tc
import xgboost as xgb
from sklearn.datasets import load_breast_cancer, load_iris
from sklearn.linear_model import LogisticRegression
from tritonclient.utils import InferenceServerException

from sluice.server.config.settings import ServerConfig
from tests.support.running import start_server


def quietly(call, *args, **kwargs):
    """mlflow warns as it imports and saves (type hints, environments): not ours to fail on."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return call(*args, **kwargs)


def mlflow(flavor: str) -> ModuleType:
    return quietly(importlib.import_module, f"mlflow.{flavor}")


def infer_signature(x, y):
    return quietly(mlflow("models").infer_signature, x, y)


CLASSES = ["setosa", "versicolor", "virginica"]
COLUMNS = ["sepal_l", "sepal_w", "petal_l", "petal_w"]


def tensor(name: str, value: np.ndarray, datatype: str) -> tc.InferInput:
    t = tc.InferInput(name, list(value.shape), datatype)
    t.set_data_from_numpy(value)
    return t


@pytest.fixture(scope="module")
def data():
    cancer_x, cancer_y = load_breast_cancer(return_X_y=True)
    iris_x, iris_y = load_iris(return_X_y=True)
    cancer_x = cancer_x.astype(np.float32)
    cancer_x[np.random.default_rng(0).random(cancer_x.shape) < 0.05] = np.nan  # missing values
    return cancer_x, cancer_y, iris_x.astype(np.float32), iris_y


@pytest.fixture(scope="module")
def mlflow_repo(tmp_path_factory, data):
    """A repository whose version directories are what mlflow.<flavor>.save_model wrote."""
    cancer_x, cancer_y, iris_x, iris_y = data
    saved = tmp_path_factory.mktemp("saved")
    repo = tmp_path_factory.mktemp("mlflow-repo")

    def save(name, flavor, model, **kwargs):
        # pip_requirements given: mlflow would otherwise start a process to infer them
        quietly(mlflow(flavor).save_model, model, str(saved / name), pip_requirements=[],
                **kwargs)
        shutil.copytree(saved / name, repo / name / "1")

    clf = xgb.XGBClassifier(n_estimators=8, max_depth=3).fit(cancer_x, cancer_y)
    save("xgb_classifier", "xgboost", clf,  # the default format: UBJSON
         signature=infer_signature(cancer_x, clf.predict(cancer_x)))
    soft = xgb.train({"objective": "multi:softprob", "num_class": 3, "max_depth": 3},
                     xgb.DMatrix(iris_x, iris_y), 6)
    save("xgb_softprob", "xgboost", soft, model_format="json",
         signature=infer_signature(iris_x, soft.predict(xgb.DMatrix(iris_x))))
    frame = pd.DataFrame(iris_x, columns=COLUMNS)
    reg = xgb.train({"objective": "reg:squarederror", "max_depth": 3},
                    xgb.DMatrix(frame, iris_y.astype(np.float32)), 6)
    save("xgb_columns", "xgboost", reg,
         signature=infer_signature(frame, reg.predict(xgb.DMatrix(frame))))
    # Column-spec outputs: a prediction named as a column, and one column per class.
    save("xgb_column_out", "xgboost", reg,
         signature=infer_signature(frame, pd.Series(reg.predict(xgb.DMatrix(frame)),
                                                    name="petal_score")))
    save("xgb_class_columns", "xgboost", soft, model_format="json",
         signature=infer_signature(iris_x, pd.DataFrame(soft.predict(xgb.DMatrix(iris_x)),
                                                        columns=CLASSES)))
    booster = lgb.train({"objective": "binary", "verbose": -1, "num_leaves": 7},
                        lgb.Dataset(cancer_x, cancer_y), 8)
    save("lgb_booster", "lightgbm", booster,
         signature=infer_signature(cancer_x, booster.predict(cancer_x)))
    from skl2onnx import to_onnx

    logistic = LogisticRegression(max_iter=500).fit(iris_x, iris_y)
    onnx_model = to_onnx(logistic, iris_x[:1], options={"zipmap": False})
    save("onnx_logistic", "onnx", onnx_model)  # no signature: the graph's own tensors
    # refused: another flavor, and a scikit-learn LightGBM model (a pickle)
    save("sk_logistic", "sklearn", logistic, serialization_format="cloudpickle")
    sk_lgb = lgb.LGBMClassifier(n_estimators=3, verbose=-1).fit(cancer_x, cancer_y)
    save("lgb_sklearn", "lightgbm", sk_lgb, serialization_format="cloudpickle")
    return saved, repo


@pytest.fixture(scope="module")
def server(mlflow_repo, tmp_path_factory):
    _, repo = mlflow_repo
    running = start_server(ServerConfig(
        model_repository=repo, grpc_port=0, metrics_port=None, default_max_batch_size=1024,
        state_dir=tmp_path_factory.mktemp("state"),
    ))
    yield running
    running.stop()


def pyfunc_predict(mlflow_repo, name, x):
    saved, _ = mlflow_repo
    model = quietly(mlflow("pyfunc").load_model, str(saved / name))
    return quietly(model.predict, x)


def test_xgboost_classifier_answers_its_classes(server, mlflow_repo, data):
    x = data[0]
    expected = pyfunc_predict(mlflow_repo, "xgb_classifier", x)
    with tc.InferenceServerClient(server.address) as client:
        meta = client.get_model_metadata("xgb_classifier", as_json=True)
        got = client.infer("xgb_classifier", [tensor("input__0", x, "FP32")])
    assert [(t["name"], t["datatype"], t["shape"]) for t in meta["inputs"]] == [
        ("input__0", "FP32", ["-1", "30"])]
    assert [(t["name"], t["datatype"], t["shape"]) for t in meta["outputs"]] == [
        ("output__0", "INT64", ["-1", "1"])]
    assert set(expected) == {0, 1}
    np.testing.assert_array_equal(got.as_numpy("output__0")[:, 0], expected)


def test_xgboost_booster_answers_class_probabilities(server, mlflow_repo, data):
    x = data[2]
    expected = pyfunc_predict(mlflow_repo, "xgb_softprob", x)
    with tc.InferenceServerClient(server.address) as client:
        got = client.infer("xgb_softprob", [tensor("input__0", x, "FP32")])
    assert expected.shape == (len(x), 3)
    np.testing.assert_allclose(got.as_numpy("output__0"), expected, atol=1e-6)


def test_column_signature_serves_one_input_per_column(server, mlflow_repo, data):
    x = data[2]
    names = ["sepal_l", "sepal_w", "petal_l", "petal_w"]
    expected = pyfunc_predict(mlflow_repo, "xgb_columns", pd.DataFrame(x, columns=names))
    with tc.InferenceServerClient(server.address) as client:
        meta = client.get_model_metadata("xgb_columns", as_json=True)
        got = client.infer("xgb_columns", [
            tensor(n, x[:, [i]].copy(), "FP32") for i, n in enumerate(names)])
    assert [t["name"] for t in meta["inputs"]] == names
    np.testing.assert_allclose(got.as_numpy("output__0")[:, 0], expected, rtol=1e-6)


def test_column_spec_outputs_serve_one_output_per_column(server, mlflow_repo, data):
    x = data[2]
    one = pyfunc_predict(mlflow_repo, "xgb_column_out", pd.DataFrame(x, columns=COLUMNS))
    per_class = pyfunc_predict(mlflow_repo, "xgb_class_columns", x)
    assert per_class.shape == (len(x), 3)
    with tc.InferenceServerClient(server.address) as client:
        meta = client.get_model_metadata("xgb_column_out", as_json=True)
        got = client.infer("xgb_column_out", [
            tensor(n, x[:, [i]].copy(), "FP32") for i, n in enumerate(COLUMNS)])
        classes_meta = client.get_model_metadata("xgb_class_columns", as_json=True)
        classes = client.infer("xgb_class_columns", [tensor("input__0", x, "FP32")])
    assert [(t["name"], t["datatype"], t["shape"]) for t in meta["outputs"]] == [
        ("petal_score", "FP32", ["-1", "1"])]
    np.testing.assert_allclose(got.as_numpy("petal_score")[:, 0], one, rtol=1e-6)
    # One [-1, 1] output per class column, each the model's column of that class.
    assert [(t["name"], t["datatype"], t["shape"]) for t in classes_meta["outputs"]] == [
        (name, "FP32", ["-1", "1"]) for name in CLASSES]
    for i, name in enumerate(CLASSES):
        np.testing.assert_allclose(classes.as_numpy(name)[:, 0], per_class[:, i], atol=1e-6)


@pytest.mark.parametrize(("name", "backend", "platform"), [
    ("xgb_classifier", "fil", ""),  # as a tree model written for Sluice reports itself
    ("lgb_booster", "fil", ""),
    ("onnx_logistic", "onnxruntime", "onnxruntime_onnx"),
])
def test_metadata_and_config_name_the_runtime_the_flavor_runs_on(server, name, backend,
                                                                 platform):
    with tc.InferenceServerClient(server.address) as client:
        meta = client.get_model_metadata(name, as_json=True)
        config = client.get_model_config(name, as_json=True)["config"]
    assert meta.get("platform", "") == platform
    assert (config.get("backend"), config.get("platform", "")) == (backend, platform)


def test_lightgbm_booster_answers_its_probabilities_as_fp64(server, mlflow_repo, data):
    x = data[0]
    expected = pyfunc_predict(mlflow_repo, "lgb_booster", x)
    with tc.InferenceServerClient(server.address) as client:
        got = client.infer("lgb_booster", [tensor("input__0", x, "FP32")]).as_numpy("output__0")
    assert got.dtype == np.float64 and got.shape == (len(x), 1)
    np.testing.assert_allclose(got[:, 0], expected, atol=1e-9)


def test_onnx_flavor_serves_the_graph(server, mlflow_repo, data):
    x = data[2]
    expected = pyfunc_predict(mlflow_repo, "onnx_logistic", x)
    with tc.InferenceServerClient(server.address) as client:
        got = client.infer("onnx_logistic", [tensor("X", x, "FP32")])
    np.testing.assert_array_equal(got.as_numpy("label"), expected["label"])
    np.testing.assert_allclose(got.as_numpy("probabilities"), expected["probabilities"],
                               rtol=1e-6)


@pytest.mark.parametrize(("name", "needle"), [
    ("sk_logistic", "MLflow flavor 'sklearn' is not supported (supported: onnx, xgboost, "
                    "lightgbm)"),
    ("lgb_sklearn", "lightgbm model of class 'lightgbm.sklearn.LGBMClassifier' is stored as a "
                    "pickle or skops file"),
])
def test_unsupported_models_fail_their_load_naming_why(server, name, needle):
    with tc.InferenceServerClient(server.address) as client:
        index = {m["name"]: m for m in client.get_model_repository_index(as_json=True)["models"]}
        assert index[name]["state"] == "UNAVAILABLE"
        assert needle in index[name]["reason"]
        with pytest.raises(InferenceServerException, match="not supported|pickle"):
            client.load_model(name)
        assert client.is_server_live() and client.is_model_ready("xgb_classifier")
