"""Drift's KS kernel against NumPy (``drift_stats.ks_statistic``, per feature) and SciPy's
``ks_2samp`` (where the profile kept every reference value): NaN, ties with the reference's
points, a column with no live value, a feature with no reference point, one point only."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import ks_2samp

from sluice.kernels.ks import ks_columns
from sluice.server.monitoring.drift_stats import ecdf_points, ks_statistic


def _layout(points):
    values = np.concatenate([p[0] for p in points] + [np.zeros(0)])
    cdf = np.concatenate([p[1] for p in points] + [np.zeros(0)])
    starts = np.cumsum([0] + [p[0].size for p in points]).astype(np.int64)
    return values, starts, cdf


@pytest.mark.parametrize("kernel", ["jit", "python"])
@pytest.mark.parametrize("rows", [1, 7, 400])
def test_ks_columns_equals_numpy_per_feature_and_scipy(kernel, rows):
    fn = ks_columns if kernel == "jit" else ks_columns.py_func  # NUMBA_DISABLE_JIT's path
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
    values, starts, cdf = _layout(points)
    out = np.full(features, -1.0)
    fn(live, values, starts, cdf, out)
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


def test_skewed_points_and_values_on_cell_edges_equal_numpy():
    """The kernel narrows each search with a grid of equal cells over a column's points;
    points crowded in a few cells (a far outlier, a cluster just below the largest point),
    values on the cells' edges, on the points and outside them give NumPy's statistic."""
    rng = np.random.default_rng(3)
    references = [
        np.concatenate([rng.exponential(size=400), [1e6]]),  # one far point: cells mostly empty
        np.concatenate([rng.normal(size=300), 5.0 - np.geomspace(1e-12, 1e-3, 50), [5.0]]),
        np.round(rng.normal(size=500), 2),  # ties
        np.array([-np.inf, 0.0, 1.0]),  # not a finite span: plain search
        np.array([2.0, 2.0, 2.0]),  # one distinct point
    ]
    points = [ecdf_points(r, 256) for r in references]
    values, starts, cdf = _layout(points)
    columns = []
    for (pts, _), ref in zip(points, references, strict=True):
        finite = pts[np.isfinite(pts)]
        span = finite[-1] - finite[0] if finite.size else 0.0
        cells = max(p.size for p, _ in points)
        edges = finite[0] + np.arange(cells + 1) * (span / cells) if span > 0 else finite
        column = np.concatenate([pts, edges, np.nextafter(edges, np.inf),
                                 np.nextafter(pts, -np.inf), rng.choice(ref, 200),
                                 [-np.inf, np.inf, np.nan, 1e7, -1e7]])
        columns.append(column)
    n = max(c.size for c in columns)
    live = np.full((n, len(columns)), np.nan)
    for j, column in enumerate(columns):
        live[:column.size, j] = column
    out = np.full(len(columns), -1.0)
    ks_columns(live, values, starts, cdf, out)
    for j in range(len(columns)):
        assert out[j] == pytest.approx(ks_statistic(live[:, j], *points[j]), abs=1e-12), j
