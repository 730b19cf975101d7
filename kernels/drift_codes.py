"""Drift's window kept as codes: each sampled value binned once, as it comes in, and the window's
counts kept up to date as rows enter and leave.

A value ``v`` of feature ``j`` becomes one uint32 code:

- low 16 bits, its **PSI bin and range flag**: ``bin << 2 | flag``, where ``bin = #{edges < v}``
  over the feature's sorted interior edges (right-closed bins, ``np.searchsorted(e, v, "left")``)
  and ``flag`` is :data:`IN_RANGE`, :data:`MISSING` (NaN: no bin, no KS), :data:`BELOW` the
  reference minimum or :data:`ABOVE` its maximum (binned as usual, ±inf included);
- high 16 bits, its **KS cell** among the feature's reference ECDF points ``p_0 < ... < p_{K-1}``:
  ``2k`` when ``p_{k-1} < v < p_k`` (``k = 0``: below the first, ``k = K``: above the last),
  ``2k + 1`` when ``v == p_k``. The statistic needs no more: both CDFs are right-continuous step
  functions, so ``sup |F_live - F_ref|`` is reached at a reference point or just below one, and
  the live CDF there is a running sum of cells (:func:`ks_from_cells`).

:func:`encode_rows` codes new rows into the ring's slots and adds them to the cumulative counters
(every sampled row) and the window's (rows kept in the ring); :func:`evict_rows` subtracts rows
leaving the window (overwritten or aged out) by their stored codes, with no search. The window's
statistics are then a walk over the counts, whatever its size. Limits: at most
:data:`MAX_BINS` bins and :data:`MAX_KS_POINTS` points per feature (the profile loader refuses
more). Every kernel runs without the GIL and is bounds-guarded: a column whose ranges do not fit
the arrays is left alone.

Why codes: recounting a 5,000-row window of cnn's 3,072 features every 10 s (the kernels before
these) copied 123 MB of float64 out of the ring and searched each value again for every compute
it stayed in. Side by side (perf_analyzer, cnn, 8 rows a request, c=64, 3 rounds, 4 s windows
from 3 s after ready), p99 with drift on was 190 / 174 / 185 ms with the recount and 159 / 167 /
178 with codes (their first version, 70 ns a value), against 141 / 146 / 143 off; with every
monitor on, 164 / 189 / 202 against 163 / 162 / 170. Coding then cost ~37 ns a value (3,840 rows
of cnn, timed alone), ~80 us of the drift thread's CPU per cnn request at the default 10% sample.

Each call codes (or evicts) the given rows for a range of columns, ``first:last``: a paced
caller cuts its work by columns, so that each column's guide, points and cells (~10 KB) serve
every queued row at once. Cut by rows instead (32 of cnn's rows a call), each call fetched every
column's tables again for a few values. Within a call, columns go in blocks of :data:`_BLOCK`,
the rows read a block's stretch at a time.

The KS cell is found through a guide of :data:`GUIDE_CELLS` equal cells per point over a
column's span, built with the same arithmetic as the lookup (:func:`_guide_cell`, monotone in
``v``), so that every point in a cell below ``v``'s is below ``v`` and every point in a cell
above is above: ``#{points <= v}`` is the cell's first index plus its points ``<= v``, compared
without a branch when the cell holds at most two (nearly always), else searched. (The previous
guide, one cell per point, was searched over three cells with a branch a step.)

Measured (``python -m loadtests.drift_ingest_bench --checkout BEFORE --checkout AFTER``: the
drift thread's intake of cnn, 44 requests of 8 rows a second, eviction included, median of 3
rounds), against the row-cut kernels: 112.7 -> 35.9 ns a value on varied rows (277 -> 88 us of
CPU per cnn request at the default 10% sample), 32.9 -> 24.6 on 8 distinct rows repeated.
Inside the server under perf_analyzer's load (cnn, drift only, c=64): 28.8 -> 24.4 ns a value
coded.
"""

from __future__ import annotations

import numpy as np
from numba import njit

#: Range flags (the low 2 bits of a code).
IN_RANGE, MISSING, BELOW, ABOVE = 0, 1, 2, 3
#: Most PSI bins, and most KS points, a feature may have (what 14 and 15 bits of a code hold).
MAX_BINS = 1 << 14
MAX_KS_POINTS = (1 << 15) - 1
#: Guide cells per KS point (:func:`ks_guide`): two leave fewer cells with more than two
#: points (the dense middle of a normal feature) than one, ~1.5 ns a value less (28.5 / 29.7
#: against 30.1 / 31.8, 3,840 varied rows in one call).
GUIDE_CELLS = 2
#: Columns per block (3,840 varied rows of 3,073 columns in one call: 23.9 ns a value with 4,
#: 25.4 with 8, 26.9 with 16, 27 with 32; with 1, 39: the rows are read column by column).
_BLOCK = 4


