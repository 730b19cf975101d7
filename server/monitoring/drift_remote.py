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
import os
import pickle
import socket
import subprocess
import threading
import time
from collections.abc import Sequence
from multiprocessing.connection import Connection

import numpy as np

from sluice.server.config.drift import DriftSettings
from sluice.server.monitoring.drift_queue import Block, RowQueue
from sluice.server.monitoring.drift_report import DriftReport
from sluice.server.monitoring.hub import Finished
from sluice.server.monitoring.pacing import DutyCycle
from sluice.server.monitoring.profile import Profile

log = logging.getLogger(__name__)

#: Seconds a call may wait for the worker's answer before the worker is taken for hung (killed,
#: started again). Generous: at the lowest priority, a saturated machine can make it wait.
REPLY_TIMEOUT_S = 120.0


class WorkerGone(Exception):
    """The worker died, hung, or is waiting out its restart delay: the call did not happen."""


class DriftWorker:
    """One worker process and the socket to it; calls are serialized. Started at the first
    call (a server with no drift window never starts one); every window registered is
    attached again in each worker started after it."""

    def __init__(self, command: Sequence[str], *, restart_after_s: float = 5.0,
                 reply_timeout_s: float = REPLY_TIMEOUT_S) -> None:
        """``command``: argv of the worker (``python -m sluice.server.drift_worker``); the
        socket's file descriptor number is appended."""
        self._command = list(command)
        self._restart_after_s = restart_after_s
        self._reply_timeout_s = reply_timeout_s
        self._lock = threading.Lock()
        self._proc: subprocess.Popen[bytes] | None = None
        self._conn: Connection | None = None
        self._next_start = 0.0
        #: key -> the attach message's arguments, replayed in every new worker.
        self._windows: dict[object, tuple[object, ...]] = {}
        #: Workers started, and lost (died, hung), since this object was made.
        self.started = 0
        self.lost = 0

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def cpu_seconds(self) -> float | None:
        """CPU seconds (user and system) of the running worker; None when none runs or its
        /proc entry cannot be read."""
        pid = self.pid
        if pid is None:
            return None
        try:
            with open(f"/proc/{pid}/stat", encoding="ascii") as stat:
                fields = stat.read().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            return None
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def register(self, key: object, *attach: object) -> None:
        """Attach window ``key`` (``attach``: its arguments) now and in every later worker.
        RuntimeError when the worker refuses it (nothing registered then); a worker that cannot
        be reached now gets it when it starts again."""
        with self._lock:
            try:
                self._ensure()  # a new worker gets the windows registered so far
                self._exchange("attach", key, *attach)
            except WorkerGone:
                log.warning("drift window %s attaches when the worker starts again", key)
            self._windows[key] = attach

    def unregister(self, key: object) -> None:
        """Forget window ``key`` here and in the worker (a lost worker has nothing to drop)."""
        with self._lock:
            if self._windows.pop(key, None) is not None and self._running():
                try:
                    self._exchange("detach", key)
                except (WorkerGone, RuntimeError):
                    pass

    def call(self, kind: str, *args: object, arrays: Sequence[np.ndarray] = ()) -> object:
        """Send ``(kind, *args)``, then each of ``arrays``' bytes, and return the answer.
        WorkerGone when the worker is lost (or not started again yet); RuntimeError naming the
        worker's exception when it raised (it goes on serving)."""
        with self._lock:
            self._ensure()
            return self._exchange(kind, *args, arrays=arrays)

    def close(self, timeout_s: float = 5.0) -> None:
        """Ask the worker to stop, wait for it (killed after ``timeout_s``)."""
        with self._lock:
            if self._conn is not None:
                try:
                    self._conn.send(("stop",))
                except OSError:
                    pass
            self._reap(timeout_s)

    def _running(self) -> bool:
        return self._conn is not None and self._proc is not None and self._proc.poll() is None

    def _exchange(self, kind: str, *args: object, arrays: Sequence[np.ndarray] = ()) -> object:
        conn = self._conn
        assert conn is not None
        try:
            conn.send((kind, *args))
            for array in arrays:
                conn.send_bytes(memoryview(array).cast("B"))
            if not conn.poll(self._reply_timeout_s):
                raise TimeoutError(f"no answer in {self._reply_timeout_s:g}s")
            ok, value = conn.recv()
        except (OSError, EOFError, TimeoutError, pickle.UnpicklingError) as exc:
            self._lose(f"{kind}: {type(exc).__name__}: {exc}")
            raise WorkerGone(f"drift worker lost during {kind}") from exc
        if not ok:
            raise RuntimeError(f"drift worker: {value}")
        return value

    def _ensure(self) -> None:
        """A running worker, started (every registered window attached) if there is none."""
        if self._running():
            return
        if self._conn is not None:
            self._lose(f"exited with {self._proc.poll() if self._proc else None}")
        if time.monotonic() < self._next_start:
            raise WorkerGone("drift worker waiting to start again")
        ours, theirs = socket.socketpair()
        try:
            self._proc = subprocess.Popen(
                [*self._command, str(theirs.fileno())], pass_fds=(theirs.fileno(),),
                stdin=subprocess.DEVNULL)
        finally:
            theirs.close()
        self._conn = Connection(ours.detach())
        self.started += 1
        self._next_start = time.monotonic() + self._restart_after_s
        log.info("drift worker started (pid %d)", self._proc.pid)
        for key, attach in list(self._windows.items()):
            try:
                self._exchange("attach", key, *attach)
            except RuntimeError:
                log.exception("drift worker refused window %s", key)

    def _lose(self, why: str) -> None:
        self.lost += 1
        log.error("drift worker lost (%s); its windows start over when it is started again",
                  why)
        self._reap(0.0)

    def _reap(self, timeout_s: float) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None
        proc, self._proc = self._proc, None
        if proc is None:
            return
        try:
            proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


class RemoteWindow:
    """A version's drift window kept by the worker: :class:`~.drift_window.VersionWindow`'s
    methods, its queue kept here (see the module docstring)."""

    def __init__(self, model: str, version: int, profile: Profile, settings: DriftSettings,
                 batched: bool, worker: DriftWorker) -> None:
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
