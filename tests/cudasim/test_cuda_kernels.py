"""Every CUDA kernel and ForestGPU under NUMBA_ENABLE_CUDASIM=1, against the CPU kernels.

The simulator runs a Python thread per CUDA thread, so inputs stay small: tens of rows, a few
small trees, 32 threads per block.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from numba import cuda

from sluice.kernels import cpu
from sluice.kernels import cuda as gpu
from sluice.kernels.forest import MISSING_ZERO, Forest, synthetic_forest

THREADS = 32
rng = np.random.default_rng(0)


def _rows(n: int, n_features: int) -> np.ndarray:
    """Random rows salted with NaN, zeros and +-tiny values."""
    x = rng.normal(size=(n, n_features)).astype(np.float32)
    specials = np.array([np.nan, 0.0, 1e-36, -1e-36], dtype=np.float32)
    mask = rng.random(x.shape) < 0.3
    x[mask] = rng.choice(specials, size=mask.sum())
    return x


def _forest(n_groups: int = 1, all_missing_types: bool = True, seed: int = 1) -> Forest:
    forest = synthetic_forest(4, 4, 6, n_groups=n_groups, seed=seed)
    if all_missing_types:
        kinds = rng.integers(0, 3, size=forest.n_nodes).astype(np.uint8)
        forest = dataclasses.replace(forest, missing_type=kinds)
    return forest


def test_simulator_is_on():
    assert gpu.simulator_enabled()
    assert gpu.gpu_available()


@pytest.mark.parametrize("n_groups", [1, 3])
def test_forest_gpu_matches_cpu(n_groups):
    forest = _forest(n_groups)
    assert np.any(forest.missing_type[forest.feature >= 0] == MISSING_ZERO)
    x = _rows(40, forest.n_features)
    model = gpu.ForestGPU(forest, threads_per_block=THREADS)
    np.testing.assert_allclose(model.predict(x), cpu.forest_predict(forest, x), rtol=1e-6,
                               atol=1e-7)


def test_forest_gpu_reuses_and_grows_buffers():
    forest = _forest(2)
    model = gpu.ForestGPU(forest, threads_per_block=THREADS)
    model.warmup()
    assert model.capacity == 1
    for rows, capacity in ((20, 20), (35, 35), (7, 35), (0, 35)):
        x = _rows(rows, forest.n_features)
        got = model.predict(x)
        assert got.shape == (rows, 2) and got.dtype == np.float32
        assert model.capacity == capacity
        np.testing.assert_allclose(got, cpu.forest_predict(forest, x), rtol=1e-6, atol=1e-7)
    with pytest.raises(ValueError, match=r"expected input of shape \[n, 6\]"):
        model.predict(np.zeros((2, 5), dtype=np.float32))


def test_forest_gpu_takes_inf_thresholds():
    forest = _forest(1)
    inner = np.flatnonzero(forest.feature >= 0)
    forest = dataclasses.replace(forest, threshold=np.where(
        np.arange(forest.n_nodes) == inner[1], np.inf, forest.threshold))
    x = _rows(30, forest.n_features)
    x[::3, forest.feature[inner[1]]] = np.inf
    got = gpu.ForestGPU(forest, threads_per_block=THREADS).predict(x)
    np.testing.assert_allclose(got, cpu.forest_predict(forest, x), rtol=1e-6, atol=1e-7)


def test_general_forest_kernel_matches_cpu():
    f = _forest(3)
    x = _rows(33, f.n_features)
    out = cuda.device_array((33, 3), dtype=np.float64)
    args = [cuda.to_device(a) for a in (f.feature, f.threshold, f.left, f.right,
                                        f.default_left, f.missing_type, f.value, f.roots,
                                        f.groups, f.base_score)]
    gpu.launch(gpu.predict_forest, 33, *args, 2, 1.0, cuda.to_device(x), out, threads=THREADS)
    np.testing.assert_allclose(out.copy_to_host(), cpu.forest_predict(f, x), rtol=1e-6,
                               atol=1e-7)


def test_to_column_major():
    x = rng.normal(size=(45, 37)).astype(np.float32)  # partial tiles on both axes
    dst = cuda.device_array(x.shape, dtype=np.float32, order="F")
    gpu.to_column_major[(2, 2), (32, 8)](cuda.to_device(x), dst)
    np.testing.assert_array_equal(dst.copy_to_host(), x)


def test_lightgbm_model_on_the_gpu(tmp_path):
    lgb = pytest.importorskip("lightgbm")
    from sluice.kernels.formats import load_lightgbm_text

    x = _rows(300, 5)
    y = (np.nan_to_num(x[:, 0]) + np.nan_to_num(x[:, 1]) > 0).astype(float)
    params = {"objective": "binary", "num_leaves": 8, "verbose": -1, "num_threads": 1,
              "zero_as_missing": True, "seed": 0}
    booster = lgb.train(params, lgb.Dataset(x, label=y), 5)
    booster.save_model(tmp_path / "model.txt")
    forest = load_lightgbm_text(tmp_path / "model.txt")
    got = gpu.ForestGPU(forest, threads_per_block=THREADS).predict(x[:40])
    np.testing.assert_allclose(got, booster.predict(x[:40]).reshape(-1, 1), atol=1e-5)


# --- pre- and post-processing, each against its CPU twin ------------------------------------


def _run(kernel, x, *params, out_shape=None, out_dtype=np.float32):
    out = cuda.device_array(out_shape or x.shape, dtype=out_dtype)
    gpu.launch(kernel, x.shape[0], cuda.to_device(x),
               *(cuda.to_device(p) if isinstance(p, np.ndarray) else p for p in params), out,
               threads=THREADS)
    return out.copy_to_host()


def _cpu(kernel, x, *params, out_shape=None, out_dtype=np.float32):
    out = np.empty(out_shape or x.shape, dtype=out_dtype)
    kernel(x, *params, out)
    return out


X = (rng.normal(size=(37, 5)) * 4).astype(np.float32)
X[0] = [1000, 1001, -1000, 3, 3]  # large logits, ties
X[1, 2] = np.nan


def test_standardize_and_minmax():
    mean = rng.normal(size=5).astype(np.float32)
    std = np.array([1, 2, 0, 0.5, 3], dtype=np.float32)
    np.testing.assert_allclose(_run(gpu.standardize, X, mean, std),
                               _cpu(cpu.standardize, X, mean, std), rtol=1e-6)
    lo, hi = mean - 1, mean + std
    np.testing.assert_allclose(_run(gpu.minmax_scale, X, lo, hi),
                               _cpu(cpu.minmax_scale, X, lo, hi), rtol=1e-6)


@pytest.mark.parametrize("name", ["softmax", "sigmoid"])
def test_softmax_and_sigmoid(name):
    np.testing.assert_allclose(_run(getattr(gpu, name), X), _cpu(getattr(cpu, name), X),
                               rtol=1e-6, atol=1e-7)


def test_argmax_threshold_topk():
    n = X.shape[0]
    np.testing.assert_array_equal(
        _run(gpu.argmax, X, out_shape=(n,), out_dtype=np.int64),
        _cpu(cpu.argmax, X, out_shape=(n,), out_dtype=np.int64))
    np.testing.assert_array_equal(
        _run(gpu.threshold, X, 0.5, out_dtype=np.int64),
        _cpu(cpu.threshold, X, 0.5, out_dtype=np.int64))
    for k in (1, 5):
        values = cuda.device_array((n, k), dtype=np.float32)
        indices = cuda.device_array((n, k), dtype=np.int64)
        gpu.launch(gpu.topk, n, cuda.to_device(X), k, values, indices, threads=THREADS)
        exp_values = np.empty((n, k), dtype=np.float32)
        exp_indices = np.empty((n, k), dtype=np.int64)
        cpu.topk(X, k, exp_values, exp_indices)
        np.testing.assert_array_equal(indices.copy_to_host(), exp_indices)
        np.testing.assert_array_equal(values.copy_to_host(), exp_values)
