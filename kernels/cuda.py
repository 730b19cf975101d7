"""CUDA kernels (``numba.cuda.jit``) and :class:`ForestGPU`, the forest kept on a GPU.

Importing this module touches no GPU and compiles nothing: ``cuda.jit`` without a signature
compiles a kernel at its first launch (:meth:`ForestGPU.warmup` makes that launch at model
load). Every kernel walks rows with a grid-stride loop, one thread per row, and clamps its
extents to the arrays it is given. The math is :mod:`sluice.kernels.scalar`'s, the same functions
the CPU kernels compile. Everything runs under ``NUMBA_ENABLE_CUDASIM=1`` (slowly: a Python thread
per CUDA thread), which is how the tests cover it on machines without a GPU.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from numba import config, cuda, float32

from sluice.kernels import scalar
from sluice.kernels.forest import Forest
from sluice.kernels.scalar import SIGMOID, SOFTMAX, TRANSFORM_CODES

_tree_leaf = cuda.jit(device=True)(scalar.tree_leaf)
_compact_leaf = cuda.jit(device=True)(scalar.compact_leaf)
_sigmoid = cuda.jit(device=True)(scalar.sigmoid)
_standardize_one = cuda.jit(device=True)(scalar.standardize_one)
_minmax_one = cuda.jit(device=True)(scalar.minmax_one)
_softmax_row = cuda.jit(device=True)(scalar.softmax_row)
_argmax_row = cuda.jit(device=True)(scalar.argmax_row)
_topk_row = cuda.jit(device=True)(scalar.topk_row)

#: Threads per block for the row kernels.
THREADS_PER_BLOCK = 128
#: Tile edge and block height of the transpose kernel; a tile row is padded by one to spread
#: a tile column over the shared-memory banks (shapes must be literal constants).
_TILE, _TILE_ROWS, _TILE_PITCH = 32, 8, 33


def gpu_available() -> bool:
    """True when Numba sees a usable CUDA device (or the simulator is on); never raises."""
    try:
        return bool(cuda.is_available())
    except Exception:  # a broken driver install raises from deep inside numba
        return False


def simulator_enabled() -> bool:
    """True when ``NUMBA_ENABLE_CUDASIM=1`` replaced the GPU with Numba's simulator."""
    return bool(getattr(config, "ENABLE_CUDASIM", 0))


