"""The CUDA kernels on a real GPU, on larger inputs, against the CPU kernels.

Skipped unless Numba sees a CUDA device and the simulator is off. On a GPU machine run
``tests/gpu/run.sh`` (no install, no network); without pytest there this file runs itself.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from sluice.kernels import cpu
from sluice.kernels import cuda as gpu
from sluice.kernels.forest import synthetic_forest

try:
    import pytest
except ImportError:  # the GPU machine may lack pytest: run.sh then runs this file directly
    pytest = None


def _real_gpu() -> bool:
    return gpu.gpu_available() and not gpu.simulator_enabled()


if pytest is not None:
    pytestmark = [
        pytest.mark.gpu,
        pytest.mark.skipif(not _real_gpu(), reason="needs an NVIDIA GPU visible to numba.cuda"),
        # small launches in a test are expected; they are not what this file measures
        pytest.mark.filterwarnings("ignore:.*Grid size"),
    ]

rng = np.random.default_rng(0)


def _rows(n: int, n_features: int) -> np.ndarray:
    x = rng.normal(size=(n, n_features)).astype(np.float32)
    x[rng.random(x.shape) < 0.05] = np.nan
    x[rng.random(x.shape) < 0.02] = 0.0
    return x


def test_forest_gpu_large_forest():
    forest = synthetic_forest(500, 8, 100, seed=0)
    x = _rows(65536, forest.n_features)
    got = gpu.ForestGPU(forest).predict(x)
    np.testing.assert_allclose(got, cpu.forest_predict(forest, x), rtol=1e-6, atol=1e-6)


def test_forest_gpu_multiclass_all_missing_types_and_buffer_reuse():
    forest = synthetic_forest(120, 7, 40, n_groups=3, seed=1)
    kinds = rng.integers(0, 3, size=forest.n_nodes).astype(np.uint8)
    forest = dataclasses.replace(forest, missing_type=kinds)
    model = gpu.ForestGPU(forest)
    for rows in (5000, 20000, 777):
        x = _rows(rows, forest.n_features)
        np.testing.assert_allclose(model.predict(x), cpu.forest_predict(forest, x), rtol=1e-6,
                                   atol=1e-6)
    assert model.capacity == 20000


def test_general_forest_kernel():
    from numba import cuda

    f = synthetic_forest(100, 8, 30, n_groups=2, seed=2)
    x = _rows(10000, f.n_features)
    out = cuda.device_array((10000, 2), dtype=np.float64)
    args = [cuda.to_device(a) for a in (f.feature, f.threshold, f.left, f.right,
                                        f.default_left, f.missing_type, f.value, f.roots,
                                        f.groups, f.base_score)]
    gpu.launch(gpu.predict_forest, 10000, *args, 2, 1.0, cuda.to_device(x), out)
    np.testing.assert_allclose(out.copy_to_host(), cpu.forest_predict(f, x), rtol=1e-6,
                               atol=1e-6)


def test_processing_kernels():
    from numba import cuda

    x = (rng.normal(size=(100_000, 16)) * 5).astype(np.float32)
    x[::97, 3] = np.nan
    n = x.shape[0]
    d_x = cuda.to_device(x)
    p1 = rng.normal(size=16).astype(np.float32)
    p2 = rng.uniform(1, 2, size=16).astype(np.float32)

    def both(name, *params, shape=x.shape, dtype=np.float32):
        d_out = cuda.device_array(shape, dtype=dtype)
        gpu.launch(getattr(gpu, name), n, d_x,
                   *(cuda.to_device(p) if isinstance(p, np.ndarray) else p for p in params),
                   d_out)
        out = np.empty(shape, dtype=dtype)
        getattr(cpu, name)(x, *params, out)
        return d_out.copy_to_host(), out

    for name, params in (("standardize", (p1, p2)), ("minmax_scale", (p1, p1 + p2)),
                         ("softmax", ()), ("sigmoid", ())):
        got, expected = both(name, *params)
        np.testing.assert_allclose(got, expected, rtol=2e-6, atol=1e-7)
    got, expected = both("argmax", shape=(n,), dtype=np.int64)
    np.testing.assert_array_equal(got, expected)
    got, expected = both("threshold", 0.5, dtype=np.int64)
    np.testing.assert_array_equal(got, expected)
    values, indices = (cuda.device_array((n, 4), dtype=t) for t in (np.float32, np.int64))
    gpu.launch(gpu.topk, n, d_x, 4, values, indices)
    exp_values, exp_indices = np.empty((n, 4), np.float32), np.empty((n, 4), np.int64)
    cpu.topk(x, 4, exp_values, exp_indices)
    np.testing.assert_array_equal(indices.copy_to_host(), exp_indices)
    np.testing.assert_array_equal(values.copy_to_host(), exp_values)


if __name__ == "__main__":
    from tests.gpu.runner import run_tests

    run_tests(globals(), _real_gpu())
