"""Every file format the retraining pipeline reads, in one place: the prediction log, the feedback
log, and the owner's training and held-out data. When a log's layout changes, this module alone
changes.

**Prediction log** (``--prediction-log-dir``; written by ``sluice.server.monitoring``'s
prediction log): Parquet under Hive directories ``model=NAME/date=YYYY-MM-DD/*.parquet``, one
Parquet row per row of a request, with columns ``id``, ``row`` (the row's index in its request),
``time``, ``version``, ``arm``, ``caller``, ``status`` ("OK" or a status code name),
``latency_s``, ``output_<name>`` per output and ``input_<name>`` per input kept (a plain column
for one element per row, else a list per row, row-major; null when not kept). A failed request
is one row with null tensors. Files being written have hidden names and are not read.

**Feedback log** (``<prediction-log dir>/feedback``; written by ``sluice feedback`` and the
admin RPC): Parquet under the same kind of directories, columns ``id``, ``row`` (null: the label
of every row of the request), ``label`` (int64, classifiers; null for a regressor's ``value``)
and ``received_at``. The last label of an (id, row) wins: every file is read, and labels are
ordered by ``received_at``, then file name, then position in the file.

**Training and held-out data** (named in retrain.yaml): ``.npz`` with arrays ``X`` and ``y``, or
Parquet with a list column ``X`` (or ``features``) and a ``y`` (or ``label``) column.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

#: Column naming of the prediction log (see the module docstring).
INPUT_PREFIX = "input_"
ID, ROW, STATUS, OK = "id", "row", "status", "OK"
#: Feedback columns.
LABEL, RECEIVED = "label", "received_at"


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
    #: Feedback ids that match no successful logged request in the window.
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


def _need(table: pa.Table, path: Path, root: Path, *columns: str) -> None:
    for column in columns:
        if column not in table.column_names:
            raise DataError(f"{path.relative_to(root)}: no column '{column}' "
                            f"(has {', '.join(table.column_names)})")


def read_feedback(root: Path, model: str) -> tuple[dict[str, int], dict[tuple[str, int], int],
                                                   int]:
    """({id: label of all its rows}, {(id, row): label}, labels given more than once)."""
    found: list[tuple[float, int, str, int | None, int]] = []  # (time, order, id, row, label)
    for path in partition_files(root, model, None):
        table = _read(path, root)
        _need(table, path, root, ID, LABEL)
        n = table.num_rows
        times = (pc.cast(table.column(RECEIVED), pa.int64()).to_pylist()
                 if RECEIVED in table.column_names else [None] * n)
        rows = table.column(ROW).to_pylist() if ROW in table.column_names else [None] * n
        labels = table.column(LABEL).to_pylist()
        for rid, row, label, when in zip(table.column(ID).to_pylist(), rows, labels, times,
                                         strict=True):
            if rid is None or label is None:
                continue  # a regressor's value, or nothing
            if isinstance(label, bool) or not isinstance(label, int | float) or label != int(
                    label):
                raise DataError(f"{path.relative_to(root)}: column '{LABEL}' holds {label!r}, "
                                "not a class id")
            found.append((float(when or 0), len(found), str(rid),
                          None if row is None else int(row), int(label)))
    found.sort()
    whole: dict[str, int] = {}
    per_row: dict[tuple[str, int], int] = {}
    repeats = 0
    for _, _, rid, row, label in found:
        if row is None:
            repeats += rid in whole
            whole[rid] = label
        else:
            repeats += (rid, row) in per_row
            per_row[rid, row] = label
    return whole, per_row, repeats


def _rows_of(column: pa.ChunkedArray, width: int) -> np.ndarray:
    """A tensor column (no nulls) as float32 [rows, width]."""
    array = column.combine_chunks()
    if pa.types.is_fixed_size_list(array.type):
        values = array.flatten().to_numpy(zero_copy_only=False)
    elif pa.types.is_list(array.type) or pa.types.is_large_list(array.type):
        values = np.concatenate([np.asarray(v, np.float32).reshape(-1)
                                 for v in array.to_pylist()]) if len(array) else np.empty(0)
    else:
        values = array.to_numpy(zero_copy_only=False)
    return np.asarray(values, dtype=np.float32).reshape(len(array), width)


def read_logged_inputs(root: Path, model: str, input_name: str, width: int,
                       since_days: int | None = None
                       ) -> tuple[dict[tuple[str, int], np.ndarray], set[str], int]:
    """({(request id, row): its input row, float32 [width]}, the ids of the successful
    requests, how many of those had their input not kept). A row logged twice keeps its last
    record."""
    column = INPUT_PREFIX + input_name
    inputs: dict[tuple[str, int], np.ndarray] = {}
    requests: set[str] = set()
    without: set[str] = set()
    for path in partition_files(root, model, since_days):
        table = _read(path, root)
        _need(table, path, root, ID, ROW)
        if STATUS in table.column_names:
            table = table.filter(pc.equal(table.column(STATUS), OK))
        ids = [str(i) for i in table.column(ID).to_pylist()]
        requests.update(ids)
        if column not in table.column_names:
            without.update(ids)
            continue
        kept = pc.is_valid(table.column(column))
        without.update(i for i, k in zip(ids, kept.to_pylist(), strict=True) if not k)
        table = table.filter(kept)
        try:
            values = _rows_of(table.column(column), width)
        except (ValueError, pa.ArrowException):
            raise DataError(f"{path.relative_to(root)}: column '{column}' does not hold "
                            f"{width} numbers per row") from None
        for rid, row, value in zip(table.column(ID).to_pylist(), table.column(ROW).to_pylist(),
                                   values, strict=True):
            inputs[str(rid), int(row)] = value
    return inputs, requests, len(without - {rid for rid, _ in inputs})


def join_logged(log_root: Path, feedback_root: Path, model: str, input_name: str, width: int,
                since_days: int | None = None) -> Joined:
    """The logged rows that have a label, as (x [rows, width], y [rows])."""
    inputs, requests, without = read_logged_inputs(log_root, model, input_name, width,
                                                   since_days)
    whole, per_row, repeats = read_feedback(feedback_root, model)
    xs: list[np.ndarray] = []
    ys: list[int] = []
    unlabelled = 0
    for (rid, row), value in inputs.items():
        label = per_row.get((rid, row), whole.get(rid))
        if label is None:
            unlabelled += 1
            continue
        xs.append(value)
        ys.append(label)
    unknown = len(set(whole) - requests) + len({rid for rid, _ in per_row} - requests - set(whole))
    return Joined(
        x=np.stack(xs) if xs else np.empty((0, width), np.float32),
        y=np.asarray(ys, dtype=np.int64), requests=len(requests), without_inputs=without,
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
