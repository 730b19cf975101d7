"""Rebuild the bundled ``digits`` model, both its versions (called by build_models.py).

Both versions are trained on the same stratified 80/20 split of scikit-learn's bundled digits
data (``digits/test_split.npz`` holds the held-out 20%, ``digits/train_split.npz`` the 80% they
learn from, the original training data ``sluice retrain digits`` offers its trainer) and
exported with skl2onnx (zipmap=False), so they take the same input and give the same outputs;
``config.pbtxt`` serves both (``version_policy { all { } }``), which is what the README's
Deployments section walks through (aliases, routes, switch, shadow, canary between version 1
and version 2).

  version 1  StandardScaler + LogisticRegression (C=0.1): the stable model.
  version 2  StandardScaler + MLPClassifier (one hidden layer of 32 ReLU units, L2 alpha=1.0,
             L-BFGS): the candidate, a different model that agrees with version 1 on most rows
             (a shadow of it has something to report).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from build_models import OPSET, SEED, _finalize, _session, _write_model, _write_npz

ML_OPSET = 3  # ai.onnx.ml upper bound for skl2onnx (digits ends up needing only v1)

DIGITS_CONFIG = """\
name: "digits"
platform: "onnxruntime_onnx"
max_batch_size: 256
# Version 1 (logistic regression) and version 2 (a small MLP) are both served, so deployments
# (aliases, routes, switch, shadow, canary) can move traffic between them.
version_policy { all { } }
input [
  {
    name: "input"
    data_type: TYPE_FP32
    dims: [ 64 ]
  }
]
output [
  {
    # The ONNX output is 1-D ([batch]): one class id per row. Triton requires non-empty dims,
    # so, as Triton's own ONNX auto-complete does, declare [1] and reshape it to [] (no
    # non-batch dims) for the model.
    name: "label"
    data_type: TYPE_INT64
    dims: [ 1 ]
    reshape: { shape: [ ] }
  },
  {
    name: "probabilities"
    data_type: TYPE_FP32
    dims: [ 10 ]
  }
]
dynamic_batching { }
instance_group [
  {
    count: 1
    kind: KIND_CPU
  }
]
"""


def _classifiers():
    """version -> an unfitted scikit-learn pipeline (the same preprocessing, other models)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.neural_network import MLPClassifier
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import StandardScaler

    return {
        1: Pipeline([
            ("scaler", StandardScaler()),
            ("clf", LogisticRegression(C=0.1, max_iter=5000, random_state=0)),
        ]),
        2: Pipeline([
            ("scaler", StandardScaler()),
            ("clf", MLPClassifier(hidden_layer_sizes=(32,), alpha=1.0, solver="lbfgs",
                                  max_iter=2000, random_state=0)),
        ]),
    }


def build_digits(repo: Path) -> dict[int, Path]:
    """Write ``digits/config.pbtxt``, ``digits/<version>/model.onnx`` for versions 1 and 2,
    ``digits/test_split.npz`` and ``digits/train_split.npz``; returns {version: path}. Exits
    when a version's held-out accuracy is below 0.9 or its label and argmax(probabilities)
    disagree."""
    from skl2onnx import convert_sklearn
    from skl2onnx.common.data_types import FloatTensorType
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    x, y = load_digits(return_X_y=True)
    x = x.astype(np.float32)
    y = y.astype(np.int64)
    x_train, x_test, y_train, y_test = train_test_split(
        x, y, test_size=0.2, stratify=y, random_state=SEED % (2**32)
    )
    paths: dict[int, Path] = {}
    labels: dict[int, np.ndarray] = {}
    for version, pipeline in _classifiers().items():
        pipeline.fit(x_train, y_train)
        model = convert_sklearn(
            pipeline,
            name="digits",
            initial_types=[("input", FloatTensorType([None, 64]))],
            options={id(pipeline.named_steps["clf"]): {"zipmap": False}},
            target_opset={"": OPSET, "ai.onnx.ml": ML_OPSET},
        )
        model = _finalize(model, "digits")
        output_names = [o.name for o in model.graph.output]
        if output_names != ["label", "probabilities"]:
            raise SystemExit(f"digits {version}: unexpected skl2onnx output names {output_names}")
        path = paths[version] = _write_model(repo, "digits", model, DIGITS_CONFIG, version)
        label, probabilities = _session(path).run(["label", "probabilities"], {"input": x_test})
        labels[version] = label
        accuracy = float(np.mean(label == y_test))
        agree = bool(np.array_equal(np.argmax(probabilities, axis=1), label))
        print(
            f"digits version {version}: train={len(y_train)} test={len(y_test)} "
            f"held-out accuracy (onnxruntime)={accuracy:.4f} "
            f"sklearn={pipeline.score(x_test, y_test):.4f} argmax(probabilities)==label: {agree}"
        )
        if accuracy < 0.9 or not agree:
            raise SystemExit(f"digits {version}: accuracy below 0.9 or label/probabilities "
                             "disagree")
    _write_npz(repo / "digits" / "test_split.npz", X=x_test, y=y_test)
    _write_npz(repo / "digits" / "train_split.npz", X=x_train, y=y_train)
    same = float(np.mean(labels[1] == labels[2]))
    print(f"digits: versions 1 and 2 give the same label on {same:.4f} of the held-out rows")
    return paths
