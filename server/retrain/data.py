"""Every file format the retraining pipeline reads, in one place: the prediction log, the feedback
log, and the owner's training and held-out data. When a log's layout changes, this module alone
changes.

**Prediction log** (``--prediction-log-dir``; written by ``sluice.server.monitoring``): Parquet,
Hive-partitioned ``model=NAME/date=YYYY-MM-DD/*.parquet``, one row per request with columns
``id``, ``time``, ``model``, ``version``, ``arm``, ``caller``, ``latency_s``, ``status``, one column
per output ``output.NAME`` and, when the model logs inputs, one per input ``input.NAME`` (the
request's tensor as nested lists, batch dimension first; null when not kept).

**Feedback log** (``--feedback-dir``; written by ``sluice feedback``): Parquet, partitioned the
same way, columns ``id`` and ``label`` (the label of every row of that request) and optionally
``row`` (the label of one row; null or absent: all rows) and ``time``. Later labels win: files
are read in name order, rows in file order (sorted by ``time`` when present), so the last write
of an (id, row) pair is the one kept.

**Training and held-out data** (named in retrain.yaml): ``.npz`` with arrays ``X`` and ``y``, or
Parquet with a list column ``X`` (or ``features``) and a ``y`` (or ``label``) column.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

#: Column naming of the prediction log (see the module docstring).
INPUT_PREFIX = "input."
ID, STATUS, OK = "id", "status", "OK"
#: Feedback columns.
LABEL, ROW, TIME = "label", "row", "time"


class DataError(ValueError):
    """A data file cannot be read as its format says; the message names the file (relative to
    the directory it was found in) and the column."""


@dataclass(frozen=True, slots=True)
class Joined:
    """Logged requests joined with their feedback, and what did not join."""

    x: np.ndarray
    y: np.ndarray
    #: Successful requests logged in the window.
    requests: int
    #: Of those, requests whose inputs were not logged (nothing to learn from).
    without_inputs: int
    #: Logged rows with no label (yet).
    unlabelled_rows: int
    #: Feedback ids that match no logged request in the window.
    unknown_ids: int
    #: Logged rows labelled more than once (the last label was kept).
    relabelled: int


def partition_files(root: Path, model: str, since_days: int | None,
                    today: dt.date | None = None) -> list[Path]:
    """The Parquet files of ``model`` under ``root`` (``model=NAME/date=YYYY-MM-DD/``), oldest
    partition first, in name order; only the last ``since_days`` days when given."""
    base = root / f"model={model}"
    if not base.is_dir():
        return []
    first = None
    if since_days is not None:
        first = (today or dt.date.today()) - dt.timedelta(days=since_days - 1)
    files: list[Path] = []
    for part in sorted(base.glob("date=*")):
        try:
            day = dt.date.fromisoformat(part.name.removeprefix("date="))
        except ValueError:
            continue  # not a partition of ours
        if first is None or day >= first:
            files += sorted(p for p in part.glob("*.parquet") if p.is_file())
    return files


def _read(path: Path, root: Path) -> pa.Table:
    try:
        return pq.read_table(path)
    except (OSError, pa.ArrowException) as exc:
        raise DataError(f"{path.relative_to(root)}: not a readable Parquet file "
                        f"({type(exc).__name__})") from None


def _cells(table: pa.Table, column: str) -> Iterator[object]:
    return iter(table.column(column).to_pylist())


def read_feedback(root: Path, model: str, since_days: int | None = None
                  ) -> tuple[dict[str, int], dict[tuple[str, int], int], int]:
    """({id: label of all its rows}, {(id, row): label}, labels given more than once)."""
    whole: dict[str, int] = {}
    per_row: dict[tuple[str, int], int] = {}
    repeats = 0
    for path in partition_files(root, model, since_days):
        table = _read(path, root)
        for needed in (ID, LABEL):
            if needed not in table.column_names:
                raise DataError(f"{path.relative_to(root)}: no column '{needed}' "
                                f"(has {', '.join(table.column_names)})")
        if TIME in table.column_names:
            table = table.sort_by(TIME)
        rows = _cells(table, ROW) if ROW in table.column_names else iter(())
        for rid, label in zip(_cells(table, ID), _cells(table, LABEL), strict=True):
            row = next(rows, None)
            if rid is None or label is None:
                continue
            if isinstance(label, bool) or not isinstance(label, int | float) or label != int(
                    label):
                raise DataError(f"{path.relative_to(root)}: column '{LABEL}' holds {label!r}, "
                                "not a class id")
            if row is None:
                repeats += str(rid) in whole
                whole[str(rid)] = int(label)
            else:
                repeats += (str(rid), int(row)) in per_row  # type: ignore[call-overload]
                per_row[str(rid), int(row)] = int(label)  # type: ignore[call-overload]
    return whole, per_row, repeats


def read_logged_inputs(root: Path, model: str, input_name: str, since_days: int | None = None
                       ) -> tuple[dict[str, np.ndarray], int, int]:
    """({request id: its input, [rows, ...features]}, successful requests, requests whose input
    was not kept). A request logged twice keeps its last record."""
    column = INPUT_PREFIX + input_name
    inputs: dict[str, np.ndarray] = {}
    requests = without = 0
    for path in partition_files(root, model, since_days):
        table = _read(path, root)
        if ID not in table.column_names:
            raise DataError(f"{path.relative_to(root)}: no column '{ID}'")
        statuses = _cells(table, STATUS) if STATUS in table.column_names else iter(())
        values = _cells(table, column) if column in table.column_names else iter(())
        for rid in _cells(table, ID):
            status, value = next(statuses, OK), next(values, None)
            if rid is None or status != OK:
                continue
            requests += 1
            if value is None:
                without += 1
                continue
            array = np.asarray(value, dtype=np.float32)
            inputs[str(rid)] = array if array.ndim > 1 else array.reshape(1, -1)
    return inputs, requests, without


def join_logged(log_root: Path, feedback_root: Path, model: str, input_name: str,
                since_days: int | None = None) -> Joined:
    """The logged rows that have a label, as (x [rows, features], y [rows])."""
    inputs, requests, without = read_logged_inputs(log_root, model, input_name, since_days)
    whole, per_row, repeats = read_feedback(feedback_root, model)
    xs: list[np.ndarray] = []
    ys: list[int] = []
    unlabelled = 0
    for rid, rows in inputs.items():
        for index, row in enumerate(rows):
            label = per_row.get((rid, index), whole.get(rid))
            if label is None:
                unlabelled += 1
                continue
            xs.append(row.reshape(-1))
            ys.append(label)
    known = inputs.keys()
    unknown = len(set(whole) - known) + len({rid for rid, _ in per_row} - known - set(whole))
    width = xs[0].shape[0] if xs else 0
    return Joined(
        x=np.stack(xs) if xs else np.empty((0, width), np.float32),
        y=np.asarray(ys, dtype=np.int64), requests=requests, without_inputs=without,
        unlabelled_rows=unlabelled, unknown_ids=unknown, relabelled=repeats,
    )


def read_xy(path: Path, root: Path) -> tuple[np.ndarray, np.ndarray]:
    """Training or held-out data: (X float32 [rows, ...], y int64 [rows])."""
    name = path.relative_to(root)
    if not path.is_file():
        raise DataError(f"{name}: no such file")
    if path.suffix == ".npz":
        try:
            with np.load(path, allow_pickle=False) as data:
                missing = [k for k in ("X", "y") if k not in data.files]
                if missing:
                    raise DataError(f"{name}: no array {missing[0]!r} (has {data.files})")
                x, y = data["X"], data["y"]
        except (OSError, ValueError) as exc:
            if isinstance(exc, DataError):
                raise
            raise DataError(f"{name}: not a readable .npz file") from None
    else:
        table = _read(path, root)
        xcol = next((c for c in ("X", "features") if c in table.column_names), None)
        ycol = next((c for c in ("y", "label") if c in table.column_names), None)
        if xcol is None or ycol is None:
            raise DataError(f"{name}: needs columns X (or features) and y (or label), has "
                            f"{', '.join(table.column_names)}")
        x = np.asarray(table.column(xcol).to_pylist(), dtype=np.float32)
        y = np.asarray(table.column(ycol).to_pylist())
    if len(x) != len(y):
        raise DataError(f"{name}: X has {len(x)} rows but y has {len(y)}")
    if y.dtype.kind not in "iuf" or (y.dtype.kind == "f" and not np.all(y == np.round(y))):
        raise DataError(f"{name}: y must hold class ids (integers), has {y.dtype}")
    return x.astype(np.float32, copy=False), y.astype(np.int64)
