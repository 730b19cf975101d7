"""Ground truth as it arrives, appended to Parquet so labels join predictions offline too.

Each accepted feedback call becomes one file::

    <prediction-log dir>/feedback/model=NAME/date=YYYY-MM-DD/part-<HHMMSS>-<random>.parquet

with columns ``id`` (string), ``row`` (int64, null: the label is the whole request's),
``label`` (int64, classifiers) or ``value`` (float64, regressors; the other is null),
``received_at`` (timestamp, ms, UTC), and ``version`` / ``arm`` of the prediction it joined in
memory (null when it joined none: it arrived after the window, or before the prediction was
logged). The ``model=`` and ``date=`` folders are Hive partitions: pandas, DuckDB and pyarrow
read the whole tree as one table with those two columns. A file is written under a temporary
name and renamed, so a reader never sees half of one.
"""

from __future__ import annotations

import os
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from sluice.server.config.model import check_model_name
from sluice.server.monitoring import arrow_arrays

SCHEMA = pa.schema([
    ("id", pa.string()),
    ("row", pa.int64()),
    ("label", pa.int64()),
    ("value", pa.float64()),
    ("received_at", pa.timestamp("ms", tz="UTC")),
    ("version", pa.int64()),
    ("arm", pa.string()),
])


@dataclass(frozen=True, slots=True)
class LoggedLabel:
    """One valid label as logged."""

    id: str
    row: int | None
    value: float
    version: int | None
    arm: str | None


class FeedbackLog:
    """Writes feedback files under ``root`` (the prediction-log directory)."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def write(self, model: str, labels: list[LoggedLabel], *, classifier: bool,
              now_s: float | None = None) -> str:
        """Append ``labels`` of ``model`` as one file; "" on success, else why not (a sentence
        without the path: the caller shows it to clients). Blocking."""
        if not labels:
            return ""
        check_model_name(model)  # the name becomes a folder: never a path of its own
        now = time.time() if now_s is None else now_s
        day = time.strftime("%Y-%m-%d", time.gmtime(now))
        folder = self.root / "feedback" / f"model={model}" / f"date={day}"
        name = f"part-{time.strftime('%H%M%S', time.gmtime(now))}-{uuid.uuid4().hex[:12]}.parquet"
        table = _table(labels, classifier, now)
        temporary = folder / f".{name}.tmp"
        try:
            folder.mkdir(parents=True, exist_ok=True)
            pq.write_table(table, temporary)
            os.replace(temporary, folder / name)
        except OSError as exc:
            try:
                temporary.unlink(missing_ok=True)
            except OSError:
                pass
            return f"labels not written to the feedback log: {exc.strerror or 'I/O error'}"
        return ""


def _table(labels: list[LoggedLabel], classifier: bool, now: float) -> pa.Table:
    """``labels`` as one table of :data:`SCHEMA` (built by :mod:`.arrow_arrays`, so that the
    serving process never imports pandas)."""
    n = len(labels)

    def optional(values: list[int | None]) -> pa.Array:
        """An int64 column, null where a value is None."""
        valid = np.fromiter((v is not None for v in values), np.bool_, n)
        filled = np.fromiter((0 if v is None else v for v in values), np.int64, n)
        return arrow_arrays.array(filled, pa.int64(), valid)

    values = np.fromiter((x.value for x in labels), np.float64, n)
    # a classifier's labels are ints, a regressor's values floats; the other column is null
    labels_column = values.astype(np.int64) if classifier else np.zeros(n, dtype=np.int64)
    return pa.Table.from_arrays([
        arrow_arrays.strings([x.id for x in labels]),
        optional([x.row for x in labels]),
        arrow_arrays.array(labels_column, pa.int64(), np.full(n, classifier)),
        arrow_arrays.array(values, pa.float64(), np.full(n, not classifier)),
        arrow_arrays.array(np.full(n, int(now * 1000), dtype=np.int64), SCHEMA.field(
            "received_at").type),
        optional([x.version for x in labels]),
        arrow_arrays.array([x.arm or "" for x in labels], pa.string(),
                           np.fromiter((x.arm is not None for x in labels), np.bool_, n)),
    ], schema=SCHEMA)
