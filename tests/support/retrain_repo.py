"""A model repository for retraining tests: digits version 1 alone, with its data files and
trainer, and version 2's MLP set aside as a ready-made better candidate."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import onnxruntime as ort

from sluice.server.app import BUNDLED_REPOSITORY

DIGITS = BUNDLED_REPOSITORY / "digits"
#: A trainer command body that copies argv[1] to argv[2] (a real model file as the "trained" one).
COPY = "import shutil, sys; shutil.copy(sys.argv[1], sys.argv[2])"
#: Long enough that a canary is still at its first step when a test looks.
INTERVAL_S = 600


def digits_v1_repo(tmp_path: Path) -> Path:
    """``tmp_path/models`` with digits version 1 only; version 2's model at tmp_path/mlp.onnx."""
    model = tmp_path / "models" / "digits"
    (model / "1").mkdir(parents=True)
    for name in ("config.pbtxt", "test_split.npz", "train_split.npz", "train.py"):
        shutil.copy(DIGITS / name, model / name)
    shutil.copy(DIGITS / "1" / "model.onnx", model / "1" / "model.onnx")
    shutil.copy(DIGITS / "2" / "model.onnx", tmp_path / "mlp.onnx")
    return tmp_path / "models"


def accuracy(model_file: Path) -> float:
    """Held-out accuracy of a digits ONNX file, by onnxruntime directly."""
    split = np.load(DIGITS / "test_split.npz")
    session = ort.InferenceSession(str(model_file), providers=["CPUExecutionProvider"])
    label = session.run(["label"], {"input": split["X"]})[0]
    return float(np.mean(label == split["y"]))


def retrain_yaml(command: list[str], *, margin: float = 0.005, training: str = "train_split.npz",
                 min_rows: int = 500) -> str:
    return json.dumps({  # JSON is YAML
        "fetch": {"input": "input", "training_data": training},
        "validate": {"min_rows": min_rows, "classes": 10},
        "train": {"command": command, "timeout_s": 600},
        "evaluate": {"holdout": "test_split.npz", "output": "label", "margin": margin},
        "deploy": {"shadow": {"sample": 1.0},
                   "canary": {"steps": [5, 50, 100], "interval_s": INTERVAL_S,
                              "gates": {"max_error_rate": 0.01}}},
    })
