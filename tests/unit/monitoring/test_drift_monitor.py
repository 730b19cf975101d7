"""The drift monitor fed Finished records as the hub hands them over (no server): sampling,
the window's bounds, PSI of shifted vs held-out digits against the bundled training profile
(recomputed here with NumPy), and what is counted instead of binned."""

from __future__ import annotations

import numpy as np
import pytest

from sluice.kernels import drift_codes
from sluice.server.app import BUNDLED_REPOSITORY
from sluice.server.config.drift import DriftSettings
from sluice.server.config.pbtxt import read_model_config
from sluice.server.monitoring.drift import DriftMonitor
from sluice.server.monitoring.drift_stats import ks_statistic
from sluice.server.monitoring.hub import Finished, MonitorHub
from sluice.server.monitoring.profile_load import load_profile

DIGITS = BUNDLED_REPOSITORY / "digits"
HELD_OUT = np.load(DIGITS / "test_split.npz")["X"]


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _monitor(settings: DriftSettings, clock: Clock | None = None, seed: int = 0):
    hub = MonitorHub()
    monitor = DriftMonitor(hub, drift_codes, clock=clock or Clock(), seed=seed)
    config, _ = read_model_config(DIGITS, "digits")
    profile = load_profile(config, DIGITS / "2")
    assert profile is not None
    monitor.attach("digits", 2, profile, settings)
    return hub, monitor, profile


def _record(x: np.ndarray, labels: np.ndarray | None = None, version: int = 2,
            status: str = "OK") -> Finished:
    outputs = {} if labels is None else {"label": labels}
    return Finished(id="r", time=0.0, model="digits", version=version, arm="", caller="",
                    outputs=outputs, inputs={"input": x}, latency_s=0.001, status=status)


def _by_hand_psi(profile, x):
    out = []
    for j, feature in enumerate(profile.features):
        counts = np.bincount(np.searchsorted(feature.edges, x[:, j], side="left"),
                             minlength=feature.edges.size + 1)
        share = np.maximum(counts / counts.sum(), 1e-4)
        ref = np.maximum(feature.fractions, 1e-4)
        out.append(float(np.sum((share - ref) * np.log(share / ref))))
    return np.array(out)


def test_held_out_rows_stay_under_and_scaled_rows_go_over():
    hub, monitor, profile = _monitor(DriftSettings(sample=1.0))
    assert hub.wants("digits")
    monitor.on_finished([_record(HELD_OUT[i:i + 10]) for i in range(0, len(HELD_OUT), 10)])
    (report,) = monitor.compute_now()
    assert report.rows == len(HELD_OUT) == 360
    got = np.array([f.psi for f in report.features])
    np.testing.assert_allclose(got, _by_hand_psi(profile, HELD_OUT), rtol=1e-9, atol=1e-12)
    assert report.max_psi < 0.2

    _, shifted, _ = _monitor(DriftSettings(sample=1.0))
    scaled = HELD_OUT * 1.5
    shifted.on_finished([_record(scaled[i:i + 10]) for i in range(0, len(scaled), 10)])
    (report,) = shifted.compute_now()
    got = np.array([f.psi for f in report.features])
    np.testing.assert_allclose(got, _by_hand_psi(profile, scaled), rtol=1e-9, atol=1e-12)
    assert report.max_psi > 0.2
    assert sum(f.psi > 0.2 for f in report.features) > 30  # most of the ink moved
    above = [f.above_rate for f in report.features]
    assert max(above) > 0.05  # values over the reference maximum (16 * 1.5)


def test_the_prediction_distribution_is_compared_per_class():
    _, monitor, profile = _monitor(DriftSettings(sample=1.0))
    labels = np.array([3] * 90 + [5] * 10)
    monitor.on_finished([_record(HELD_OUT[:100], labels)])
    (report,) = monitor.compute_now()
    assert report.prediction_kind == "class" and report.prediction_output == "label"
    live = np.zeros(10)
    live[3], live[5] = 0.9, 0.1
    ref = profile.prediction.bins.fractions
    assert report.prediction.live == (0, 0, 0, 90, 0, 10, 0, 0, 0, 0)
    expected = np.sum((np.maximum(live, 1e-4) - ref) * np.log(np.maximum(live, 1e-4) / ref))
    assert report.prediction_drift == pytest.approx(expected, rel=1e-9)
    assert report.prediction.ks is None  # classes have no KS


