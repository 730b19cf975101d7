"""CPU kernels against independent NumPy formulas, and the forest kernels against a plain-Python
walk of the decision rule documented in kernels/forest.py."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest

from sluice.kernels import cpu
from sluice.kernels.forest import (
    MISSING_NAN,
    MISSING_NONE,
    MISSING_ZERO,
    ZERO_THRESHOLD,
    Forest,
    compact_layout,
    synthetic_forest,
)

rng = np.random.default_rng(0)
SHAPES = [(1, 1), (1, 7), (5, 3), (100, 10)]


def _x(shape, scale=3.0):
    return (rng.normal(size=shape) * scale).astype(np.float32)


# --- pre- and post-processing ---------------------------------------------------------------


@pytest.mark.parametrize("shape", SHAPES)
def test_standardize(shape):
    x = _x(shape)
    mean = rng.normal(size=shape[1]).astype(np.float32)
    std = rng.uniform(0.5, 2, size=shape[1]).astype(np.float32)
    std[0] = 0  # a constant column keeps its scale
    out = np.empty_like(x)
    cpu.standardize(x, mean, std, out)
    expected = (x - mean) / np.where(std == 0, 1, std)
    np.testing.assert_allclose(out, expected, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("shape", SHAPES)
def test_minmax_scale(shape):
    x = _x(shape)
    lo = x.min(axis=0) - 1
    hi = x.max(axis=0) + 1
    hi[0] = lo[0]
    out = np.empty_like(x)
    cpu.minmax_scale(x, lo, hi, out)
    span = hi - lo
    np.testing.assert_allclose(out, (x - lo) / np.where(span == 0, 1, span), rtol=1e-6,
                               atol=1e-6)


def _np_softmax(x):
    x = x.astype(np.float64)
    e = np.exp(x - x.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


@pytest.mark.parametrize("shape", SHAPES)
def test_softmax(shape):
    x = _x(shape)
    out = np.empty_like(x)
    cpu.softmax(x, out)
    np.testing.assert_allclose(out, _np_softmax(x), rtol=1e-6, atol=1e-7)


def test_softmax_large_logits_and_in_place():
    x = np.array([[1000.0, 1001.0, -1000.0], [-1e4, -1e4, -1e4], [88.0, 89.0, 90.0]],
                 dtype=np.float32)
    out = np.empty_like(x)
    cpu.softmax(x, out)
    assert np.all(np.isfinite(out))
    np.testing.assert_allclose(out, _np_softmax(x), rtol=1e-6, atol=1e-7)
    cpu.softmax(x, x)  # out may be x
    np.testing.assert_allclose(x, out)


@pytest.mark.parametrize("shape", SHAPES)
def test_sigmoid(shape):
    x = _x(shape, scale=10)
    x.flat[0] = 1000
    x.flat[-1] = -1000
    out = np.empty_like(x)
    cpu.sigmoid(x, out)
    expected = np.exp(-np.logaddexp(0, -x.astype(np.float64)))  # overflow-free 1/(1+e^-x)
    np.testing.assert_allclose(out, expected, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("shape", SHAPES)
def test_argmax(shape):
    x = np.round(_x(shape))  # rounding makes ties
    out = np.empty(shape[0], dtype=np.int64)
    cpu.argmax(x, out)
    np.testing.assert_array_equal(out, np.argmax(x, axis=1))


def test_argmax_ties_and_nan():
    x = np.array([[1, 3, 3], [np.nan, 5, 1], [2, np.nan, 9], [-1, -1, -1]], dtype=np.float32)
    out = np.empty(4, dtype=np.int64)
    cpu.argmax(x, out)
    np.testing.assert_array_equal(out, np.argmax(x, axis=1))


def _np_topk(x, k):
    idx = np.argsort(-x, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(x, idx, axis=1), idx


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("k", [1, 3, "all"])
def test_topk(shape, k):
    k = shape[1] if k == "all" else min(k, shape[1])
    x = np.round(_x(shape))
    x[rng.random(shape) < 0.1] = np.nan
    values = np.empty((shape[0], k), dtype=np.float32)
    indices = np.empty((shape[0], k), dtype=np.int64)
    cpu.topk(x, k, values, indices)
    exp_values, exp_indices = _np_topk(x, k)
    np.testing.assert_array_equal(indices, exp_indices)
    np.testing.assert_array_equal(values, exp_values)  # NaN == NaN here


def test_topk_more_than_columns_pads():
    x = np.array([[2, 1]], dtype=np.float32)
    values = np.zeros((1, 3), dtype=np.float32)
    indices = np.zeros((1, 3), dtype=np.int64)
    cpu.topk(x, 3, values, indices)
    np.testing.assert_array_equal(indices, [[0, 1, -1]])
    assert values[0, 0] == 2 and math.isnan(values[0, 2])


@pytest.mark.parametrize("shape", SHAPES)
def test_threshold(shape):
    x = _x(shape)
    x.flat[0] = 0.5
    x.flat[-1] = np.nan
    out = np.empty(shape, dtype=np.int64)
    cpu.threshold(x, 0.5, out)
    np.testing.assert_array_equal(out, (x >= 0.5).astype(np.int64))


def test_extents_are_clamped_to_every_array():
    x = _x((4, 3))
    out = np.full((4, 3), -7, dtype=np.float32)
    cpu.standardize(x, np.zeros(2, np.float32), np.ones(2, np.float32), out)  # 2 params
    np.testing.assert_array_equal(out[:, :2], x[:, :2])
    assert np.all(out[:, 2] == -7)
    labels = np.full(2, -1, dtype=np.int64)
    cpu.argmax(x, labels)  # fewer out rows than x rows
    np.testing.assert_array_equal(labels, np.argmax(x[:2], axis=1))


def test_warmup_compiles_everything():
    cpu.warmup()
    for kernel in (cpu.predict_forest, cpu.predict_forest_serial, cpu.predict_compact,
                   cpu.predict_compact_serial, cpu.standardize, cpu.minmax_scale, cpu.softmax,
                   cpu.sigmoid, cpu.argmax, cpu.topk, cpu.threshold):
        assert kernel.signatures, kernel


# --- forests --------------------------------------------------------------------------------


def _hand_forest(transform: str = "softmax") -> Forest:
    """Tree 0 (group 0): x0 <= 0.5 (NaN left) ? (x1 <= -1 (zero/NaN right) ? -1 : 2) : 3.
    Tree 1 (group 1): x2 <= 0 (NaN read as 0) ? 0.5 : (x0 <= 2 (NaN right) ? -0.25 : 1)."""
    n_groups = 2 if transform == "softmax" else 1
    return Forest(
        feature=np.array([0, 1, -1, -1, -1, 2, -1, 0, -1, -1], dtype=np.int32),
        threshold=np.array([0.5, -1, 0, 0, 0, 0, 0, 2, 0, 0]),
        left=np.array([1, 2, -1, -1, -1, 6, -1, 8, -1, -1], dtype=np.int32),
        right=np.array([4, 3, -1, -1, -1, 7, -1, 9, -1, -1], dtype=np.int32),
        default_left=np.array([1, 0, 0, 0, 0, 1, 0, 0, 0, 0], dtype=np.uint8),
        missing_type=np.array([MISSING_NAN, MISSING_ZERO, 0, 0, 0, MISSING_NONE, 0,
                               MISSING_NAN, 0, 0], dtype=np.uint8),
        value=np.array([0, 0, -1, 2, 3, 0, 0.5, 0, -0.25, 1]),
        roots=np.array([0, 5], dtype=np.int32),
        groups=np.array([0, n_groups - 1], dtype=np.int32),
        n_features=3, n_groups=n_groups, base_score=np.linspace(0.1, 0.2, n_groups),
        transform=transform, sigmoid_scale=1.5 if transform == "sigmoid" else 1.0,
    )


def _python_predict(forest: Forest, x: np.ndarray) -> np.ndarray:
    """The documented decision rule, one row and one node at a time."""
    margins = np.tile(forest.base_score, (x.shape[0], 1))
    for i, row in enumerate(x):
        for root, group in zip(forest.roots, forest.groups, strict=True):
            node = root
            while forest.feature[node] >= 0:
                v = float(row[forest.feature[node]])
                kind = forest.missing_type[node]
                missing = False
                if math.isnan(v):
                    if kind == MISSING_NONE:
                        v = 0.0
                    else:
                        missing = True
                elif kind == MISSING_ZERO and abs(v) <= ZERO_THRESHOLD:
                    missing = True
                go_left = forest.default_left[node] == 1 if missing else v <= forest.threshold[node]
                node = forest.left[node] if go_left else forest.right[node]
            margins[i, group] += forest.value[node]
    if forest.transform == "sigmoid":
        return 1 / (1 + np.exp(-forest.sigmoid_scale * margins))
    if forest.transform == "softmax":
        return _np_softmax(margins)
    return margins


def _tricky_rows(n: int, n_features: int, special: list[float]) -> np.ndarray:
    """Random rows salted with NaN, zeros, +-tiny values and exact threshold values."""
    x = rng.normal(size=(n, n_features)).astype(np.float32) * 2
    choices = np.array([np.nan, 0.0, -0.0, 1e-36, -1e-36, *special], dtype=np.float32)
    mask = rng.random(x.shape) < 0.4
    x[mask] = rng.choice(choices, size=mask.sum())
    return x


@pytest.mark.parametrize("transform", ["softmax", "sigmoid", "identity"])
@pytest.mark.parametrize("rows", [1, cpu.BLOCK_ROWS, cpu.BLOCK_ROWS + 1, 200])
def test_forest_predict_hand_built(transform, rows):
    forest = _hand_forest(transform)
    forest.validate()
    x = _tricky_rows(rows, 3, [0.5, -1.0, 2.0, np.nextafter(np.float32(0.5), np.float32(1))])
    expected = _python_predict(forest, x)
    np.testing.assert_allclose(cpu.forest_predict(forest, x), expected, rtol=1e-6, atol=1e-7)


def test_general_kernel_takes_inf_thresholds():
    forest = _hand_forest()
    forest = dataclasses.replace(forest, threshold=np.where(np.arange(10) == 7, np.inf,
                                                            forest.threshold))
    assert forest.compact.has_inf_threshold  # the compact CPU kernel cannot take it
    x = _tricky_rows(100, 3, [np.inf, -np.inf])
    np.testing.assert_allclose(cpu.forest_predict(forest, x), _python_predict(forest, x),
                               rtol=1e-6, atol=1e-7)


def test_general_and_compact_kernels_agree_on_a_random_forest():
    forest = synthetic_forest(40, 6, 12, n_groups=3, seed=3)
    kinds = rng.integers(0, 3, size=forest.n_nodes).astype(np.uint8)  # all missing types
    forest = dataclasses.replace(forest, missing_type=kinds)
    x = _tricky_rows(150, 12, [0.0])
    got = cpu.forest_predict(forest, x)
    np.testing.assert_allclose(got, _python_predict(forest, x), rtol=1e-6, atol=1e-7)
    out = np.empty_like(got)
    f = forest
    cpu.predict_forest(f.feature, f.threshold, f.left, f.right, f.default_left, f.missing_type,
                       f.value, f.roots, f.groups, f.base_score, 2, 1.0, f.n_features,
                       cpu.readonly(x), out)
    np.testing.assert_allclose(out, got, rtol=1e-6, atol=1e-7)


def test_forest_predict_out_param_and_shapes():
    forest = _hand_forest()
    x = _tricky_rows(10, 3, [])
    out = np.empty((10, 2), dtype=np.float32)
    assert cpu.forest_predict(forest, x, out) is out
    assert cpu.forest_predict(forest, x[:0]).shape == (0, 2)
    np.testing.assert_allclose(cpu.forest_predict(forest, x.astype(np.float64)), out)
    with pytest.raises(ValueError, match="out must be"):
        cpu.forest_predict(forest, x, np.empty((10, 2)))
    with pytest.raises(ValueError, match=r"expected input of shape \[n, 3\]"):
        cpu.forest_predict(forest, x[:, :2])
    with pytest.raises(ValueError, match="n_features columns"):  # the kernel checks too
        cpu.predict_forest_serial(*(getattr(forest, a) for a in (
            "feature", "threshold", "left", "right", "default_left", "missing_type", "value",
            "roots", "groups", "base_score")), 2, 1.0, 3, cpu.readonly(x[:, :2].copy()), out)


def test_compact_layout():
    forest = _hand_forest()
    compact = compact_layout(forest)
    np.testing.assert_array_equal(compact.depth, [2, 2])
    inner = compact.threshold != np.inf
    leaves = np.flatnonzero(~inner)
    np.testing.assert_array_equal(compact.left[leaves], leaves)  # leaves absorb
    assert compact.n_copies == 4  # tree 0 has a MISSING_ZERO node
    assert sorted(compact.value[leaves]) == sorted(forest.value[forest.feature < 0])


@pytest.mark.parametrize(("field", "value", "message"), [
    ("left", np.array([1, 2, -1, -1, -1, 6, -1, 80, -1, -1], dtype=np.int32),
     "node 7: left child 80 out of range"),
    ("feature", np.array([0, 5, -1, -1, -1, 2, -1, 0, -1, -1], dtype=np.int32),
     "node 1: feature 5 >= n_features 3"),
    ("right", np.array([4, 3, -1, -1, -1, 7, -1, 5, -1, -1], dtype=np.int32),
     "node 5 is reachable twice"),
    ("groups", np.array([0, 2], dtype=np.int32), "tree 1: group 2 out of range"),
    ("value", np.zeros(9), "value has 9 entries, expected 10"),
    ("threshold", np.zeros(10, dtype=np.float32), "threshold must be a 1-d float64 array"),
    ("transform", "tanh", "transform must be one of"),
])
def test_validate_names_the_inconsistency(field, value, message):
    forest = dataclasses.replace(_hand_forest(), **{field: value})
    with pytest.raises(ValueError, match=message):
        forest.validate()


def test_forest_predict_from_several_threads_at_once():
    """The backend calls kernels from executor threads; the parallel kernel must take that."""
    from concurrent.futures import ThreadPoolExecutor

    forest = synthetic_forest(30, 6, 8, seed=5)
    batches = [_tricky_rows(150, 8, []) for _ in range(8)]
    expected = [cpu.forest_predict(forest, x) for x in batches]
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda x: cpu.forest_predict(forest, x), batches * 3))
    for got, want in zip(results, expected * 3, strict=True):
        np.testing.assert_array_equal(got, want)


def test_the_forest_kernels_are_compiled_for_read_only_rows_only():
    """forest_predict hands the kernels read-only rows whatever it is given: one
    specialisation each serves requests (read-only views over the wire bytes) and batches cut
    from several requests (writable). Last in this file, so it sees every compile above."""
    forest = synthetic_forest(5, 3, 4, seed=2)
    x = _x((cpu.BLOCK_ROWS + 3, 4))
    for rows in (x[:2], x):  # serial, parallel
        np.testing.assert_array_equal(cpu.forest_predict(forest, rows.copy()),
                                      cpu.forest_predict(forest, cpu.readonly(rows)))
    for kernel in cpu.FOREST_KERNELS:
        for signature in kernel.signatures:
            assert not signature[-2].mutable, (kernel.__name__, signature)  # x
    view = cpu.readonly(x)
    assert not view.flags.writeable and x.flags.writeable and np.shares_memory(view, x)
    assert cpu.readonly(view) is view