def launch(kernel, n_rows: int, *args, stream=0, threads: int = THREADS_PER_BLOCK) -> None:
    """Launch a row kernel of this module over ``n_rows`` rows (one thread each)."""
    blocks = max(1, (n_rows + threads - 1) // threads)
    kernel[blocks, threads, stream](*args)


@cuda.jit(device=True)
def _lesser(a, b):
    # builtin  is a star-args overload that Numba's CUDA target fails to compile
    return a if a < b else b


@cuda.jit(device=True)
def _finish_row(out, row, transform, sigmoid_scale):
    if transform == SIGMOID:
        for g in range(out.shape[1]):
            out[row, g] = _sigmoid(sigmoid_scale * out[row, g])
    elif transform == SOFTMAX:
        _softmax_row(out, row, out)


@cuda.jit
def predict_forest(feature, threshold, left, right, default_left, missing_type, value, roots,
                   groups, base_score, transform, sigmoid_scale, x, out):
    """out[i] = transform(base_score + leaves reached by row i), node arrays as in
    :class:`sluice.kernels.forest.Forest`; x float32 [n, n_features]; out float64 [n, n_groups]."""
    n = _lesser(x.shape[0], out.shape[0])
    for row in range(cuda.grid(1), n, cuda.gridsize(1)):
        for g in range(out.shape[1]):
            out[row, g] = base_score[g]
        for t in range(roots.shape[0]):
            leaf = _tree_leaf(x, row, roots[t], feature, threshold, left, right, default_left,
                              missing_type)
            out[row, groups[t]] += value[leaf]
        _finish_row(out, row, transform, sigmoid_scale)


@cuda.jit
def predict_compact(code, threshold, left, value, roots, depth, groups, base_score, transform,
                    sigmoid_scale, n_features, x, out):
    """:func:`predict_forest` over a :class:`sluice.kernels.forest.CompactForest`: every thread of a
    warp takes the same number of steps per tree, so the walk does not diverge. Reads x
    column-major best (neighbouring threads read neighbouring rows of one feature)."""
    n = _lesser(x.shape[0], out.shape[0])
    for row in range(cuda.grid(1), n, cuda.gridsize(1)):
        if out.shape[1] == 1:  # one group: accumulate in a register
            acc = base_score[0]
            for t in range(roots.shape[0]):
                acc += value[_compact_leaf(x, row, roots[t], depth[t], code, threshold, left,
                                           n_features)]
            out[row, 0] = acc
        else:
            for g in range(out.shape[1]):
                out[row, g] = base_score[g]
            for t in range(roots.shape[0]):
                leaf = _compact_leaf(x, row, roots[t], depth[t], code, threshold, left,
                                     n_features)
                out[row, groups[t]] += value[leaf]
        _finish_row(out, row, transform, sigmoid_scale)


@cuda.jit
def to_column_major(src, dst):
    """dst[i, j] = src[i, j] for a C-ordered float32 ``src`` and an F-ordered ``dst``, through
    a shared-memory tile so reads and writes are both coalesced. Launch with blocks of
    (32, 8) threads over a (ceil(n / 32), ceil(n_cols / 32)) grid."""
    tile = cuda.shared.array((_TILE, _TILE_PITCH), dtype=float32)
    n = _lesser(src.shape[0], dst.shape[0])
    cols = _lesser(src.shape[1], dst.shape[1])
    tx = cuda.threadIdx.x
    ty = cuda.threadIdx.y
    row0 = cuda.blockIdx.x * _TILE
    col0 = cuda.blockIdx.y * _TILE
    for r in range(ty, _TILE, _TILE_ROWS):
        if row0 + r < n and col0 + tx < cols:
            tile[r, tx] = src[row0 + r, col0 + tx]
    cuda.syncthreads()
    for c in range(ty, _TILE, _TILE_ROWS):
        if row0 + tx < n and col0 + c < cols:
            dst[row0 + tx, col0 + c] = tile[tx, c]


# --- pre- and post-processing: one thread per row, same contracts as sluice.kernels.cpu -----------


@cuda.jit
def standardize(x, mean, std, out):
    """out[i, j] = (x[i, j] - mean[j]) / std[j]; a zero std counts as 1."""
    cols = _lesser(_lesser(x.shape[1], out.shape[1]), _lesser(mean.shape[0], std.shape[0]))
    for i in range(cuda.grid(1), _lesser(x.shape[0], out.shape[0]), cuda.gridsize(1)):
        for j in range(cols):
            out[i, j] = _standardize_one(x[i, j], mean[j], std[j])


@cuda.jit
def minmax_scale(x, lo, hi, out):
    """out[i, j] = (x[i, j] - lo[j]) / (hi[j] - lo[j]); a zero range counts as 1."""
    cols = _lesser(_lesser(x.shape[1], out.shape[1]), _lesser(lo.shape[0], hi.shape[0]))
    for i in range(cuda.grid(1), _lesser(x.shape[0], out.shape[0]), cuda.gridsize(1)):
        for j in range(cols):
            out[i, j] = _minmax_one(x[i, j], lo[j], hi[j])


@cuda.jit
def softmax(x, out):
    """Row-wise softmax, max-subtracted; ``out`` may be ``x``."""
    if x.shape[1] == out.shape[1]:
        for i in range(cuda.grid(1), _lesser(x.shape[0], out.shape[0]), cuda.gridsize(1)):
            _softmax_row(x, i, out)


@cuda.jit
def sigmoid(x, out):
    """Element-wise logistic function."""
    cols = _lesser(x.shape[1], out.shape[1])
    for i in range(cuda.grid(1), _lesser(x.shape[0], out.shape[0]), cuda.gridsize(1)):
        for j in range(cols):
            out[i, j] = _sigmoid(x[i, j])


@cuda.jit
def argmax(x, out):
    """out[i] = index of row i's largest value (first on ties; first NaN wins)."""
    if x.shape[1] > 0:
        for i in range(cuda.grid(1), _lesser(x.shape[0], out.shape[0]), cuda.gridsize(1)):
            out[i] = _argmax_row(x, i)


@cuda.jit
def topk(x, k, out_values, out_indices):
    """Row-wise top ``k``: values descending, ties by lower index, NaN last."""
    k = _lesser(_lesser(k, out_values.shape[1]), out_indices.shape[1])
    n = _lesser(_lesser(x.shape[0], out_values.shape[0]), out_indices.shape[0])
    for i in range(cuda.grid(1), n, cuda.gridsize(1)):
        _topk_row(x, i, k, out_values, out_indices)


@cuda.jit
def threshold(x, t, out):
    """out[i, j] = 1 if x[i, j] >= t else 0 (NaN gives 0)."""
    cols = _lesser(x.shape[1], out.shape[1])
    for i in range(cuda.grid(1), _lesser(x.shape[0], out.shape[0]), cuda.gridsize(1)):
        for j in range(cols):
            out[i, j] = 1 if x[i, j] >= t else 0


class ForestGPU:
    """A Forest's compact layout uploaded once, with device buffers reused across batches.

    ``predict`` copies a batch in, transposes it on the device to column-major (so threads of
    a warp read one feature of neighbouring rows together), runs :func:`predict_compact` and
    copies the result out, all on this object's own stream. Buffers grow to the largest batch
    seen and are kept. Not thread-safe: one ForestGPU per model instance (the backend runs one
    batch per instance at a time). Creating one needs a GPU (or the simulator).
    """

    def __init__(self, forest: Forest, *, threads_per_block: int = THREADS_PER_BLOCK) -> None:
        # A server launches small grids whenever a batch is small (warm-up, light traffic):
        # numba's low-occupancy warning would fire on every such batch, and under a strict
        # warnings filter it turns a correct launch into an error. Process-wide, set only once
        # a GPU model is really built (importing this module changes nothing).
        config.CUDA_LOW_OCCUPANCY_WARNINGS = 0
        compact = forest.compact
        self.n_features = forest.n_features
        self.n_groups = forest.n_groups
        self._threads = threads_per_block
        self._transform = TRANSFORM_CODES[forest.transform]
        self._scale = float(forest.sigmoid_scale)
        self._stream = cuda.stream()
        self._nodes = tuple(
            cuda.to_device(a, stream=self._stream)
            for a in (compact.code, compact.threshold, compact.left, compact.value,
                      compact.roots, compact.depth, forest.groups, forest.base_score)
        )
        self._stream.synchronize()
        self._capacity = 0
        self._x_rows: Any = None  # device buffers, allocated by the first batch
        self._x_cols: Any = None
        self._out: Any = None

    @property
    def stream(self):
        """The CUDA stream every copy and launch of this object is queued on."""
        return self._stream

    @property
    def capacity(self) -> int:
        """Rows the device buffers hold now."""
        return self._capacity

    def _reserve(self, n: int) -> None:
        if n <= self._capacity:
            return
        self._x_rows = cuda.device_array((n, self.n_features), dtype=np.float32)
        self._x_cols = cuda.device_array((n, self.n_features), dtype=np.float32, order="F")
        self._out = cuda.device_array((n, self.n_groups), dtype=np.float64)
        self._capacity = n

    def predict_device(self, x_cols, out) -> None:
        """Run the forest on device arrays: ``x_cols`` float32 [n, n_features] (any layout;
        column-major is fastest), ``out`` float64 [n, n_groups]. Queued on this object's
        stream; no copies, no synchronization."""
        code, thr, left, value, roots, depth, groups, base = self._nodes
        launch(predict_compact, x_cols.shape[0], code, thr, left, value, roots, depth, groups,
               base, self._transform, self._scale, self.n_features, x_cols, out,
               stream=self._stream, threads=self._threads)

    def predict(self, x: np.ndarray) -> np.ndarray:
        """Predict host rows ``x`` (float32 [n, n_features]); returns float32 [n, n_groups]."""
        x = np.ascontiguousarray(x, dtype=np.float32)
        if x.ndim != 2 or x.shape[1] != self.n_features:
            raise ValueError(f"expected input of shape [n, {self.n_features}], got "
                             f"{list(x.shape)}")
        n = x.shape[0]
        if n == 0:
            return np.empty((0, self.n_groups), dtype=np.float32)
        self._reserve(n)
        rows, cols, out = self._x_rows[:n], self._x_cols[:n], self._out[:n]
        rows.copy_to_device(x, stream=self._stream)
        grid = (math.ceil(n / _TILE), math.ceil(self.n_features / _TILE))
        to_column_major[grid, (_TILE, _TILE_ROWS), self._stream](rows, cols)
        self.predict_device(cols, out)
        host = out.copy_to_host(stream=self._stream)
        self._stream.synchronize()
        return host.astype(np.float32)

    def warmup(self) -> None:
        """Compile and run the kernels once (one row), so no request pays for compiling."""
        self.predict(np.zeros((1, self.n_features), dtype=np.float32))
