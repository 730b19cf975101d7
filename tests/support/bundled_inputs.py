"""Inputs for the bundled models (model_repository/): each model's input names and non-batch
shapes, random float32 batches for them, and the ONNX file that answers a request naming no
version."""

from __future__ import annotations

from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2] / "model_repository"

# model -> input name -> non-batch shape
MODEL_INPUTS: dict[str, dict[str, tuple[int, ...]]] = {
    "identity": {"INPUT0": (16,)},
    "add_sub": {"INPUT0": (16,), "INPUT1": (16,)},
    "digits": {"input": (64,)},
}


def random_inputs(model: str, batch: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    return {
        name: rng.standard_normal((batch, *shape)).astype(np.float32)
        for name, shape in MODEL_INPUTS[model].items()
    }


def newest_onnx(model: str) -> Path:
    """The ONNX file of ``model``'s highest version: the one that answers a request naming no
    version while the model has no deployment (Triton's rule; ``digits`` serves 1 and 2)."""
    versions = [int(p.name) for p in (REPO / model).iterdir() if p.name.isdigit()]
    return REPO / model / str(max(versions)) / "model.onnx"
