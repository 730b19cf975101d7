"""A model loaded in this process, as the server loads it, answering batch jobs without gRPC.

The model directory is checked (no link out of the repository), its config read and completed
against the model file, the backend built by the server's own factory (injected: the composition
root names the backends) and warmed up. Rows are run in batches of ``batch_rows`` on one
instance thread, the config's reshapes applied as the server applies them.

A job hands it ``piece_rows`` rows at a time: whole batches of about :data:`PIECE_BYTES` of
input, so the model starts on a job's first rows while the next are read, and the reading
thread never holds more than two pieces.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from sluice.server.backends.base import Backend
from sluice.server.batch.job import Failure
from sluice.server.config.containment import check_contained
from sluice.server.config.model import ModelConfig, check_model_name
from sluice.server.config.pbtxt import read_model_config
from sluice.server.config.validation import complete_model_config
from sluice.server.errors import ModelLoadError, SluiceError
from sluice.server.types import DATATYPE_DTYPES

#: make_backend(partial config, version_dir) -> Backend, as the server builds them.
BackendFactory = Callable[[ModelConfig, Path], Backend]

#: Input bytes per piece, rounded up to whole batches: ~30 ms of Parquet reading for ``cnn``
#: (one batch of 256 images), against ~1 s to read its first 8192-row chunk whole.
PIECE_BYTES = 2 << 20


class LocalPredictor:
    """One version of a repository model, loaded here. Blocking constructor."""

    def __init__(self, repository: Path, name: str, make_backend: BackendFactory, *,
                 version: int | None = None, batch_rows: int | None = None,
                 default_max_batch_size: int = 64) -> None:
        check_model_name(name)
        root = repository.resolve()
        model_dir = root / name
        if not model_dir.is_dir():
            raise ModelLoadError(f"model '{name}' is not in the repository")
        check_contained(root, model_dir, name)
        config, batch_set = read_model_config(model_dir, name)
        available = sorted(int(p.name) for p in model_dir.iterdir()
                           if p.is_dir() and p.name.isascii() and p.name.isdigit())
        chosen = config.version_policy.select(available)
        if version is None:
            if not chosen:
                raise ModelLoadError(f"model '{name}': no version directory matches its "
                                     f"version_policy (found {available})")
            version = chosen[-1]
        elif version not in available:
            raise ModelLoadError(f"model '{name}' has no version {version} (found {available})")
        self.backend = make_backend(config, model_dir / str(version))
        try:
            full = complete_model_config(config, self.backend.io, max_batch_size_set=batch_set,
                                         default_max_batch_size=default_max_batch_size)
            self.backend.warmup(full)
        except BaseException:
            self.backend.close()
            raise
        if full.max_batch_size == 0:
            raise ModelLoadError(f"model '{name}' does not batch (max_batch_size 0); batch "
                                 "jobs need a model whose first dimension is the batch")
        self.config = full
        self.version = version
        self.batch_rows = batch_rows or full.max_batch_size
        row_bytes = sum(math.prod(max(d, 1) for d in s.dims) *
                        DATATYPE_DTYPES[s.datatype].itemsize for s in full.inputs)
        self.piece_rows = self.batch_rows * max(
            1, -(-PIECE_BYTES // max(1, row_bytes * self.batch_rows)))
        self.inputs = full.inputs
        self.outputs = full.outputs
        self.identity: dict[str, Any] = {"model": name, "version": version}
        self._reshape_in = {s.name: s.reshape for s in full.inputs if s.reshape is not None}

    def run(self, inputs: dict[str, np.ndarray]) -> tuple[dict[str, np.ndarray], list[Failure]]:
        """Every output for every row, ``batch_rows`` at a time (rows of a failed batch hold
        zeros). Blocking; the backend releases the GIL while it computes."""
        rows = next(iter(inputs.values())).shape[0]
        out = {s.name: np.zeros((rows, *s.dims), DATATYPE_DTYPES[s.datatype])
               for s in self.outputs}
        failures: list[Failure] = []
        for start in range(0, rows, self.batch_rows):
            stop = min(start + self.batch_rows, rows)
            batch = {k: self._shaped(k, v[start:stop]) for k, v in inputs.items()}
            try:
                got = self.backend.run(0, self.backend.prepare(batch))
                for name, value in out.items():
                    value[start:stop] = got[name].reshape(stop - start, *value.shape[1:])
            except SluiceError as exc:
                failures.append((start, stop, "model", exc.message))
            except Exception as exc:  # the runtime's own error fails its rows, not the job
                text = str(exc).strip().splitlines()
                failures.append((start, stop, "model",
                                 f"{type(exc).__name__}: {text[0] if text else ''}"))
        return out, failures

    def _shaped(self, name: str, value: np.ndarray) -> np.ndarray:
        dims = self._reshape_in.get(name)
        return value if dims is None else value.reshape(value.shape[0], *dims)

    async def predict(self, inputs: dict[str, np.ndarray]
                      ) -> tuple[dict[str, np.ndarray], list[Failure]]:
        return await asyncio.to_thread(self.run, inputs)

    def close(self) -> None:
        self.backend.close()
