"""Pure numpy <-> KServe v2 tensor codec, shared by the server and the clients.

Wire rules (see /work/shared/PROTOCOL.md): raw data is row-major, little-endian, unpadded;
a BYTES element is a 4-byte little-endian length followed by that many bytes; FP16 and BF16
travel only as raw. Typed contents use one InferTensorContents field per datatype.

The datatype table (KServe name <-> numpy dtype, which contents field carries each) and
:class:`TensorError` are :mod:`sluice.proto.datatypes`'s; ``DATATYPES``, ``TensorError``,
``datatype_to_dtype`` and ``dtype_to_datatype`` are part of this codec's interface too, so a
caller needs one import.

Promises:

* Every malformed tensor raises :class:`TensorError` whose message starts with the tensor's kind
  and name, e.g. ``input 'INPUT0': expected 64 bytes of raw data for FP32 [4,4], got 60``.
  Nothing else is raised for bad wire data.
* Decoding raw fixed-size data is zero-copy: the array is a read-only view of the given buffer,
  which it keeps alive. Typed contents and BYTES decode into fresh, writable arrays. BYTES
  tensors decode to object arrays of ``bytes``.
* Apart from BYTES elements, no per-element Python loops.
* Imports nothing from the server; ml_dtypes is imported only when BF16 is used.
"""

from __future__ import annotations

import math
import struct
import sys
from collections.abc import Sequence
from typing import Any

import numpy as np

from sluice.proto.datatypes import (
    CONTENTS_FIELD,
    DATATYPES,
    NARROW,
    OBJECT,
    TensorError,
    datatype_to_dtype,
    dtype_for,
    dtype_to_datatype,
)
from sluice.proto.grpc_service_pb2 import (
    InferTensorContents,
    ModelInferRequest,
    ModelInferResponse,
)

__all__ = [
    "DATATYPES",
    "TensorError",
    "datatype_to_dtype",
    "decode_inputs",
    "decode_outputs",
    "decode_tensor",
    "dtype_to_datatype",
    "encode_contents",
    "encode_raw",
    "make_input",
    "make_output",
]

_LENGTH = struct.Struct("<I")
_BIG_ENDIAN_HOST = sys.byteorder == "big"
_RAW_SHM_PARAM = "shared_memory_region"


def _shape_str(shape: Sequence[int]) -> str:
    return "[" + ",".join(str(d) for d in shape) + "]"


def _element_count(shape: tuple[int, ...], label: str) -> int:
    if shape and min(shape) < 0:
        raise TensorError(f"{label}: negative dimension in shape {_shape_str(shape)}")
    return math.prod(shape)


def _decode_bytes_raw(raw: bytes, count: int, shape: tuple[int, ...], label: str) -> np.ndarray:
    size = len(raw)
    # Each element needs at least its 4-byte prefix: reject before allocating `count` slots.
    if count * 4 > size:
        raise TensorError(
            f"{label}: expected {count} BYTES elements for shape {_shape_str(shape)}, "
            f"but {size} bytes of raw data cannot hold them"
        )
    out = np.empty(count, dtype=OBJECT)
    data = raw if isinstance(raw, bytes) else bytes(raw)
    unpack = _LENGTH.unpack_from
    offset = 0
    for i in range(count):
        if offset + 4 > size:
            raise TensorError(f"{label}: BYTES element {i} length prefix is truncated")
        (length,) = unpack(data, offset)
        offset += 4
        end = offset + length
        if end > size:
            raise TensorError(
                f"{label}: BYTES element {i} declares {length} bytes, only {size - offset} remain"
            )
        out[i] = data[offset:end]
        offset = end
    if offset != size:
        raise TensorError(
            f"{label}: {size - offset} bytes of raw data left after {count} BYTES elements "
            f"for shape {_shape_str(shape)}"
        )
    return out.reshape(shape)


def _decode_raw(
    raw: bytes, datatype: str, dtype: np.dtype[Any], count: int, shape: tuple[int, ...], label: str
) -> np.ndarray:
    if datatype == "BYTES":
        return _decode_bytes_raw(raw, count, shape, label)
    expected = count * dtype.itemsize
    if len(raw) != expected:
        raise TensorError(
            f"{label}: expected {expected} bytes of raw data for {datatype} "
            f"{_shape_str(shape)}, got {len(raw)}"
        )
    if datatype == "BOOL" and count and np.frombuffer(raw, np.uint8).max() > 1:
        raise TensorError(f"{label}: BOOL raw data must hold only 0 or 1 bytes")
    return np.frombuffer(raw, dtype).reshape(shape)


