"""One open-loop timetable run from generator processes, and what is read at its phase boundaries.

:func:`open_loop` starts N :mod:`loadtests.openloop` generator processes, waits until each has
connected, hands them one common start instant, and merges what they recorded. Meanwhile a
:class:`PhasePoller` thread reads, at every phase boundary, the server's cumulative reject
histogram and the CPU seconds used so far by the server and by the generators, so every phase
gets its own server-side reject latency and CPU use.

Promises:

* Every generator process it starts is reaped when the run ends, killed first (by its own
  pid) if still running, whether or not the run succeeded; a generator that fails to start or
  to finish raises RuntimeError with its stderr.
* A failed or late read blanks that phase's server or CPU figures (None), never the run.
* Load goes only to ``target``; it imports nothing from the server.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import numpy as np

from loadtests import overload_report as rep
from loadtests.models import ROOT
from sluice.clients import Client


def open_loop(
    target: str, phases: list[dict[str, Any]], procs: int, server_pid: int | None, *,
    model: str, batch: int, deadline_ms: float, channels: int, max_outstanding: int,
) -> tuple[rep.Records, list[dict[str, Any]]]:
    """Run the timetable from ``procs`` generator processes; the merged records and each
    generator's summary. Adds ``server_reject_ms`` and ``cpu_s`` to every phase of ``phases``.

    Each generator sends ``model`` requests of ``batch`` rows with the gRPC deadline
    ``deadline_ms`` over ``channels`` connections, dropping (and counting) arrivals beyond
    ``max_outstanding`` calls in flight."""
    per_proc = json.dumps([{**p, "rate": p["rate"] / procs} for p in phases])
    total_s = sum(p["duration_s"] for p in phases)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p))
    with tempfile.TemporaryDirectory(prefix="sluice-overload-") as tmp, ExitStack() as stack:
        children = []
        for k in range(procs):
            out = Path(tmp) / f"gen{k}.npz"
            args = [
                sys.executable, "-m", "loadtests.openloop", "--target", target,
                "--model", model, "--batch", str(batch), "--phases", per_proc,
                "--deadline-ms", str(deadline_ms), "--out", str(out), "--proc", str(k),
                "--procs", str(procs), "--channels", str(channels),
                "--max-outstanding", str(max_outstanding), "--seed", str(k),
            ]
            child = subprocess.Popen(args, cwd=ROOT, env=env, stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            stack.callback(_reap, child)
            children.append((child, out))
        for child, _ in children:
            assert child.stdout is not None
            if child.stdout.readline().strip() != "ready":
                _, err = child.communicate(timeout=30)
                raise RuntimeError(f"open-loop generator failed to start: {err[-2000:]}")
        start = time.monotonic() + 0.5
        for child, _ in children:
            assert child.stdin is not None
            child.stdin.write(f"{start!r}\n")
            child.stdin.flush()
        poller = PhasePoller(
            target, model, start, [p["duration_s"] for p in phases],
            {"server": server_pid, "generator": [child.pid for child, _ in children]},
        )
        poller.start()
        summaries, parts = [], []
        for child, out in children:
            stdout, stderr = child.communicate(timeout=total_s + deadline_ms / 1e3 + 60)
            summary = next((json.loads(x) for x in reversed(stdout.splitlines())
                            if x.startswith("{")), None)
            if summary is None or "fatal" in summary or child.returncode != 0:
                raise RuntimeError(f"open-loop generator failed: {summary} {stderr[-2000:]}")
            summaries.append(summary)
            with np.load(out) as data:
                parts.append({k: data[k] for k in data.files})
        poller.join(timeout=30)
    for phase, (before, after), cpu in zip(phases, poller.intervals(), poller.cpu_intervals(),
                                           strict=True):
        phase["server_reject_ms"] = rep.reject_quantiles(before, after)
        phase["cpu_s"] = cpu
    return rep.Records.merge(parts), summaries


class PhasePoller(threading.Thread):
    """At every phase boundary (monotonic instants from ``start``): reads the server's
    cumulative reject histogram of ``model`` (one ModelStatistics call), so each phase gets
    its own server-side reject latency, and the CPU seconds used so far by each group of
    ``pids`` (a group's processes and their children: ``--workers`` servers), so each phase
    gets its own CPU use. A failed read leaves that phase blank."""

    def __init__(self, target: str, model: str, start: float, durations: list[float],
                 pids: dict[str, int | list[int] | None]) -> None:
        super().__init__(daemon=True, name="phase-poller")
        self._target, self._model = target, model
        self._due = [start + sum(durations[:k]) for k in range(len(durations) + 1)]
        self._pids = {name: [p] if isinstance(p, int) else list(p or ())
                      for name, p in pids.items()}
        self.snapshots: list[list[list[Any]] | None] = []
        self.cpu: list[dict[str, float | None]] = []

    def run(self) -> None:
        with Client(self._target, timeout=5.0) as client:
            for due in self._due:
                time.sleep(max(0.0, due - time.monotonic()))
                self.cpu.append({name: _cpu_of(pids) for name, pids in self._pids.items()})
                try:
                    table = client.latency(self._model).get(self._model, {})
                    merged: dict[str, int] = {}
                    for stages in table.values():  # every version of the model together
                        for bound, count in stages.get("reject_buckets", ()):
                            merged[bound] = merged.get(bound, 0) + count
                    self.snapshots.append([[b, c] for b, c in merged.items()] or None)
                except Exception:  # a late or failed read blanks a phase, not the run
                    self.snapshots.append(None)

    def intervals(self) -> list[tuple[Any, Any]]:
        snaps = self.snapshots + [None] * (len(self._due) - len(self.snapshots))
        return list(zip(snaps[:-1], snaps[1:], strict=True))

    def cpu_intervals(self) -> list[dict[str, float | None]]:
        """Per phase: CPU seconds used by each group of processes (None: not measured)."""
        snaps = self.cpu + [{}] * (len(self._due) - len(self.cpu))
        return [
            {name: None if before.get(name) is None or after.get(name) is None
             else after[name] - before[name] for name in self._pids}
            for before, after in zip(snaps[:-1], snaps[1:], strict=True)
        ]


def _cpu_of(pids: list[int]) -> float | None:
    """User + system CPU seconds of ``pids`` and their living children (None: none found)."""
    import psutil

    total, found = 0.0, False
    for pid in pids:
        try:
            root = psutil.Process(pid)
            for proc in (root, *root.children(recursive=True)):
                times = proc.cpu_times()
                total += times.user + times.system
                found = True
        except psutil.Error:  # gone: its CPU is lost to this count
            continue
    return total if found else None


def _reap(child: subprocess.Popen[str]) -> None:
    if child.poll() is None:
        child.kill()
        child.wait()