def test_the_sample_rate_is_honoured():
    _, monitor, _ = _monitor(DriftSettings(sample=0.1, window_rows=10_000), seed=1)
    monitor.on_finished([_record(HELD_OUT[i % 360:i % 360 + 1]) for i in range(5000)])
    (report,) = monitor.compute_now()
    # binomial(5000, 0.1): mean 500, sd 21.2; 4 sd either side
    assert 415 <= report.sampled_rows <= 585


def test_the_window_keeps_the_newest_rows_and_forgets_old_ones():
    clock = Clock()
    _, monitor, _ = _monitor(DriftSettings(sample=1.0, window_rows=100, window_s=60), clock)
    monitor.on_finished([_record(HELD_OUT[:80])])
    monitor.compute_now()
    clock.now += 30
    monitor.on_finished([_record(HELD_OUT[80:150])])
    (report,) = monitor.compute_now()
    assert report.rows == 100  # the newest 100 of 150
    assert report.sampled_rows == 150
    assert report.cumulative[0].sum() == 150  # the counters keep every sampled row
    clock.now += 45  # the first 80 rows are 75 s old now, the other 70 rows 45 s
    (report,) = monitor.compute_now()
    assert report.rows == 70


def test_failed_requests_mismatched_tensors_and_a_full_queue_are_counted_not_binned():
    _, monitor, _ = _monitor(DriftSettings(sample=1.0, window_rows=50))
    monitor.on_finished([
        _record(HELD_OUT[:5], status="UNAVAILABLE"),  # failed: not sampled at all
        _record(np.zeros((2, 63), dtype=np.float32)),  # 126 values: not rows of 64
        _record(HELD_OUT[:5], version=1),  # a version without a window
    ])
    (report,) = monitor.compute_now()
    assert (report.rows, report.malformed, report.dropped_rows) == (0, 1, 0)
    queue = monitor._windows[("digits", 2)].queue.max_pending  # the bound under test: 10000 rows
    assert queue == 10_000
    monitor.on_finished([_record(np.tile(HELD_OUT[:100], (100, 1))), _record(HELD_OUT[:7])])
    (report,) = monitor.compute_now()
    assert report.sampled_rows == queue and report.dropped_rows == 7


def test_missing_inputs_and_nan_count_as_missing():
    _, monitor, _ = _monitor(DriftSettings(sample=1.0))
    x = HELD_OUT[:10].copy()
    x[:4, 0] = np.nan
    monitor.on_finished([_record(x)])
    (report,) = monitor.compute_now()
    assert report.features[0].missing_rate == pytest.approx(0.4)
    assert report.features[1].missing_rate == 0.0
    assert report.prediction.missing_rate == 1.0  # no 'label' output was returned


def test_the_kernels_run_once_when_a_version_attaches_before_any_traffic():
    """Their compile (or load from Numba's cache) then happens on the loader's thread, not on
    the monitor's under traffic, where py-spy saw it hold the GIL for seconds."""
    calls: list[str] = []

    class Counting:
        def __getattr__(self, name):
            if not callable(getattr(drift_codes, name)):  # GUIDE_CELLS
                return getattr(drift_codes, name)

            def kernel(*args):
                calls.append(name)
                return getattr(drift_codes, name)(*args)
            return kernel

    monitor = DriftMonitor(MonitorHub(), Counting(), clock=Clock(), seed=0)
    config, _ = read_model_config(DIGITS, "digits")
    profile = load_profile(config, DIGITS / "2")
    assert profile is not None
    monitor.attach("digits", 2, profile, DriftSettings())
    assert sorted(calls) == ["encode_rows", "evict_rows", "ks_from_cells", "ks_from_cells",
                             "ks_guide"]  # the second KS: the empty window's first report
    (report,) = monitor.compute_now()
    assert report.rows == 0 and report.sampled_rows == 0  # the warm-up counted nothing
    assert report.cumulative.sum() == 0


