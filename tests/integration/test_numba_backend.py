"""The Numba backend through a real server: FIL-layout tree models equal the libraries' own
predict, pipelines equal their steps computed by hand, bad model files fail the load clearly."""

from __future__ import annotations

import lightgbm as lgb
import numpy as np
import onnxruntime as ort
import pytest
import tritonclient.grpc as tc
import xgboost as xgb
from tritonclient.utils import InferenceServerException

from sluice.kernels import cpu
from sluice.server.app import BUNDLED_REPOSITORY


def fp32(name: str, value: np.ndarray) -> tc.InferInput:
    tensor = tc.InferInput(name, list(value.shape), "FP32")
    tensor.set_data_from_numpy(np.ascontiguousarray(value, dtype=np.float32))
    return tensor


def fil_config(name: str, features: int, width: int, **params: str) -> str:
    entries = ", ".join(
        f'{{ key: "{k}" value: {{ string_value: "{v}" }} }}' for k, v in params.items()
    )
    return (
        f'name: "{name}"\nbackend: "fil"\nmax_batch_size: 512\n'
        f'input [{{ name: "input__0" data_type: TYPE_FP32 dims: [ {features} ] }}]\n'
        f'output [{{ name: "output__0" data_type: TYPE_FP32 dims: [ {width} ] }}]\n'
        f"dynamic_batching {{ }}\nparameters [ {entries} ]\n"
    )


def write_fil(repo, name, filename, payload, config) -> None:
    (repo / name / "1").mkdir(parents=True)
    (repo / name / "1" / filename).write_bytes(payload)
    (repo / name / "config.pbtxt").write_text(config)


