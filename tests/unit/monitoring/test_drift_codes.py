"""Drift's coding kernels against NumPy: PSI bins as np.searchsorted (side="left": right-closed
bins) and np.histogram give them, KS as ``drift_stats.ks_statistic`` gives it per feature and as
SciPy's ``ks_2samp`` does where the profile kept every reference value; rows leaving the window
take exactly their counts with them. NaN, ±inf, values on edges, on points and on the guide's
cells, columns with no point or one point."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import ks_2samp

from sluice.kernels import drift_codes
from sluice.kernels.drift_codes import ABOVE, BELOW, GUIDE_CELLS, MISSING, ks_guide
from sluice.server.monitoring.drift_stats import ecdf_points, ks_statistic
from sluice.server.monitoring.profile import MAX_BINS, MAX_KS_POINTS


class Window:
    """Flat arrays for a few columns, as ``drift_layout`` makes them, and empty counts."""

    def __init__(self, edge_lists, lo, hi, points, size=1000, jit=True):
        self.k = {name: getattr(drift_codes, name) if jit else getattr(drift_codes, name).py_func
                  for name in ("ks_guide", "encode_rows", "evict_rows", "ks_from_cells")}
        cols = len(edge_lists)
        self.edges = np.concatenate([np.asarray(e, dtype=np.float64) for e in edge_lists]
                                    + [np.zeros(0)])
        self.starts = np.cumsum([0] + [len(e) for e in edge_lists]).astype(np.int64)
        self.lo, self.hi = np.asarray(lo, dtype=np.float64), np.asarray(hi, dtype=np.float64)
        self.values = np.concatenate([p[0] for p in points] + [np.zeros(0)])
        self.cdf = np.concatenate([p[1] for p in points] + [np.zeros(0)])
        self.ks_starts = np.cumsum([0] + [p[0].size for p in points]).astype(np.int64)
        self.guide = np.zeros(GUIDE_CELLS * self.ks_starts[-1] + cols, dtype=np.int64)
        self.scale = np.zeros(cols)
        self.k["ks_guide"](self.values, self.ks_starts, self.guide, self.scale)
        width = max(len(e) for e in edge_lists) + 1
        self.codes = np.zeros((size, cols), dtype=np.uint32)
        self.cumulative = np.zeros((cols, width), dtype=np.int64)
        self.cumulative_special = np.zeros((cols, 3), dtype=np.int64)
        self.counts = np.zeros((cols, width), dtype=np.int64)
        self.special = np.zeros((cols, 3), dtype=np.int64)
        self.cells = np.zeros(2 * self.ks_starts[-1] + cols, dtype=np.int64)

    def encode(self, x, slots, columns=None):
        """Code ``x`` at ``slots``: every column in one call, or a call per (first, last) of
        ``columns``."""
        for first, last in columns or [(0, len(self.lo))]:
            self.k["encode_rows"](
                np.ascontiguousarray(x), np.asarray(slots, dtype=np.int64), self.codes,
                self.edges, self.starts, self.lo, self.hi, self.values, self.ks_starts,
                self.guide, self.scale, self.cumulative, self.cumulative_special, self.counts,
                self.special, self.cells, first, last)

    def evict(self, slots, columns=None):
        for first, last in columns or [(0, len(self.lo))]:
            self.k["evict_rows"](np.asarray(slots, dtype=np.int64), self.codes, self.edges,
                                 self.starts, self.values, self.ks_starts, self.guide,
                                 self.counts, self.special, self.cells, first, last)

    def ks(self, rows):
        out = np.full(len(self.lo), -1.0)
        self.k["ks_from_cells"](self.cells, self.ks_starts, self.cdf, rows - self.special[:, 0],
                                out)
        return out


def _binned(x, edge_lists, lo, hi, width):
    counts = np.zeros((len(edge_lists), width), dtype=np.int64)
    special = np.zeros((len(edge_lists), 3), dtype=np.int64)
    for j, e in enumerate(edge_lists):
        col = x[:, j]
        nan = np.isnan(col)
        present = col[~nan]
        bins = np.searchsorted(np.asarray(e, dtype=np.float64), present, side="left")
        counts[j, :len(e) + 1] = np.bincount(bins, minlength=len(e) + 1)
        special[j] = (nan.sum(), (present < lo[j]).sum(), (present > hi[j]).sum())
    return counts, special


EDGES = [[-1.0, 0.0, 1.0], [0.0], [], [2.0, 3.0, 5.0, 8.0, 13.0]]
LO, HI = [-3.0, 0.0, -1.0, 2.0], [3.0, 0.0, 1.0, 13.0]


def _points(rng, n):
    refs = [rng.normal(scale=3, size=300), np.round(rng.normal(size=300), 1),
            rng.normal(size=300), np.round(rng.normal(loc=5, scale=4, size=300))]
    return [ecdf_points(r, 256) for r in refs[:n]], refs


@pytest.mark.parametrize("jit", [True, False], ids=["jit", "python"])
def test_bins_and_range_flags_equal_searchsorted(jit):
    rng = np.random.default_rng(7)
    x = rng.normal(scale=4.0, size=(500, 4))
    x[::7, 0] = np.nan
    x[::11, 1] = 0.0  # exactly on the edge: the bin the edge closes
    x[::13, 3] = 5.0
    x[3, 2], x[4, 2], x[5, 0] = np.inf, -np.inf, np.nan
    points, _ = _points(rng, 4)
    w = Window(EDGES, LO, HI, points, jit=jit)
    w.encode(x, np.arange(500))
    want_counts, want_special = _binned(x, EDGES, LO, HI, 6)
    for got in (w.counts, w.cumulative):
        np.testing.assert_array_equal(got, want_counts)
    for got in (w.special, w.cumulative_special):
        np.testing.assert_array_equal(got, want_special)
    assert (w.counts.sum(axis=1) + w.special[:, MISSING - 1] == 500).all()
    assert w.special[2, ABOVE - 1] >= 1 and w.special[2, BELOW - 1] >= 1  # ±inf
    # a slot < 0: the cumulative counters only; the window's stay
    w.encode(x, np.full(500, -1))
    np.testing.assert_array_equal(w.cumulative, 2 * want_counts)
    np.testing.assert_array_equal(w.counts, want_counts)


@pytest.mark.parametrize("jit", [True, False], ids=["jit", "python"])
def test_a_feature_with_many_edges_is_searched_to_the_same_bins(jit):
    """Up to 16 edges are counted, more are searched: both give np.searchsorted's bin."""
    rng = np.random.default_rng(9)
    many, few = np.sort(rng.normal(size=40)), np.sort(rng.normal(size=16))
    x = rng.normal(size=(300, 2))
    x[:40, 0], x[:16, 1] = many, few  # on the edges
    w = Window([many, few], [-9.0, -9.0], [9.0, 9.0], [(np.zeros(0), np.zeros(0))] * 2,
               jit=jit)
    w.encode(x, np.arange(300))
    want, _ = _binned(x, [many, few], [-9.0, -9.0], [9.0, 9.0], 41)
    np.testing.assert_array_equal(w.counts, want)


