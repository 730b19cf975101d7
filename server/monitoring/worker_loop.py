"""A worker process's side of :class:`~.worker_process.WorkerProcess`: its start (the lowest
CPU priority, logging) and its message loop, shared by drift's worker and the monitor process.

Each message is ``(kind, *args)``; ``("stop",)`` or a closed socket ends the loop. Each other one
is answered ``(True, value)``, or ``(False, error)`` for an error of ours (the server raises it
again), or ``(False, "Type: message")`` for anything else, logged here; the worker goes on.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable
from multiprocessing.connection import Connection

from sluice.server.errors import SluiceError
from sluice.server.monitoring.worker_priority import lower_priority

#: Answers one message: (kind, args) -> value.
Handler = Callable[[str, tuple], object]


def _logger(name: str) -> logging.Logger:
    """The worker's logger: ``sluice.drift_worker`` for "drift worker"."""
    return logging.getLogger(f"sluice.{name.replace(' ', '_')}")


def answer_messages(conn: Connection, handle: Handler, name: str) -> None:
    """Answer messages until told to stop or the socket closes."""
    log = _logger(name)
    while True:
        try:
            kind, *args = conn.recv()
        except EOFError:
            return
        if kind == "stop":
            return
        try:
            reply: tuple[bool, object] = (True, handle(kind, tuple(args)))
        except SluiceError as exc:  # the server raises it again (not found, bad input)
            reply = (False, exc)
        except Exception as exc:  # a bug of ours or bad input: said, and the worker goes on
            log.exception("%s: %s failed", name, kind)
            reply = (False, f"{type(exc).__name__}: {exc}")
        conn.send(reply)


def worker_main(argv: list[str] | None, name: str, serve: Callable[[Connection], None]) -> int:
    """A worker's ``main``: ``argv``'s first argument is the socket's file descriptor."""
    args = sys.argv[1:] if argv is None else argv
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: "
                        "%(message)s")
    got = lower_priority()
    _logger(name).info("%s %d at %s", name, os.getpid(), got)
    serve(Connection(int(args[0])))
    return 0
