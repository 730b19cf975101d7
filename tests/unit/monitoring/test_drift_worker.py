"""Drift's windows in the worker process (``sluice.server.drift_worker``, driven through
``drift_remote``): the same figures as the windows kept in-process, at the lowest CPU priority,
and a worker that dies or hangs is replaced without losing count of a row."""

from __future__ import annotations

import os
import signal
import sys
import time
from collections.abc import Iterator

import numpy as np
import pytest

from sluice.kernels import drift_codes
from sluice.server.config.drift import DriftSettings
from sluice.server.config.pbtxt import read_model_config
from sluice.server.monitoring.drift import DriftMonitor
from sluice.server.monitoring.hub import MonitorHub
from sluice.server.monitoring.profile_load import load_profile
from sluice.server.monitoring.worker_process import WorkerGone, WorkerProcess
from tests.unit.monitoring.test_drift_monitor import DIGITS, HELD_OUT, Clock, _record

WORKER = [sys.executable, "-m", "sluice.server.drift_worker"]


@pytest.fixture
def worker() -> Iterator[WorkerProcess]:
    made = WorkerProcess(WORKER, restart_after_s=0.0)
    yield made
    made.close()


def _attach(monitor: DriftMonitor, settings: DriftSettings) -> None:
    config, _ = read_model_config(DIGITS, "digits")
    profile = load_profile(config, DIGITS / "2")
    assert profile is not None
    monitor.attach("digits", 2, profile, settings)


def _pair(worker: WorkerProcess, settings: DriftSettings, clock: Clock):
    """The same monitor twice: windows kept in this process, and in the worker."""
    here = DriftMonitor(MonitorHub(), drift_codes, clock=clock, seed=5)
    there = DriftMonitor(MonitorHub(), worker=worker, clock=clock, seed=5)
    for monitor in (here, there):
        _attach(monitor, settings)
    return here, there


def _same(a, b) -> None:
    assert (a.rows, a.sampled_rows, a.dropped_rows, a.malformed) == \
        (b.rows, b.sampled_rows, b.dropped_rows, b.malformed)
    assert a.features == b.features and a.prediction == b.prediction
    np.testing.assert_array_equal(a.cumulative, b.cumulative)
    np.testing.assert_array_equal(a.cumulative_special, b.cumulative_special)


def test_the_worker_gives_the_figures_the_windows_in_process_give(worker):
    """Drains of several shapes (one block, record by record, malformed, a full queue), rows
    overwritten in the ring and rows aging out, over intakes and computes."""
    clock = Clock()
    here, there = _pair(worker, DriftSettings(sample=0.5, window_rows=200, window_s=60), clock)
    rng = np.random.default_rng(11)
    for step in range(6):
        drain = [_record(HELD_OUT[i:i + 6] * (1 + step / 4), rng.integers(0, 10, (6, 1)))
                 for i in range(0, 300, 6)]
        drain += [_record(np.zeros((2, 63), np.float32)), _record(HELD_OUT[:3])]
        for monitor in (here, there):
            monitor.on_finished(drain)
            if step % 2:
                monitor.intake_now()
        clock.now += 20
        (a,), (b,) = here.compute_now(), there.compute_now()
        _same(a, b)
    assert a.rows == 200 and a.malformed > 0 and a.sampled_rows > 400
    for monitor in (here, there):  # more than the queue holds: counted as dropped alike
        monitor.on_finished([_record(np.tile(HELD_OUT, (60, 1)))] * 2)
    (a,), (b,) = here.compute_now(), there.compute_now()
    _same(a, b)
    assert a.dropped_rows > 0


def test_the_worker_runs_at_the_lowest_priority_and_stops_with_the_monitor(worker):
    monitor = DriftMonitor(MonitorHub(), worker=worker, clock=Clock())
    _attach(monitor, DriftSettings(sample=1.0))
    pid = worker.pid
    assert pid is not None
    policy = os.sched_getscheduler(pid)
    assert policy == os.SCHED_IDLE or os.getpriority(os.PRIO_PROCESS, pid) == 19
    monitor.close()
    assert worker.pid is None
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)  # reaped, not a zombie


def test_a_killed_worker_is_replaced_and_the_rows_it_lost_are_counted():
    worker = WorkerProcess(WORKER, restart_after_s=1.0)
    monitor = DriftMonitor(MonitorHub(), worker=worker, clock=Clock(), seed=0)
    _attach(monitor, DriftSettings(sample=1.0))
    monitor.on_finished([_record(HELD_OUT[:40])])
    (report,) = monitor.compute_now()
    assert report.rows == 40
    first = worker.pid
    assert first is not None
    os.kill(first, signal.SIGKILL)
    monitor.on_finished([_record(HELD_OUT[40:50])])
    # found dead as the call is made, or during it; not started again within restart_after_s
    with pytest.raises(WorkerGone):
        monitor.compute_now()
    time.sleep(1.0)
    monitor.on_finished([_record(HELD_OUT[50:55])])
    (report,) = monitor.compute_now()  # a new worker, the window attached again
    assert worker.pid not in (None, first) and worker.lost == 1 and worker.started == 2
    assert report.rows == 5 and report.sampled_rows == 5  # the window started over
    assert report.dropped_rows == 10  # and the lost rows are counted, not forgotten
    monitor.close()


def test_a_hung_worker_is_killed_after_the_reply_timeout():
    hung = WorkerProcess([sys.executable, "-c", "import time; time.sleep(60)"],
                       reply_timeout_s=0.5)
    try:
        with pytest.raises(WorkerGone):
            hung.call("compute", ("digits", 2), 0.0, [], 0, 0)
        assert hung.lost == 1 and hung.pid is None
        with pytest.raises(WorkerGone, match="waiting to start again"):
            hung.call("compute", ("digits", 2), 0.0, [], 0, 0)
    finally:
        hung.close()


def test_a_message_the_worker_cannot_handle_is_answered_and_it_goes_on(worker):
    monitor = DriftMonitor(MonitorHub(), worker=worker, clock=Clock())
    _attach(monitor, DriftSettings(sample=1.0))
    with pytest.raises(RuntimeError, match="KeyError"):
        worker.call("compute", ("other", 1), 0.0, [], 0, 0)
    with pytest.raises(RuntimeError, match="unknown message 'nope'"):
        worker.call("nope")
    monitor.on_finished([_record(HELD_OUT[:7])])
    (report,) = monitor.compute_now()
    assert report.rows == 7 and worker.lost == 0
