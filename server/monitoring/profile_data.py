"""Reference rows for a profile, read from the file ``sluice profile --data`` names.

- ``.npz``: one array per model input, named after it, ``[rows, *dims]``; a model with one input
  may call it ``X`` instead (scikit-learn's name, and that of the bundled ``test_split.npz``).
- ``.parquet``: per input either one column named after it (a number per row, or a list per row
  holding the flattened tensor), or one column per feature named as the profile names features
  (``input[0]``, ``input[1]``, ...). Needs pyarrow.

Every error is a :class:`DataError` naming the file (its name, never its full path) and the
input or feature that is missing or of the wrong size.
"""

from __future__ import annotations

import math
import zipfile
from pathlib import Path

import numpy as np

from sluice.server.monitoring.profile import feature_names
from sluice.server.types import TensorSpec


class DataError(ValueError):
    """The reference data cannot be used; the message says which input or feature."""


def read_reference(path: Path, inputs: list[TensorSpec]) -> dict[str, np.ndarray]:
    """{input name: [rows, *dims] float64 array} for each of ``inputs``, from ``path``."""
    suffix = path.suffix.lower()
    if suffix == ".npz":
        arrays = _npz(path, inputs)
    elif suffix in (".parquet", ".pq"):
        arrays = _parquet(path, inputs)
    else:
        raise DataError(f"{path.name}: expected a .npz or .parquet file")
    rows = {name: a.shape[0] for name, a in arrays.items()}
    if len(set(rows.values())) > 1:
        raise DataError(f"{path.name}: inputs have different numbers of rows ({rows})")
    if not rows or not next(iter(rows.values())):
        raise DataError(f"{path.name}: no rows")
    return arrays


def _shaped(value: np.ndarray, spec: TensorSpec, where: str) -> np.ndarray:
    width = math.prod(spec.dims)
    try:
        data = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        raise DataError(f"{where}: input '{spec.name}' is not numeric") from None
    if data.ndim == 0 or math.prod(data.shape[1:]) != width:
        raise DataError(f"{where}: input '{spec.name}' needs {width} values per row "
                        f"({spec.dims}), the file has shape {list(data.shape)}")
    return data.reshape(data.shape[0], *spec.dims)


def _npz(path: Path, inputs: list[TensorSpec]) -> dict[str, np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as npz:
            found = {name: npz[name] for name in npz.files}
    except (OSError, ValueError, zipfile.BadZipFile) as exc:
        raise DataError(f"{path.name}: not a readable .npz file ({type(exc).__name__})") from None
    out = {}
    for spec in inputs:
        value = found.get(spec.name)
        if value is None and len(inputs) == 1:
            value = found.get("X")
        if value is None:
            raise DataError(f"{path.name}: no array named '{spec.name}' (the file has "
                            f"{', '.join(found) or 'none'})")
        out[spec.name] = _shaped(value, spec, path.name)
    return out


def _parquet(path: Path, inputs: list[TensorSpec]) -> dict[str, np.ndarray]:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise DataError("reading .parquet needs pyarrow (pip install pyarrow), or give .npz") \
            from None
    try:
        table = pq.read_table(path)
    except (OSError, ValueError) as exc:
        raise DataError(f"{path.name}: not a readable Parquet file ({type(exc).__name__})") \
            from None
    columns = set(table.column_names)
    out = {}
    for spec in inputs:
        if spec.name in columns:
            column = table.column(spec.name).to_pylist()
            try:
                value = np.array([np.nan if v is None else v for v in column], dtype=np.float64)
            except (TypeError, ValueError):
                raise DataError(f"{path.name}: column '{spec.name}' is neither numbers nor "
                                "lists of numbers of one length") from None
            out[spec.name] = _shaped(value, spec, path.name)
            continue
        names = feature_names(spec.name, spec.dims)
        missing = [n for n in names if n not in columns]
        if missing:
            raise DataError(f"{path.name}: no column '{spec.name}' and no feature column "
                            f"'{missing[0]}'")
        value = np.column_stack([
            table.column(n).to_numpy(zero_copy_only=False).astype(np.float64) for n in names
        ])
        out[spec.name] = _shaped(value, spec, path.name)
    return out
