"""The prediction log's Parquet files: one open file per (model, date, schema), Hive-style
directories, rotation by size and by age.

Layout under the log's root::

    model=digits/date=2026-05-09/part-20260509T101500-<process>-0001.parquet

A file is written under a hidden name (``.part-....parquet.inprogress``: pyarrow's datasets and
DuckDB's ``*.parquet`` globs skip it) and renamed once closed, so a reader only ever sees whole
files. ``<process>`` keeps the files of sibling worker processes apart.

Records are accounted for when their file ends: ``settled(model, records, True)`` once it is
renamed into place (readable), ``settled(model, records, False)`` when a disk error lost it.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from sluice.server.monitoring import arrow_arrays
from sluice.server.monitoring.prediction_schema import DICTIONARY_COLUMNS

log = logging.getLogger(__name__)


@dataclass
class _Open:
    """A file being written."""

    final: Path
    partial: Path
    sink: pa.NativeFile
    writer: pq.ParquetWriter
    #: Monotonic instant it was opened (age rotation).
    opened: float
    #: Records (requests) in the file so far.
    records: int = 0


class PartitionFiles:
    """Open Parquet files of the prediction log. Used by one thread (the writer's)."""

    def __init__(
        self, root: Path, *, tag: str, max_file_bytes: int, max_file_age_s: float,
        settled: Callable[[str, int, bool], None], clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """``tag`` names this process in file names; a file is closed once it holds
        ``max_file_bytes`` or is ``max_file_age_s`` old (checked by :meth:`rotate`);
        ``settled(model, records, readable)`` is called as each file ends."""
        self.root = root
        self._settled = settled
        self._tag = tag
        self._max_bytes = max_file_bytes
        self._max_age_s = max_file_age_s
        self._clock = clock
        self._open: dict[tuple[str, str, str], _Open] = {}
        self._seq = 0
        #: Files closed and renamed into place.
        self.files_closed = 0

    def write(self, model: str, date: str, schema_key: str, table: pa.Table, records: int) -> None:
        """Append ``table`` (``records`` requests) as a row group to the open file of (model,
        date, schema); open one first if needed; close it once it reached its size. OSError:
        the file is abandoned, its earlier records settled as lost (these are not: the caller
        counts them)."""
        key = (model, date, schema_key)
        current = self._open.get(key)
        try:
            if current is None:
                current = self._open[key] = self._start(model, date, table.schema)
            current.writer.write_table(table)
            current.records += records
            size = current.sink.tell()
        except OSError:
            if current is not None:
                self._abandon(key)
            raise
        if size >= self._max_bytes:
            self._close(key)

    def rotate(self) -> None:
        """Close every file older than its maximum age."""
        now = self._clock()
        for key in [k for k, f in self._open.items() if now - f.opened >= self._max_age_s]:
            self._close(key)

    def close_all(self) -> None:
        for key in list(self._open):
            self._close(key)

    @property
    def open_count(self) -> int:
        return len(self._open)

    def _start(self, model: str, date: str, schema: pa.Schema) -> _Open:
        folder = self.root / f"model={model}" / f"date={date}"
        folder.mkdir(parents=True, exist_ok=True)
        self._seq += 1
        stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
        name = f"part-{stamp}-{self._tag}-{self._seq:04d}.parquet"
        partial = folder / f".{name}.inprogress"
        # Arrow's own file, not a Python one: the row group is encoded, compressed and written
        # without the GIL; a Python sink took the GIL back for every page written.
        sink = pa.OSFile(str(partial), "wb")
        try:
            writer = pq.ParquetWriter(
                sink, schema, compression="zstd",
                use_dictionary=[c for c in DICTIONARY_COLUMNS if c in schema.names])
        except BaseException:
            sink.close()
            raise
        return _Open(folder / name, partial, sink, writer, self._clock())

    def _close(self, key: tuple[str, str, str]) -> None:
        current = self._open.pop(key)
        try:
            current.writer.close()
            current.sink.close()
            os.replace(current.partial, current.final)
        except OSError as exc:
            log.warning("prediction log: cannot finish a file of model '%s' (%s)",
                        key[0], exc.strerror)
            _remove(current)
            self._settled(key[0], current.records, False)
            return
        self.files_closed += 1
        self._settled(key[0], current.records, True)

    def _abandon(self, key: tuple[str, str, str]) -> None:
        current = self._open.pop(key)
        try:
            current.writer.close()
        except Exception:  # a broken file on a broken disk: what it says does not matter
            pass
        _remove(current)
        self._settled(key[0], current.records, False)


def warm_up() -> None:
    """Do once, now, what the first row group would do lazily: start Parquet's writer and the
    zstd codec. Done at model load, not on the writer's first row group, which stalled serving
    for tens to hundreds of milliseconds soon after traffic began (pandas, which ``pa.array``
    imported then, is no longer imported at all: :mod:`.arrow_arrays`)."""
    sink = pa.BufferOutputStream()
    table = pa.Table.from_arrays(
        [arrow_arrays.array(np.zeros(1, np.float32), pa.float32())], names=["warm"])
    with pq.ParquetWriter(sink, table.schema, compression="zstd") as writer:
        writer.write_table(table)


def _remove(current: _Open) -> None:
    try:
        current.sink.close()
    except OSError:
        pass
    try:
        current.partial.unlink(missing_ok=True)
    except OSError:
        pass
