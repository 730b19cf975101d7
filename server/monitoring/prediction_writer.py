"""The prediction log's background writer: a bounded intake of sampled records, already turned into
Arrow tables, and the one thread that writes them as Parquet row groups (:mod:`.prediction_files`).

Who does what: :meth:`PredictionWriter.put` converts the records it takes into an Arrow table
on the caller's thread (the monitor process's, as each drain arrives: :mod:`.monitor_remote`;
the monitor hub's, for a writer in the serving process) and queues the
table; the writer's thread joins the queued tables of each (model, logging schema) and writes
one row group when ``batch_records`` records are pending or the oldest has waited ``flush_s``,
so files hold a few large row groups rather than many small ones. Encoding and compressing a row
group takes milliseconds, mostly without the GIL, which the hub's thread (shared by every
monitor) must not spend; the conversion is Python work that holds the GIL, done where it is
cheapest and least bursty. Measured inside the server under perf_analyzer (identity, c=64, the
log at 100%, three rounds side by side): converting on the writer's thread once a second, in
paced slices, took p99 to 36.0 / 33.4 / 31.9 ms against 26.3 / 25.8 / 27.7 with the model
watched but nothing logged; converting at the hand-off, 26.8 / 30.9 / 26.4. At the hand-off the
records were touched a moment ago (cold records, a second old, cost twice the CPU to convert)
and each table is a quarter of a second's records, not a second's; the writer then holds no
record, so nothing of a request outlives its hand-off.

Promises:
- ``put`` never blocks on I/O and never raises.
- Every record put is, in the end, in a readable file (``written``), or counted in ``dropped``
  under one reason: ``queue_full``, ``write_error`` (the disk refused it or the file it was in),
  ``encode_error`` (it does not fit its model's schema; a bug of ours, logged; counted by
  ``put``).
- ``flush`` returns once every record put before it is settled (its file closed or dropped).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from sluice.server.monitoring.hub import Finished
from sluice.server.monitoring.prediction_files import PartitionFiles
from sluice.server.monitoring.prediction_schema import RecordSchema

log = logging.getLogger(__name__)

#: How often one (model, reason) drop is logged at most.
_LOG_EVERY_S = 60.0


class _Pending:
    """Tables of one (model, schema) waiting for their row group, oldest first."""

    __slots__ = ("schema", "parts", "records", "since")

    def __init__(self, schema: RecordSchema, since: float) -> None:
        self.schema = schema
        #: (UTC date, table, records in it).
        self.parts: list[tuple[str, pa.Table, int]] = []
        self.records = 0
        #: When the oldest arrived (this thread's clock).
        self.since = since


def writer_settings(config: Any) -> dict[str, Any]:
    """A writer's bounds from a server's config (its queue, file size and age)."""
    return {"capacity_records": config.prediction_log_queue_records,
            "max_file_bytes": config.prediction_log_max_file_bytes,
            "max_file_age_s": config.prediction_log_max_file_age_s}


class PredictionWriter:
    """Bounded intake + writer thread for the prediction log's Parquet files."""

    def __init__(
        self, root: Path, *, tag: str, capacity_records: int = 100_000,
        batch_records: int = 8192, flush_s: float = 1.0,
        max_file_bytes: int = 64 * 1024 * 1024, max_file_age_s: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.root = root
        self.capacity = capacity_records
        self._batch_records = batch_records
        self._flush_s = flush_s
        self._clock = clock
        self.files = PartitionFiles(root, tag=tag, max_file_bytes=max_file_bytes,
                                    max_file_age_s=max_file_age_s, settled=self._settled,
                                    clock=clock)
        self._cond = threading.Condition()
        self._intake: deque[tuple[str, RecordSchema, str, pa.Table, int]] = deque()
        self._queued = 0
        #: Flush requests not yet served (each an event set once it is).
        self._flushes: list[threading.Event] = []
        self._stop = False
        self._thread: threading.Thread | None = None
        #: Records in readable files, per model.
        self.written: Counter[str] = Counter()
        #: Records dropped, per (model, reason).
        self.dropped: Counter[tuple[str, str]] = Counter()
        self._logged: dict[tuple[str, str], float] = {}

    # -- producers (the hub's thread) ------------------------------------------------------------

    def put(self, model: str, schema: RecordSchema, records: Sequence[Finished]) -> int:
        """Convert ``records`` of ``model`` into Arrow under ``schema`` (on this thread) and
        queue them for writing; those beyond the capacity are dropped and counted, as are
        records that do not fit the schema. Returns how many were queued."""
        with self._cond:  # the room is taken before converting: nothing converted is dropped
            room = self.capacity - self._queued
            taken = records if len(records) <= room else records[:max(room, 0)]
            self._queued += len(taken)
        refused = len(records) - len(taken)
        if refused:
            self.drop(model, "queue_full", refused)
        if not taken:
            return 0
        if not isinstance(taken, list):  # a drain's view builds its records as read: once
            taken = list(taken)
        tables = []
        for date, group in _by_date(taken).items():
            table, fitting = self._convert(model, schema, group)
            if table is not None:
                tables.append((model, schema, date, table, fitting))
        queued = sum(t[-1] for t in tables)
        with self._cond:
            self._intake.extend(tables)
            self._queued -= len(taken) - queued
            if self._queued >= self._batch_records:
                self._cond.notify()
        return queued

    def _convert(self, model: str, schema: RecordSchema,
                 records: list[Finished]) -> tuple[pa.Table | None, int]:
        """(the table of ``records``, how many it holds); when some do not fit the schema (a
        bug of ours), each is converted alone and only those are dropped (logged once)."""
        try:
            return schema.table(records), len(records)
        except Exception:
            log.exception("prediction log: records of model '%s' do not fit its schema", model)
        tables = []
        for record in records:
            try:
                tables.append(schema.table([record]))
            except Exception:
                self.drop(model, "encode_error", 1)
        return (pa.concat_tables(tables), len(tables)) if tables else (None, 0)

    def drop(self, model: str, reason: str, count: int) -> None:
        """Count ``count`` records of ``model`` dropped for ``reason`` (logged now and then)."""
        self.dropped[model, reason] += count
        now = self._clock()
        if now - self._logged.get((model, reason), -_LOG_EVERY_S) >= _LOG_EVERY_S:
            self._logged[model, reason] = now
            log.warning("prediction log: dropping records of model '%s' (%s)", model, reason)

    @property
    def queued(self) -> int:
        return self._queued

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(
                target=self._main, name="sluice-prediction-log", daemon=True
            )
            self._thread.start()

    def flush(self, timeout_s: float = 30.0) -> bool:
        """Write everything queued and close the open files; True once done."""
        if self._thread is None:
            self._serve(flush=True)
            return True
        done = threading.Event()
        with self._cond:
            self._flushes.append(done)
            self._cond.notify()
        return done.wait(timeout_s)

    def close(self, timeout_s: float = 30.0) -> None:
        """Write everything queued, close the files, stop the thread."""
        with self._cond:
            self._stop = True
            self._cond.notify()
        if self._thread is not None:
            self._thread.join(timeout_s)
            self._thread = None
        self._serve(flush=True)  # what arrived after the thread ended (or without one)

    # -- the thread ------------------------------------------------------------------------------

    def _main(self) -> None:
        pending: dict[tuple[str, str], _Pending] = {}
        while True:
            with self._cond:
                if not (self._intake or self._flushes or self._stop):
                    self._cond.wait(self._flush_s)
                stopping, flushes = self._stop, self._flushes
                self._flushes = []
            self._take(pending)
            self._write(pending, flush=stopping or bool(flushes))
            for done in flushes:
                done.set()
            if stopping:
                return

    def _serve(self, flush: bool) -> None:
        pending: dict[tuple[str, str], _Pending] = {}
        self._take(pending)
        self._write(pending, flush)

    def _take(self, pending: dict[tuple[str, str], _Pending]) -> None:
        with self._cond:
            items = list(self._intake)
            self._intake.clear()
        now = self._clock()
        for model, schema, date, table, records in items:
            key = (model, schema.key)
            entry = pending.get(key)
            if entry is None:
                entry = pending[key] = _Pending(schema, now)
            entry.parts.append((date, table, records))
            entry.records += records
        # counted out only once held here: the capacity bounds the queue and this thread's hand
        taken = sum(item[-1] for item in items)
        if taken:
            with self._cond:
                self._queued -= taken

    def _write(self, pending: dict[tuple[str, str], _Pending], flush: bool) -> None:
        self.files.rotate()  # before writing: a file past its age takes no more rows
        now = self._clock()
        for key in list(pending):
            entry = pending[key]
            if (flush or entry.records >= self._batch_records
                    or now - entry.since >= self._flush_s):
                del pending[key]
                self._write_entry(key[0], entry)
        if flush:
            self.files.close_all()

    def _write_entry(self, model: str, entry: _Pending) -> None:
        """One row group per date: the tables of that date joined (no copy) and written."""
        dates: dict[str, list[tuple[pa.Table, int]]] = {}
        for date, table, records in entry.parts:
            dates.setdefault(date, []).append((table, records))
        for date, parts in dates.items():
            records = sum(n for _, n in parts)
            try:
                self.files.write(model, date, entry.schema.key,
                                 pa.concat_tables([table for table, _ in parts]), records)
            except OSError:
                self.drop(model, "write_error", records)

    def _settled(self, model: str, records: int, readable: bool) -> None:
        if readable:
            self.written[model] += records
        elif records:
            self.drop(model, "write_error", records)


def _by_date(records: list[Finished]) -> dict[str, list[Finished]]:
    """``records`` by the UTC date of their time (nearly always one date)."""
    days = np.fromiter((r.time for r in records), np.float64, len(records)) // 86400
    first = int(days[0])
    if (days == first).all():
        return {_date(first): records}
    groups: dict[str, list[Finished]] = {}
    for record in records:
        groups.setdefault(_date(_day(record.time)), []).append(record)
    return groups


def _day(t: float) -> int:
    return int(t // 86400)


def _date(day: int) -> str:
    return time.strftime("%Y-%m-%d", time.gmtime(day * 86400))