def test_bins_agree_with_histogram_away_from_edges():
    """np.histogram's bins are left-closed; with no value on an edge, the counts agree."""
    rng = np.random.default_rng(3)
    x = rng.uniform(0.05, 9.95, size=(1000, 1))
    x = x[np.abs(x[:, 0] - np.round(x[:, 0])) > 1e-9]
    inner = np.arange(1.0, 10.0)
    w = Window([inner], [0.0], [10.0], [(np.zeros(0), np.zeros(0))], size=len(x))
    w.encode(x, np.arange(len(x)))
    hist, _ = np.histogram(x[:, 0], bins=np.concatenate([[0.0], inner, [10.0]]))
    np.testing.assert_array_equal(w.counts[0], hist)
    assert w.special.sum() == 0 and w.cells.sum() == 0  # no points: no KS cells


@pytest.mark.parametrize("jit", [True, False], ids=["jit", "python"])
@pytest.mark.parametrize("rows", [1, 7, 400])
def test_ks_from_cells_equals_numpy_per_feature_and_scipy(jit, rows):
    rng = np.random.default_rng(rows)
    features = 70  # more than one block of columns
    live = rng.standard_normal((rows, features))
    live[rng.random((rows, features)) < 0.1] = np.nan
    live[:, 4] = np.round(live[:, 4], 1)  # ties with the rounded reference's points
    live[:, 3] = np.nan  # no live value
    references = [np.round(rng.normal(scale=1 + j % 3, size=300), 1 if j % 2 == 0 else 6)
                  for j in range(features)]
    references[9] = np.array([0.25])  # one point
    points = [ecdf_points(r, 256) for r in references]
    points[5] = (np.zeros(0), np.zeros(0))  # no reference point
    w = Window([[0.0]] * features, [-1.0] * features, [1.0] * features, points, jit=jit)
    w.encode(live, np.arange(rows))
    out = w.ks(rows)
    for j in range(features):
        expected = ks_statistic(live[:, j], *points[j])
        if expected is None:
            assert np.isnan(out[j]), j
            continue
        assert out[j] == pytest.approx(expected, abs=1e-12), j
        present = live[:, j][~np.isnan(live[:, j])]
        if np.unique(references[j]).size <= 256:  # every value kept: exactly SciPy's
            assert out[j] == pytest.approx(ks_2samp(present, references[j]).statistic,
                                           abs=1e-12), j
    assert np.isnan(out[3]) and np.isnan(out[5])
    assert np.nanmax(out) > 0.05  # scales differ by feature: not all zero by accident