def test_a_drain_binned_as_one_block_gives_what_record_by_record_gives():
    """Records batched alike go in as one block per drain; one that is not (no 'label' output,
    rows that disagree, 63 values a row, values that are not numbers) makes the drain go record
    by record. Either way the
    window, the counters and what is counted are those of one record at a time."""
    rng = np.random.default_rng(3)
    records = []
    for i in range(0, 300, 12):
        rows = HELD_OUT[i:i + int(rng.integers(1, 12))] * (1.0 + (i % 5) / 4)
        records.append(_record(rows, rng.integers(0, 10, (len(rows), 1))))
    odd = [_record(HELD_OUT[:3]),  # no prediction: its column is missing
           _record(HELD_OUT[:4], np.zeros((2, 1), np.int64)),  # 4 rows, 2 labels: malformed
           _record(np.zeros((2, 63), np.float32), np.zeros((2, 1), np.int64))]  # malformed
    not_numbers = _record(np.full((2, 64), "x", dtype=object), np.zeros((2, 1), np.int64))
    malformed = []
    for drain in (records, [*records[:5], not_numbers, *records[5:]],
                  [*records[:10], *odd, *records[10:]]):
        _, together, _ = _monitor(DriftSettings(sample=1.0))
        together.on_finished(drain)
        _, alone, _ = _monitor(DriftSettings(sample=1.0))
        for record in drain:
            alone.on_finished([record])
        (a,), (b,) = together.compute_now(), alone.compute_now()
        assert (a.rows, a.sampled_rows, a.malformed) == (b.rows, b.sampled_rows, b.malformed)
        assert a.features == b.features and a.prediction == b.prediction
        assert (a.cumulative == b.cumulative).all()
        assert (a.cumulative_special == b.cumulative_special).all()
        malformed.append(a.malformed)
    assert malformed == [0, 1, 2] and a.prediction.missing_rate > 0


def test_a_window_with_nothing_new_or_aged_out_keeps_its_report_without_recomputing():
    """An idle model's window costs nothing per compute (the schedule computes every window:
    a 3,072-feature model with no traffic took ~160 ms of the GIL every 10 s); a row coming
    in, a failed record counted or a row aging out recomputes."""
    clock = Clock()
    hub, monitor, _ = _monitor(DriftSettings(sample=1.0, window_rows=100, window_s=60), clock)
    monitor.on_finished([_record(HELD_OUT[:10])])
    (first,) = monitor.compute_now()
    clock.now += 20
    (again,) = monitor.compute_now()
    assert again is first and first.rows == 10
    monitor.on_finished([_record(np.zeros((1, 63), dtype=np.float32))])  # malformed, counted
    (counted,) = monitor.compute_now()
    assert counted is not first and counted.malformed == 1 and counted.rows == 10
    monitor.on_finished([_record(HELD_OUT[10:12])])
    (grown,) = monitor.compute_now()
    assert grown.rows == 12 and grown.sampled_rows == 12
    clock.now += 45  # the first 10 rows are 65 s old now
    (aged,) = monitor.compute_now()
    assert aged.rows == 2
    np.testing.assert_array_equal(  # the live counts of the 2 rows left, not the 12
        [sum(f.live) for f in aged.features], [2] * len(aged.features))
    assert monitor.compute_now()[0] is aged


@pytest.mark.parametrize("scale", [1.0, 1.5])
def test_the_figures_are_what_numpy_gives_per_feature_from_the_rows(scale):
    """PSI, KS and the rates from the window's counts, against NumPy on the rows themselves
    (``drift_stats.ks_statistic`` per feature, PSI by hand), after rows came in in drains and
    the oldest were overwritten."""
    rows = HELD_OUT * scale
    labels = np.arange(len(rows), dtype=np.int64).reshape(-1, 1) % 10
    _, monitor, profile = _monitor(DriftSettings(sample=1.0, window_rows=300))
    for first in range(0, len(rows), 120):  # three intakes; the last overwrites 60 rows
        monitor.on_finished([_record(rows[i:i + 10], labels[i:i + 10])
                             for i in range(first, min(first + 120, len(rows)), 10)])
        (report,) = monitor.compute_now()
    kept = rows[-300:]
    assert report.rows == 300 and report.sampled_rows == len(rows)
    np.testing.assert_allclose([f.psi for f in report.features], _by_hand_psi(profile, kept),
                               rtol=1e-9, atol=1e-12)
    compared = 0
    for j, (feature, drift) in enumerate(zip(profile.features, report.features, strict=True)):
        expected = ks_statistic(kept[:, j], feature.ks_values, feature.ks_cdf)
        assert (drift.ks is None) == (expected is None), drift.name
        if expected is not None:
            assert drift.ks == pytest.approx(expected, abs=1e-12), drift.name
            compared += 1
        assert drift.above_rate == np.mean(kept[:, j] > feature.max), drift.name
        assert drift.below_rate == np.mean(kept[:, j] < feature.min), drift.name
        assert drift.live == tuple(np.bincount(
            np.searchsorted(feature.edges, kept[:, j]), minlength=feature.edges.size + 1))
    assert compared > 30  # digits' profile keeps ECDF points
    # a class prediction reports PSI, no KS
    assert report.prediction is not None and report.prediction.ks is None
    assert report.prediction.live == tuple(np.bincount(labels[-300:, 0], minlength=10))