def with_nans(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    x = x.astype(np.float32).copy()
    x[rng.random(x.shape) < 0.1] = np.nan
    return x


def test_bundled_fil_model_equals_xgboost_predict(bundled_server):
    split = np.load(BUNDLED_REPOSITORY / "breast_cancer" / "test_split.npz")
    booster = xgb.Booster(model_file=str(BUNDLED_REPOSITORY / "breast_cancer" / "1" /
                                         "xgboost.json"))
    x = with_nans(split["X"], np.random.default_rng(0))
    expected = booster.predict(xgb.DMatrix(x, missing=np.nan))
    with tc.InferenceServerClient(bundled_server.address) as client:
        got = client.infer("breast_cancer", [fp32("input__0", x)]).as_numpy("output__0")
    assert got.shape == (len(x), 2)
    np.testing.assert_allclose(got[:, 1], expected, atol=1e-5)
    np.testing.assert_allclose(got[:, 0], 1 - expected, atol=1e-5)


@pytest.fixture(scope="module")
def tree_models(tmp_path_factory):
    """A repository of FIL-layout models trained here, plus the boosters to compare with."""
    from sklearn.datasets import load_diabetes, load_iris

    repo = tmp_path_factory.mktemp("trees")
    rng = np.random.default_rng(1)
    iris_x, iris_y = load_iris(return_X_y=True)
    iris_x = with_nans(iris_x, rng)
    diab_x, diab_y = load_diabetes(return_X_y=True)
    diab_x = with_nans(diab_x, rng)
    boosters = {}

    multi = xgb.train({"objective": "multi:softprob", "num_class": 3, "max_depth": 4,
                       "nthread": 1, "seed": 0}, xgb.DMatrix(iris_x, iris_y), 20)
    boosters["xgb_multi"] = ("xgb", multi, iris_x)
    write_fil(repo, "xgb_multi", "xgboost.json", bytes(multi.save_raw("json")),
              fil_config("xgb_multi", 4, 3, model_type="xgboost_json", output_class="true",
                         predict_proba="true"))
    write_fil(repo, "xgb_multi_class", "xgboost.json", bytes(multi.save_raw("json")),
              fil_config("xgb_multi_class", 4, 1, model_type="xgboost_json",
                         output_class="true", predict_proba="false"))
    reg = xgb.train({"objective": "reg:squarederror", "max_depth": 5, "nthread": 1, "seed": 0},
                    xgb.DMatrix(diab_x, diab_y), 30)
    boosters["xgb_reg"] = ("xgb", reg, diab_x)
    write_fil(repo, "xgb_reg", "xgboost.json", bytes(reg.save_raw("json")),
              fil_config("xgb_reg", 10, 1, model_type="xgboost_json", output_class="false"))
    binary_y = (diab_y > np.median(diab_y)).astype(int)
    lgb_bin = lgb.train({"objective": "binary", "num_leaves": 15, "verbose": -1, "seed": 0,
                         "num_threads": 1}, lgb.Dataset(diab_x, binary_y), 25)
    boosters["lgb_bin"] = ("lgb", lgb_bin, diab_x)
    write_fil(repo, "lgb_bin", "model.txt", lgb_bin.model_to_string().encode(),
              fil_config("lgb_bin", 10, 1, model_type="lightgbm", output_class="true",
                         predict_proba="false", threshold="0.3"))
    lgb_multi = lgb.train({"objective": "multiclass", "num_class": 3, "num_leaves": 7,
                           "verbose": -1, "seed": 0, "num_threads": 1},
                          lgb.Dataset(iris_x, iris_y), 15)
    boosters["lgb_multi"] = ("lgb", lgb_multi, iris_x)
    write_fil(repo, "lgb_multi", "model.txt", lgb_multi.model_to_string().encode(),
              fil_config("lgb_multi", 4, 3, model_type="lightgbm", output_class="true",
                         predict_proba="true"))
    return repo, boosters


def library_predict(kind, booster, x):
    if kind == "xgb":
        return booster.predict(xgb.DMatrix(x, missing=np.nan))
    return booster.predict(x)


def test_tree_models_equal_their_libraries(make_server, tree_models):
    repo, boosters = tree_models
    running = make_server(repo)
    with tc.InferenceServerClient(running.address) as client:
        for name, (kind, booster, x) in boosters.items():
            got = client.infer(name, [fp32("input__0", x)]).as_numpy("output__0")
            expected = library_predict(kind, booster, x)
            if name == "lgb_bin":  # output_class without proba: p > threshold 0.3
                np.testing.assert_array_equal(got[:, 0], (expected > 0.3).astype(np.float32))
            else:
                # atol 1e-5 on probabilities; regression outputs in the hundreds are float32,
                # whose own spacing there is ~1e-5, so they also get rtol 1e-6.
                np.testing.assert_allclose(got.reshape(expected.shape), expected, atol=1e-5,
                                           rtol=1e-6, err_msg=name)
        kind, booster, x = boosters["xgb_multi"]
        got = client.infer("xgb_multi_class", [fp32("input__0", x)]).as_numpy("output__0")
        expected = library_predict(kind, booster, x).argmax(axis=1)
        np.testing.assert_array_equal(got[:, 0], expected.astype(np.float32))


@pytest.mark.parametrize(
    ("filename", "payload", "config_params", "needle"),
    [
        ("xgboost.json", b'{"learner": {"gradient_booster": ', {"model_type": "xgboost_json"},
         "xgboost.json"),
        ("xgboost.json", None, {"model_type": "xgboost_json", "storage_type": "DENSE"},
         "storage_type"),
        ("xgboost.json", "rank", {"model_type": "xgboost_json"}, "rank:pairwise"),
        ("xgboost.json", None, {"model_type": "xgboost_json"}, "dims [7]"),
    ],
    ids=["truncated-json", "unsupported-parameter", "unsupported-objective", "feature-count"],
)
def test_bad_tree_models_fail_the_load_and_the_server_keeps_serving(
    make_server, tmp_path, filename, payload, config_params, needle
):
    from sklearn.datasets import load_diabetes

    x, y = load_diabetes(return_X_y=True)
    objective = "rank:pairwise" if payload == "rank" else "reg:squarederror"
    booster = xgb.train({"objective": objective, "max_depth": 3, "nthread": 1},
                        xgb.DMatrix(x, y), 3)
    if payload in (None, "rank"):
        payload = bytes(booster.save_raw("json"))
    features = 7 if needle == "dims [7]" else 10
    write_fil(tmp_path, "bad", filename, payload,
              fil_config("bad", features, 1, output_class="false", **config_params))
    good = bytes(booster.save_raw("json")) if objective == "reg:squarederror" else None
    if good is None:
        good_booster = xgb.train({"objective": "reg:squarederror", "nthread": 1},
                                 xgb.DMatrix(x, y), 2)
        good = bytes(good_booster.save_raw("json"))
    write_fil(tmp_path, "good", "xgboost.json", good,
              fil_config("good", 10, 1, model_type="xgboost_json"))
    running = make_server(tmp_path)
    with tc.InferenceServerClient(running.address) as client:
        assert client.is_model_ready("good") and not client.is_model_ready("bad")
        with pytest.raises(InferenceServerException) as info:
            client.load_model("bad")
        assert needle in info.value.message(), info.value.message()
        out = client.infer("good", [fp32("input__0", x[:3])]).as_numpy("output__0")
        assert out.shape == (3, 1)


def test_gpu_kinds_without_a_gpu(make_server, tmp_path):
    from sluice.kernels.cuda import gpu_available

    if gpu_available():
        pytest.skip("a GPU is present")
    from sklearn.datasets import load_diabetes

    x, y = load_diabetes(return_X_y=True)
    payload = bytes(xgb.train({"nthread": 1}, xgb.DMatrix(x, y), 2).save_raw("json"))
    for name, kind in (("gpu", "KIND_GPU"), ("auto", "KIND_AUTO")):
        config = fil_config(name, 10, 1, model_type="xgboost_json") + (
            f"instance_group [{{ kind: {kind} }}]\n")
        write_fil(tmp_path, name, "xgboost.json", payload, config)
    running = make_server(tmp_path)
    with tc.InferenceServerClient(running.address) as client:
        index = {m["name"]: m for m in client.get_model_repository_index(as_json=True)["models"]}
        assert index["gpu"]["state"] == "UNAVAILABLE"
        assert "no CUDA GPU" in index["gpu"]["reason"] and "KIND_AUTO" in index["gpu"]["reason"]
        assert client.is_model_ready("auto")
        assert client.infer("auto", [fp32("input__0", x[:2])]).as_numpy("output__0").shape == (
            2, 1)


def test_pipeline_equals_its_steps_by_hand(bundled_server):
    split = np.load(BUNDLED_REPOSITORY / "digits" / "test_split.npz")
    x = split["X"][:50]
    stats = np.load(BUNDLED_REPOSITORY / "digits_standardize" / "1" / "params.npz")
    standardized = ((x - stats["mean"]) / stats["std"]).astype(np.float32)
    session = ort.InferenceSession(
        str(BUNDLED_REPOSITORY / "digits_linear" / "1" / "model.onnx"),
        providers=["CPUExecutionProvider"],
    )
    probs = session.run(["probabilities"], {"input": standardized})[0]
    order = np.argsort(-probs, axis=1, kind="stable")[:, :3]
    labels = (BUNDLED_REPOSITORY / "digits_top3" / "1" / "labels.txt").read_text().split()
    with tc.InferenceServerClient(bundled_server.address) as client:
        result = client.infer("digits_pipeline", [fp32("pixels", x)])
        meta = client.get_model_metadata("digits_pipeline", as_json=True)
        config = client.get_model_config("digits_pipeline", as_json=True)["config"]
    np.testing.assert_array_equal(result.as_numpy("top_classes"), order)
    np.testing.assert_allclose(result.as_numpy("top_probabilities"),
                               np.take_along_axis(probs, order, axis=1), atol=1e-5)
    assert result.as_numpy("top_labels").tolist() == [
        [labels[i].encode() for i in row] for row in order
    ]
    assert [o["name"] for o in meta["outputs"]] == ["top_probabilities", "top_classes",
                                                    "top_labels"]
    assert config["platform"] == "ensemble"
    notes = config["parameters"]["sluice.notes"]["string_value"]
    assert "digits_standardize -> digits_linear -> digits_top3" in notes
    assert (order[:, 0] == split["y"][:50]).mean() > 0.9  # it is a real classifier


def test_requests_compile_nothing_once_the_models_are_loaded(bundled_server):
    """The load compiled each kernel once, for read-only rows: requests (read-only views over
    the wire bytes) and batches cut from several (writable) of any size reuse it."""
    kernels = cpu.FOREST_KERNELS + (cpu.standardize, cpu.topk)
    before = cpu.compile_counts(kernels)[0]
    rng = np.random.default_rng(3)
    with tc.InferenceServerClient(bundled_server.address) as client:
        for rows in (1, 7, 33, 256):
            client.infer("breast_cancer", [fp32("input__0", rng.normal(size=(rows, 30)))])
            client.infer("digits_pipeline", [fp32("pixels", rng.normal(size=(rows, 64)))])
    repo = bundled_server.server.repository
    for rows in (1, 40):  # writable rows straight to the loaded backends
        repo.get("breast_cancer").backend.run(0, {"input__0": np.ones((rows, 30), np.float32)})
        repo.get("digits_top3").backend.run(0, {"INPUT0": np.ones((rows, 10), np.float32)})
    assert cpu.compile_counts(kernels)[0] == before


def test_pipeline_with_a_missing_step_fails_clearly(make_server, tmp_path):
    (tmp_path / "p" / "1").mkdir(parents=True)
    (tmp_path / "p" / "config.pbtxt").write_text("""
name: "p"
platform: "ensemble"
max_batch_size: 4
input [{ name: "x" data_type: TYPE_FP32 dims: [ 2 ] }]
output [{ name: "y" data_type: TYPE_FP32 dims: [ 2 ] }]
ensemble_scheduling { step [{ model_name: "nowhere" model_version: -1
  input_map { key: "INPUT0" value: "x" } output_map { key: "OUTPUT0" value: "y" } }] }
""")
    running = make_server(tmp_path)
    with tc.InferenceServerClient(running.address) as client, pytest.raises(
        InferenceServerException
    ) as info:
        client.load_model("p")
    assert "'nowhere'" in info.value.message() and "not loaded" in info.value.message()
