"""The monitor process: the prediction log's writer and live quality, away from serving.

    python -m sluice.server.monitor_worker FD

Started by :class:`sluice.server.monitoring.worker_process.WorkerProcess` for
:class:`sluice.server.monitoring.monitor_remote.MonitorLink`, which hands it one end of a
socket pair (file descriptor ``FD``) and is its only client (why a process:
:mod:`sluice.server.monitoring.monitor_remote`). It first lowers its own CPU priority
(SCHED_IDLE, else nice 19), then answers one message at a time, in order, so a question asked
after a batch was sent is answered once that batch is in:

- ``("attach", "setup", settings)``: the writer (started) and the quality monitor; first.
- ``("attach", ("quality", model), configs, model_dir)``: quality's
  :meth:`~sluice.server.monitoring.quality.QualityMonitor.model_loaded`.
- ``("batch", schemas, picks, scored, data)``: ``data`` decoded
  (:mod:`~sluice.server.monitoring.batch_codec`); ``picks`` (model, schema number, record
  positions or None for all) go to the writer, the records at positions ``scored`` (None: all)
  to quality; answers the writer's counts. ``schemas``: the ones not sent before (a number
  this worker does not know was sent to the one it replaced: those records count as lost).
- ``("flush", timeout_s)``, ``("close",)``: the writer's; answer its counts.
- ``("feedback", model, labels)``, ``("report", model)``, ``("reports",)``,
  ``("accuracy", model, arm, version)``: quality's answers.
- ``("stop",)``: closes the writer, exits.

Answers are ``(True, value)``; a Sluice error is sent back as itself (``(False, error)``) and
raised again in the server; anything else as ``(False, "Type: message")``, logged here. The
worker goes on serving either way.
"""

from __future__ import annotations

import os
from multiprocessing.connection import Connection
from typing import Any

from sluice.server.monitoring.batch_codec import decode
from sluice.server.monitoring.feedback_log import FeedbackLog
from sluice.server.monitoring.monitor_remote import WORKER_LOST
from sluice.server.monitoring.prediction_schema import RecordSchema
from sluice.server.monitoring.prediction_writer import PredictionWriter
from sluice.server.monitoring.quality import QualityMonitor
from sluice.server.monitoring.worker_loop import answer_messages, worker_main


class Monitors:
    """The writer, the quality monitor and the schemas the server sent, and one message's
    handling."""

    def __init__(self) -> None:
        self.writer: PredictionWriter | None = None
        self.quality: QualityMonitor | None = None
        self.schemas: dict[int, RecordSchema] = {}

    def setup(self, settings: dict[str, Any]) -> None:
        root = settings["predictions_dir"]
        # each worker its own tag: a new one must not write over its predecessor's files
        self.writer = PredictionWriter(root, tag=f"{settings['tag']}{os.getpid():x}",
                                       **settings["writer"])
        self.writer.start()
        self.quality = QualityMonitor(None, feedback_log=FeedbackLog(root), **settings["quality"])

    def counts(self) -> dict[str, Any]:
        writer = self.writer
        assert writer is not None
        return {"written": dict(writer.written), "dropped": dict(writer.dropped),
                "queued": writer.queued}

    def handle(self, kind: str, args: tuple) -> object:
        if kind == "attach":
            key, *rest = args
            if key == "setup":
                self.setup(rest[0])
                return None
            if isinstance(key, tuple) and key[0] == "quality":
                self._quality().model_loaded(key[1], *rest)
                return None
            raise ValueError(f"unknown attachment {key!r}")
        if kind == "batch":
            return self.batch(*args)
        writer = self.writer
        assert writer is not None, "no setup yet"
        if kind == "flush":
            return writer.flush(*args), self.counts()
        if kind == "close":
            writer.close()
            return self.counts()
        quality = self._quality()
        if kind == "feedback":
            return quality.feedback(*args)
        if kind == "report":
            return quality.report(*args)
        if kind == "reports":
            return quality.reports()
        if kind == "accuracy":
            return quality.accuracy(*args)
        raise ValueError(f"unknown message {kind!r}")

    def batch(self, schemas: dict[int, RecordSchema],
              picks: list[tuple[str, int, list[int] | None]], scored: list[int] | None,
              data: bytes) -> dict[str, Any]:
        writer = self.writer
        assert writer is not None, "no setup yet"
        self.schemas.update(schemas)
        records = decode(data)
        for model, sid, positions in picks:
            taken = records if positions is None else [records[i] for i in positions]
            schema = self.schemas.get(sid)
            if schema is None:  # sent to the worker this one replaced: lost with it
                writer.drop(model, WORKER_LOST, len(taken))
            else:
                writer.put(model, schema, taken)
        if scored is None or scored:
            self._quality().on_finished(records if scored is None else
                                        [records[i] for i in scored])
        return self.counts()

    def _quality(self) -> QualityMonitor:
        assert self.quality is not None, "no setup yet"
        return self.quality

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def serve(conn: Connection) -> None:
    """Answer messages until told to stop or the socket closes; the writer closes then."""
    monitors = Monitors()
    try:
        answer_messages(conn, monitors.handle, "monitor worker")
    finally:
        monitors.close()


def main(argv: list[str] | None = None) -> int:
    return worker_main(argv, "monitor worker", serve)


if __name__ == "__main__":
    raise SystemExit(main())
