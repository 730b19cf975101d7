"""KServe v2 datatypes and their numpy dtypes: the table the tensor codec works from.

Which numpy dtype stands for each KServe datatype name and back, which typed
``InferTensorContents`` field carries it (and the dtype its values arrive in), and the error
every tensor function raises. The wire rules themselves (raw layout, BYTES length prefixes) are
:mod:`sluice.proto.tensors`'s.

Promises:

* Every name in :data:`DATATYPES` maps to one dtype and back:
  ``dtype_to_datatype(datatype_to_dtype(d)) == d``.
* Numeric dtypes are explicit little-endian (the wire order); mapping a dtype to its name ignores
  byte order. BYTES is an object array (of ``bytes``); str_ and bytes_ dtypes map to BYTES too.
* An unknown name or a dtype with no KServe equivalent raises :class:`TensorError` naming it.
* Imports nothing from the server; ml_dtypes is imported only when BF16 is used.
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = [
    "CONTENTS_FIELD",
    "DATATYPES",
    "NARROW",
    "OBJECT",
    "TensorError",
    "datatype_to_dtype",
    "dtype_for",
    "dtype_to_datatype",
]


class TensorError(ValueError):
    """A tensor is malformed or cannot be represented; the message names the tensor."""


DATATYPES: tuple[str, ...] = (
    "BOOL",
    "UINT8",
    "UINT16",
    "UINT32",
    "UINT64",
    "INT8",
    "INT16",
    "INT32",
    "INT64",
    "FP16",
    "FP32",
    "FP64",
    "BYTES",
    "BF16",
)
"""Every KServe v2 datatype name Sluice understands."""

# Explicit little-endian dtypes: the wire order, whatever the host order.
_FIXED_DTYPES: dict[str, np.dtype[Any]] = {
    "BOOL": np.dtype("?"),
    "UINT8": np.dtype("<u1"),
    "UINT16": np.dtype("<u2"),
    "UINT32": np.dtype("<u4"),
    "UINT64": np.dtype("<u8"),
    "INT8": np.dtype("<i1"),
    "INT16": np.dtype("<i2"),
    "INT32": np.dtype("<i4"),
    "INT64": np.dtype("<i8"),
    "FP16": np.dtype("<f2"),
    "FP32": np.dtype("<f4"),
    "FP64": np.dtype("<f8"),
}
OBJECT = np.dtype(object)
"""The dtype of BYTES tensors: object arrays holding ``bytes``."""

CONTENTS_FIELD: dict[str, tuple[str, np.dtype[Any]]] = {
    "BOOL": ("bool_contents", np.dtype(bool)),
    "UINT8": ("uint_contents", np.dtype(np.uint32)),
    "UINT16": ("uint_contents", np.dtype(np.uint32)),
    "UINT32": ("uint_contents", np.dtype(np.uint32)),
    "UINT64": ("uint64_contents", np.dtype(np.uint64)),
    "INT8": ("int_contents", np.dtype(np.int32)),
    "INT16": ("int_contents", np.dtype(np.int32)),
    "INT32": ("int_contents", np.dtype(np.int32)),
    "INT64": ("int64_contents", np.dtype(np.int64)),
    "FP32": ("fp32_contents", np.dtype(np.float32)),
    "FP64": ("fp64_contents", np.dtype(np.float64)),
    "BYTES": ("bytes_contents", OBJECT),
}
"""Which InferTensorContents field carries each datatype, and the dtype its values arrive in
(FP16 and BF16 have none: they travel only as raw)."""
NARROW = frozenset({"UINT8", "UINT16", "INT8", "INT16"})
"""Integer datatypes whose typed contents travel widened to 32 bits (range-checked on decode)."""

# Exact-dtype lookup for the hot path: every byte order of every fixed-size type, and object.
_DATATYPE_BY_DTYPE: dict[np.dtype[Any], str] = {
    variant: datatype
    for datatype, dtype in _FIXED_DTYPES.items()
    for variant in (dtype, dtype.newbyteorder("<"), dtype.newbyteorder(">"))
}
_DATATYPE_BY_DTYPE[OBJECT] = "BYTES"


def _bf16(label: str) -> np.dtype[Any]:
    try:
        import ml_dtypes
    except ImportError:
        raise TensorError(f"{label}: BF16 needs the ml_dtypes package, which is missing") from None
    dtype: np.dtype[Any] = np.dtype(ml_dtypes.bfloat16)
    return dtype


def dtype_for(datatype: str, label: str) -> np.dtype[Any]:
    """:func:`datatype_to_dtype` with errors prefixed by ``label`` (e.g. ``input 'INPUT0'``)."""
    dtype = _FIXED_DTYPES.get(datatype)
    if dtype is not None:
        return dtype
    if datatype == "BYTES":
        return OBJECT
    if datatype == "BF16":
        return _bf16(label)
    raise TensorError(f"{label}: unknown datatype {datatype!r}")


def datatype_to_dtype(datatype: str) -> np.dtype[Any]:
    """The numpy dtype for a KServe datatype name: little-endian for numbers, object for BYTES,
    ``ml_dtypes.bfloat16`` for BF16. Raises TensorError for an unknown name or missing ml_dtypes.
    """
    return dtype_for(datatype, "datatype")


def dtype_to_datatype(dtype: Any) -> str:
    """The KServe datatype name for a numpy dtype (or anything ``np.dtype()`` accepts).

    object, str_ and bytes_ map to BYTES; byte order is ignored (encoding makes it little-endian).
    Raises TensorError for dtypes with no KServe equivalent (complex, datetime, ...).
    """
    try:
        datatype = _DATATYPE_BY_DTYPE.get(dtype)
    except TypeError:  # unhashable: let np.dtype() accept or reject it below
        datatype = None
    if datatype is not None:
        return datatype
    dt = np.dtype(dtype)
    datatype = _DATATYPE_BY_DTYPE.get(dt)
    if datatype is not None:
        return datatype
    if dt.kind in "US":
        return "BYTES"
    if dt.name == "bfloat16":
        return "BF16"
    raise TensorError(f"dtype {dt}: no KServe datatype for it")
