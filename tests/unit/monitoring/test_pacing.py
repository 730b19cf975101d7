"""The pacer that keeps monitor threads' work in short stretches: it pauses once a stretch is
long enough, never before, starts a new stretch after each pause or wait; drift's scheduled
compute ticks it between features. The duty cycle that keeps drift's GIL-free kernels to a share
of one CPU: a rest in proportion to each chunk, and chunked figures equal to unchunked ones."""

from __future__ import annotations

import numpy as np
import pytest

from sluice.kernels import drift_codes
from sluice.server.app import BUNDLED_REPOSITORY
from sluice.server.config.drift import DriftSettings
from sluice.server.config.pbtxt import read_model_config
from sluice.server.monitoring import drift_window
from sluice.server.monitoring.drift import DriftMonitor
from sluice.server.monitoring.hub import Finished, MonitorHub
from sluice.server.monitoring.pacing import DutyCycle, Pacer
from sluice.server.monitoring.profile_load import load_profile
from tests.support.fake_clock import FakeClock


class Sleeps:
    def __init__(self, clock: FakeClock) -> None:
        self.clock = clock
        self.taken: list[float] = []

    def __call__(self, seconds: float) -> None:
        self.taken.append(seconds)
        self.clock.advance(seconds)


def test_pauses_only_once_a_stretch_is_long_enough():
    clock = FakeClock()
    sleep = Sleeps(clock)
    pacer = Pacer(stretch_s=0.002, pause_s=0.001, clock=clock, sleep=sleep)
    for _ in range(3):
        clock.advance(0.0006)
        pacer.tick()
    assert sleep.taken == []  # 1.8 ms of work
    clock.advance(0.0003)
    pacer.tick()
    assert sleep.taken == [0.001]  # 2.1 ms
    clock.advance(0.0019)
    pacer.tick()
    assert sleep.taken == [0.001]  # the pause started a new stretch: 1.9 ms of it
    clock.advance(0.0001)
    pacer.tick()
    assert sleep.taken == [0.001, 0.001] and pacer.pauses == 2


def test_a_wait_for_work_starts_a_new_stretch_and_pause_zero_never_sleeps():
    clock = FakeClock()
    sleep = Sleeps(clock)
    pacer = Pacer(stretch_s=0.002, pause_s=0.001, clock=clock, sleep=sleep)
    clock.advance(1.0)  # waited for work
    pacer.start()
    clock.advance(0.001)
    pacer.tick()
    assert sleep.taken == []
    off = Pacer(stretch_s=0.002, pause_s=0.0, clock=clock, sleep=sleep)
    clock.advance(5.0)
    off.tick()
    assert sleep.taken == [] and off.pauses == 0


def test_the_scheduled_drift_compute_ticks_between_features():
    ticks = []

    class Counting(Pacer):
        def tick(self) -> None:
            ticks.append(1)

    digits = BUNDLED_REPOSITORY / "digits"
    config, _ = read_model_config(digits, "digits")
    profile = load_profile(config, digits / "2")
    monitor = DriftMonitor(MonitorHub(), drift_codes, seed=0, pacer=Counting())
    monitor.attach("digits", 2, profile, DriftSettings(sample=1.0))
    x = np.load(digits / "test_split.npz")["X"][:20]
    monitor.on_finished([Finished("r", 0.0, "digits", 2, "", "", {}, {"input": x}, 0.001)])
    monitor.compute_now()  # asked for (the admin's, a test's): not paced
    assert ticks == []
    monitor.on_finished([Finished("s", 0.0, "digits", 2, "", "", {}, {"input": x}, 0.001)])
    (report,) = monitor.compute_now(paced=True)
    assert len(ticks) == len(profile.features) + 1  # each feature, then the prediction
    assert report.rows == 40


def test_a_duty_cycle_rests_in_proportion_to_each_unit_of_work():
    clock = FakeClock()
    sleep = Sleeps(clock)
    duty = DutyCycle(0.25, clock=clock, sleep=sleep)
    done = []
    duty.run(lambda n: (done.append(n), clock.advance(0.03)), 1)
    duty.run(lambda n: (done.append(n), clock.advance(0.01)), 2)
    assert done == [1, 2] and duty.units == 2
    assert sleep.taken == [pytest.approx(0.09), pytest.approx(0.03)]  # 3x the work: 25% busy
    whole = DutyCycle(1.0, clock=clock, sleep=sleep)
    whole.run(lambda: clock.advance(1.0))
    assert len(sleep.taken) == 2  # a share of 1: no rest


@pytest.mark.parametrize(("ring", "group"), [(30, 1000), (60, 1000), (60, 30)])
def test_the_scheduled_intake_runs_its_kernels_in_chunks_and_gets_the_same_figures(
        monkeypatch, ring, group):
    digits = BUNDLED_REPOSITORY / "digits"
    config, _ = read_model_config(digits, "digits")
    profile = load_profile(config, digits / "2")
    columns = len(profile.features) + 1
    chunk = 7 * columns
    monkeypatch.setattr(drift_window, "_CHUNK_VALUES", chunk)  # 7 rows' worth a call
    monkeypatch.setattr(drift_window, "_GROUP_VALUES", group * columns)  # rows copied as one
    x = np.load(digits / "test_split.npz")["X"][:45]
    clock = FakeClock()
    duty = DutyCycle(0.5, clock=clock, sleep=Sleeps(clock))
    reports = []
    for paced in (False, True):
        monitor = DriftMonitor(MonitorHub(), drift_codes, seed=0, duty=duty, clock=lambda: 0.0)
        monitor.attach("digits", 2, profile, DriftSettings(sample=1.0, window_rows=ring))
        for rows in (x[:25], x[25:]):  # two drains, two blocks
            monitor.on_finished([Finished("r", 0.0, "digits", 2, "", "", {}, {"input": rows},
                                          0.001)])
        if paced:
            monitor.intake_now()
        (report,) = monitor.compute_now(paced=paced)
        reports.append(report)
    # a call takes every row for a range of columns
    if ring == 30:  # the first block's 25 rows in ranges of chunk // 25 columns; the second
        # block's 20 do not fit the ring beside them, so they go next, with the 15 rows they
        # overwrite: ranges of chunk // 35 columns, each an eviction and a coding
        assert duty.units == -(-columns // (chunk // 25)) + 2 * -(-columns // (chunk // 35))
    elif group == 30:  # both fit the ring, not the group: each block apart, no eviction
        assert duty.units == -(-columns // (chunk // 25)) + -(-columns // (chunk // 20))
    else:  # both blocks fit the ring: coded as one array, ranges of chunk // 45 columns
        assert duty.units == -(-columns // (chunk // 45))
    plain, chunked = reports
    assert chunked.features == plain.features and chunked.prediction == plain.prediction
    assert (chunked.cumulative == plain.cumulative).all()
    assert chunked.rows == plain.rows == min(ring, 45)
    assert any(f.ks for f in plain.features)  # KS figures were compared, not all None
