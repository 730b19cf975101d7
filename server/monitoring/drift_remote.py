"""Drift's windows kept and coded in a worker process at the lowest CPU priority.

Why a process: drift's coding kernels (Numba, GIL-free) ran on a thread of the serving process.
Measured there (perf_analyzer, c=64, side by side): on cnn (8 rows a request), they competed
with ONNX Runtime's two intra-op threads for the 2 cores, and p99 rose ~10-20% however cheap
the kernels were made (with the kernels skipped, p99 was that of no drift); the same thread at
SCHED_IDLE gave back that p99, but a thread cannot hold the GIL at the lowest priority without
making the event loop wait on it. On identity, merely loading Numba's compiled array kernels
into the process widened p99 by ~1.5-2 ms. So the ring of codes, the counters and the kernels
live in ``sluice.server.drift_worker``, a child process that lowers its own priority
(SCHED_IDLE, else nice 19: no privilege needed) and holds no lock the server needs: it takes
only CPU that serving leaves idle. Side by side with the windows on a thread (cnn, b8, c=64,
everything on, 6 rounds of 4 s): 512 against 497 req/s (higher in every round), p99 148.7
against 150.6 ms (lower in 5 of 6; all off: 521 req/s, 135.4 ms).

The server keeps what the hub's thread touches: each version's :class:`~.drift_queue.RowQueue`.
On drift's schedule :class:`RemoteWindow` hands the queued rows over (raw float64 bytes on a
socket, no pickling of the arrays) and, every ``interval_s``, gets the version's
:class:`~.drift_report.DriftReport` back. Calls are synchronous on drift's own thread (or the
loader's, when a version attaches), never on the request path. While the worker is behind,
rows wait in the queue, whose bound then drops and counts them (``dropped_rows``), as before.

A worker that dies (killed, crashed) is started again on the next call, at most once every
``restart_after_s``; each window attaches again (its counts start over, as after a restart of
the server) and the rows of the call that failed are counted as dropped.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np

from sluice.server.config.drift import DriftSettings
from sluice.server.monitoring.drift_queue import Block, RowQueue
from sluice.server.monitoring.drift_report import DriftReport
from sluice.server.monitoring.hub import Finished
from sluice.server.monitoring.pacing import DutyCycle
from sluice.server.monitoring.profile import Profile
from sluice.server.monitoring.worker_process import WorkerGone, WorkerProcess

log = logging.getLogger(__name__)

class RemoteWindow:
    """A version's drift window kept by the worker: :class:`~.drift_window.VersionWindow`'s
    methods, its queue kept here (see the module docstring)."""

    def __init__(self, model: str, version: int, profile: Profile, settings: DriftSettings,
                 batched: bool, worker: WorkerProcess) -> None:
        self.model, self.version, self.profile, self.settings = model, version, profile, settings
        self._batched = batched
        self._worker = worker
        self._key = (model, version)
        self.queue = RowQueue(profile, batched, settings.window_rows)
        self.report: DriftReport | None = None

    def add_many(self, records: list[Finished], now: float) -> None:
        """The hub's thread: queue the rows of ``records`` (see :meth:`.RowQueue.add_many`)."""
        self.queue.add_many(records, now)

    def warm(self) -> None:
        """Attach in the worker (which compiles or loads its kernels there, then)."""
        self._worker.register(self._key, self.model, self.version, self.profile, self.settings,
                              self._batched)

    def ingest(self, now: float, duty: DutyCycle | None = None) -> None:
        """Hand the queued rows over; the worker codes them. (``duty``: the worker runs its
        kernels at full speed, at its own low priority.)"""
        self._send("ingest", now, self.queue.take())

    def compute(self, now: float, tick: object = None, duty: DutyCycle | None = None
                ) -> DriftReport:
        """Hand the queued rows over and get the version's figures back (published)."""
        report = self._send("compute", now, self.queue.take())
        assert isinstance(report, DriftReport)
        self.report = report
        return report

    def detach(self) -> None:
        self._worker.unregister(self._key)

    def _send(self, kind: str, now: float, blocks: Sequence[Block]) -> object:
        arrays = [np.ascontiguousarray(rows, dtype=np.float64) for _, rows in blocks]
        shapes = [(when, rows.shape) for (when, _), rows in zip(blocks, arrays, strict=True)]
        queue = self.queue
        try:
            return self._worker.call(kind, self._key, now, shapes, queue.dropped_rows,
                                     queue.malformed, arrays=arrays)
        except WorkerGone:
            queue.dropped_rows += sum(a.shape[0] for a in arrays)
            raise
