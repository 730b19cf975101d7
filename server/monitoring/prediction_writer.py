"""The prediction log's background writer: a bounded intake of sampled records and the one thread
that turns them into Parquet row groups (:mod:`.prediction_files`).

Why a thread of its own: encoding and compressing a row group takes milliseconds, which the
monitor hub's thread (shared by every monitor) must not spend. The intake is a deque of batches
with a record count under a lock; :meth:`PredictionWriter.put` never waits for the disk: what
does not fit is dropped and counted (``queue_full``). The thread groups records per (model,
logging schema) and writes one row group when ``batch_records`` are pending or the oldest has
waited ``flush_s``, so files hold a few large row groups rather than many small ones. It turns
them into Arrow ``slice_records`` at a time with a :class:`~.pacing.Pacer` tick between slices:
the conversion is Python work that holds the GIL the event loop needs (one table of a second's
records held it for tens of milliseconds). Few, large slices: each table has a fixed cost
(~0.3 ms), so converting every hub hand-off (~50 records) on arrival cost more in all
(prediction_log_bench: 22.7 us of CPU per record against 14.8 with 512-record slices). With
250 ms drains (~300 records a hand-off) it still did, inside the server: woken for each
hand-off, this thread spent 22-25 us per identity request under perf_analyzer (c=64) against
14-17 when woken once a second, and the hub's thread 14-15 against 9-12.

Promises:
- ``put`` never blocks on I/O and never raises.
- Every record put is, in the end, in a readable file (``written``), or counted in ``dropped``
  under one reason: ``queue_full``, ``write_error`` (the disk refused it or the file it was in),
  ``encode_error`` (it does not fit its model's schema; a bug of ours, logged).
- ``flush`` returns once every record put before it is settled (its file closed or dropped).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter, deque
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pyarrow as pa

from sluice.server.monitoring.hub import Finished
from sluice.server.monitoring.pacing import Pacer
from sluice.server.monitoring.prediction_files import PartitionFiles
from sluice.server.monitoring.prediction_schema import RecordSchema

log = logging.getLogger(__name__)

#: How often one (model, reason) drop is logged at most.
_LOG_EVERY_S = 60.0


class _Pending:
    """Records of one (model, schema) waiting for their row group, oldest first."""

    __slots__ = ("schema", "records", "since")

    def __init__(self, schema: RecordSchema, since: float) -> None:
        self.schema = schema
        self.records: list[Finished] = []
        #: When the oldest arrived (this thread's clock).
        self.since = since


class PredictionWriter:
    """Bounded intake + writer thread for the prediction log's Parquet files."""

    def __init__(
        self, root: Path, *, tag: str, capacity_records: int = 100_000,
        batch_records: int = 8192, flush_s: float = 1.0, slice_records: int = 512,
        max_file_bytes: int = 64 * 1024 * 1024, max_file_age_s: float = 60.0,
        clock: Callable[[], float] = time.monotonic, pacer: Pacer | None = None,
    ) -> None:
        """``slice_records``: records converted between two of ``pacer``'s ticks."""
        self.root = root
        self.capacity = capacity_records
        self._batch_records = batch_records
        self._flush_s = flush_s
        self._slice_records = slice_records
        self._clock = clock
        self._pacer = pacer or Pacer()
        self.files = PartitionFiles(root, tag=tag, max_file_bytes=max_file_bytes,
                                    max_file_age_s=max_file_age_s, settled=self._settled,
                                    clock=clock)
        self._cond = threading.Condition()
        self._intake: deque[tuple[str, RecordSchema, list[Finished]]] = deque()
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

    def put(self, model: str, schema: RecordSchema, records: list[Finished]) -> int:
        """Queue ``records`` of ``model`` for writing under ``schema``; those beyond the
        capacity are dropped and counted. Returns how many were queued."""
        with self._cond:
            room = self.capacity - self._queued
            taken = records if len(records) <= room else records[:max(room, 0)]
            if taken:
                self._intake.append((model, schema, taken))
                self._queued += len(taken)
                if self._queued >= self._batch_records:
                    self._cond.notify()
        refused = len(records) - len(taken)
        if refused:
            self.drop(model, "queue_full", refused)
        return len(taken)

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
            self._pacer.start()
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
        for model, schema, records in items:
            key = (model, schema.key)
            entry = pending.get(key)
            if entry is None:
                entry = pending[key] = _Pending(schema, now)
            entry.records.extend(records)
        # counted out only once held here: the capacity bounds the queue and this thread's hand
        taken = sum(len(records) for _, _, records in items)
        if taken:
            with self._cond:
                self._queued -= taken

    def _write(self, pending: dict[tuple[str, str], _Pending], flush: bool) -> None:
        self.files.rotate()  # before writing: a file past its age takes no more rows
        now = self._clock()
        for key in list(pending):
            entry = pending[key]
            if (flush or len(entry.records) >= self._batch_records
                    or now - entry.since >= self._flush_s):
                del pending[key]
                self._write_entry(key[0], entry)
        if flush:
            self.files.close_all()

    def _write_entry(self, model: str, entry: _Pending) -> None:
        """One row group per date: the records converted ``slice_records`` at a time, a pacer
        tick between slices, the slices' tables joined (no copy) and written."""
        for date, records in _by_date(entry.records).items():
            tables: list[pa.Table] = []
            converted = 0
            step = self._slice_records
            for at in range(0, len(records), step):
                part = records[at:at + step]
                try:
                    tables.append(entry.schema.table(part))
                    converted += len(part)
                except Exception:
                    log.exception("prediction log: records of model '%s' do not fit its schema",
                                  model)
                    self.drop(model, "encode_error", len(part))
                self._pacer.tick()
            if not tables:
                continue
            try:
                self.files.write(model, date, entry.schema.key, pa.concat_tables(tables),
                                 converted)
            except OSError:
                self.drop(model, "write_error", converted)

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
