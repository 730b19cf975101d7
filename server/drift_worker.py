"""Drift's worker process: the windows' rings, counters and Numba kernels, away from serving.

    python -m sluice.server.drift_worker FD

Started by :class:`sluice.server.monitoring.worker_process.WorkerProcess`, which hands it one end of
a socket pair (file descriptor ``FD``) and is its only client (the reasons, measured, are in that
module's docstring). It first lowers its own CPU priority (SCHED_IDLE, else nice 19), so that it
runs only on CPU that serving leaves idle, then answers one message at a time:

- ``("attach", key, model, version, profile, settings, batched)``: a fresh
  :class:`~sluice.server.monitoring.drift_window.VersionWindow` (its kernels compiled or loaded
  from Numba's cache now);
- ``("detach", key)``;
- ``("ingest" | "compute", key, now, [(when, shape), ...], dropped, malformed)``, followed by
  one message of raw float64 bytes per block: the rows are coded in; ``compute`` answers the
  version's :class:`~sluice.server.monitoring.drift_report.DriftReport`;
- ``("stop",)``, or the socket closing (the server exited): it exits.

Each answer is ``(True, value)``, or ``(False, "ExceptionName: message")`` when handling the
message raised (the worker goes on). Part of the composition root: it names the kernels, which
``sluice.server.monitoring`` may not import.
"""

from __future__ import annotations

from multiprocessing.connection import Connection

import numpy as np

from sluice.kernels import drift_codes
from sluice.server.monitoring.drift_report import DriftReport
from sluice.server.monitoring.drift_window import VersionWindow
from sluice.server.monitoring.worker_loop import answer_messages, worker_main

Key = tuple[str, int]


class Windows:
    """The worker's windows by key, and the handling of one message."""

    def __init__(self) -> None:
        self.windows: dict[Key, VersionWindow] = {}

    def handle(self, conn: Connection, kind: str, args: tuple) -> DriftReport | None:
        if kind == "attach":
            key, model, version, profile, settings, batched = args
            window = VersionWindow(model, version, profile, settings, batched, drift_codes)
            window.warm()
            self.windows[key] = window
            return None
        if kind == "detach":
            self.windows.pop(args[0], None)
            return None
        if kind in ("ingest", "compute"):
            key, now, shapes, dropped, malformed = args
            blocks = []
            for when, shape in shapes:  # read every block, so the stream stays in step
                rows = np.empty(shape, dtype=np.float64)
                conn.recv_bytes_into(memoryview(rows).cast("B"))
                blocks.append((when, rows))
            window = self.windows.get(key)
            if window is None:
                raise KeyError(f"no window for {key}")
            window.queue.dropped_rows, window.queue.malformed = dropped, malformed
            if kind == "ingest":
                window.ingest(now, None, blocks)
                return None
            return window.compute(now, None, None, blocks)
        raise ValueError(f"unknown message {kind!r}")


def serve(conn: Connection) -> None:
    """Answer messages until told to stop or the socket closes."""
    windows = Windows()
    answer_messages(conn, lambda kind, args: windows.handle(conn, kind, args), "drift worker")


def main(argv: list[str] | None = None) -> int:
    return worker_main(argv, "drift worker", serve)


if __name__ == "__main__":
    raise SystemExit(main())
