"""Scalar and per-row math shared by the CPU and the CUDA kernels, written once as plain Python.

:mod:`sluice.kernels.cpu` compiles these with ``numba.njit(inline="always")`` and
:mod:`sluice.kernels.cuda` with ``numba.cuda.jit(device=True)``. So that both compilers take them,
each function is self-contained: it calls no other function of this module (to Numba a plain-Python
callee is an untyped global), only ``math`` and module constants, which Numba freezes at compile
time. Row functions read row ``r`` of a 2-d array and write row ``r`` of their out-params; they
allocate nothing (CUDA threads cannot).
"""

from __future__ import annotations

import math

from sluice.kernels.forest import MISSING_NONE, MISSING_ZERO, ZERO_THRESHOLD

#: Codes of :attr:`sluice.kernels.forest.Forest.transform` as the kernels take them.
IDENTITY, SIGMOID, SOFTMAX = 0, 1, 2
TRANSFORM_CODES = {"identity": IDENTITY, "sigmoid": SIGMOID, "softmax": SOFTMAX}


def tree_leaf(x, row, node, feature, threshold, left, right, default_left, missing_type):
    """Walk row ``row`` of ``x`` from ``node`` down to a leaf and return the leaf's index.

    The decision at each node is the one :mod:`sluice.kernels.forest` documents. The caller
    guarantees a validated forest (children in range, no cycles) and ``x`` at least ``n_features``
    wide.
    """
    f = feature[node]
    while f >= 0:
        v = float(x[row, f])
        mt = missing_type[node]
        missing = False
        if v != v:
            if mt == MISSING_NONE:
                v = 0.0
            else:
                missing = True
        elif mt == MISSING_ZERO and -ZERO_THRESHOLD <= v <= ZERO_THRESHOLD:
            missing = True
        if missing:
            go_left = default_left[node] != 0
        else:
            go_left = v <= threshold[node]
        node = left[node] if go_left else right[node]
        f = feature[node]
    return node


def compact_leaf(x, row, root, depth, code, threshold, left, n_features):
    """Walk row ``row`` of ``x`` down a tree of a :class:`sluice.kernels.forest.CompactForest` from
    ``root`` (exactly ``depth`` steps, no leaf tests); returns the leaf's index."""
    k = root
    for _ in range(depth):
        c = code[k]
        variant = c // n_features
        v = x[row, c - variant * n_features]
        if v != v or (variant >= 2 and -ZERO_THRESHOLD <= v <= ZERO_THRESHOLD):
            go_left = (variant & 1) != 0
        else:
            go_left = v <= threshold[k]
        k = left[k] + 1 - go_left
    return k


def compact_step(v, k, threshold, left):
    """One step of :func:`compact_leaf` from node ``k`` for a value ``v`` read from the row's
    copy that already has its missing values as +inf or -inf: the next node."""
    return left[k] + 1 - (v <= threshold[k])


def sigmoid(z):
    """1 / (1 + exp(-z)) without overflow for large ``|z|``."""
    if z >= 0.0:
        return 1.0 / (1.0 + math.exp(-z))
    e = math.exp(z)
    return e / (1.0 + e)


def standardize_one(v, mean, std):
    """(v - mean) / std; a zero std counts as 1 (a constant column only loses its mean)."""
    if std == 0.0:
        return v - mean
    return (v - mean) / std


def minmax_one(v, lo, hi):
    """(v - lo) / (hi - lo); a zero range counts as 1 (a constant column maps to v - lo)."""
    span = hi - lo
    if span == 0.0:
        return v - lo
    return (v - lo) / span


def softmax_row(x, r, out):
    """out[r] = exp(x[r] - max) / sum(exp(x[r] - max)); ``out`` may be ``x``. A NaN in the row
    makes the whole row NaN, as NumPy's formula does."""
    n = x.shape[1]
    m = x[r, 0]
    for j in range(1, n):
        if x[r, j] > m:
            m = x[r, j]
    s = 0.0
    for j in range(n):
        e = math.exp(x[r, j] - m)
        out[r, j] = e
        s += e
    for j in range(n):
        out[r, j] = out[r, j] / s


def argmax_row(x, r):
    """Index of the largest value of row ``r``, the first one on ties; the first NaN wins, as in
    ``np.argmax``."""
    best = 0
    bv = x[r, 0]
    if bv != bv:
        return 0
    for j in range(1, x.shape[1]):
        v = x[r, j]
        if v != v:
            return j
        if v > bv:
            bv = v
            best = j
    return best


def topk_row(x, r, k, out_values, out_indices):
    """The ``k`` largest values of row ``r`` in descending order, ties by lower index, NaN below
    every number (the order of ``np.argsort(-x, kind="stable")``). O(k * n_cols), no scratch
    memory: pick ``j`` is the best entry ranking after pick ``j - 1``. Picks past the row's
    length get index -1 and value NaN."""
    n = x.shape[1]
    pv = 0.0
    pi = -1
    for j in range(k):
        bi = -1
        bv = 0.0
        for c in range(n):
            v = x[r, c]
            if pi >= 0:  # must rank after the previous pick
                if pv != pv:
                    after = v != v and c > pi
                elif v != v:
                    after = True
                else:
                    after = v < pv or (v == pv and c > pi)
                if not after:
                    continue
            if bi < 0:
                better = True
            elif v != v:
                better = False
            elif bv != bv:
                better = True
            else:
                better = v > bv
            if better:
                bi = c
                bv = v
        if bi < 0:  # k > n_cols: nothing left
            out_indices[r, j] = -1
            out_values[r, j] = math.nan
            continue
        out_indices[r, j] = bi
        out_values[r, j] = bv
        pi = bi
        pv = bv
