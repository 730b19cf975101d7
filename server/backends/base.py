"""The backend contract the core relies on.

A backend is one loaded model version with ``instance_count`` independent instances. ``run`` is
synchronous and is called from executor threads, at most one call per instance at a time; it
should release the GIL while computing (ONNX Runtime and ``nogil`` Numba kernels do).
"""

from __future__ import annotations

from typing import Protocol

import numpy as np

from sluice.server.config.model import ModelConfig, ModelIO
from sluice.server.config.sequence import warmup_tensors
from sluice.server.types import DATATYPE_DTYPES


class Backend(Protocol):
    """One loaded model version."""

    #: What the model file declares (full shapes, -1 for dynamic dims).
    io: ModelIO
    #: Human-readable facts worth showing in metadata (e.g. a GPU fallback).
    notes: tuple[str, ...]
    #: ``run`` may also be called on the event loop's thread (CPU only, nothing bound to a
    #: thread): the batcher then runs a request inline when that is measured to be cheaper.
    inline_safe: bool

    @property
    def instance_count(self) -> int: ...

    def run(self, instance: int, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Compute every output for ``inputs`` on instance ``instance``."""
        ...

    def prepare(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Per-request conversion before batching (cheap; on the event loop). Raises
        InvalidInput for values this runtime cannot take, so one bad request never fails its
        batch-mates."""
        ...

    def warmup(self, config: ModelConfig) -> None:
        """Run every instance once at batch 1 and at max batch so no request pays first-run cost."""
        ...

    def close(self) -> None:
        """Free the model's resources; no ``run`` is in flight when this is called."""
        ...


class InstancesBackend:
    """Defaults shared by backends: ``count`` instances, inputs taken as they come."""

    notes: tuple[str, ...] = ()
    inline_safe: bool = False

    def __init__(self, count: int) -> None:
        self._count = count

    @property
    def instance_count(self) -> int:
        return self._count

    def prepare(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return inputs


def warmup_inputs(config: ModelConfig, rows: int) -> dict[str, np.ndarray]:
    """Zero inputs for ``config`` with ``rows`` rows (BYTES: "0", text that string models,
    a Cast from string to a number among them, take); -1 dims become 1."""
    out = {}
    for spec in config.inputs:
        dims = tuple(1 if d == -1 else d for d in spec.model_dims)
        shape = (rows, *dims) if config.max_batch_size > 0 else dims
        dtype = DATATYPE_DTYPES[spec.datatype]
        if spec.datatype == "BYTES":
            out[spec.name] = np.full(shape, "0", dtype=object)
        else:
            out[spec.name] = np.zeros(shape, dtype=dtype)
    if config.sequence_batching is not None:  # sequence batching: the server's own inputs
        out.update(warmup_tensors(config.sequence_batching, rows, config.max_batch_size > 0))
    return out
