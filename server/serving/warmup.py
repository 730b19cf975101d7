"""Warm-up at load: the samples the config declares (Triton's ``model_warmup``), else the
backend's own default warm-up.

A warm-up exists so that no request pays a first-run cost; it must never make a valid model
unloadable. So:

- samples the config declares run ``count`` times on every instance, with the data they name
  (zeros, random values, or a file in the model's ``warmup`` directory); one failing fails the
  load, naming the sample (the config asked for it);
- without samples, the backend's default warm-up runs (zeros for numbers, ``b"0"`` for BYTES:
  a string that reads as a number, which string-to-number models take); when it fails the
  failure is logged as a warning and counted, and the version serves anyway.

Blocking: called on a loader thread, before the version serves.
"""

from __future__ import annotations

import logging
import struct
from pathlib import Path
from typing import Any

import numpy as np

from sluice.server.backends.base import Backend
from sluice.server.config.model import ModelConfig, WarmupInput, WarmupSample
from sluice.server.config.redaction import redact_paths
from sluice.server.errors import ModelLoadError
from sluice.server.types import DATATYPE_DTYPES

log = logging.getLogger(__name__)

#: Folder of warm-up data files in a model directory (Triton's name).
WARMUP_DIR = "warmup"


def warm_up(backend: Backend, config: ModelConfig, model_dir: Path, version: int) -> bool:
    """Warm ``backend`` up as ``config`` says. True when it went well; False when the default
    warm-up failed (logged; the caller counts it). Raises ModelLoadError when a declared sample
    fails."""
    where = f"model '{config.name}' version {version}"
    if not config.warmup:
        try:
            backend.warmup(config)
        except Exception as exc:  # any runtime's error: the model may still serve real data
            log.warning("%s: the default warm-up failed (the model serves anyway; declare "
                        "model_warmup samples in config.pbtxt to warm it up with data it "
                        "takes): %s", where, redact_paths(str(exc)))
            return False
        return True
    for sample in config.warmup:
        inputs = sample_inputs(config, sample, model_dir)
        try:
            for instance in range(backend.instance_count):
                for _ in range(sample.count):
                    backend.run(instance, backend.prepare(inputs))
        except Exception as exc:
            message = exc.message if isinstance(exc, ModelLoadError) else str(exc)
            raise ModelLoadError(
                f"{where}: warm-up sample '{sample.name}' failed: {redact_paths(message)}"
            ) from None
        log.info("%s: warm-up sample '%s' ran %d time(s) on %d instance(s)", where, sample.name,
                 sample.count, backend.instance_count)
    return True


def sample_inputs(
    config: ModelConfig, sample: WarmupSample, model_dir: Path
) -> dict[str, np.ndarray]:
    """The arrays of one sample, shaped as the backend takes them (batch, then the model's own
    dims). Raises ModelLoadError naming the sample and input for a data file that is missing
    or of the wrong size."""
    rng = np.random.default_rng(0)
    batched = config.max_batch_size > 0
    rows = max(sample.batch_size, 1)
    out = {}
    for name, spec in sample.inputs.items():
        label = f"model '{config.name}': model_warmup '{sample.name}' input '{name}'"
        one = _one(spec, rng, model_dir, label)
        declared = config.input(name)
        if declared is not None and declared.reshape is not None:
            one = one.reshape(declared.reshape)
        out[name] = np.stack([one] * rows) if batched else one
    return out


def _one(spec: WarmupInput, rng: np.random.Generator, model_dir: Path, label: str) -> np.ndarray:
    """One row of ``spec``'s data (no batch dimension)."""
    shape = spec.dims
    count = int(np.prod(shape, dtype=np.int64))
    if spec.datatype == "BYTES":
        if spec.source == "zero":
            return np.full(shape, b"", dtype=object)  # Triton's zero data: empty strings
        if spec.source == "random":  # decimal digits: text that string-to-number models take
            return np.array([str(d).encode() for d in rng.integers(0, 10, count)],
                            dtype=object).reshape(shape)
        return _bytes_elements(_read(model_dir, spec, label), count, label).reshape(shape)
    dtype = DATATYPE_DTYPES[spec.datatype]
    if spec.source == "zero":
        return np.zeros(shape, dtype)
    if spec.source == "random":
        values: Any
        if dtype.kind == "f":
            values = rng.random(count)
        elif dtype.kind == "b":
            values = rng.integers(0, 2, count)
        else:
            values = rng.integers(0, 10, count)
        return values.astype(dtype).reshape(shape)
    raw = _read(model_dir, spec, label)
    if len(raw) != count * dtype.itemsize:
        raise ModelLoadError(
            f"{label}: {spec.data_file} holds {len(raw)} bytes; {spec.datatype} "
            f"{list(shape)} needs {count * dtype.itemsize}"
        )
    return np.frombuffer(raw, dtype).reshape(shape).copy()


def _read(model_dir: Path, spec: WarmupInput, label: str) -> bytes:
    path = model_dir / WARMUP_DIR / (spec.data_file or "")
    try:
        return path.read_bytes()
    except OSError:
        raise ModelLoadError(
            f"{label}: input_data_file '{spec.data_file}' is not a readable file in the "
            f"model's {WARMUP_DIR}/ directory"
        ) from None


def _bytes_elements(raw: bytes, count: int, label: str) -> np.ndarray:
    """``count`` BYTES elements, each a 4-byte little-endian length and then its bytes."""
    out = np.empty(count, dtype=object)
    offset = 0
    for i in range(count):
        if offset + 4 > len(raw):
            raise ModelLoadError(f"{label}: the data file ends before element {i} of {count}")
        (size,) = struct.unpack_from("<I", raw, offset)
        offset += 4
        if offset + size > len(raw):
            raise ModelLoadError(f"{label}: element {i} runs past the end of the data file")
        out[i] = raw[offset:offset + size]
        offset += size
    if offset != len(raw):
        raise ModelLoadError(
            f"{label}: the data file holds {len(raw) - offset} bytes after its {count} elements"
        )
    return out