@njit(nogil=True, cache=True)
def ks_guide(values, ks_starts, guide, scale):
    """Fill each column's search guide: the span of its ``K`` points cut into ``G = GUIDE_CELLS
    * K`` equal cells (``scale[j] = G / span``), ``guide[GUIDE_CELLS * ks_starts[j] + j + g]`` =
    the index of the first point whose cell (:func:`_guide_cell`) is not below ``g``, for ``g``
    in ``0..G`` (``guide`` int64 [GUIDE_CELLS * ks_starts[-1] + columns]). A column of one
    distinct point, or a span not finite, gets scale 0 (searched over all its points)."""
    cols = min(ks_starts.shape[0] - 1, scale.shape[0])
    for j in range(cols):
        lo = ks_starts[j]
        hi = ks_starts[j + 1]
        scale[j] = 0.0
        base = GUIDE_CELLS * lo + j
        last = GUIDE_CELLS * (hi - lo)
        if hi <= lo or lo < 0 or hi > values.shape[0] or base + last >= guide.shape[0]:
            continue
        span = values[hi - 1] - values[lo]
        if not span > 0.0 or not span < np.inf:
            continue
        scale[j] = last / span
        k = lo
        for g in range(last + 1):
            while k < hi and _guide_cell(values[k], values[lo], scale[j], last - 1) < g:
                k += 1
            guide[base + g] = k


@njit(nogil=True, cache=True, inline="always")
def _guide_cell(v, first, scale, top):
    """The guide cell of ``v`` (``first <= v``), at most ``top``: the one formula the guide is
    built with and looked up by, so that it orders points and values alike."""
    return min(int((v - first) * scale), top)


@njit(nogil=True, cache=True)
def encode_rows(x, slots, codes, edges, starts, lo, hi, values, ks_starts, guide, scale,
                cumulative, cumulative_special, counts, special, cells, first, last):
    """Code columns ``first:last`` of the rows of ``x`` (float [n, f]) into ``codes[slots[i]]``
    (uint32 [size, f]; a slot < 0: counted in the cumulative counters only) and add them to the
    counters: ``cumulative`` and ``counts`` (int64 [f, width], per bin), ``cumulative_special``
    and ``special`` (int64 [f, 3]: missing, below, above), ``cells`` (int64, column ``j``'s
    ``2K + 1`` KS cells at ``2 * ks_starts[j] + j``). ``edges`` at ``starts[j]:starts[j + 1]``,
    the reference range ``lo[j]..hi[j]``, ECDF ``values`` at ``ks_starts[j]:ks_starts[j + 1]``
    with their guide (:func:`ks_guide`)."""
    n = min(x.shape[0], slots.shape[0])
    cols = min(x.shape[1], codes.shape[1], starts.shape[0] - 1, ks_starts.shape[0] - 1,
               lo.shape[0], hi.shape[0], scale.shape[0], counts.shape[0], special.shape[0],
               cumulative.shape[0], cumulative_special.shape[0], last)
    first = max(first, 0)
    width = min(counts.shape[1], cumulative.shape[1])
    psi_ok, ks_ok = _usable(first, cols, edges, starts, width, values, ks_starts, guide, cells)
    for block in range(first, cols, _BLOCK):
        end = min(block + _BLOCK, cols)
        for i in range(n):
            slot = slots[i]
            kept = 0 <= slot < codes.shape[0]
            for j in range(block, end):
                if not psi_ok[j - first]:
                    continue
                v = x[i, j]
                if v != v:
                    cumulative_special[j, MISSING - 1] += 1
                    if kept:
                        special[j, MISSING - 1] += 1
                        codes[slot, j] = MISSING
                    continue
                flag = IN_RANGE
                if v < lo[j]:
                    flag = BELOW
                elif v > hi[j]:
                    flag = ABOVE
                bin_ = _bin(v, edges, starts[j], starts[j + 1])
                cumulative[j, bin_] += 1
                if flag != IN_RANGE:
                    cumulative_special[j, flag - 1] += 1
                if not kept:
                    continue
                counts[j, bin_] += 1
                if flag != IN_RANGE:
                    special[j, flag - 1] += 1
                cell = 0
                if ks_ok[j - first]:
                    # the KS cell, written out: as an inlined call it took 20 of the kernel's
                    # 43 ns a value (8 distinct rows of cnn's 3,073 columns, 420 rows a call);
                    # values outside the points too: through the search's call, coding took
                    # 40 against 31 ns a value inside the server under perf_analyzer's load
                    p = ks_starts[j]
                    q = ks_starts[j + 1]
                    sc = scale[j]
                    bottom = values[p]
                    top = values[q - 1]
                    if v < bottom:
                        cell = 0
                    elif v >= top:  # above the last point, or on it
                        cell = 2 * (q - p) - (v == top)
                    elif sc > 0.0:
                        g = _guide_cell(v, bottom, sc, GUIDE_CELLS * (q - p) - 1)
                        a = guide[GUIDE_CELLS * p + j + g]
                        c = guide[GUIDE_CELLS * p + j + g + 1]
                        if c - a <= 2:  # 0, 1 or 2 points in v's cell: compared, no branch
                            i0 = min(a, q - 1)
                            i1 = min(a + 1, q - 1)
                            one = a < c
                            two = a + 1 < c
                            a = a + (one & (values[i0] <= v)) + (two & (values[i1] <= v))
                            equal = (one & (values[i0] == v)) | (two & (values[i1] == v))
                            cell = 2 * (a - p) - equal
                        else:
                            cell = _ks_search(v, p, a, c, values)
                    else:  # no guide (one distinct point, or a span not finite)
                        cell = _ks_search(v, p, p, q, values)
                    cells[2 * p + j + cell] += 1
                codes[slot, j] = np.uint32(cell << 16 | bin_ << 2 | flag)


