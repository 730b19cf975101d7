"""Arrow arrays built from NumPy buffers, never through ``pa.array``.

Why: ``pa.array`` and ``pa.scalar`` ask pyarrow's pandas shim whether their argument is a pandas
object, and the first such question imports pandas when it is installed (~400 modules). A
serving process that has imported pandas answers with a wider tail, whatever it does with it:
perf_analyzer on ``identity``, c=64, 4 rounds side by side, p99 24.0-25.2 ms with ``import
pandas`` done before ``sluice serve`` against 23.2-23.7 without (``import pyarrow`` alone: no
difference). Building each array from its buffers (``pa.Array.from_buffers``), as here, never
reaches the shim. Fixed-width values are NumPy's own buffers, shared rather than converted;
strings cost ~50 ns a value against ~22 through ``pa.array`` (4,096 request ids), ~1% of what
a logged record costs the writer.

What is covered is what the prediction and feedback logs write: fixed-width values (numbers,
booleans, timestamps), binary and string values, each with an optional validity mask, and a
string per request repeated for its rows (without ``pa.Array.take``, which imports
``pyarrow.compute``: :func:`strings_at`).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pyarrow as pa

#: Largest value a 32-bit offset (``binary``, ``string``, ``list``) can hold.
_MAX_OFFSET = (1 << 31) - 1


def array(values: np.ndarray | Sequence[bytes | str], type: pa.DataType,
          valid: np.ndarray | None = None) -> pa.Array:
    """The 1-d ``values`` as an Arrow array of ``type``; where ``valid`` is False the row is
    null. Fixed-width types take the values' own buffer (their dtype must have ``type``'s
    width); ``binary`` and ``string`` take a sequence of bytes or str."""
    if pa.types.is_binary(type) or pa.types.is_string(type):
        return binary(values, type, valid)
    if pa.types.is_boolean(type):
        data = _bitmap(np.asarray(values, dtype=np.bool_))
    else:
        values = np.ascontiguousarray(values)
        if values.dtype.itemsize * 8 != type.bit_width:
            raise TypeError(f"{values.dtype} values cannot back an Arrow {type} array")
        data = pa.py_buffer(values)
    return pa.Array.from_buffers(type, len(values), [_validity(valid), data])


def binary(values: Sequence[bytes | str] | np.ndarray, type: pa.DataType,
           valid: np.ndarray | None = None) -> pa.Array:
    """``values`` (bytes, or str encoded as UTF-8) as a ``binary`` or ``string`` ``type``
    array."""
    encoded = [v if isinstance(v, bytes) else v.encode() if isinstance(v, str) else bytes(v)
               for v in values]
    return _from_encoded(encoded, type, valid)


def strings(values: Sequence[str]) -> pa.Array:
    """``values`` as a ``string`` array."""
    return binary(values, pa.string())


def repeated(value: str, count: int) -> pa.Array:
    """A ``string`` array of ``count`` times ``value`` (one copy of its bytes per row, as Arrow
    lays them out)."""
    data = value.encode()
    if len(data) * count > _MAX_OFFSET:
        raise OverflowError(f"{len(data) * count} bytes do not fit one Arrow string array")
    offsets = np.arange(count + 1, dtype=np.int32) * np.int32(len(data))
    return pa.Array.from_buffers(pa.string(), count, [
        None, pa.py_buffer(offsets), pa.py_buffer(data * count),
    ])


def mask(nulls: np.ndarray) -> pa.Array:
    """A ``bool`` array, True where a row is null (the ``mask`` of Arrow's list builders)."""
    return array(nulls, pa.bool_())


def strings_at(values: Sequence[str], indices: np.ndarray) -> pa.Array:
    """A ``string`` array of ``values[i]`` for each ``i`` in ``indices`` (a request's value
    repeated for each of its rows). Not ``pa.Array.take``: its first call imports
    ``pyarrow.compute`` (~60 ms holding the GIL, on the first drain of a model answering
    several rows a request: the largest item of the monitor hub's thread in py-spy's samples
    of cnn under perf_analyzer)."""
    encoded = [v.encode() for v in values]
    return _from_encoded(list(map(encoded.__getitem__, np.asarray(indices).tolist())),
                         pa.string())


def _from_encoded(encoded: list[bytes], type: pa.DataType,
                  valid: np.ndarray | None = None) -> pa.Array:
    offsets = np.zeros(len(encoded) + 1, dtype=np.int64)
    np.cumsum(np.fromiter(map(len, encoded), np.int64, len(encoded)), out=offsets[1:])
    if offsets[-1] > _MAX_OFFSET:
        raise OverflowError(f"{offsets[-1]} bytes do not fit one Arrow {type} array")
    return pa.Array.from_buffers(type, len(encoded), [
        _validity(valid), pa.py_buffer(offsets.astype(np.int32)), pa.py_buffer(b"".join(encoded)),
    ])


def _bitmap(bits: np.ndarray) -> pa.Buffer:
    return pa.py_buffer(np.packbits(bits, bitorder="little"))


def _validity(valid: np.ndarray | None) -> pa.Buffer | None:
    """The validity bitmap of ``valid`` (None when every row is valid)."""
    if valid is None:
        return None
    valid = np.asarray(valid, dtype=np.bool_)
    return None if valid.all() else _bitmap(valid)
