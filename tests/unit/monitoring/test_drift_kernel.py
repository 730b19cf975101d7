"""The drift binning kernel against NumPy: np.searchsorted (side="left": right-closed bins) and
np.histogram, with NaN, ±inf, values on the edges and out of the reference range."""

from __future__ import annotations

import numpy as np
import pytest

from sluice.kernels.binning import ABOVE, BELOW, MISSING, bin_counts


def _layout(edge_lists):
    edges = np.concatenate([np.asarray(e, dtype=np.float64) for e in edge_lists] + [np.zeros(0)])
    starts = np.cumsum([0] + [len(e) for e in edge_lists]).astype(np.int64)
    return edges, starts


def _reference(x, edge_lists, lo, hi, width):
    counts = np.zeros((len(edge_lists), width), dtype=np.int64)
    special = np.zeros((len(edge_lists), 3), dtype=np.int64)
    for j, e in enumerate(edge_lists):
        col = x[:, j]
        nan = np.isnan(col)
        present = col[~nan]
        bins = np.searchsorted(np.asarray(e, dtype=np.float64), present, side="left")
        counts[j, : len(e) + 1] = np.bincount(bins, minlength=len(e) + 1)
        special[j] = (nan.sum(), (present < lo[j]).sum(), (present > hi[j]).sum())
    return counts, special


@pytest.mark.parametrize("kernel", ["jit", "python"])
def test_bin_counts_matches_searchsorted(kernel):
    fn = bin_counts if kernel == "jit" else bin_counts.py_func  # py_func: NUMBA_DISABLE_JIT's path
    rng = np.random.default_rng(7)
    edge_lists = [[-1.0, 0.0, 1.0], [0.0], [], [2.0, 3.0, 5.0, 8.0, 13.0]]
    x = rng.normal(scale=4.0, size=(500, 4))
    x[::7, 0] = np.nan
    x[::11, 1] = 0.0  # exactly on the edge: the bin the edge closes
    x[::13, 3] = 5.0
    x[3, 2], x[4, 2], x[5, 0] = np.inf, -np.inf, np.nan
    lo = np.array([-3.0, 0.0, -1.0, 2.0])
    hi = np.array([3.0, 0.0, 1.0, 13.0])
    edges, starts = _layout(edge_lists)
    counts = np.zeros((4, 6), dtype=np.int64)
    special = np.zeros((4, 3), dtype=np.int64)
    fn(x, edges, starts, lo, hi, counts, special)
    want_counts, want_special = _reference(x, edge_lists, lo, hi, 6)
    np.testing.assert_array_equal(counts, want_counts)
    np.testing.assert_array_equal(special, want_special)
    # every value is in exactly one bin or missing
    assert (counts.sum(axis=1) + special[:, MISSING] == 500).all()
    assert special[2, ABOVE] >= 1 and special[2, BELOW] >= 1  # ±inf are out of range
    # it adds to what is there
    fn(x, edges, starts, lo, hi, counts, special)
    np.testing.assert_array_equal(counts, 2 * want_counts)


def test_bin_counts_agrees_with_histogram_away_from_edges():
    """np.histogram's bins are left-closed; with no value on an edge, the counts agree."""
    rng = np.random.default_rng(3)
    x = rng.uniform(0.05, 9.95, size=(1000, 1))
    x = x[np.abs(x[:, 0] - np.round(x[:, 0])) > 1e-9]
    inner = np.arange(1.0, 10.0)
    edges, starts = _layout([inner])
    counts = np.zeros((1, 10), dtype=np.int64)
    special = np.zeros((1, 3), dtype=np.int64)
    bin_counts(np.ascontiguousarray(x), edges, starts, np.zeros(1), np.full(1, 10.0), counts,
               special)
    hist, _ = np.histogram(x[:, 0], bins=np.concatenate([[0.0], inner, [10.0]]))
    np.testing.assert_array_equal(counts[0], hist)
    assert special.sum() == 0


def test_bin_counts_is_bounds_guarded():
    """A feature with more bins than counts has columns is skipped, not written out of range;
    columns beyond the smallest array are left alone."""
    edges, starts = _layout([[1.0, 2.0, 3.0], [0.5]])
    x = np.array([[0.0, 1.0, 9.0]])
    counts = np.zeros((2, 3), dtype=np.int64)  # feature 0 needs 4 bins
    special = np.zeros((2, 3), dtype=np.int64)
    bin_counts(x, edges, starts, np.zeros(2), np.ones(2), counts, special)
    np.testing.assert_array_equal(counts, [[0, 0, 0], [0, 1, 0]])
    np.testing.assert_array_equal(special, [[0, 0, 0], [0, 0, 0]])
