"""The evaluate step: the serving version and the candidate scored on the same held-out rows.

A candidate is loaded exactly as the server would load it (the model's config.pbtxt, its backend,
the same completion and checks), so a model file that the server would refuse (another input
name, a wrong datatype or shape, not ONNX at all) fails here, before anything is written into
the repository. Metrics are computed with numpy: accuracy, and macro F1 (the unweighted mean of
the per-class F1 over the classes that occur in the labels or the predictions).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from sluice.server.backends.ort import OrtBackend
from sluice.server.config.model import ModelConfig
from sluice.server.config.pbtxt import read_model_config
from sluice.server.config.validation import complete_model_config
from sluice.server.errors import SluiceError


class EvaluationFailed(ValueError):
    """A version cannot be loaded or scored; the message names the version and why."""


@dataclass(frozen=True, slots=True)
class Score:
    accuracy: float
    macro_f1: float
    rows: int

    def metric(self, name: str) -> float:
        return float(getattr(self, name))


def macro_f1(truth: np.ndarray, predicted: np.ndarray) -> float:
    classes = np.union1d(truth, predicted)
    scores = []
    for c in classes:
        tp = np.sum((predicted == c) & (truth == c))
        fp = np.sum((predicted == c) & (truth != c))
        fn = np.sum((predicted != c) & (truth == c))
        scores.append(0.0 if tp == 0 else 2 * tp / (2 * tp + fp + fn))
    return float(np.mean(scores)) if scores else 0.0


def model_config(model_dir: Path, model: str) -> ModelConfig:
    """The model's config.pbtxt as read by the server (inputs and outputs as declared)."""
    try:
        return read_model_config(model_dir, model)[0]
    except SluiceError as exc:
        raise EvaluationFailed(exc.message) from None


def load_version(model_dir: Path, model: str, version_dir: Path,
                 what: str) -> tuple[OrtBackend, ModelConfig]:
    """The model file in ``version_dir`` loaded as the server loads it; ``what`` names it in
    errors ("candidate", "serving version 1")."""
    try:
        config, batch_set = read_model_config(model_dir, model)
        if config.backend != "onnxruntime":
            raise EvaluationFailed(f"{what}: retrain evaluates ONNX models, model '{model}' "
                                   f"uses backend '{config.backend}'")
        backend = OrtBackend(config, version_dir)
        full = complete_model_config(config, backend.io, max_batch_size_set=batch_set,
                                     default_max_batch_size=64)
    except SluiceError as exc:
        raise EvaluationFailed(f"{what}: {exc.message}") from None
    return backend, full


def predict(backend: OrtBackend, config: ModelConfig, input_name: str, output: str,
            x: np.ndarray) -> np.ndarray:
    """Class ids for the rows of ``x``: ``output`` itself when it holds integers, else its
    argmax over the last axis. Runs in batches of at most max_batch_size rows."""
    spec = config.output(output)
    if spec is None:
        raise EvaluationFailed(f"model '{config.name}' has no output '{output}' (evaluate.output;"
                               f" it has {', '.join(o.name for o in config.outputs)})")
    step = max(config.max_batch_size, 1) if config.max_batch_size > 0 else len(x)
    parts = []
    for start in range(0, len(x), max(step, 1)):
        result = backend.run(0, {input_name: x[start:start + step]})[output]
        if result.dtype.kind == "f":
            result = result.reshape(len(result), -1).argmax(axis=1)
        parts.append(result.reshape(-1).astype(np.int64))
    return np.concatenate(parts) if parts else np.empty(0, np.int64)


def score_version(model_dir: Path, model: str, version_dir: Path, what: str, input_name: str,
                  output: str, x: np.ndarray, y: np.ndarray) -> Score:
    """Load the version in ``version_dir`` and score it on (x, y)."""
    backend, config = load_version(model_dir, model, version_dir, what)
    try:
        try:
            predicted = predict(backend, config, input_name, output, x)
        except EvaluationFailed:
            raise
        except Exception as exc:  # the runtime's own error types
            raise EvaluationFailed(f"{what}: running it on the held-out rows failed: "
                                   f"{type(exc).__name__}") from None
    finally:
        backend.close()
    if predicted.shape != y.shape:
        raise EvaluationFailed(f"{what}: {predicted.shape[0]} predictions for {len(y)} rows")
    return Score(accuracy=float(np.mean(predicted == y)) if len(y) else 0.0,
                 macro_f1=macro_f1(y, predicted), rows=len(y))