def _populated_fields(contents: InferTensorContents) -> list[str]:
    return [field.name for field, _ in contents.ListFields()]


def _decode_contents(
    contents: InferTensorContents | None,
    datatype: str,
    dtype: np.dtype[Any],
    count: int,
    shape: tuple[int, ...],
    label: str,
) -> np.ndarray:
    spec = CONTENTS_FIELD.get(datatype)
    populated = _populated_fields(contents) if contents is not None else []
    if spec is None:  # FP16, BF16
        if count == 0 and not populated:
            return np.empty(shape, dtype)
        raise TensorError(f"{label}: {datatype} data must be sent as raw bytes, not contents")
    field, wire_dtype = spec
    stray = [name for name in populated if name != field]
    if stray:
        raise TensorError(f"{label}: {datatype} data belongs in {field}, got {', '.join(stray)}")
    if contents is None or not populated:
        if count:
            raise TensorError(
                f"{label}: no data for {datatype} {_shape_str(shape)} ({count} elements)"
            )
        return np.empty(shape, dtype)
    values = getattr(contents, field)
    if len(values) != count:
        raise TensorError(
            f"{label}: expected {count} values in {field} for {datatype} {_shape_str(shape)}, "
            f"got {len(values)}"
        )
    if datatype == "BYTES":
        out = np.empty(count, dtype=OBJECT)
        out[:] = list(values)
        return out.reshape(shape)
    array = np.fromiter(values, wire_dtype, count=count)
    if datatype in NARROW:
        info = np.iinfo(dtype)
        if array.min() < info.min or array.max() > info.max:
            raise TensorError(f"{label}: {field} value out of range for {datatype}")
        array = array.astype(dtype)
    return array.reshape(shape)


def decode_tensor(
    name: str,
    datatype: str,
    shape: Sequence[int],
    raw: bytes | None,
    contents: InferTensorContents | None,
    kind: str = "input",
) -> np.ndarray:
    """Decode one tensor from its raw bytes or its typed contents (pass None for the absent one).

    ``kind`` ("input" or "output") only labels error messages. A ``contents`` message with no
    field populated counts as absent. Raises TensorError on an unknown datatype, a negative dim,
    both forms present, a size or element-count mismatch, a malformed BYTES prefix, contents in
    the wrong field, an out-of-range narrow integer, or FP16/BF16 sent as contents.
    """
    label = f"{kind} '{name}'"
    dtype = dtype_for(datatype, label)
    # Slicing first: iterating a protobuf repeated field directly is several times slower.
    dims = tuple(shape[:])
    count = _element_count(dims, label)
    try:
        if raw is not None:
            if contents is not None and _populated_fields(contents):
                raise TensorError(f"{label}: has both raw data and typed contents")
            return _decode_raw(raw, datatype, dtype, count, dims, label)
        return _decode_contents(contents, datatype, dtype, count, dims, label)
    except TensorError:
        raise
    except (ValueError, OverflowError) as exc:  # numpy refusing a shape, e.g. [0, 2**62, 2**62]
        raise TensorError(
            f"{label}: shape {_shape_str(dims)} is not representable: {exc}"
        ) from None


def _to_bytes(element: Any, label: str) -> bytes:
    if isinstance(element, bytes):
        return element
    if isinstance(element, str):
        return element.encode("utf-8")
    if isinstance(element, bytearray | memoryview):
        return bytes(element)
    raise TensorError(f"{label}: BYTES element of type {type(element).__name__} is not bytes/str")


def _bytes_elements(array: np.ndarray, label: str) -> list[bytes]:
    return [_to_bytes(element, label) for element in array.ravel(order="C").tolist()]


def encode_raw(array: np.ndarray, *, label: str = "tensor") -> bytes:
    """Serialize ``array`` to KServe raw bytes: C order, little-endian, BYTES length-prefixed
    (str elements utf-8 encoded). Makes one copy. ``label`` prefixes error messages.
    """
    return _encode_raw(array, _datatype_of(array, label), label)