@njit(nogil=True, cache=True)
def _ks_search(v, p, a, c, values):
    """``v``'s KS cell among points from ``values[p]`` (module docstring), ``#{points <= v}``
    known to lie in ``a..c``: ``2 #{points <= v}``, less 1 if ``v`` is a point."""
    while a < c:
        m = (a + c) >> 1
        if values[m] <= v:
            a = m + 1
        else:
            c = m
    return 2 * (a - p) - 1 if a > p and values[a - 1] == v else 2 * (a - p)


@njit(nogil=True, cache=True)
def evict_rows(slots, codes, edges, starts, values, ks_starts, guide, counts, special, cells,
               first, last):
    """Subtract columns ``first:last`` of the rows at ``slots`` of ``codes`` from the window's
    ``counts``, ``special`` and ``cells`` (as :func:`encode_rows` added them; slots out of
    range are skipped)."""
    cols = min(codes.shape[1], starts.shape[0] - 1, ks_starts.shape[0] - 1, counts.shape[0],
               special.shape[0], last)
    first = max(first, 0)
    psi_ok, ks_ok = _usable(first, cols, edges, starts, counts.shape[1], values, ks_starts,
                            guide, cells)
    for block in range(first, cols, _BLOCK):
        end = min(block + _BLOCK, cols)
        for i in range(slots.shape[0]):
            slot = slots[i]
            if not 0 <= slot < codes.shape[0]:
                continue
            for j in range(block, end):
                if not psi_ok[j - first]:
                    continue
                code = codes[slot, j]
                flag = code & 3
                if flag == MISSING:
                    special[j, MISSING - 1] -= 1
                    continue
                if flag != IN_RANGE:
                    special[j, flag - 1] -= 1
                counts[j, (code & 0xFFFF) >> 2] -= 1
                if ks_ok[j - first]:
                    cells[2 * ks_starts[j] + j + (code >> 16)] -= 1


@njit(nogil=True, cache=True)
def ks_from_cells(cells, ks_starts, cdf, live, out):
    """Each column's KS statistic from its window cells (:func:`encode_rows`) against the
    reference CDF ``cdf`` (at the points' places); ``live[j]`` non-NaN values in the window.
    NaN where a column has no live value or no point."""
    cols = min(ks_starts.shape[0] - 1, live.shape[0], out.shape[0])
    for j in range(cols):
        lo = ks_starts[j]
        hi = ks_starts[j + 1]
        base = 2 * lo + j
        m = live[j]
        if (m <= 0 or hi <= lo or lo < 0 or hi > cdf.shape[0]
                or base + 2 * (hi - lo) >= cells.shape[0]):
            out[j] = np.nan
            continue
        best = 0.0
        below = 0  # live values < point k
        before = 0.0  # the reference CDF just below point k
        for k in range(hi - lo):
            below += cells[base + 2 * k]
            best = max(best, abs(below / m - before))
            below += cells[base + 2 * k + 1]
            before = cdf[lo + k]
            best = max(best, abs(below / m - before))
        if cells[base + 2 * (hi - lo)] > 0:  # live values above the last point
            best = max(best, abs(1.0 - before))
        out[j] = best


@njit(nogil=True, cache=True, inline="always")
def _bin(v, edges, start, end):
    """``#{edges[start:end] < v}``: counted without a branch where there are few edges (the
    default 9: 15 of the kernel's 46 ns a value as a binary search, on cnn's window, ~5 as a
    count), else searched."""
    if end - start <= 16:
        count = 0
        for m in range(start, end):
            count += edges[m] < v
        return count
    a = start
    b = end
    while a < b:
        m = (a + b) >> 1
        if edges[m] < v:
            a = m + 1
        else:
            b = m
    return a - start


@njit(nogil=True, cache=True)
def _usable(first, cols, edges, starts, width, values, ks_starts, guide, cells):
    """Per column of ``first:cols`` (``first >= 0``; indexed from ``first``): whether its bins
    fit (``psi``), and whether it has KS points that fit (``ks``)."""
    psi = np.zeros(max(cols - first, 0), dtype=np.bool_)
    ks = np.zeros(max(cols - first, 0), dtype=np.bool_)
    for j in range(first, cols):
        s = starts[j]
        e = starts[j + 1]
        psi[j - first] = (0 <= s <= e <= edges.shape[0] and e - s + 1 <= width
                          and e - s < MAX_BINS)
        lo = ks_starts[j]
        hi = ks_starts[j + 1]
        ks[j - first] = (psi[j - first] and 0 <= lo < hi <= values.shape[0]
                         and hi - lo <= MAX_KS_POINTS
                         and GUIDE_CELLS * hi + j < guide.shape[0]
                         and 2 * hi + j < cells.shape[0])
    return psi, ks
