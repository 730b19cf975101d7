"""CPU kernels: ``@njit(nogil=True, cache=True)`` functions over arrays, writing into out-params.

Nothing compiles at import: a kernel compiles on its first call for the argument types it gets
(or loads from Numba's on-disk cache beside this file), and a backend's warm-up makes the calls
its model needs at model load. Every kernel releases the GIL, so executor threads run them side
by side. The forest kernels come in a ``parallel=True`` form (rows split over Numba's thread
pool) and a serial form for small batches; calling a parallel kernel from several threads at
once needs a thread-safe Numba threading layer (``omp`` or ``tbb``; Numba picks one when
installed), so :func:`forest_predict` stays serial if Numba fell back to ``workqueue``.

Compiling is what a cold start waits for (tens of seconds on a busy two-core machine, when
everything compiled twice), so the kernels are shaped to compile little:

- each specialisation is compiled once: the row arrays a kernel reads are passed read-only
  (:func:`readonly`; a request's tensors arrive read-only, a batch cut from several is
  writable, and Numba compiles the two apart), and parameters with the dtypes the backends
  pass;
- the block walkers are ordinary functions, called once per block of rows instead of inlined
  into each kernel: compiled once, they serve both the serial and the parallel form, which
  took the parallel form's compile from about 8 to about 3 CPU-seconds (a call per 32 rows
  costs nothing measurable: 1 and 32 rows of breast_cancer take as long as before);
- a backend warms only the kernels its model uses (:func:`warmup` compiles them all, for
  tests and benchmarks).

Numba's cache is keyed on this file only: after editing :mod:`sluice.kernels.scalar`, delete
``kernels/__pycache__/*.nbi`` and ``*.nbc`` (a fresh checkout has none).
"""

from __future__ import annotations

import threading
from typing import Any

import numba
import numpy as np
from numba import njit, prange

from sluice.kernels import scalar
from sluice.kernels.forest import MISSING_ZERO, ZERO_THRESHOLD, Forest
from sluice.kernels.scalar import SIGMOID, SOFTMAX, TRANSFORM_CODES

_tree_leaf = njit(inline="always")(scalar.tree_leaf)
_compact_step = njit(inline="always")(scalar.compact_step)
_sigmoid = njit(inline="always")(scalar.sigmoid)
_standardize_one = njit(inline="always")(scalar.standardize_one)
_minmax_one = njit(inline="always")(scalar.minmax_one)
_softmax_row = njit(inline="always")(scalar.softmax_row)
_argmax_row = njit(inline="always")(scalar.argmax_row)
_topk_row = njit(inline="always")(scalar.topk_row)

#: Rows per block. A block walks every tree before the next block starts, so a tree's nodes
#: stay in L1 for all the block's rows; batches up to one block run on the calling thread.
BLOCK_ROWS = 32


@njit(nogil=True)
def _start_block(base_score, nb):
    acc = np.empty((nb, base_score.shape[0]), dtype=np.float64)
    for r in range(nb):
        for g in range(base_score.shape[0]):
            acc[r, g] = base_score[g]
    return acc


@njit(nogil=True)
def _finish_block(acc, lo, transform, sigmoid_scale, out):
    for r in range(acc.shape[0]):
        if transform == SIGMOID:
            for g in range(acc.shape[1]):
                acc[r, g] = _sigmoid(sigmoid_scale * acc[r, g])
        elif transform == SOFTMAX:
            _softmax_row(acc, r, acc)
        for g in range(acc.shape[1]):
            out[lo + r, g] = acc[r, g]


@njit(nogil=True)
def _general_block(lo, hi, feature, thr, left, right, default_left, missing_type, value, roots,
                   groups, base_score, transform, sigmoid_scale, x, out):
    acc = _start_block(base_score, hi - lo)
    for t in range(roots.shape[0]):
        root = roots[t]
        g = groups[t]
        for r in range(hi - lo):
            leaf = _tree_leaf(x, lo + r, root, feature, thr, left, right, default_left,
                              missing_type)
            acc[r, g] += value[leaf]
    _finish_block(acc, lo, transform, sigmoid_scale, out)


