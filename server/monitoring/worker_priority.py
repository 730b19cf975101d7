"""The lowest CPU priority a worker process can give itself: it then runs only on CPU that
serving leaves idle (drift's worker, the monitor process)."""

from __future__ import annotations

import os


def lower_priority() -> str:
    """SCHED_IDLE for this process (allowed without privilege on Linux), else nice 19; which
    one it got."""
    try:
        os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
        return "SCHED_IDLE"
    except (AttributeError, OSError):
        os.nice(19 - os.nice(0))
        return "nice 19"
