"""The digits model's trainer, the command ``digits/retrain.yaml`` declares for ``sluice retrain``.

    python train.py --data rows.npz --output model.onnx

``--data`` is the ``.npz`` the pipeline hands over: ``X`` (float32, [rows, 64]) and ``y`` (int64
class ids 0-9), the original training split and the logged requests their feedback labelled.
The model is version 1's recipe (StandardScaler + LogisticRegression, C=0.1; see
../build_digits.py), exported with skl2onnx (zipmap=False) so that it takes ``input`` FP32 [-1, 64]
and gives ``label`` INT64 [-1] and ``probabilities`` FP32 [-1, 10], as config.pbtxt declares.
Prints one line with what it learned from; exits non-zero (and writes nothing) on failure.

Needs numpy, scikit-learn, skl2onnx and onnx (the project's ``models`` extra).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

OPSET = 17  # the opset every bundled model states (build_models.OPSET)
ML_OPSET = 3
IR_VERSION = 8  # loadable by onnxruntime >= 1.14


def train(x: np.ndarray, y: np.ndarray, seed: int):
    """An ONNX ModelProto of StandardScaler + LogisticRegression fitted on (x, y)."""
    import onnx
    from skl2onnx import convert_sklearn
    from skl2onnx.common.data_types import FloatTensorType
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import StandardScaler

    pipeline = Pipeline([
        ("scaler", StandardScaler()),
        ("clf", LogisticRegression(C=0.1, max_iter=5000, random_state=seed)),
    ])
    pipeline.fit(x, y)
    model = convert_sklearn(
        pipeline, name="digits", initial_types=[("input", FloatTensorType([None, 64]))],
        options={id(pipeline.named_steps["clf"]): {"zipmap": False}},
        target_opset={"": OPSET, "ai.onnx.ml": ML_OPSET},
    )
    model.ir_version = IR_VERSION
    model.producer_name = "sluice-digits-train"
    domains = {o.domain: o.version for o in model.opset_import}
    domains[""] = max(domains.get("", 0), OPSET)
    del model.opset_import[:]
    for domain in sorted(domains):
        model.opset_import.append(onnx.helper.make_opsetid(domain, domains[domain]))
    for value in list(model.graph.input) + list(model.graph.output):
        dims = value.type.tensor_type.shape.dim
        if dims and not dims[0].HasField("dim_value"):
            dims[0].dim_param = "batch"
    onnx.checker.check_model(model, full_check=True)
    return model


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True, help=".npz with X and y")
    parser.add_argument("--output", type=Path, required=True, help="where model.onnx goes")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    with np.load(args.data) as data:
        x, y = data["X"].astype(np.float32), data["y"].astype(np.int64)
    if x.ndim != 2 or x.shape[1] != 64 or len(x) != len(y):
        print(f"train.py: expected X [rows, 64] and y [rows], got {x.shape} and {y.shape}",
              file=sys.stderr)
        return 2
    model = train(x, y, args.seed)
    args.output.write_bytes(model.SerializeToString())
    classes = np.bincount(y, minlength=10)
    print(f"train.py: fitted on {len(y)} rows (per class {classes.tolist()}), wrote "
          f"{args.output.name} ({args.output.stat().st_size} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