def _encode_raw(array: np.ndarray, datatype: str, label: str) -> bytes:
    if datatype == "BYTES":
        pack = _LENGTH.pack
        elements = _bytes_elements(array, label)
        return b"".join([part for b in elements for part in (pack(len(b)), b)])
    byteorder = array.dtype.byteorder
    if byteorder == ">" or (byteorder == "=" and _BIG_ENDIAN_HOST):
        array = array.astype(array.dtype.newbyteorder("<"))
    return array.tobytes(order="C")


def encode_contents(
    array: np.ndarray, contents_msg: InferTensorContents, *, label: str = "tensor"
) -> None:
    """Append ``array``'s elements (C order) to the typed field of ``contents_msg`` that its
    datatype uses. Raises TensorError for FP16/BF16, which have no typed form.
    """
    datatype = _datatype_of(array, label)
    spec = CONTENTS_FIELD.get(datatype)
    if spec is None:
        raise TensorError(f"{label}: {datatype} has no typed contents; send it as raw bytes")
    field = getattr(contents_msg, spec[0])
    if datatype == "BYTES":
        field.extend(_bytes_elements(array, label))
    else:
        field.extend(array.ravel(order="C").tolist())


def make_input(name: str, array: np.ndarray) -> tuple[ModelInferRequest.InferInputTensor, bytes]:
    """An InferInputTensor (name, datatype, shape) for ``array`` and its raw bytes, ready for
    ``request.inputs.append(t)`` and ``request.raw_input_contents.append(raw)``.
    """
    label = f"input '{name}'"
    datatype = _datatype_of(array, label)
    tensor = ModelInferRequest.InferInputTensor(name=name, datatype=datatype, shape=array.shape)
    return tensor, _encode_raw(array, datatype, label)


def make_output(name: str, array: np.ndarray) -> tuple[ModelInferResponse.InferOutputTensor, bytes]:
    """An InferOutputTensor (name, datatype, shape) for ``array`` and its raw bytes, ready for
    ``response.outputs.append(t)`` and ``response.raw_output_contents.append(raw)``.
    """
    label = f"output '{name}'"
    datatype = _datatype_of(array, label)
    tensor = ModelInferResponse.InferOutputTensor(name=name, datatype=datatype, shape=array.shape)
    return tensor, _encode_raw(array, datatype, label)


def _datatype_of(array: np.ndarray, label: str) -> str:
    try:
        return dtype_to_datatype(array.dtype)
    except TensorError as exc:
        raise TensorError(f"{label}: {exc}") from None


def _decode_all(tensors: Sequence[Any], raws: Sequence[bytes], kind: str) -> dict[str, np.ndarray]:
    if raws and len(raws) != len(tensors):
        # Name the first tensor left without raw data, or all of them when there are extras.
        if len(raws) < len(tensors):
            where = f"{kind} '{tensors[len(raws)].name}'"
        else:
            where = f"{kind}s " + ", ".join(f"'{t.name}'" for t in tensors)
        raise TensorError(
            f"{where}: {len(raws)} raw_{kind}_contents entries for {len(tensors)} {kind}s; "
            f"raw data needs exactly one entry per {kind}"
        )
    decoded: dict[str, np.ndarray] = {}
    for index, tensor in enumerate(tensors):
        name = tensor.name
        if name in decoded:
            raise TensorError(f"{kind} '{name}': appears more than once")
        if _RAW_SHM_PARAM in tensor.parameters:
            raise TensorError(f"{kind} '{name}': shared-memory tensors are not supported here")
        contents = tensor.contents if tensor.HasField("contents") else None
        raw = raws[index] if raws else None
        decoded[name] = decode_tensor(name, tensor.datatype, tensor.shape, raw, contents, kind)
    return decoded


def decode_inputs(request: ModelInferRequest) -> dict[str, np.ndarray]:
    """Decode every input of ``request`` by name, in request order.

    When raw_input_contents is used it must have exactly one entry per input (matched by
    position) and no input may also carry contents; otherwise each input's typed contents are
    used. Raises TensorError for duplicate names, shared-memory inputs, or any tensor error.
    """
    return _decode_all(request.inputs, request.raw_input_contents, "input")


def decode_outputs(response: ModelInferResponse) -> dict[str, np.ndarray]:
    """Decode every output of ``response`` by name, in response order, with the same rules as
    :func:`decode_inputs` (raw_output_contents by position, or typed contents).
    """
    return _decode_all(response.outputs, response.raw_output_contents, "output")
