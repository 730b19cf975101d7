"""The prediction log's writer and live quality kept in a worker process at the lowest priority.

Why a process: on the hub's thread, the log's Arrow conversion and quality's scoring are Python
work that holds the serving process's GIL for 5-20 ms per drain (~11 us per identity answer,
several times their cost called back to back). The event loop runs every request in flight at
once, so it loses each drain's CPU whichever way the work is sliced, and the requests that
overlap a drain are late by about that much: at c=64 identity's p99 rose ~16% with the monitors
on (perf_analyzer, side by side). Measured on a stand-in, only handing each drain to an
idle-priority process as bytes brought it within 10%.

So each drain costs this process one pass: the log samples and picks its records and quality
names the ones it scores, as before, but neither converts anything; :class:`MonitorLink`, the
hub's last subscriber, encodes the records either wants once (:mod:`.batch_codec`, ~0.4 ms per
600 identity answers) and sends them to ``sluice.server.monitor_worker``, which runs the real
:class:`~.prediction_writer.PredictionWriter` and :class:`~.quality.QualityMonitor` on its own
GIL, at SCHED_IDLE (else nice 19): it takes only CPU that serving leaves idle. One socket, one
message at a time, in order: a label sent after its answer was given joins it (feedback drains
the hub first), and a flush settles every record handed over before it.

:class:`RemoteLogWriter` has the writer's surface for :class:`~.prediction_log.PredictionLog`
(which keeps sampling, settings and schemas here) and the counters of what the worker wrote or
dropped, as of its last answer. Quality's proxy is :class:`~.quality_remote.RemoteQuality`.

A worker that dies or hangs is replaced on the next call (:mod:`.worker_process`): the records
it held and had not written are counted as dropped (``worker_lost``: records in files it
finished after its last answer count there too, an over-count, never a silent loss), a batch it
died on likewise, and quality's windows start over (their labels are in the feedback log).
"""

from __future__ import annotations

import logging
import threading
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from sluice.server.monitoring.batch_codec import encode
from sluice.server.monitoring.drained import Drained
from sluice.server.monitoring.finished import Finished
from sluice.server.monitoring.hub import MonitorHub
from sluice.server.monitoring.prediction_schema import RecordSchema
from sluice.server.monitoring.worker_process import WorkerGone, WorkerProcess

log = logging.getLogger(__name__)

#: Why a record handed to a worker that was lost is counted as dropped.
WORKER_LOST = "worker_lost"


