"""The drift statistics, plain NumPy over what the coding kernels counted.

- **PSI** (population stability index) of live bin counts against the reference's bin
  fractions: ``sum((a - e) * ln(a / e))`` over the bins, where ``a`` and ``e`` are the live and
  reference fractions, each floored at :data:`PSI_FLOOR` so that an empty bin on either side
  gives a large but finite term (a bin the reference never filled and 10% of live rows now fill
  adds about 0.7). Usual reading: under 0.1 stable, 0.1-0.2 moderate, over 0.2 drifted.
- **KS**: the two-sample Kolmogorov-Smirnov statistic ``sup |F_live - F_ref|``, with the
  reference's empirical CDF as the profile stores it (``values`` ascending, ``cdf[k]`` the share
  of reference values ``<= values[k]``). When the profile kept every distinct reference value this
  is exactly ``scipy.stats.ks_2samp(live, reference).statistic``; a profile of a continuous
  feature keeps order statistics at evenly spaced levels, which moves the statistic by at most
  one level's step (1/256 by default): a smaller error than subsampling the reference to the
  same size (about 1/sqrt(n)), and no dependency on SciPy at run time.
"""

from __future__ import annotations

import numpy as np

#: Smallest fraction a bin counts with in PSI (an empty bin would make the logarithm infinite).
PSI_FLOOR = 1e-4


def psi_rows(reference: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """PSI of each row of ``counts`` [f, width] against the same row of ``reference``
    fractions; NaN for a row without counts. Every feature of a window in a few NumPy calls. A
    row padded past its own bins (zero counts against zero fractions) gets nothing from the
    padding: both sides floor to :data:`PSI_FLOOR`, and the term is 0."""
    total = counts.sum(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        actual = np.maximum(counts / total[:, None], PSI_FLOOR)
    expected = np.maximum(reference, PSI_FLOOR)
    out = np.sum((actual - expected) * np.log(actual / expected), axis=1)
    out[total <= 0] = np.nan
    return out


def ks_statistic(live: np.ndarray, values: np.ndarray, cdf: np.ndarray) -> float | None:
    """Two-sample KS statistic of ``live`` (NaN ignored) against the reference ECDF
    ``(values, cdf)``; None when no live value is left."""
    live = np.sort(live[~np.isnan(live)])
    if live.size == 0 or values.size == 0:
        return None
    # Both are right-continuous step functions: the supremum is reached at a jump of one or
    # the other, evaluated there (a left limit is the value at the previous jump, or 0).
    points = np.concatenate([live, values])
    f_live = np.searchsorted(live, points, side="right") / live.size
    at = np.searchsorted(values, points, side="right")
    f_ref = np.where(at > 0, cdf[np.maximum(at - 1, 0)], 0.0)
    return float(np.max(np.abs(f_live - f_ref)))


def ecdf_points(reference: np.ndarray, most: int) -> tuple[np.ndarray, np.ndarray]:
    """The reference's empirical CDF on at most ``most`` points: every distinct value with its
    CDF when there are that few, else the order statistics at levels ``k / most`` (k = 1..most)
    with their exact CDF (the last point is the maximum, CDF 1). NaN is left out."""
    data = np.sort(reference[~np.isnan(reference)].astype(np.float64))
    if data.size == 0:
        return np.zeros(0), np.zeros(0)
    distinct, counts = np.unique(data, return_counts=True)
    if distinct.size <= most:
        return distinct, np.cumsum(counts) / data.size
    ranks = np.ceil(np.arange(1, most + 1) * data.size / most).astype(np.int64) - 1
    values = np.unique(data[ranks])
    return values, np.searchsorted(data, values, side="right") / data.size


def quantile_edges(reference: np.ndarray, bins: int) -> np.ndarray:
    """Interior bin edges: the distinct reference quantiles at levels 1/bins .. (bins-1)/bins
    (inverted CDF, so each edge is a value the reference takes; ties merge bins). NaN is left
    out; no values, no edges."""
    data = reference[~np.isnan(reference)].astype(np.float64)
    if data.size == 0 or bins < 2:
        return np.zeros(0)
    levels = np.arange(1, bins) / bins
    return np.unique(np.quantile(data, levels, method="inverted_cdf"))
