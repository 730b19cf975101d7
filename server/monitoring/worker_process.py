"""A child process at the lowest CPU priority and the synchronous channel to it.

The monitors' work that must not compete with serving runs in such a process: drift's windows
and Numba kernels (``sluice.server.drift_worker``, :mod:`.drift_remote`) and the prediction
log's writer with live quality (``sluice.server.monitor_worker``, :mod:`.monitor_remote`). The
child lowers its own priority (SCHED_IDLE, else nice 19) and answers each message with
``(True, value)`` or ``(False, why)``, where ``why`` is a message, or an error of ours raised
again here; it holds no lock the server needs.

A child that dies (killed, crashed) or hangs is started again on the next call, at most once
every ``restart_after_s``; whatever was registered with it is sent again, in order.
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

log = logging.getLogger(__name__)

#: Seconds a call may wait for the worker's answer before the worker is taken for hung (killed,
#: started again). Generous: at the lowest priority, a saturated machine can make it wait.
REPLY_TIMEOUT_S = 120.0


class WorkerGone(Exception):
    """The worker died, hung, or is waiting out its restart delay: the call did not happen."""


class WorkerProcess:
    """One worker process and the socket to it; calls are serialized. Started at the first
    call (a server that never needs it never starts one); everything registered is
    attached again in each worker started after it. ``name`` says which worker in logs and
    errors."""

    def __init__(self, command: Sequence[str], *, name: str = "drift worker",
                 restart_after_s: float = 5.0, reply_timeout_s: float = REPLY_TIMEOUT_S) -> None:
        """``command``: argv of the worker (``python -m sluice.server.drift_worker``); the
        socket's file descriptor number is appended."""
        self.name = name
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
    def alive(self) -> bool:
        """Whether a worker is running now."""
        with self._lock:
            return self._running()

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
                log.warning("%s: %s attaches when the worker starts again", self.name, key)
            self._windows[key] = attach

    def remember(self, key: object, *attach: object) -> None:
        """Attach ``key`` in every worker started from now on, first if nothing is registered
        yet, without starting one."""
        with self._lock:
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
            raise WorkerGone(f"{self.name} lost during {kind}") from exc
        if not ok:
            if isinstance(value, Exception):  # one of ours the worker sent back (not found...)
                raise value
            raise RuntimeError(f"{self.name}: {value}")
        return value

    def _ensure(self) -> None:
        """A running worker, started (every registered window attached) if there is none."""
        if self._running():
            return
        if self._conn is not None:
            self._lose(f"exited with {self._proc.poll() if self._proc else None}")
        if time.monotonic() < self._next_start:
            raise WorkerGone(f"{self.name} waiting to start again")
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
        log.info("%s started (pid %d)", self.name, self._proc.pid)
        for key, attach in list(self._windows.items()):
            try:
                self._exchange("attach", key, *attach)
            except RuntimeError:
                log.exception("%s refused %s", self.name, key)

    def _lose(self, why: str) -> None:
        self.lost += 1
        log.error("%s lost (%s); what it held starts over when it is started again",
                  self.name, why)
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
