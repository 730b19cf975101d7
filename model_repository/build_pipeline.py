"""Rebuild the bundled tree model and the digits pipeline (called by build_models.py).

    python model_repository/build_pipeline.py [--repo DIR]

Models:
  breast_cancer       XGBoost binary:logistic (60 trees, depth 4) trained on scikit-learn's
                      bundled breast-cancer data, served by backend "fil" (Triton FIL's layout:
                      1/xgboost.json, input__0 -> output__0 = [P(benign=0), P(1)]); held-out
                      test split in test_split.npz.
  digits_standardize  Numba kernel: (x - mean) / std with the digits training set's statistics.
  digits_linear       LogisticRegression on standardized digits, exported with skl2onnx.
  digits_top3         Numba kernel: top-3 probabilities, class indices and labels.
  digits_pipeline     platform "ensemble": standardize -> digits_linear -> top-3, batched once.

Needs the ``models`` extra (onnx, scikit-learn, skl2onnx, xgboost).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

REPO_DIR = Path(__file__).resolve().parent
SEED = 20261126
LABELS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")

BREAST_CANCER_CONFIG = """\
name: "breast_cancer"
backend: "fil"
max_batch_size: 1024
input [{ name: "input__0" data_type: TYPE_FP32 dims: [ 30 ] }]
output [{ name: "output__0" data_type: TYPE_FP32 dims: [ 2 ] }]
instance_group [{ count: 1 kind: KIND_CPU }]
dynamic_batching { }
parameters [
  { key: "model_type" value: { string_value: "xgboost_json" } },
  { key: "output_class" value: { string_value: "true" } },
  { key: "predict_proba" value: { string_value: "true" } }
]
"""

STANDARDIZE_CONFIG = """\
name: "digits_standardize"
backend: "numba"
max_batch_size: 256
input [{ name: "INPUT0" data_type: TYPE_FP32 dims: [ 64 ] }]
output [{ name: "OUTPUT0" data_type: TYPE_FP32 dims: [ 64 ] }]
parameters { key: "kernel" value: { string_value: "standardize" } }
dynamic_batching { }
"""

LINEAR_CONFIG = """\
name: "digits_linear"
platform: "onnxruntime_onnx"
max_batch_size: 256
dynamic_batching { }
"""

TOP3_CONFIG = """\
name: "digits_top3"
backend: "numba"
max_batch_size: 256
input [{ name: "INPUT0" data_type: TYPE_FP32 dims: [ 10 ] }]
parameters [
  { key: "kernel" value: { string_value: "topk" } },
  { key: "k" value: { string_value: "3" } }
]
dynamic_batching { }
"""

PIPELINE_CONFIG = """\
name: "digits_pipeline"
platform: "ensemble"
max_batch_size: 256
input [{ name: "pixels" data_type: TYPE_FP32 dims: [ 64 ] }]
output [
  { name: "top_probabilities" data_type: TYPE_FP32 dims: [ 3 ] },
  { name: "top_classes" data_type: TYPE_INT64 dims: [ 3 ] },
  { name: "top_labels" data_type: TYPE_STRING dims: [ 3 ] }
]
# No dynamic_batching block: Triton makes it one-of with ensemble_scheduling. Sluice batches a
# pipeline at its entry anyway, once, by rows up to max_batch_size.
ensemble_scheduling {
  step [
    {
      model_name: "digits_standardize"
      model_version: -1
      input_map { key: "INPUT0" value: "pixels" }
      output_map { key: "OUTPUT0" value: "standardized" }
    },
    {
      model_name: "digits_linear"
      model_version: -1
      input_map { key: "input" value: "standardized" }
      output_map { key: "probabilities" value: "probabilities" }
    },
    {
      model_name: "digits_top3"
      model_version: -1
      input_map { key: "INPUT0" value: "probabilities" }
      output_map [
        { key: "values" value: "top_probabilities" },
        { key: "indices" value: "top_classes" },
        { key: "labels" value: "top_labels" }
      ]
    }
  ]
}
"""


def _write(path: Path, text: str | bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text, encoding="utf-8")


def build_breast_cancer(repo: Path, write_npz) -> None:
    import xgboost as xgb
    from sklearn.datasets import load_breast_cancer
    from sklearn.model_selection import train_test_split

    x, y = load_breast_cancer(return_X_y=True)
    x = x.astype(np.float32)
    x_train, x_test, y_train, y_test = train_test_split(
        x, y, test_size=0.25, stratify=y, random_state=SEED % (2**32)
    )
    booster = xgb.train(
        {"objective": "binary:logistic", "max_depth": 4, "eta": 0.2, "seed": 0,
         "nthread": 1, "tree_method": "exact"},
        xgb.DMatrix(x_train, label=y_train), num_boost_round=60,
    )
    model_dir = repo / "breast_cancer"
    _write(model_dir / "config.pbtxt", BREAST_CANCER_CONFIG)
    raw = booster.save_raw(raw_format="json")
    # Re-serialise with sorted keys and no whitespace: smaller and byte-stable across runs.
    _write(model_dir / "1" / "xgboost.json",
           json.dumps(json.loads(bytes(raw)), sort_keys=True, separators=(",", ":")))
    write_npz(model_dir / "test_split.npz", X=x_test, y=y_test.astype(np.int64))
    p = booster.predict(xgb.DMatrix(x_test))
    accuracy = float(np.mean((p > 0.5) == y_test))
    print(f"breast_cancer: train={len(y_train)} test={len(y_test)} "
          f"held-out accuracy={accuracy:.4f}")
    if accuracy < 0.9:
        raise SystemExit("breast_cancer: held-out accuracy below 0.9")


def build_digits_pipeline(repo: Path, finalize, write_model, write_npz) -> None:
    from skl2onnx import convert_sklearn
    from skl2onnx.common.data_types import FloatTensorType
    from sklearn.datasets import load_digits
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import train_test_split

    x, y = load_digits(return_X_y=True)
    x = x.astype(np.float32)
    x_train, x_test, y_train, y_test = train_test_split(
        x, y, test_size=0.2, stratify=y, random_state=SEED % (2**32)
    )
    mean = x_train.mean(axis=0).astype(np.float64)
    std = x_train.std(axis=0).astype(np.float64)
    std[std == 0] = 1.0
    clf = LogisticRegression(C=0.1, max_iter=5000, random_state=0)
    clf.fit((x_train - mean) / std, y_train)
    model = convert_sklearn(
        clf, name="digits_linear",
        initial_types=[("input", FloatTensorType([None, 64]))],
        options={id(clf): {"zipmap": False}},
        target_opset={"": 17, "ai.onnx.ml": 3},
    )
    write_model(repo, "digits_linear", finalize(model, "digits_linear"), LINEAR_CONFIG)
    _write(repo / "digits_standardize" / "config.pbtxt", STANDARDIZE_CONFIG)
    (repo / "digits_standardize" / "1").mkdir(parents=True, exist_ok=True)
    write_npz(repo / "digits_standardize" / "1" / "params.npz", mean=mean, std=std)
    _write(repo / "digits_top3" / "config.pbtxt", TOP3_CONFIG)
    _write(repo / "digits_top3" / "1" / "labels.txt", "\n".join(LABELS) + "\n")
    _write(repo / "digits_pipeline" / "config.pbtxt", PIPELINE_CONFIG)
    (repo / "digits_pipeline" / "1").mkdir(parents=True, exist_ok=True)
    (repo / "digits_pipeline" / "1" / ".keep").write_text("")
    accuracy = clf.score((x_test - mean) / std, y_test)
    print(f"digits_pipeline: held-out accuracy of digits_linear (sklearn)={accuracy:.4f}")


def main() -> None:
    import build_models as base  # the sibling script: shared ONNX and npz helpers

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repo", type=Path, default=REPO_DIR, help="output model repository")
    repo = parser.parse_args().repo.resolve()
    build_all(repo, base)


def build_all(repo: Path, base) -> None:
    build_breast_cancer(repo, base._write_npz)
    build_digits_pipeline(repo, base._finalize, base._write_model, base._write_npz)


if __name__ == "__main__":
    main()
