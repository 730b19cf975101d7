"""The prediction log's Arrow schema, taken from a model's declared inputs and outputs, and the
Arrow table of a list of finished requests.

One Parquet row per row of a request (a request of batch 8 gives 8 rows, ``row`` 0..7), so that
pandas, DuckDB and Evidently see one prediction per row and ``(id, row)`` joins with per-row
labels. Columns:

======================  ===============================================================
``id``                  the response's request id (string)
``row``                 the row's index in its request (int32)
``time``                the answer's wall-clock time (timestamp, microseconds, UTC)
``version``             the model version that answered (int64; 0: failed before routing)
``arm``                 the deployment arm ("" on the plain path)
``caller``              who called ("" when unknown)
``status``              "OK" or the failure's status code name
``latency_s``           arrival to answer, seconds (float64)
``output_<name>``       each output, per row
``input_<name>``        each input kept (``logging.inputs`` and not excluded), per row
======================  ===============================================================

``model`` and ``date`` come from the Hive-style directories (``model=NAME/date=YYYY-MM-DD``).
A tensor whose per-row shape has one element is a plain column of its datatype; a fixed per-row
shape of n elements is a ``fixed_size_list<type, n>`` (row-major when it has several
dimensions); a shape with a variable dimension is a ``list<type>``. BYTES are ``binary``.
A failed request is one row with its tensors null; an output the caller did not request is
null too.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from sluice.server.config.model import ModelConfig
from sluice.server.config.prediction_logging import LoggingConfig
from sluice.server.monitoring import arrow_arrays
from sluice.server.monitoring.hub import Finished
from sluice.server.types import DATATYPE_DTYPES, TensorSpec

ARROW_TYPES: dict[str, pa.DataType] = {
    "BOOL": pa.bool_(), "UINT8": pa.uint8(), "UINT16": pa.uint16(), "UINT32": pa.uint32(),
    "UINT64": pa.uint64(), "INT8": pa.int8(), "INT16": pa.int16(), "INT32": pa.int32(),
    "INT64": pa.int64(), "FP16": pa.float16(), "FP32": pa.float32(), "FP64": pa.float64(),
    "BYTES": pa.binary(),
}
#: The columns Parquet dictionary-encodes: few distinct values in a row group. The rest (ids,
#: times, latencies, tensors) are mostly distinct, where a dictionary is built, outgrown and
#: dropped for each column chunk: writing every column with one cost 1.12 us per identity row
#: against 0.45 with these only, and made files larger (116 against 77 bytes per row; digits
#: with inputs 4.48 against 1.07 us, 450 against 286 bytes; zstd, 4,400 distinct records).
DICTIONARY_COLUMNS = ("version", "arm", "caller", "status")
_FIXED = pa.schema([
    ("id", pa.string()), ("row", pa.int32()), ("time", pa.timestamp("us", tz="UTC")),
    ("version", pa.int64()), ("arm", pa.string()), ("caller", pa.string()),
    ("status", pa.string()), ("latency_s", pa.float64()),
])


@dataclass(frozen=True, slots=True)
class TensorColumn:
    """One tensor's column."""

    column: str
    tensor: str
    #: True for inputs (read from ``Finished.inputs``), False for outputs.
    is_input: bool
    datatype: str
    #: Shape of one row (batched models: the declared dims; else the whole tensor's).
    row_dims: tuple[int, ...]

    @property
    def width(self) -> int | None:
        """Elements per row, None when a dimension is variable."""
        return None if any(d < 0 for d in self.row_dims) else math.prod(self.row_dims)

    def arrow_type(self) -> pa.DataType:
        value = ARROW_TYPES[self.datatype]
        width = self.width
        if width == 1:
            return value
        return pa.list_(value) if width is None else pa.list_(value, width)