@njit(nogil=True)
def _compact_block(lo, hi, code, thr, left, value, roots, depth, groups, base_score, transform,
                   sigmoid_scale, n_copies, x, out):
    # Copy i of a row holds its values with the ones variant i treats as missing written as
    # +inf (even i) or -inf (odd i), so a step is one load and one compare. All rows of the
    # block step through a tree level by level: independent chains the CPU overlaps. Unsigned
    # indices spare Numba's negative-index wraparound on every load.
    nb = hi - lo
    nf = x.shape[1]
    acc = _start_block(base_score, nb)
    rows = np.empty(nb * n_copies * nf, dtype=np.float32)
    for r in range(nb):
        base = r * n_copies * nf
        for j in range(nf):
            v = x[lo + r, j]
            nan = v != v
            rows[base + j] = np.inf if nan else v
            rows[base + nf + j] = -np.inf if nan else v
            if n_copies == 4:
                zero = nan or -ZERO_THRESHOLD <= v <= ZERO_THRESHOLD
                rows[base + 2 * nf + j] = np.inf if zero else v
                rows[base + 3 * nf + j] = -np.inf if zero else v
    pos = np.empty(nb, dtype=np.uint32)
    offset = np.empty(nb, dtype=np.uint32)
    for r in range(nb):
        offset[r] = np.uint32(r * n_copies * nf)
    for t in range(roots.shape[0]):
        for r in range(nb):
            pos[r] = roots[t]
        for _ in range(depth[t]):
            for r in range(nb):
                k = pos[r]
                pos[r] = _compact_step(rows[offset[r] + np.uint32(code[k])], k, thr, left)
        g = groups[t]
        for r in range(nb):
            acc[r, g] += value[pos[r]]
    _finish_block(acc, lo, transform, sigmoid_scale, out)


@njit(nogil=True)
def _checked_rows(n_features, base_score, x, out):
    if x.shape[1] != n_features or out.shape[1] != base_score.shape[0]:
        raise ValueError("x must have n_features columns and out n_groups columns")
    return min(x.shape[0], out.shape[0])