def test_skewed_points_and_values_on_guide_cells_equal_numpy():
    """Each search is narrowed by a guide of equal cells over a column's points; points
    crowded in a few cells (a far outlier, a cluster just below the largest point), values on
    the cells' edges, on the points and outside them give NumPy's statistic."""
    rng = np.random.default_rng(3)
    references = [
        np.concatenate([rng.exponential(size=400), [1e6]]),  # one far point: cells mostly empty
        np.concatenate([rng.normal(size=300), 5.0 - np.geomspace(1e-12, 1e-3, 50), [5.0]]),
        np.round(rng.normal(size=500), 2),  # ties
        np.array([-np.inf, 0.0, 1.0]),  # not a finite span: plain search
        np.array([2.0, 2.0, 2.0]),  # one distinct point
    ]
    points = [ecdf_points(r, 256) for r in references]
    columns = []
    for (pts, _), ref in zip(points, references, strict=True):
        finite = pts[np.isfinite(pts)]
        span = finite[-1] - finite[0] if finite.size else 0.0
        edges = finite[0] + np.arange(pts.size + 1) * (span / pts.size) if span > 0 else finite
        columns.append(np.concatenate([pts, edges, np.nextafter(edges, np.inf),
                                       np.nextafter(pts, -np.inf), rng.choice(ref, 200),
                                       [-np.inf, np.inf, np.nan, 1e7, -1e7]]))
    n = max(c.size for c in columns)
    live = np.full((n, len(columns)), np.nan)
    for j, column in enumerate(columns):
        live[:column.size, j] = column
    w = Window([[0.0]] * 5, [0.0] * 5, [1.0] * 5, points, size=n)
    w.encode(live, np.arange(n))
    out = w.ks(n)
    for j in range(len(columns)):
        assert out[j] == pytest.approx(ks_statistic(live[:, j], *points[j]), abs=1e-12), j


@pytest.mark.parametrize("jit", [True, False], ids=["jit", "python"])
def test_evicted_rows_take_exactly_their_counts_with_them(jit):
    rng = np.random.default_rng(11)
    points, _ = _points(rng, 4)
    first = rng.normal(scale=4.0, size=(300, 4))
    second = rng.normal(loc=2.0, scale=4.0, size=(200, 4))
    first[::5, 1] = np.nan
    second[::9, 3] = np.inf
    w = Window(EDGES, LO, HI, points, size=500, jit=jit)
    w.encode(first, np.arange(300))
    w.encode(second, np.arange(300, 500))
    w.evict(np.arange(300))
    alone = Window(EDGES, LO, HI, points, size=500, jit=jit)
    alone.encode(second, np.arange(200))
    np.testing.assert_array_equal(w.counts, alone.counts)
    np.testing.assert_array_equal(w.special, alone.special)
    np.testing.assert_array_equal(w.cells, alone.cells)
    np.testing.assert_allclose(w.ks(200), [ks_statistic(second[:, j], *points[j])
                                           for j in range(4)], atol=1e-12)
    assert w.cumulative.sum() > alone.cumulative.sum()  # the cumulative counters keep them
    w.evict(np.arange(300, 500))
    assert w.counts.sum() == w.special.sum() == w.cells.sum() == 0