class RecordSchema:
    """The columns of one model version's log under one logging config."""

    def __init__(self, config: ModelConfig, logging: LoggingConfig) -> None:
        self.batched = config.max_batch_size > 0
        kept_inputs: Sequence[TensorSpec] = [
            spec for spec in config.inputs if logging.inputs and spec.name not in logging.exclude
        ] if logging.inputs else []
        self.columns = [
            TensorColumn(f"{prefix}_{spec.name}", spec.name, is_input, spec.datatype, spec.dims)
            for prefix, is_input, specs in (
                ("output", False, config.outputs), ("input", True, kept_inputs)
            )
            for spec in specs if spec.datatype in ARROW_TYPES
        ]
        self.schema = pa.schema(
            [*_FIXED, *(pa.field(c.column, c.arrow_type()) for c in self.columns)]
        )
        #: Equal schemas, equal keys: a writer keeps one file per key.
        self.key = self.schema.to_string()

    def table(self, records: Sequence[Finished]) -> pa.Table:
        """The rows of ``records`` (one per request row; a failed request: one row)."""
        all_ok = all(r.status == "OK" for r in records)
        rows = self._row_counts(records) if all_ok and self.batched else None
        if rows is None:
            rows = np.fromiter((self._rows(r) for r in records), np.int64, len(records))
        total = int(rows.sum())
        n = len(records)
        # one row per request (the usual batch-1 traffic): no per-row repetition to make
        owner = None if total == n else np.repeat(np.arange(n), rows)

        def per_row(values: np.ndarray) -> np.ndarray:
            return values if owner is None else values[owner]

        row = (np.zeros(total, dtype=np.int32) if owner is None else
               np.arange(total, dtype=np.int32) - (np.cumsum(rows) - rows)[owner].astype(
                   np.int32))
        arrays: list[pa.Array] = [
            _strings([r.id for r in records], owner, total),
            arrow_arrays.array(row, pa.int32()),
            arrow_arrays.array(per_row(
                (np.fromiter((r.time for r in records), np.float64, n) * 1e6).astype(np.int64)),
                pa.timestamp("us", tz="UTC")),
            arrow_arrays.array(
                per_row(np.fromiter((r.version for r in records), np.int64, n)), pa.int64()),
            _strings([r.arm for r in records], owner, total),
            _strings([r.caller for r in records], owner, total),
            _strings([r.status for r in records], owner, total),
            arrow_arrays.array(
                per_row(np.fromiter((r.latency_s for r in records), np.float64, n)),
                pa.float64()),
        ]
        for column in self.columns:
            arrays.append(self._tensor(column, records, rows, total, all_ok))
        return pa.Table.from_arrays(arrays, schema=self.schema)

    @staticmethod
    def _row_counts(records: Sequence[Finished]) -> np.ndarray | None:
        """:meth:`_rows` of answered requests of a batched model, in one pass (None when one
        has no output or a 0-d one: those go through :meth:`_rows`)."""
        try:
            return np.array([next(iter(r.outputs.values())).shape[0] for r in records],
                            dtype=np.int64)
        except (StopIteration, IndexError):
            return None

    def _rows(self, record: Finished) -> int:
        if record.status != "OK" or not self.batched:
            return 1
        for value in record.outputs.values():
            return int(value.shape[0]) if value.ndim else 1
        return 1

    def _tensor(
        self, column: TensorColumn, records: Sequence[Finished], rows: np.ndarray, total: int,
        all_ok: bool,
    ) -> pa.Array:
        """The column of one tensor: each record's array, or nulls for its rows."""
        dtype = DATATYPE_DTYPES[column.datatype]
        width = column.width
        if width is not None and all_ok:
            # the usual batch: every record has the tensor; one concatenate, no per-row work
            arrays = [(r.inputs if column.is_input else r.outputs).get(column.tensor)
                      for r in records]
            if not any(a is None for a in arrays):
                try:  # along the batch axis: ~3x quicker than axis=None's flattening copies
                    flat = np.concatenate(arrays).reshape(-1)
                except ValueError:  # per-row shapes that differ, 0-d tensors
                    flat = np.concatenate(arrays, axis=None)
                flat = flat.astype(dtype, copy=False)
                if flat.size == total * width:
                    values = arrow_arrays.array(flat, ARROW_TYPES[column.datatype])
                    return values if width == 1 else pa.FixedSizeListArray.from_arrays(
                        values, width)
        parts: list[np.ndarray] = []
        valid = np.ones(total, dtype=bool)
        sizes: list[np.ndarray] = []  # elements per row, for variable shapes
        at = 0
        for record, n in zip(records, rows.tolist(), strict=True):
            source = record.inputs if column.is_input else record.outputs
            value = source.get(column.tensor) if record.status == "OK" else None
            per_row = (value.size // n if n else 0) if value is not None else 0
            if value is None or (width is not None and per_row != width):
                valid[at:at + n] = False
                per_row = width if width is not None else 0
                parts.append(np.full(n * per_row, b"" if dtype.kind == "O" else 0, dtype))
            else:
                parts.append(np.asarray(value, dtype=dtype).reshape(-1))
            if width is None:
                sizes.append(np.full(n, per_row, dtype=np.int32))
            at += n
        flat = np.concatenate(parts) if parts else np.zeros(0, dtype=dtype)
        if width == 1:
            return arrow_arrays.array(flat, ARROW_TYPES[column.datatype], valid)
        values = arrow_arrays.array(flat, ARROW_TYPES[column.datatype])
        mask = None if valid.all() else arrow_arrays.mask(~valid)
        if width is not None:
            return pa.FixedSizeListArray.from_arrays(values, width, mask=mask)
        offsets = np.zeros(total + 1, dtype=np.int32)
        np.cumsum(np.concatenate(sizes) if sizes else [], out=offsets[1:])
        return pa.ListArray.from_arrays(arrow_arrays.array(offsets, pa.int32()), values,
                                        mask=mask)


def _strings(values: list[str], owner: np.ndarray | None, total: int) -> pa.Array:
    """A string column of ``total`` rows: ``values`` (one per request) repeated per row as
    ``owner`` says (None: one row each); one repeated scalar when all are equal (the arm,
    caller and status of a batch nearly always are)."""
    if values and values.count(values[0]) == len(values):
        return arrow_arrays.repeated(values[0], total)
    if owner is None:
        return arrow_arrays.strings(values)
    return arrow_arrays.strings_at(values, owner)
