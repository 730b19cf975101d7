"""Prediction-log and feedback Parquet files in the layout the retraining pipeline reads
(:mod:`sluice.server.retrain.data`): what the prediction log writes for the monitors' finished
requests (:class:`~sluice.server.monitoring.hub.Finished`), and what ``sluice feedback`` logs.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from sluice.server.monitoring.hub import Finished


def _partition(root: Path, model: str, day: dt.date) -> Path:
    path = root / f"model={model}" / f"date={day.isoformat()}"
    path.mkdir(parents=True, exist_ok=True)
    return path


def write_prediction_log(root: Path, records: Sequence[Finished], *, day: dt.date | None = None,
                         name: str = "part-0.parquet", keep_inputs: bool = True) -> Path:
    """One Parquet file of ``records`` (all of one model) under ``root``; the path."""
    model = records[0].model
    outputs = sorted(records[0].outputs)
    inputs = sorted(records[0].inputs)
    columns: dict[str, pa.Array] = {
        "id": pa.array([r.id for r in records], pa.string()),
        "time": pa.array([int(r.time * 1e6) for r in records], pa.timestamp("us", tz="UTC")),
        "model": pa.array([r.model for r in records], pa.string()),
        "version": pa.array([r.version for r in records], pa.int64()),
        "arm": pa.array([r.arm for r in records], pa.string()),
        "caller": pa.array([r.caller for r in records], pa.string()),
        "latency_s": pa.array([r.latency_s for r in records], pa.float64()),
        "status": pa.array([r.status for r in records], pa.string()),
    }
    for out in outputs:
        columns[f"output.{out}"] = pa.array(
            [r.outputs[out].tolist() if out in r.outputs else None for r in records])
    for inp in inputs:
        columns[f"input.{inp}"] = pa.array(
            [r.inputs[inp].tolist() if keep_inputs and inp in r.inputs else None
             for r in records])
    path = _partition(root, model, day or dt.date.today()) / name
    pq.write_table(pa.table(columns), path)
    return path


def write_feedback(root: Path, model: str, labels: Iterable[tuple], *, day: dt.date | None = None,
                   name: str = "part-0.parquet", times: Sequence[float] | None = None) -> Path:
    """Labels as ``(id, label)`` or ``(id, row, label)`` tuples (row None: every row)."""
    rows = [(t[0], None, t[1]) if len(t) == 2 else t for t in labels]
    columns = {
        "id": pa.array([r[0] for r in rows], pa.string()),
        "row": pa.array([r[1] for r in rows], pa.int64()),
        "label": pa.array([r[2] for r in rows], pa.int64()),
    }
    if times is not None:
        columns["time"] = pa.array(list(times), pa.float64())
    path = _partition(root, model, day or dt.date.today()) / name
    pq.write_table(pa.table(columns), path)
    return path


def finished(rid: str, x: np.ndarray, *, model: str = "digits", version: int = 1,
             label: np.ndarray | None = None, status: str = "OK") -> Finished:
    """A Finished record of one request with input ``x`` [rows, features]."""
    rows = len(x)
    outputs = {} if status != "OK" else {
        "label": label if label is not None else np.zeros(rows, np.int64)}
    return Finished(rid, 1.7e9, model, version, "", "", outputs, {"input": x}, 0.001, status)
