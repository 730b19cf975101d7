"""What the benchmark needs to know about a bundled model, read from the repository's files
(``config.pbtxt`` for max_batch_size, the ONNX file for input names, types and shapes), and the
random inputs it sends. No server import: the loaders here are small on purpose.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from google.protobuf import text_format

from sluice.proto import model_config_pb2, tensors

ROOT = Path(__file__).resolve().parent.parent
"""The repository root (the working directory of every subprocess the benchmark starts)."""
MODEL_REPOSITORY = ROOT / "model_repository"

# ONNX tensor type strings (as onnxruntime reports them) -> numpy dtypes.
_ORT_TYPES = {
    "tensor(float)": np.float32,
    "tensor(double)": np.float64,
    "tensor(int64)": np.int64,
    "tensor(int32)": np.int32,
    "tensor(uint8)": np.uint8,
}


@dataclass(frozen=True, slots=True)
class InputSpec:
    """One model input: name, numpy dtype name and the dims after the batch dim."""

    name: str
    dtype: str
    dims: tuple[int, ...]

    def to_arg(self) -> str:
        """``NAME:DTYPE:D1xD2`` for the load generator's ``--input``."""
        return f"{self.name}:{self.dtype}:{'x'.join(str(d) for d in self.dims)}"

    @classmethod
    def from_arg(cls, text: str) -> InputSpec:
        name, dtype, dims = text.rsplit(":", 2)
        return cls(name, dtype, tuple(int(d) for d in dims.split("x") if d))


@dataclass(frozen=True, slots=True)
class ModelSpec:
    """A bundled model as the benchmark sees it."""

    name: str
    path: Path
    max_batch_size: int
    inputs: tuple[InputSpec, ...]


def max_batch_size(model_dir: Path) -> int:
    """``max_batch_size`` from ``config.pbtxt`` (0 when absent: the model does not batch)."""
    config = text_format.Parse(
        (model_dir / "config.pbtxt").read_text(), model_config_pb2.ModelConfig()
    )
    return int(config.max_batch_size)


def load_spec(name: str, repository: Path = MODEL_REPOSITORY) -> ModelSpec:
    """Read one model's spec; the ONNX file of its highest numbered version is used."""
    import onnxruntime as ort

    model_dir = repository / name
    versions = sorted(
        (p for p in model_dir.iterdir() if p.name.isdigit()), key=lambda p: int(p.name)
    )
    path = versions[-1] / "model.onnx"
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    inputs = tuple(
        InputSpec(
            i.name,
            np.dtype(_ORT_TYPES[i.type]).name,
            tuple(int(d) for d in i.shape[1:]),  # every bundled input is [batch, fixed dims]
        )
        for i in session.get_inputs()
    )
    return ModelSpec(name, path, max_batch_size(model_dir), inputs)


def make_inputs(
    inputs: tuple[InputSpec, ...], batch: int, seed: int = 0
) -> dict[str, np.ndarray]:
    """Random inputs of ``batch`` rows (uniform in [0, 1) for floats), reproducible by seed."""
    rng = np.random.default_rng(seed)
    arrays: dict[str, np.ndarray] = {}
    for spec in inputs:
        shape = (batch, *spec.dims)
        dtype = np.dtype(spec.dtype)
        if dtype.kind == "f":
            arrays[spec.name] = rng.random(shape, dtype=np.float64).astype(dtype)
        else:
            arrays[spec.name] = rng.integers(0, 10, shape).astype(dtype)
    return arrays


def inputs_from_metadata(
    metadata: dict[str, Any], batch: int = 1, seed: int = 0
) -> dict[str, np.ndarray]:
    """Random inputs for a model as its ModelMetadata describes it (the dict form
    :meth:`clients.Client.model_metadata` returns): the first -1 dim becomes ``batch``, any
    other -1 becomes 1. Numbers as in :func:`make_inputs`; BYTES inputs get ``b"0"`` elements.
    """
    specs = []
    for tensor in metadata["inputs"]:
        shape = [int(d) for d in tensor["shape"]]
        if shape and shape[0] == -1:
            shape[0] = batch
        shape = [1 if d < 0 else d for d in shape]
        specs.append((tensor["name"], tensor["datatype"], tuple(shape)))
    rng = np.random.default_rng(seed)
    arrays: dict[str, np.ndarray] = {}
    for name, datatype, shape in specs:
        dtype = tensors.datatype_to_dtype(datatype)
        if datatype == "BYTES":
            arrays[name] = np.full(shape, b"0", dtype=object)
        elif dtype.kind == "f":
            arrays[name] = rng.random(shape, dtype=np.float64).astype(dtype)
        elif dtype.kind == "b":
            arrays[name] = rng.integers(0, 2, shape).astype(dtype)
        else:
            arrays[name] = rng.integers(0, 10, shape).astype(dtype)
    return arrays