class MonitorLink:
    """The monitor process and the hub's hand-off to it (subscribe with :meth:`attach`, after
    the log and quality: it sends what they picked from the same drain)."""

    def __init__(self, worker: WorkerProcess, *, predictions_dir: Path, tag: str,
                 writer: dict[str, Any], quality: dict[str, Any]) -> None:
        """``writer``, ``quality``: keyword arguments of the worker's
        :class:`~.prediction_writer.PredictionWriter` and :class:`~.quality.QualityMonitor`."""
        self.worker = worker
        self.quality_settings = quality
        worker.remember("setup", {"predictions_dir": predictions_dir, "tag": tag,
                                  "writer": writer, "quality": quality})
        #: This drain's picks: the log's (model, schema, records) and quality's (records each).
        self.picks: list[tuple[str, RecordSchema, Sequence[Finished]]] = []
        self.scored: list[Sequence[Finished]] = []
        #: Answers quality did not get because the worker was lost, per model.
        self.unscored: Counter[str] = Counter()
        self.writer = RemoteLogWriter(self)
        #: The schemas the current worker holds, and their numbers.
        self._sids: dict[RecordSchema, int] = {}
        self._schemas_for = -1
        self._next_sid = 0

    def attach(self, hub: MonitorHub) -> None:
        hub.subscribe("monitor_process", self.send)

    def call(self, kind: str, *args: object) -> object:
        return self.worker.call(kind, *args)

    def send(self, batch: Sequence[Finished]) -> None:
        """The hub's subscriber: encode what this drain's picks hold, once, and hand it over.
        The usual drain (one model version, logged whole, scored whole or not at all) travels
        without position lists."""
        picks, scored = self.picks, self.scored
        self.picks, self.scored = [], []
        if not picks and not scored:
            return
        if not self.worker.alive or self.worker.started != self._schemas_for:
            self._sids.clear()  # a new worker knows no schema
            self._schemas_for = self.worker.started
        base, where = _together([records for _, _, records in picks] + scored)
        logged, scoring = where[:len(picks)], where[len(picks):]
        sent_at = None if None in where else sorted(set().union(*where))
        if sent_at is not None and len(sent_at) == len(base):
            sent_at = None
        index = None if sent_at is None else {p: i for i, p in enumerate(sent_at)}

        def at(positions: list[int] | None) -> list[int] | None:
            if positions is None:
                return None
            return list(positions) if index is None else [index[p] for p in positions]

        schemas: dict[int, RecordSchema] = {}
        moves = [(model, self._sid(schema, schemas), at(positions))
                 for (model, schema, _), positions in zip(picks, logged, strict=True)]
        if not scoring:
            scored_at: list[int] | None = []
        elif None in scoring:
            scored_at = None
        else:
            union = sorted(set().union(*scoring))
            scored_at = None if union == (sent_at or list(range(len(base)))) else at(union)
        unscored: Counter[str] = Counter()
        for positions in scoring:
            unscored.update(base.models() if positions is None else base.view(positions).models())
        sent = base if sent_at is None else base.view(sent_at)
        self._hand_over(picks, schemas, moves, scored_at, sent, unscored)

    def _sid(self, schema: RecordSchema, new: dict[int, RecordSchema]) -> int:
        """``schema``'s number; a schema the worker has not seen goes into ``new``
        (pickling one costs ~0.1 ms: once per worker, not once per drain)."""
        sid = self._sids.get(schema)
        if sid is None:
            sid = self._sids[schema] = self._next_sid = self._next_sid + 1
            new[sid] = schema
        return sid

    def _hand_over(self, picks: list[tuple[str, RecordSchema, Sequence[Finished]]],
                   schemas: dict[int, RecordSchema],
                   moves: list[tuple[str, int, list[int] | None]],
                   scored_at: list[int] | None, sent: Sequence[Finished],
                   unscored: Counter[str]) -> None:
        """Encode ``sent`` and send it; ``moves``: the log's (model, schema number, positions
        or None: all), ``scored_at``: quality's positions (None: all)."""
        kept = {model for model, schema, _ in picks
                if any(column.is_input for column in schema.columns)}
        data = encode(sent, inputs=kept.__contains__)
        try:
            counts = self.worker.call("batch", schemas, moves, scored_at, data)
        except (WorkerGone, RuntimeError) as exc:
            log.warning("monitor process: %d records not handed over: %s", len(sent), exc)
            handed = [(model, len(records)) for model, _, records in picks]
            if isinstance(exc, WorkerGone):
                self.writer.lost(handed)
            else:  # the worker refused the batch (a bug of ours) and goes on
                for model, n in handed:
                    self.writer.drop(model, "encode_error", n)
            self.unscored.update(unscored)
            return
        self.writer.answered(counts, [(model, len(records)) for model, _, records in picks])

    def close(self) -> None:
        self.worker.close()