def test_columns_that_do_not_fit_the_arrays_are_left_alone():
    """A feature with more bins than the counts have columns, or KS cells beyond the cells
    array, is skipped (or its KS is), never written out of range."""
    rng = np.random.default_rng(5)
    points = [ecdf_points(rng.normal(size=100), 256), ecdf_points(rng.normal(size=100), 256)]
    w = Window([[1.0, 2.0, 3.0], [0.5]], [0.0, 0.0], [1.0, 1.0], points)
    w.counts = np.zeros((2, 3), dtype=np.int64)  # feature 0 needs 4 bins
    w.cumulative = np.zeros((2, 3), dtype=np.int64)
    w.cells = w.cells[:-5]  # the last column's cells do not fit
    x = np.array([[0.0, 1.0], [np.nan, 9.0]])
    w.encode(x, [0, 1])
    np.testing.assert_array_equal(w.counts, [[0, 0, 0], [0, 2, 0]])
    np.testing.assert_array_equal(w.special, [[0, 0, 0], [0, 0, 1]])
    assert w.cells.sum() == 0
    assert np.isnan(w.ks(2)[1])


def test_the_profile_limits_are_what_a_code_holds():
    assert (drift_codes.MAX_BINS, drift_codes.MAX_KS_POINTS) == (MAX_BINS, MAX_KS_POINTS)
    # the widest bin and the last KS cell fit their bits
    assert ((MAX_BINS - 1) << 2 | ABOVE) < 1 << 16 and 2 * MAX_KS_POINTS < 1 << 16


def test_a_guide_cuts_each_column_into_twice_as_many_cells_as_it_has_points():
    values = np.array([0.0, 1.0, 2.0, 10.0, 5.0, 6.0])
    ks_starts = np.array([0, 4, 6], dtype=np.int64)
    guide = np.zeros(GUIDE_CELLS * 6 + 2, dtype=np.int64)
    scale = np.zeros(2)
    ks_guide(values, ks_starts, guide, scale)
    assert GUIDE_CELLS == 2
    # column 0: 8 cells of width 1.25 over [0, 10]; points 0 and 1 in cell 0, 2 in cell 1, 10
    # in the last (7): the first point whose cell is not below g, for g = 0..8
    assert scale[0] == pytest.approx(0.8) and list(guide[:9]) == [0, 2, 3, 3, 3, 3, 3, 3, 4]
    # column 1 (from index 4, its guide from 2 * 4 + 1): 4 cells over [5, 6]
    assert scale[1] == pytest.approx(4.0) and list(guide[9:14]) == [4, 5, 5, 5, 6]


def test_calls_by_ranges_of_columns_count_as_one_call():
    """A paced window codes and evicts a range of columns a call: the ranges together give
    what one call over every column gives (codes, counters, cells), ranges out of bounds
    included."""
    rng = np.random.default_rng(13)
    points, _ = _points(rng, 4)
    x = rng.normal(scale=3.0, size=(120, 4))
    x[::7, 2] = np.nan
    x[::11, 0] = -np.inf
    whole = Window(EDGES, LO, HI, points, size=100)
    parts = Window(EDGES, LO, HI, points, size=100)
    slots = np.r_[np.full(20, -1), np.arange(100)]  # the first 20 rows: cumulative only
    whole.encode(x, slots)
    parts.encode(x, slots, columns=[(0, 1), (1, 3), (3, 9), (-2, 0)])
    for name in ("codes", "cumulative", "cumulative_special", "counts", "special", "cells"):
        np.testing.assert_array_equal(getattr(parts, name), getattr(whole, name), name)
    counts, special = _binned(x[20:], EDGES, LO, HI, parts.counts.shape[1])  # NumPy's
    np.testing.assert_array_equal(parts.counts, counts)
    np.testing.assert_array_equal(parts.special, special)
    whole.evict(np.arange(40))
    parts.evict(np.arange(40), columns=[(2, 4), (0, 2)])
    for name in ("counts", "special", "cells"):
        np.testing.assert_array_equal(getattr(parts, name), getattr(whole, name), name)
    assert whole.counts.sum() == 60 * 4 - whole.special[:, 0].sum()
