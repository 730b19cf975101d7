"""Reading MLflow model directories without mlflow: the UBJSON decoder against XGBoost's own JSON
of the same model, and MLmodel files that must be refused with a reason (no mlflow import)."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np
import pytest
import xgboost as xgb
from sklearn.datasets import load_iris

from sluice.kernels import ubjson
from sluice.kernels.cpu import forest_predict
from sluice.kernels.formats import FormatError, load_xgboost_json
from sluice.server.backends.mlflow_model import read_mlmodel
from sluice.server.errors import ModelLoadError


def _same(a, b) -> bool:
    """Equal documents; floats equal as float32 (JSON holds their shortest text)."""
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, list):
        return isinstance(b, list) and len(a) == len(b) and all(map(_same, a, b))
    if isinstance(a, float) or isinstance(b, float):
        return np.float32(a) == np.float32(b)
    return a == b and type(a) is type(b)


@pytest.fixture(scope="module")
def booster_files(tmp_path_factory) -> tuple[xgb.Booster, Path, Path, np.ndarray]:
    x, y = load_iris(return_X_y=True)
    x = x.astype(np.float32)
    x[::7, 1] = np.nan
    booster = xgb.train({"objective": "multi:softprob", "num_class": 3, "max_depth": 3},
                        xgb.DMatrix(x, y), 5)
    folder = tmp_path_factory.mktemp("xgb")
    booster.save_model(folder / "model.json")
    booster.save_model(folder / "model.ubj")
    return booster, folder / "model.json", folder / "model.ubj", x


def test_ubjson_decodes_to_the_json_document(booster_files):
    _, as_json, as_ubj, _ = booster_files
    decoded = ubjson.loads(as_ubj.read_bytes())
    assert _same(json.loads(as_json.read_text()), decoded)


def test_a_ubj_model_predicts_as_the_booster(booster_files):
    booster, _, as_ubj, x = booster_files
    got = forest_predict(load_xgboost_json(as_ubj), x)
    np.testing.assert_allclose(got, booster.predict(xgb.DMatrix(x)), atol=1e-6)


def test_ubjson_hand_built_values():
    # {"a": [$d#i 2 <1.5, -2>], "b": "hi", "c": T, "n": Z, "k": [i 3, L 2**40]}
    def key(text: str) -> bytes:
        return b"i" + bytes([len(text)]) + text.encode()

    data = (b"{" + key("a") + b"[$d#i\x02" + struct.pack(">ff", 1.5, -2.0)
            + key("b") + b"S" + key("hi") + key("c") + b"T" + key("n") + b"Z"
            + key("k") + b"[i\x03L" + struct.pack(">q", 2**40) + b"]" + b"}")
    assert ubjson.loads(data) == {"a": [1.5, -2.0], "b": "hi", "c": True, "n": None,
                                  "k": [3, 2**40]}


@pytest.mark.parametrize(("data", "needle"), [
    (b"{i\x01a[$d#L" + struct.pack(">q", 10**12), "truncated at offset"),  # a count past the end
    (b"{i\x01aX}", "unknown marker 'X'"),
    (b"[" * 100, "nesting deeper than 64"),
    (b"Si\x01ab", "1 bytes after the value"),
])
def test_ubjson_refuses_broken_input_naming_the_offset(data, needle):
    with pytest.raises(ubjson.UbjsonError, match=needle):
        ubjson.loads(data)


def test_a_truncated_ubj_model_is_a_format_error(booster_files, tmp_path):
    cut = tmp_path / "model.ubj"
    cut.write_bytes(booster_files[2].read_bytes()[:500])
    with pytest.raises(FormatError, match="model.ubj: invalid or truncated UBJSON"):
        load_xgboost_json(cut)


def _mlmodel(folder: Path, text: str, files: dict[str, bytes] | None = None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "MLmodel").write_text(text)
    for name, payload in (files or {}).items():
        (folder / name).write_bytes(payload)
    return folder


@pytest.mark.parametrize(("text", "files", "needle"), [
    ("flavors: [unclosed", {}, "MLmodel is not valid YAML (line 1)"),
    ("flavors:\n  python_function: {loader_module: custom}\n", {},
     "MLflow flavor 'python_function' is not supported"),
    ("flavors:\n  onnx: {data: ../../secret.onnx}\n", {},
     "data must be a path inside the version directory"),
    ("flavors:\n  onnx: {data: /etc/passwd}\n", {},
     "data must be a path inside the version directory"),
    ("flavors:\n  onnx: {data: model.onnx}\n", {}, "names model file 'model.onnx', which is not"),
    ("flavors:\n  xgboost: {data: model.xgb, model_format: xgb}\n", {"model.xgb": b"\x00binf"},
     "legacy binary format"),
    ("flavors:\n  onnx: {data: m.onnx}\nsignature:\n  inputs: '[{\"type\": \"datetime\"}]'\n",
     {"m.onnx": b""}, "column type 'datetime' is not supported"),
    ("flavors:\n  onnx: {data: m.onnx}\nsignature:\n  inputs: '[{\"type\": \"tensor\", "
     "\"tensor-spec\": {\"dtype\": \"float32\", \"shape\": [-1, 0]}}]'\n",
     {"m.onnx": b""}, "tensor shape must be a list of positive sizes or -1"),
])
def test_bad_mlmodel_files_are_load_errors_naming_why(tmp_path, text, files, needle):
    folder = _mlmodel(tmp_path / "1", text, files)
    with pytest.raises(ModelLoadError) as caught:
        read_mlmodel(folder, "model 'm' version 1")
    assert needle in caught.value.message
    assert str(tmp_path) not in caught.value.message


def test_a_data_link_out_of_the_version_directory_is_refused(tmp_path):
    (tmp_path / "outside.onnx").write_bytes(b"")
    folder = _mlmodel(tmp_path / "1", "flavors:\n  onnx: {data: model.onnx}\n")
    (folder / "model.onnx").symlink_to(tmp_path / "outside.onnx")
    with pytest.raises(ModelLoadError, match="data leads outside the version directory"):
        read_mlmodel(folder, "model 'm' version 1")