class RemoteLogWriter:
    """:class:`~.prediction_writer.PredictionWriter`'s surface over the monitor process; the
    counters are the worker's as of its last answer, plus those of the workers before it."""

    def __init__(self, link: MonitorLink) -> None:
        self._link = link
        self._lock = threading.Lock()
        #: Counts settled for good: lost workers' last answers, drops counted here.
        self._written: Counter[str] = Counter()
        self._dropped: Counter[tuple[str, str]] = Counter()
        #: The running worker's last answer, and what was handed to it, per model.
        self._last: dict[str, Any] = _NOTHING
        self._handed: Counter[str] = Counter()
        self._generation = link.worker.started

    @property
    def written(self) -> Counter[str]:
        with self._lock:
            return self._written + Counter(self._last["written"])

    @property
    def dropped(self) -> Counter[tuple[str, str]]:
        with self._lock:
            return self._dropped + Counter(self._last["dropped"])

    @property
    def queued(self) -> int:
        return int(self._last["queued"])

    def put(self, model: str, schema: RecordSchema, records: Sequence[Finished]) -> int:
        """Pick ``records`` for this drain's hand-over (the hub's thread)."""
        self._link.picks.append((model, schema, records))
        return len(records)

    def drop(self, model: str, reason: str, count: int) -> None:
        with self._lock:
            self._dropped[model, reason] += count

    def start(self) -> None:
        """Nothing to start: the worker starts with the first record or model handed over."""

    def flush(self, timeout_s: float = 30.0) -> bool:
        """Every record handed over before this is settled; True once done."""
        if not self._link.worker.alive and not self._handed:
            return True
        try:
            done, counts = self._link.call("flush", timeout_s)  # type: ignore[misc]
        except (WorkerGone, RuntimeError) as exc:
            log.warning("prediction log: flush failed: %s", exc)
            if isinstance(exc, WorkerGone):  # else the worker goes on, its counts with it
                self._settle_lost()
            return False
        self.answered(counts, [])
        return bool(done)

    def close(self, timeout_s: float = 30.0) -> None:
        """Write what the worker holds and close its files (the worker goes on)."""
        if not self._link.worker.alive:
            self._settle_lost()
            return
        try:
            self.answered(self._link.call("close"), [])
        except (WorkerGone, RuntimeError) as exc:
            log.warning("prediction log: closing failed: %s", exc)
            if isinstance(exc, WorkerGone):
                self._settle_lost()

    # -- the worker's answers ------------------------------------------------------------------

    def answered(self, counts: object, handed: list[tuple[str, int]]) -> None:
        """Take a worker's answer to a message that handed it ``handed`` (model, records)."""
        assert isinstance(counts, dict)
        generation = self._link.worker.started
        with self._lock:
            if generation != self._generation:  # a new worker answered: the old one was lost
                self._settle_lost_locked()
                self._generation = generation
            for model, n in handed:
                self._handed[model] += n
            self._last = counts

    def lost(self, handed: list[tuple[str, int]]) -> None:
        """The worker was lost on a message that handed it ``handed``."""
        with self._lock:
            for model, n in handed:
                self._dropped[model, WORKER_LOST] += n
            self._settle_lost_locked()
            self._generation = self._link.worker.started

    def _settle_lost(self) -> None:
        with self._lock:
            self._settle_lost_locked()

    def _settle_lost_locked(self) -> None:
        """The worker of the last answer is gone: what it was handed and had not settled is
        dropped; its settled counts stay."""
        written, dropped = Counter(self._last["written"]), Counter(self._last["dropped"])
        for model, n in self._handed.items():
            settled = written[model] + sum(c for (m, _), c in dropped.items() if m == model)
            if n > settled:
                self._dropped[model, WORKER_LOST] += n - settled
        self._written += written
        self._dropped += dropped
        self._last = _NOTHING
        self._handed = Counter()


def _together(parts: list[Sequence[Finished]]) -> tuple[Drained, list[list[int] | None]]:
    """One drain holding every record of ``parts`` once, and each part's positions in it
    (None: all of it). Parts of one hub drain share its columns; otherwise (lists of records:
    tests, callers outside the hub) the records are copied into new columns."""
    first = parts[0]
    if isinstance(first, Drained) and all(
            isinstance(p, Drained) and p.columns is first.columns for p in parts):
        return Drained(first.columns, first.inputs_rate), [
            p.positions for p in parts]  # type: ignore[union-attr]
    records: list[Finished] = []
    seen: dict[tuple[int, int], int] = {}
    where: list[list[int] | None] = []
    for part in parts:
        if isinstance(part, Drained):
            keyed = [((id(part.columns), p), part.record(p)) for p in part.where()]
        else:
            keyed = [((0, id(r)), r) for r in part]
        positions = []
        for key, record in keyed:
            at = seen.get(key)
            if at is None:
                at = seen[key] = len(records)
                records.append(record)
            positions.append(at)
        where.append(positions)
    return Drained.of(records), where


_NOTHING: dict[str, Any] = {"written": {}, "dropped": {}, "queued": 0}