@njit(parallel=True, nogil=True, cache=True)
def predict_forest(feature, threshold, left, right, default_left, missing_type, value, roots,
                   groups, base_score, transform, sigmoid_scale, n_features, x, out):
    """out[i] = transform(base_score + the leaves row i of x reaches, summed per group).

    Node arrays as in :class:`sluice.kernels.forest.Forest` (validated); ``transform`` a code from
    ``TRANSFORM_CODES``; x float32 [n, n_features]; out float [n, n_groups] (other widths
    raise ValueError). Blocks of ``BLOCK_ROWS`` rows run in parallel.
    """
    n = _checked_rows(n_features, base_score, x, out)
    for b in prange((n + BLOCK_ROWS - 1) // BLOCK_ROWS):
        lo = b * BLOCK_ROWS
        _general_block(lo, min(n, lo + BLOCK_ROWS), feature, threshold, left, right,
                       default_left, missing_type, value, roots, groups, base_score,
                       transform, sigmoid_scale, x, out)


@njit(nogil=True, cache=True)
def predict_forest_serial(feature, threshold, left, right, default_left, missing_type, value,
                          roots, groups, base_score, transform, sigmoid_scale, n_features, x,
                          out):
    """:func:`predict_forest` on the calling thread only."""
    n = _checked_rows(n_features, base_score, x, out)
    for lo in range(0, n, BLOCK_ROWS):
        _general_block(lo, min(n, lo + BLOCK_ROWS), feature, threshold, left, right,
                       default_left, missing_type, value, roots, groups, base_score,
                       transform, sigmoid_scale, x, out)


@njit(parallel=True, nogil=True, cache=True)
def predict_compact(code, threshold, left, value, roots, depth, groups, base_score, transform,
                    sigmoid_scale, n_copies, n_features, x, out):
    """:func:`predict_forest` over a :class:`sluice.kernels.forest.CompactForest` (its ``code``,
    ``threshold``, ``left``, ``value``, ``roots``, ``depth``, ``n_copies``); the forest must
    have no +inf threshold (``has_inf_threshold``)."""
    n = _checked_rows(n_features, base_score, x, out)
    for b in prange((n + BLOCK_ROWS - 1) // BLOCK_ROWS):
        lo = b * BLOCK_ROWS
        _compact_block(lo, min(n, lo + BLOCK_ROWS), code, threshold, left, value, roots, depth,
                       groups, base_score, transform, sigmoid_scale, n_copies, x, out)


@njit(nogil=True, cache=True)
def predict_compact_serial(code, threshold, left, value, roots, depth, groups, base_score,
                           transform, sigmoid_scale, n_copies, n_features, x, out):
    """:func:`predict_compact` on the calling thread only."""
    n = _checked_rows(n_features, base_score, x, out)
    for lo in range(0, n, BLOCK_ROWS):
        _compact_block(lo, min(n, lo + BLOCK_ROWS), code, threshold, left, value, roots, depth,
                       groups, base_score, transform, sigmoid_scale, n_copies, x, out)


def forest_predict(forest: Forest, x: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """Predict ``x`` (float32 [n, n_features]; other dtypes are converted) with ``forest``.

    Returns float32 [n, n_groups]: probabilities for sigmoid/softmax, the margin for identity;
    written into ``out`` when given (float32, C-contiguous, that shape). Uses the forest's
    compact layout (:attr:`Forest.compact`) unless a threshold is +inf; batches of more than
    ``BLOCK_ROWS`` rows use Numba's thread pool.
    """
    x = readonly(np.ascontiguousarray(x, dtype=np.float32))
    if x.ndim != 2 or x.shape[1] != forest.n_features:
        raise ValueError(f"expected input of shape [n, {forest.n_features}], got "
                         f"{list(x.shape)}")
    shape = (x.shape[0], forest.n_groups)
    if out is None:
        out = np.empty(shape, dtype=np.float32)
    elif out.shape != shape or out.dtype != np.float32 or not out.flags.c_contiguous:
        raise ValueError(f"out must be a C-contiguous float32 array of shape {list(shape)}")
    if x.shape[0] == 0:
        return out
    parallel = x.shape[0] > BLOCK_ROWS
    layer = _threading_layer() if parallel else None  # asking costs a microsecond
    parallel = parallel and layer != "workqueue"
    transform = TRANSFORM_CODES[forest.transform]
    scale = float(forest.sigmoid_scale)
    compact = forest.compact
    if not compact.has_inf_threshold:
        kernel = predict_compact if parallel else predict_compact_serial
        args = (compact.code, compact.threshold, compact.left, compact.value, compact.roots,
                compact.depth, forest.groups, forest.base_score, transform, scale,
                compact.n_copies, forest.n_features, x, out)
    else:
        kernel = predict_forest if parallel else predict_forest_serial
        args = (forest.feature, forest.threshold, forest.left, forest.right,
                forest.default_left, forest.missing_type, forest.value, forest.roots,
                forest.groups, forest.base_score, transform, scale, forest.n_features, x, out)
    if parallel and layer is None:
        with _FIRST_PARALLEL:  # models warm up side by side; see _FIRST_PARALLEL
            kernel(*args)
    else:
        kernel(*args)
    return out


def readonly(x: np.ndarray) -> np.ndarray:
    """``x`` when it is read-only, else a read-only view of it (no copy). The kernels take the
    rows they read read-only: a request's tensors arrive so (views over the wire bytes), a batch
    cut from several requests is writable, and Numba would compile each kernel for both."""
    if not x.flags.writeable:
        return x
    view = x.view()
    view.flags.writeable = False
    return view


#: Held around a parallel run made before Numba has picked its threading layer: the first run
#: picks it, and should it pick ``workqueue`` (no ``omp`` or ``tbb`` installed), two first runs
#: at once, from two models warming up side by side, would abort the process.
_FIRST_PARALLEL = threading.Lock()


def _threading_layer() -> str | None:
    """Numba's threading layer, or None while no parallel kernel has run. With ``workqueue``,
    which aborts the process when two threads enter parallel code at once, the serial kernels
    are used."""
    try:
        return numba.threading_layer()
    except ValueError:  # no parallel kernel has run yet
        return None


# --- pre- and post-processing: one row at a time, extents clamped to every array given -------


@njit(nogil=True, cache=True)
def standardize(x, mean, std, out):
    """out[i, j] = (x[i, j] - mean[j]) / std[j]; a zero std counts as 1."""
    cols = min(x.shape[1], out.shape[1], mean.shape[0], std.shape[0])
    for i in range(min(x.shape[0], out.shape[0])):
        for j in range(cols):
            out[i, j] = _standardize_one(x[i, j], mean[j], std[j])


@njit(nogil=True, cache=True)
def minmax_scale(x, lo, hi, out):
    """out[i, j] = (x[i, j] - lo[j]) / (hi[j] - lo[j]); a zero range counts as 1."""
    cols = min(x.shape[1], out.shape[1], lo.shape[0], hi.shape[0])
    for i in range(min(x.shape[0], out.shape[0])):
        for j in range(cols):
            out[i, j] = _minmax_one(x[i, j], lo[j], hi[j])


@njit(nogil=True, cache=True)
def softmax(x, out):
    """Row-wise softmax, max-subtracted so large logits do not overflow; ``out`` may be ``x``."""
    if x.shape[1] != out.shape[1]:
        return
    for i in range(min(x.shape[0], out.shape[0])):
        _softmax_row(x, i, out)


@njit(nogil=True, cache=True)
def sigmoid(x, out):
    """Element-wise logistic function, stable for large ``|x|``."""
    cols = min(x.shape[1], out.shape[1])
    for i in range(min(x.shape[0], out.shape[0])):
        for j in range(cols):
            out[i, j] = _sigmoid(x[i, j])


@njit(nogil=True, cache=True)
def argmax(x, out):
    """out[i] = index of row i's largest value (first on ties; first NaN wins, as np.argmax)."""
    if x.shape[1] == 0:
        return
    for i in range(min(x.shape[0], out.shape[0])):
        out[i] = _argmax_row(x, i)


@njit(nogil=True, cache=True)
def topk(x, k, out_values, out_indices):
    """Row-wise top ``k``: values descending, ties by lower index, NaN last; O(k * n_cols)."""
    k = min(k, out_values.shape[1], out_indices.shape[1])
    for i in range(min(x.shape[0], out_values.shape[0], out_indices.shape[0])):
        _topk_row(x, i, k, out_values, out_indices)


@njit(nogil=True, cache=True)
def threshold(x, t, out):
    """out[i, j] = 1 if x[i, j] >= t else 0 (NaN gives 0)."""
    cols = min(x.shape[1], out.shape[1])
    for i in range(min(x.shape[0], out.shape[0])):
        for j in range(cols):
            out[i, j] = 1 if x[i, j] >= t else 0


def warmup() -> None:
    """Call every kernel once on tiny arrays of the types the backends pass (read-only float32
    rows, float64 parameter arrays, float32 outputs, int64 labels/indices), so none of them pays
    for compiling later. With ``cache=True`` a later process loads the machine code from disk
    instead. A backend warms only the kernels its model uses; this is for tests and benchmarks."""
    for forest in (_tiny_forest(np.inf), _tiny_forest(0.5)):
        for rows in (1, BLOCK_ROWS + 1):
            forest_predict(forest, np.zeros((rows, forest.n_features), dtype=np.float32))
    x = readonly(np.array([[0.5, -1.0, 2.0]], dtype=np.float32))
    p = np.ones(3)
    f32 = np.empty(x.shape, dtype=np.float32)
    standardize(x, p, p, f32)
    minmax_scale(x, p - 1, p, f32)
    softmax(x, f32)
    sigmoid(x, f32)
    argmax(x, np.empty(1, dtype=np.int64))
    topk(x, 2, np.empty((1, 2), dtype=np.float32), np.empty((1, 2), dtype=np.int64))
    threshold(x, 0.5, np.empty(x.shape, dtype=np.int64))


def compile_counts(kernels: tuple[Any, ...]) -> tuple[int, int]:
    """(specialisations of ``kernels`` this process holds, how many of them came from Numba's
    on-disk cache): the difference across a warm-up says what it compiled and what it read."""
    return (sum(len(k.signatures) for k in kernels),
            sum(sum(k.stats.cache_hits.values()) for k in kernels))


#: The kernels :func:`forest_predict` may call.
FOREST_KERNELS = (predict_forest, predict_forest_serial, predict_compact, predict_compact_serial)


def _tiny_forest(split: float) -> Forest:
    """Two trees over two features: a stump on feature 0 at ``split`` (+inf sends it to the
    general kernel) and a single leaf."""
    forest = Forest(
        feature=np.array([0, -1, -1, -1], dtype=np.int32),
        threshold=np.array([split, 0, 0, 0], dtype=np.float64),
        left=np.array([1, -1, -1, -1], dtype=np.int32),
        right=np.array([2, -1, -1, -1], dtype=np.int32),
        default_left=np.array([1, 0, 0, 0], dtype=np.uint8),
        missing_type=np.array([MISSING_ZERO, 0, 0, 0], dtype=np.uint8),
        value=np.array([0, -1.0, 1.0, 0.25]),
        roots=np.array([0, 3], dtype=np.int32), groups=np.array([0, 1], dtype=np.int32),
        n_features=2, n_groups=2, base_score=np.zeros(2), transform="softmax",
    )
    forest.validate()
    return forest
