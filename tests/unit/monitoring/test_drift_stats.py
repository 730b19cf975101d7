"""PSI, KS and the profile's bins against numbers computed independently: PSI by hand and with
plain NumPy, KS with scipy.stats.ks_2samp."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.stats import ks_2samp

from sluice.server.monitoring.drift_stats import (
    PSI_FLOOR,
    ecdf_points,
    ks_statistic,
    psi_rows,
    quantile_edges,
)


def psi(reference, counts):
    """One feature's PSI through the window's every-feature function (None: no counts)."""
    counts = np.asarray(counts)
    value = psi_rows(np.asarray(reference, dtype=np.float64)[None, :], counts[None, :])[0]
    return None if np.isnan(value) else float(value)


def test_psi_by_hand():
    reference = np.array([0.25, 0.25, 0.5])
    live = np.array([10, 30, 60])  # shares 0.1, 0.3, 0.6
    by_hand = ((0.1 - 0.25) * math.log(0.1 / 0.25) + (0.3 - 0.25) * math.log(0.3 / 0.25)
               + (0.6 - 0.5) * math.log(0.6 / 0.5))
    assert psi(reference, live) == pytest.approx(by_hand, rel=1e-12)
    assert by_hand == pytest.approx(0.1648, abs=1e-4)  # 0.1374 + 0.0091 + 0.0182
    assert psi(reference, np.array([25, 25, 50])) == 0.0
    assert psi(reference, np.zeros(3)) is None


def test_psi_rows_leave_each_rows_padding_out():
    """Rows of features with fewer bins than the widest are padded with zeros; the padding counts
    in neither the total nor the sum: each row gives what its own bins give alone."""
    reference = np.array([[0.25, 0.25, 0.5, 0.0], [0.5, 0.5, 0.0, 0.0]])
    counts = np.array([[10, 30, 60, 0], [40, 60, 0, 0]])
    got = psi_rows(reference, counts)
    assert got[0] == pytest.approx(psi([0.25, 0.25, 0.5], [10, 30, 60]), rel=1e-12)
    by_hand = (0.4 - 0.5) * math.log(0.4 / 0.5) + (0.6 - 0.5) * math.log(0.6 / 0.5)
    assert got[1] == pytest.approx(by_hand, rel=1e-12)


def test_psi_floors_empty_bins():
    """A bin the reference never filled, now holding 10% of live rows: (0.1 - 1e-4) ln(0.1/1e-4)
    + (0.9 - 1) ln(0.9 / 1)."""
    value = psi(np.array([1.0, 0.0]), np.array([90, 10]))
    expected = (0.1 - PSI_FLOOR) * math.log(0.1 / PSI_FLOOR) + (0.9 - 1.0) * math.log(0.9)
    assert value == pytest.approx(expected, rel=1e-12)
    assert value == pytest.approx(0.7007, abs=1e-4)


def _ks(live, reference, most=10_000):
    values, cdf = ecdf_points(reference, most)
    return ks_statistic(live, values, cdf)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_ks_equals_scipy_when_every_value_is_kept(seed):
    rng = np.random.default_rng(seed)
    reference = rng.normal(size=800)
    live = rng.normal(loc=0.3, scale=1.2, size=300)
    assert _ks(live, reference) == pytest.approx(ks_2samp(live, reference).statistic, abs=1e-12)


def test_ks_on_discrete_values_with_ties_equals_scipy():
    rng = np.random.default_rng(4)
    reference = rng.integers(0, 17, size=1437).astype(np.float64)
    live = np.minimum(rng.integers(0, 17, size=360) * 1.5, 16).round()
    values, cdf = ecdf_points(reference, 256)
    assert values.size == np.unique(reference).size  # kept exactly: 17 values
    assert ks_statistic(live, values, cdf) == pytest.approx(
        ks_2samp(live, reference).statistic, abs=1e-12)


def test_ks_on_a_compressed_cdf_is_within_one_step():
    rng = np.random.default_rng(5)
    reference = rng.lognormal(size=20_000)
    live = rng.lognormal(mean=0.1, size=2_000)
    exact = ks_2samp(live, reference).statistic
    assert abs(_ks(live, reference, most=256) - exact) <= 1 / 256 + 1e-12


def test_ks_ignores_nan_and_needs_a_value():
    reference = np.arange(10.0)
    live = np.array([np.nan, 1.0, 2.0, np.nan])
    assert _ks(live, reference) == pytest.approx(ks_2samp([1.0, 2.0], reference).statistic)
    assert _ks(np.array([np.nan]), reference) is None


def test_quantile_edges_are_reference_values_and_ties_merge():
    data = np.array([0.0] * 70 + [1.0] * 10 + [3.0] * 10 + [9.0] * 10)
    # levels 0.1 .. 0.9 (inverted CDF): 0 x7, 1, 3
    np.testing.assert_array_equal(quantile_edges(data, 10), [0.0, 1.0, 3.0])
    np.testing.assert_array_equal(quantile_edges(np.full(5, 2.0), 10), [2.0])
    assert quantile_edges(np.array([np.nan]), 10).size == 0
    continuous = np.random.default_rng(6).normal(size=1000)
    edges = quantile_edges(continuous, 4)
    np.testing.assert_allclose(edges, np.quantile(continuous, [0.25, 0.5, 0.75],
                                                  method="inverted_cdf"))
