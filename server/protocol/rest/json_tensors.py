"""JSON tensor data of KServe v2 REST bodies -> numpy arrays (the ``data`` of an input), with
every value checked against its datatype and the count against the shape."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from sluice.proto.datatypes import dtype_for
from sluice.server.errors import InvalidInput

#: Python types a JSON scalar may have.
SCALARS = (bool, int, float, str)
_FLOAT_KINDS = "f"


def json_tensor(data: Any, datatype: str, shape: tuple[int, ...], label: str) -> np.ndarray:
    """The array of ``shape`` that JSON ``data`` (flat or nested in row-major order) holds;
    InvalidInput when its values do not fit ``datatype`` or their count does not fit ``shape``."""
    dtype = dtype_for(datatype, label)
    values = _flat(data, label)
    count = math.prod(shape)
    if len(values) != count:
        raise InvalidInput(
            f"{label}: shape {list(shape)} needs {count} values, 'data' holds {len(values)}"
        )
    if datatype == "BYTES":
        out = np.empty(count, dtype=object)
        for i, value in enumerate(values):
            if not isinstance(value, str):
                raise InvalidInput(f"{label}: BYTES value {i} must be a string")
            out[i] = value.encode("utf-8")
        return out.reshape(shape)
    floating = dtype.kind in _FLOAT_KINDS or datatype == "BF16"  # ml_dtypes' kind is 'V'
    if datatype == "BOOL":
        kinds: tuple[type, ...] = (bool,)
    elif floating:
        kinds = (int, float)
    else:
        kinds = (int,)
    for i, value in enumerate(values):
        if type(value) not in kinds:
            raise InvalidInput(
                f"{label}: value {i} ({str(value)[:20]}) is not a {datatype} value"
            )
    if dtype.kind in "iu":
        try:
            wide = np.array(values, dtype=np.int64 if dtype.kind == "i" else np.uint64)
        except OverflowError:
            raise InvalidInput(f"{label}: a value is out of range for {datatype}") from None
        info = np.iinfo(dtype)
        if count and (wide.min() < info.min or wide.max() > info.max):
            raise InvalidInput(f"{label}: a value is out of range for {datatype}")
        return wide.astype(dtype).reshape(shape)
    if floating:
        return _floats(values, dtype, datatype, label).reshape(shape)
    return np.array(values, dtype=dtype).reshape(shape)


def _floats(values: list[Any], dtype: np.dtype[Any], datatype: str, label: str) -> np.ndarray:
    """``values`` as ``dtype``; InvalidInput for a finite value the datatype cannot hold (it
    would turn into an infinity: 1e6 as FP16), as integers out of range are refused. NaN and
    the infinities (Python's JSON reads NaN and Infinity) pass as they are."""
    try:
        wide = np.array(values, dtype=np.float64)
    except OverflowError:  # an integer past float64
        raise InvalidInput(f"{label}: a value is out of range for {datatype}") from None
    if dtype == wide.dtype:
        return wide
    with np.errstate(over="ignore"):  # overflow is found below, for every float type alike
        narrow = wide.astype(dtype)
    if np.isinf(narrow).any() and (np.isinf(narrow) & np.isfinite(wide)).any():
        raise InvalidInput(f"{label}: a value is out of range for {datatype}")
    return narrow


def _flat(data: Any, label: str) -> list[Any]:
    """The scalars of ``data`` in row-major order (a lone scalar is one value)."""
    if not isinstance(data, list):
        if isinstance(data, SCALARS):
            return [data]
        raise InvalidInput(f"{label}: 'data' must be a list of values")
    if not data or not isinstance(data[0], list):
        flat = data
    else:
        flat = []
        stack = [iter(data)]
        while stack:
            for item in stack[-1]:
                if isinstance(item, list):
                    stack.append(iter(item))
                    break
                flat.append(item)
            else:
                stack.pop()
    for value in flat:
        if not isinstance(value, SCALARS):
            raise InvalidInput(f"{label}: 'data' must hold only numbers, booleans or strings")
    return flat
