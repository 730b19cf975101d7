"""Prediction-log and feedback Parquet files in the layout the retraining pipeline reads
(:mod:`sluice.server.retrain.data`), as the prediction log writes them for the monitors'
finished requests (:class:`~sluice.server.monitoring.hub.Finished`: one Parquet row per request
row, tensors as ``output_<name>`` / ``input_<name>`` columns, a failed request as one row with
null tensors) and as ``sluice feedback`` logs labels (``id``, ``row``, ``label``, ``value``,
``received_at``, ``version``, ``arm``), each under ``model=NAME/date=YYYY-MM-DD/``.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from sluice.server.monitoring.hub import Finished

_ARROW = {np.dtype(np.float32): pa.float32(), np.dtype(np.int64): pa.int64()}


def _partition(root: Path, model: str, day: dt.date) -> Path:
    path = root / f"model={model}" / f"date={day.isoformat()}"
    path.mkdir(parents=True, exist_ok=True)
    return path


def _tensor_column(records: Sequence[Finished], rows: list[int], name: str, is_input: bool,
                   keep: bool) -> pa.Array:
    """One tensor's column: a plain column for one element per row, else fixed-size lists."""
    sample = next(r.inputs[name] if is_input else r.outputs[name] for r in records
                  if name in (r.inputs if is_input else r.outputs))
    width = int(np.prod(sample.shape[1:]))
    value = _ARROW[sample.dtype]
    kind = value if width == 1 else pa.list_(value, width)
    cells: list[object] = []
    for record, n in zip(records, rows, strict=True):
        tensors = record.inputs if is_input else record.outputs
        if record.status != "OK" or not keep or name not in tensors:
            cells += [None] * n
        else:
            per_row = tensors[name].reshape(n, width)
            cells += [row[0].item() if width == 1 else row.tolist() for row in per_row]
    return pa.array(cells, kind)


def write_prediction_log(root: Path, records: Sequence[Finished], *, day: dt.date | None = None,
                         name: str = "part-0.parquet", keep_inputs: bool = True) -> Path:
    """One Parquet file of ``records`` (all of one model) under ``root``; its path."""
    rows = [len(next(iter(r.inputs.values()))) if r.status == "OK" else 1 for r in records]
    owner = np.repeat(np.arange(len(records)), rows)
    index = np.concatenate([np.arange(n) for n in rows])

    def each(values: list) -> list:
        return [values[i] for i in owner]

    columns: dict[str, pa.Array] = {
        "id": pa.array(each([r.id for r in records]), pa.string()),
        "row": pa.array(index.astype(np.int32)),
        "time": pa.array(each([int(r.time * 1e6) for r in records]),
                         pa.timestamp("us", tz="UTC")),
        "version": pa.array(each([r.version for r in records]), pa.int64()),
        "arm": pa.array(each([r.arm for r in records]), pa.string()),
        "caller": pa.array(each([r.caller for r in records]), pa.string()),
        "status": pa.array(each([r.status for r in records]), pa.string()),
        "latency_s": pa.array(each([r.latency_s for r in records]), pa.float64()),
    }
    for out in sorted({n for r in records for n in r.outputs}):
        columns[f"output_{out}"] = _tensor_column(records, rows, out, False, True)
    for inp in sorted({n for r in records for n in r.inputs}):
        columns[f"input_{inp}"] = _tensor_column(records, rows, inp, True, keep_inputs)
    path = _partition(root, records[0].model, day or dt.date.today()) / name
    pq.write_table(pa.table(columns), path)
    return path


def write_feedback(root: Path, model: str, labels: Iterable[tuple], *, day: dt.date | None = None,
                   name: str = "part-0.parquet", received_s: float = 1.7e9) -> Path:
    """Labels as ``(id, label)`` or ``(id, row, label)`` tuples (row None: every row), all
    received at ``received_s``; ``root`` is the feedback directory (the prediction log's
    ``feedback/``)."""
    rows = [(t[0], None, t[1]) if len(t) == 2 else t for t in labels]
    table = pa.table({
        "id": pa.array([r[0] for r in rows], pa.string()),
        "row": pa.array([r[1] for r in rows], pa.int64()),
        "label": pa.array([r[2] for r in rows], pa.int64()),
        "value": pa.array([None] * len(rows), pa.float64()),
        "received_at": pa.array([int(received_s * 1000)] * len(rows), pa.timestamp("ms", "UTC")),
        "version": pa.array([None] * len(rows), pa.int64()),
        "arm": pa.array([None] * len(rows), pa.string()),
    })
    path = _partition(root, model, day or dt.date.today()) / name
    pq.write_table(table, path)
    return path


def finished(rid: str, x: np.ndarray, *, model: str = "digits", version: int = 1,
             label: np.ndarray | None = None, status: str = "OK") -> Finished:
    """A Finished record of one request with input ``x`` [rows, features]."""
    rows = len(x)
    outputs = {} if status != "OK" else {
        "label": label if label is not None else np.zeros(rows, np.int64)}
    return Finished(rid, 1.7e9, model, version, "", "", outputs, {"input": x}, 0.001, status)
