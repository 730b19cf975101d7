"""Which columns feed which model input, checked once against the file's schema, then applied to
every chunk with the rows that cannot be used set aside (with their reason), never failing a chunk.

Mapping, for each model input in turn: ``--map INPUT=COLUMN`` when given; else the column named
as the input; else, for an input of N values per row (dims ``[N]``), the N scalar columns
``INPUT_0 .. INPUT_{N-1}`` stacked in order. A column holds one value per row (an input of one
value: dims ``[1]``) or a list per row (Parquet list columns: ``prod(dims)`` values, row-major).
A ``.npy`` file is the model's one input itself (rows on its first axis).

Checked before the first chunk (:func:`plan_inputs`): every input has its column(s), and each
column's type can hold the input's (a number for a number, text or bytes for BYTES, a list for a
multi-value input). Per row (:meth:`InputPlan.convert`): a missing value (null), a list of the
wrong length, text that is no number (CSV), a NaN with ``reject_nan``: that row is rejected.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from sluice.server.types import DATATYPE_DTYPES, TensorSpec


class MappingError(ValueError):
    """The file cannot feed the model; the message names the input and the column."""


@dataclass(slots=True)
class Rejects:
    """Rows of one chunk that cannot be used: ``bad[i]`` and, for each, a code and a message."""

    bad: np.ndarray
    codes: list[str]
    messages: list[str]

    @staticmethod
    def none(rows: int) -> Rejects:
        return Rejects(np.zeros(rows, bool), [""] * rows, [""] * rows)

    def add(self, mask: np.ndarray, code: str, message: str) -> None:
        for i in np.flatnonzero(mask & ~self.bad):
            self.codes[i], self.messages[i] = code, message
        np.logical_or(self.bad, mask, out=self.bad)


@dataclass(frozen=True, slots=True)
class InputPlan:
    """Where one model input comes from."""

    spec: TensorSpec
    #: The columns: one (scalar or list column) or N scalar columns stacked; () for a .npy.
    columns: tuple[str, ...]
    #: Values per row the model takes (the product of its dims).
    width: int

    @property
    def stacked(self) -> bool:
        return len(self.columns) > 1

    def convert(self, data: pa.Table | np.ndarray, rejects: Rejects, reject_nan: bool
                ) -> np.ndarray:
        """This input's values for every row of the chunk, shaped ``(rows, *dims)``; rows it
        rejects (recorded in ``rejects``) hold zeros."""
        spec = self.spec
        dtype = DATATYPE_DTYPES[spec.datatype]
        if isinstance(data, np.ndarray):
            rows = data.shape[0]
            values = data.reshape(rows, -1)
            if values.shape[1] != self.width:
                raise MappingError(f"the .npy rows hold {values.shape[1]} values; input "
                                   f"'{spec.name}' takes {self.width}")
            out = values.astype(dtype, copy=False)
        elif self.stacked:
            parts = [_scalar(data.column(c), c, dtype, rejects) for c in self.columns]
            out = np.stack(parts, axis=1)
        else:
            column = data.column(self.columns[0])
            if pa.types.is_list(column.type) or pa.types.is_large_list(column.type) or (
                pa.types.is_fixed_size_list(column.type)
            ):
                out = _listed(column, self.columns[0], self.width, dtype, rejects)
            else:
                out = _scalar(column, self.columns[0], dtype, rejects).reshape(-1, 1)
        if reject_nan and dtype.kind == "f":
            nan = np.isnan(out).reshape(out.shape[0], -1).any(axis=1)
            rejects.add(nan, "nan", f"input '{spec.name}': NaN")
        return out.reshape(out.shape[0], *spec.dims)


def plan_inputs(inputs: Sequence[TensorSpec], schema: pa.Schema | None,
                explicit: Mapping[str, str]) -> list[InputPlan]:
    """Map every model input to its column(s) of ``schema`` (None: a .npy array, which feeds
    a model of one input). Raises MappingError naming what is missing or of the wrong type."""
    names = {t.name for t in inputs}
    unknown = sorted(set(explicit) - names)
    if unknown:
        raise MappingError(f"--map names input(s) {unknown} the model does not have (it takes "
                           f"{sorted(names)})")
    plans = []
    for spec in inputs:
        if any(d == -1 for d in spec.dims):
            raise MappingError(f"input '{spec.name}' has variable dims {list(spec.dims)}; "
                               "batch jobs need fixed ones (set them in config.pbtxt)")
        width = math.prod(spec.dims)
        if schema is None:
            if len(inputs) != 1:
                raise MappingError(f"a .npy file feeds a model of one input; this one takes "
                                   f"{sorted(names)} (use Parquet or CSV)")
            plans.append(InputPlan(spec, (), width))
            continue
        column = explicit.get(spec.name, spec.name)
        if column in schema.names:
            _check_type(spec, column, schema.field(column).type, width)
            plans.append(InputPlan(spec, (column,), width))
            continue
        stacked = tuple(f"{spec.name}_{i}" for i in range(width))
        if spec.name not in explicit and width > 1 and all(c in schema.names for c in stacked):
            for c in stacked:
                _check_type(spec, c, schema.field(c).type, 1)
            plans.append(InputPlan(spec, stacked, width))
            continue
        how = (f"column '{column}' (from --map)" if spec.name in explicit else
               f"a column '{spec.name}'" + (f" or columns {stacked[0]}..{stacked[-1]}"
                                            if width > 1 else ""))
        shown = ", ".join(schema.names[:20]) + (" ..." if len(schema.names) > 20 else "")
        raise MappingError(f"input '{spec.name}' needs {how}; the file has: {shown} (map one "
                           f"with --map {spec.name}=COLUMN)")
    return plans


def _check_type(spec: TensorSpec, column: str, kind: pa.DataType, width: int) -> None:
    where = f"column '{column}' for input '{spec.name}' ({spec.datatype} {list(spec.dims)})"
    listed = pa.types.is_list(kind) or pa.types.is_large_list(kind) or (
        pa.types.is_fixed_size_list(kind))
    if listed:
        kind = kind.value_type
    elif width != 1:
        raise MappingError(f"{where} holds one {kind} per row; the input takes {width} values "
                           "(give a list column, or scalar columns INPUT_0..)")
    text = pa.types.is_string(kind) or pa.types.is_large_string(kind)
    if spec.datatype == "BYTES":
        ok = text or pa.types.is_binary(kind) or pa.types.is_large_binary(kind)
    elif spec.datatype == "BOOL":
        ok = pa.types.is_boolean(kind)
    else:  # (a CSV's numeric columns are then read as text, parsed row by row)
        ok = pa.types.is_integer(kind) or pa.types.is_floating(kind) or (
            pa.types.is_boolean(kind) or pa.types.is_null(kind))
    if not ok:
        raise MappingError(f"{where} has type {kind}, which cannot hold {spec.datatype}")


def _scalar(column: pa.ChunkedArray, name: str, dtype: np.dtype, rejects: Rejects
            ) -> np.ndarray:
    """One value per row as ``dtype``; nulls and unparsable text rejected (zeros there)."""
    text = pa.types.is_string(column.type) or pa.types.is_large_string(column.type)
    if text and dtype.kind in "fiub":
        return _parsed(column, name, dtype, rejects)
    nulls = column.is_null().to_numpy(zero_copy_only=False)
    if nulls.any():
        rejects.add(nulls, "missing", f"column '{name}': missing value")
        column = column.fill_null(False if pa.types.is_boolean(column.type) else 0)
    if dtype == np.dtype(object):
        return np.array([v if isinstance(v, bytes) else str(v).encode()
                         for v in column.to_pylist()], dtype=object)
    return column.to_numpy().astype(dtype, copy=False)


def _parsed(column: pa.ChunkedArray, name: str, dtype: np.dtype, rejects: Rejects
            ) -> np.ndarray:
    """CSV text cells as numbers: all at once, or, when some do not parse, one by one."""
    target = pa.float64() if dtype.kind == "f" else pa.int64()
    try:
        parsed = pc.cast(column, target)
    except pa.ArrowInvalid:
        cells = column.to_pylist()
        out = np.zeros(len(cells), dtype)
        bad = np.zeros(len(cells), bool)
        for i, cell in enumerate(cells):
            try:
                out[i] = float(cell) if dtype.kind == "f" else int(cell)
            except (TypeError, ValueError, OverflowError):
                bad[i] = True
        missing = np.array([c is None or c == "" for c in cells])
        rejects.add(missing, "missing", f"column '{name}': missing value")
        rejects.add(bad & ~missing, "parse", f"column '{name}': not a number")
        return out
    return _scalar(parsed, name, dtype, rejects)


def _listed(column: pa.ChunkedArray, name: str, width: int, dtype: np.dtype,
            rejects: Rejects) -> np.ndarray:
    """A list per row as ``(rows, width)``; nulls, wrong lengths and null elements rejected."""
    array = column.combine_chunks() if column.num_chunks != 1 else column.chunk(0)
    rows = len(array)
    lengths = pc.list_value_length(array).to_numpy(zero_copy_only=False)
    nulls = array.is_null().to_numpy(zero_copy_only=False)
    rejects.add(nulls, "missing", f"column '{name}': missing value")
    wrong = ~nulls & (np.nan_to_num(lengths, nan=-1).astype(np.int64) != width)
    for length in np.unique(lengths[wrong]):
        rejects.add(wrong & (lengths == length), "length",
                    f"column '{name}': {int(length)} values, expected {width}")
    good = ~(nulls | wrong)
    if not good.all():
        array = array.filter(pa.array(good))
    flat = array.flatten()
    if flat.null_count:
        parents = pc.list_parent_indices(array).to_numpy()
        holes = np.zeros(len(array), bool)
        holes[parents[flat.is_null().to_numpy(zero_copy_only=False)]] = True
        where = np.flatnonzero(good)[holes]
        mask = np.zeros(rows, bool)
        mask[where] = True
        rejects.add(mask, "missing", f"column '{name}': a missing value in the list")
        flat = flat.fill_null(0)
    values = flat.to_numpy(zero_copy_only=False).astype(dtype, copy=False).reshape(-1, width)
    if good.all():
        return values
    out = np.zeros((rows, width), dtype)
    out[good] = values
    return out
