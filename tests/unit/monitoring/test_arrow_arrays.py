"""Arrow arrays from NumPy buffers equal what ``pa.array`` makes of the same values (the reference:
pyarrow's own converter), nulls included."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from sluice.server.monitoring import arrow_arrays
from sluice.server.monitoring.prediction_schema import ARROW_TYPES
from sluice.server.types import DATATYPE_DTYPES

_RNG = np.random.default_rng(7)
_FIXED = sorted(k for k in ARROW_TYPES if k != "BYTES")


@pytest.mark.parametrize("datatype", _FIXED)
@pytest.mark.parametrize("size", [0, 1, 13, 64])
def test_fixed_width_values_equal_pa_array(datatype, size):
    dtype = DATATYPE_DTYPES[datatype]
    values = (_RNG.integers(0, 100, size) - (0 if dtype.kind in "ub" else 50)).astype(dtype)
    got = arrow_arrays.array(values, ARROW_TYPES[datatype])
    got.validate(full=True)
    assert got.equals(pa.array(values, ARROW_TYPES[datatype]))


@pytest.mark.parametrize("datatype", ["BOOL", "INT8", "FP16", "FP64", "UINT64"])
def test_nulls_where_not_valid(datatype):
    dtype = DATATYPE_DTYPES[datatype]
    values = _RNG.integers(0, 2, 21).astype(dtype)
    valid = _RNG.random(21) < 0.6
    got = arrow_arrays.array(values, ARROW_TYPES[datatype], valid)
    got.validate(full=True)
    assert got.null_count == int((~valid).sum())
    assert got.equals(pa.array(values, ARROW_TYPES[datatype], mask=~valid))


def test_all_valid_has_no_bitmap():
    got = arrow_arrays.array(np.arange(5, dtype=np.int64), pa.int64(), np.ones(5, bool))
    assert got.buffers()[0] is None and got.null_count == 0


def test_timestamps():
    micros = np.array([0, 1_700_000_000_123_456], dtype=np.int64)
    kind = pa.timestamp("us", tz="UTC")
    assert arrow_arrays.array(micros, kind).equals(pa.array(micros, kind))


def test_binary_and_strings():
    raw = np.array([b"", b"\x00\xff", b"abc"], dtype=object)
    assert arrow_arrays.array(raw, pa.binary()).equals(pa.array(list(raw), pa.binary()))
    words = ["", "zoë", "日本", "x" * 300]
    got = arrow_arrays.strings(words)
    got.validate(full=True)
    assert got.to_pylist() == words
    valid = np.array([True, False, True, True])
    masked = arrow_arrays.binary(words, pa.string(), valid)
    assert masked.to_pylist() == ["", None, "日本", "x" * 300]


def test_repeated_and_strings_at():
    assert arrow_arrays.repeated("OK", 4).to_pylist() == ["OK"] * 4
    assert arrow_arrays.repeated("", 3).to_pylist() == [""] * 3
    assert arrow_arrays.repeated("OK", 0).to_pylist() == []
    words = ["a", "", "日本", "x" * 300]
    indices = np.array([1, 1, 0, 3, 2, 2, 0])
    got = arrow_arrays.strings_at(words, indices)
    got.validate(full=True)
    assert got.equals(pa.array([words[i] for i in indices], pa.string()))
    assert arrow_arrays.strings_at(words, np.zeros(0, np.int64)).to_pylist() == []


def test_mask_marks_nulls():
    nulls = np.array([False, True, False])
    values = arrow_arrays.array(np.arange(6, dtype=np.float32), pa.float32())
    lists = pa.FixedSizeListArray.from_arrays(values, 2, mask=arrow_arrays.mask(nulls))
    assert lists.to_pylist() == [[0.0, 1.0], None, [4.0, 5.0]]


def test_a_dtype_of_another_width_is_refused():
    with pytest.raises(TypeError, match="float64 values cannot back an Arrow float array"):
        arrow_arrays.array(np.zeros(2), pa.float32())
