"""The access audit trail: one JSON line per admin call and per refused call, off the loop.

``<state dir>/access-audit.jsonl``, beside the deployment audit (``audit.jsonl``), written the
same way: appended through an ``O_APPEND`` descriptor (each batch one ``write``, so lines from
``--workers`` siblings never interleave) and fsynced before the next batch. A line::

    {"time": "2026-01-01T00:00:00.000Z", "unix": 1767225600.0, "principal": "alice",
     "peer": "ipv4:127.0.0.1:50000", "method": "/sluice.admin.v1.Admin/SetRoutes",
     "model": "digits", "version": "", "outcome": "ok", "status": "OK"}

``outcome``: ok, failed (the call ran and failed), refused (the access check said no: status
UNAUTHENTICATED, PERMISSION_DENIED or RESOURCE_EXHAUSTED). What never goes in: a token, a
tensor, a request's message text. Promises: :meth:`AuditTrail.record` never blocks and never
raises (a full queue drops the line and counts it); one writer thread owns the file; ``close``
writes what is queued, then stops the thread.
"""

from __future__ import annotations

import json
import logging
import queue
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

from sluice.server.appendfile import append_durably

log = logging.getLogger(__name__)

AUDIT_FILE = "access-audit.jsonl"
#: Longest model name or peer kept in a line (a hostile name cannot bloat the file).
_FIELD_LIMIT = 256
_STOP = object()


class AuditTrail:
    """Appends access records to ``path`` from a writer thread (started by :meth:`start`)."""

    def __init__(self, path: Path, *, max_queued: int = 10_000) -> None:
        self.path = path
        self._queue: queue.Queue[object] = queue.Queue(max_queued)
        self._thread: threading.Thread | None = None
        #: Lines written and fsynced; lines dropped (queue full, or the file failed).
        self.written = 0
        self.dropped = 0

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="sluice-access-audit",
                                            daemon=True)
            self._thread.start()

    def record(self, *, principal: str, peer: str, method: str, model: str = "",
               version: str = "", outcome: str, status: str) -> None:
        """Queue one line (any thread; never blocks)."""
        now = time.time()
        line = {
            "time": datetime.fromtimestamp(now, UTC).isoformat(timespec="milliseconds")
            .replace("+00:00", "Z"),
            "unix": round(now, 6), "principal": principal, "peer": peer[:_FIELD_LIMIT],
            "method": method[:_FIELD_LIMIT], "model": model[:_FIELD_LIMIT],
            "version": version[:_FIELD_LIMIT], "outcome": outcome, "status": status,
        }
        try:
            self._queue.put_nowait(line)
        except queue.Full:
            self.dropped += 1

    def close(self, timeout_s: float = 5.0) -> None:
        """Write what is queued, then stop the writer (blocking, at most ``timeout_s``)."""
        if self._thread is None:
            return
        try:
            self._queue.put(_STOP, timeout=timeout_s)
        except queue.Full:
            pass
        self._thread.join(timeout_s)
        self._thread = None

    def _run(self) -> None:
        stopping = False
        while not stopping:
            batch = [self._queue.get()]
            while True:  # whatever else is queued goes out in the same write and fsync
                try:
                    batch.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            stopping = any(item is _STOP for item in batch)
            lines = [item for item in batch if item is not _STOP]
            if lines:
                self._write(lines)

    def _write(self, lines: list[object]) -> None:
        data = "".join(
            json.dumps(line, separators=(",", ":"), ensure_ascii=True) + "\n" for line in lines
        ).encode("ascii")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            append_durably(self.path, data, 0o600)
        except OSError as exc:
            self.dropped += len(lines)
            log.error("access audit: %d lines not written (%s)", len(lines), exc.strerror)
            return
        self.written += len(lines)


def read_audit(path: Path) -> list[dict]:
    """Every line of the trail at ``path``, oldest first (a torn last line is skipped)."""
    if not path.exists():
        return []
    out = []
    for text in path.read_text(encoding="utf-8").splitlines():
        try:
            out.append(json.loads(text))
        except ValueError:
            continue
    return out
