"""Drift binning: count each feature's values into the bins of its reference profile.

One kernel, :func:`bin_counts`, run by the drift monitor's background thread (never on the
request path) over a window of sampled rows. Each feature (column) ``j`` has its own sorted
interior edges ``edges[starts[j]:starts[j + 1]]``; a value ``v`` lands in bin
``k = #{edges < v}``, so the bins are right-closed, ``(e[k-1], e[k]]``, with the first open below
and the last open above (``np.searchsorted(e, v, side="left")``). Right-closed bins suit
quantile edges of discrete data: an edge is a value the reference takes, and its own rows count
in the bin the edge closes. NaN is counted as missing and in no bin; values below the
reference's minimum or above its maximum are binned as usual (into the end bins) and also counted
as out of range (±inf included).

The monitoring package never imports Numba: the composition root hands the monitor this
function, and the tests check it against ``np.searchsorted`` and ``np.histogram``.
"""

from __future__ import annotations

import numpy as np
from numba import njit

#: Columns of ``special``: NaN values, values below the reference minimum, above its maximum.
MISSING, BELOW, ABOVE = 0, 1, 2


@njit(nogil=True, cache=True)
def bin_counts(x, edges, starts, lo, hi, counts, special):
    """Add the rows of ``x`` (float64 [n, f]) to ``counts`` (int64 [f, max_bins]) and
    ``special`` (int64 [f, 3]: missing, below ``lo[j]``, above ``hi[j]``).

    ``edges`` float64, feature ``j``'s sorted interior edges at ``starts[j]:starts[j + 1]``
    (``starts`` int64 [f + 1]); a feature with more bins than ``counts`` has columns, or columns
    beyond what every array covers, are left alone (bounds-guarded, never written out of range).
    """
    cols = min(x.shape[1], starts.shape[0] - 1, lo.shape[0], hi.shape[0], counts.shape[0],
               special.shape[0])
    width = counts.shape[1]
    usable = np.zeros(cols, dtype=np.bool_)
    for j in range(cols):
        s = starts[j]
        e = starts[j + 1]
        usable[j] = not (s < 0 or e > edges.shape[0] or e < s or e - s + 1 > width)
    # rows outer, features inner: a row-major window is read in order (features outer walked
    # it a cache line per value: 0.96 s against 0.48 s for a 5,000 x 3,072 window, cnn's)
    for i in range(x.shape[0]):
        for j in range(cols):
            if not usable[j]:
                continue
            v = x[i, j]
            if v != v:
                special[j, MISSING] += 1
                continue
            if v < lo[j]:
                special[j, BELOW] += 1
            elif v > hi[j]:
                special[j, ABOVE] += 1
            # lower bound: the first edge >= v
            s = starts[j]
            a = s
            b = starts[j + 1]
            while a < b:
                m = (a + b) >> 1
                if edges[m] < v:
                    a = m + 1
                else:
                    b = m
            counts[j, a - s] += 1


def warmup() -> None:
    """Compile :func:`bin_counts` for the types the monitor passes (or read it from Numba's
    cache), so the first window does not pay for it."""
    x = np.zeros((1, 1))
    bin_counts(x, np.zeros(1), np.array([0, 1], dtype=np.int64), np.zeros(1), np.zeros(1),
               np.zeros((1, 2), dtype=np.int64), np.zeros((1, 3), dtype=np.int64))
