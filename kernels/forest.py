"""A tree ensemble as flat arrays: built once at model load, read by the CPU and CUDA kernels.

Every node of every tree lives in one set of parallel arrays; a tree is its root's index. The
layout is library-neutral: the loaders in ``sluice.kernels.formats`` translate XGBoost's
and LightGBM's split rules into the single rule below, exactly, so one kernel reproduces both.

The decision at an inner node ``i`` for a row ``x`` of float32 features:

1. ``v = x[feature[i]]``.
2. If ``v`` is NaN: when ``missing_type[i]`` is :data:`MISSING_NONE` read it as ``v = 0.0`` and
   go on; otherwise it is missing and goes to the default child (left iff ``default_left[i]``).
3. If ``missing_type[i]`` is :data:`MISSING_ZERO` and ``|v| <= ZERO_THRESHOLD``, it is missing
   too and goes to the default child.
4. Otherwise go left iff ``v <= threshold[i]``.

XGBoost's rule is "left iff ``v < t``" with ``t`` a float32; for float32 ``v`` that is the same
as ``v <= t'`` with ``t'`` the next float32 below ``t``, which is what its loader stores.
LightGBM's rule is "left iff ``v <= t``" with a float64 ``t``, with its missing types None, Zero
and NaN (same numbering as :data:`MISSING_NONE`, :data:`MISSING_ZERO`, :data:`MISSING_NAN`).

The kernels walk :attr:`Forest.compact` (:class:`CompactForest`), the same trees renumbered so
that a step needs no branch; :func:`synthetic_forest` makes random forests for tests and
benchmarks.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np

#: LightGBM's missing type None: NaN is read as 0.0, zero is an ordinary value.
MISSING_NONE = 0
#: LightGBM's missing type Zero: NaN and values with ``|v| <= ZERO_THRESHOLD`` go to the default.
MISSING_ZERO = 1
#: NaN goes to the default child (XGBoost's only rule; LightGBM's missing type NaN).
MISSING_NAN = 2
#: LightGBM's ``kZeroThreshold``: the float ``1e-35f`` widened to double.
ZERO_THRESHOLD = float(np.float32(1e-35))

TRANSFORMS = ("identity", "sigmoid", "softmax")


@dataclass(frozen=True, eq=False)  # arrays: identity equality and hashing
class Forest:
    """A tree ensemble's nodes as parallel arrays (see the module docstring for the decision).

    The prediction for a row is ``transform(base_score + sum of the leaf values reached in
    every tree, each added to its tree's group)``; with ``transform == "sigmoid"`` the margin is
    first multiplied by ``sigmoid_scale`` (LightGBM's ``sigmoid:`` parameter; 1 for XGBoost).
    The arrays are owned by the Forest and must not be written after construction.
    """

    #: int32 [n_nodes]: the feature an inner node tests; -1 marks a leaf.
    feature: np.ndarray
    #: float64 [n_nodes]: go left iff the feature value <= threshold (0 for leaves).
    threshold: np.ndarray
    #: int32 [n_nodes]: absolute index of the left child (-1 for leaves).
    left: np.ndarray
    #: int32 [n_nodes]: absolute index of the right child (-1 for leaves).
    right: np.ndarray
    #: uint8 [n_nodes]: 1 when a missing value goes left.
    default_left: np.ndarray
    #: uint8 [n_nodes]: MISSING_NONE, MISSING_ZERO or MISSING_NAN.
    missing_type: np.ndarray
    #: float64 [n_nodes]: a leaf's value (0 for inner nodes).
    value: np.ndarray
    #: int32 [n_trees]: each tree's root node.
    roots: np.ndarray
    #: int32 [n_trees]: the output column each tree adds to.
    groups: np.ndarray
    #: Number of input columns the model reads (every feature index is below it).
    n_features: int
    #: Number of output columns (1, or the number of classes).
    n_groups: int
    #: float64 [n_groups]: the margin every row starts from, before the transform.
    base_score: np.ndarray
    #: "identity", "sigmoid" (per column) or "softmax" (across the columns of a row).
    transform: str
    #: Multiplies the margin before a sigmoid (LightGBM's ``sigmoid:``); ignored otherwise.
    sigmoid_scale: float = 1.0

    @property
    def n_nodes(self) -> int:
        return int(self.feature.shape[0])

    @property
    def n_trees(self) -> int:
        return int(self.roots.shape[0])

    @cached_property
    def compact(self) -> CompactForest:
        """This forest in the kernels' traversal layout (:class:`CompactForest`), built on
        first use (at model load, by the warm-up) and kept."""
        return compact_layout(self)

    def validate(self) -> None:
        """Raise ValueError naming the first inconsistency: dtypes and lengths, a child or
        feature index out of range, a node reachable twice (a cycle or shared subtree), groups
        or base_score that do not fit ``n_groups``, an unknown transform."""
        node_arrays = {
            "feature": (self.feature, np.int32), "threshold": (self.threshold, np.float64),
            "left": (self.left, np.int32), "right": (self.right, np.int32),
            "default_left": (self.default_left, np.uint8),
            "missing_type": (self.missing_type, np.uint8), "value": (self.value, np.float64),
        }
        n = self.n_nodes
        for name, (arr, dtype) in node_arrays.items():
            _check_array(name, arr, dtype, n)
        _check_array("roots", self.roots, np.int32, self.n_trees)
        _check_array("groups", self.groups, np.int32, self.n_trees)
        if self.n_groups < 1:
            raise ValueError(f"n_groups must be >= 1, got {self.n_groups}")
        if self.n_features < 1:
            raise ValueError(f"n_features must be >= 1, got {self.n_features}")
        _check_array("base_score", self.base_score, np.float64, self.n_groups)
        if self.transform not in TRANSFORMS:
            raise ValueError(f"transform must be one of {TRANSFORMS}, got {self.transform!r}")
        if self.n_trees == 0:
            raise ValueError("the forest has no trees")
        inner = self.feature >= 0
        if np.any(self.feature < -1):
            raise ValueError(f"node {_first(self.feature < -1)}: feature must be >= -1")
        bad = inner & (self.feature >= self.n_features)
        if bad.any():
            i = _first(bad)
            raise ValueError(f"node {i}: feature {self.feature[i]} >= n_features "
                             f"{self.n_features}")
        for name, child in (("left", self.left), ("right", self.right)):
            bad = inner & ((child < 0) | (child >= n))
            if bad.any():
                i = _first(bad)
                raise ValueError(f"node {i}: {name} child {child[i]} out of range [0, {n})")
        bad = inner & (self.missing_type > MISSING_NAN)
        if bad.any():
            raise ValueError(f"node {_first(bad)}: unknown missing_type")
        if np.any(np.isnan(self.threshold[inner])):
            raise ValueError(f"node {_first(inner & np.isnan(self.threshold))}: NaN threshold")
        if np.any((self.roots < 0) | (self.roots >= n)):
            raise ValueError(f"tree {_first((self.roots < 0) | (self.roots >= n))}: root out of "
                             f"range [0, {n})")
        if np.any((self.groups < 0) | (self.groups >= self.n_groups)):
            i = _first((self.groups < 0) | (self.groups >= self.n_groups))
            raise ValueError(f"tree {i}: group {self.groups[i]} out of range [0, {self.n_groups})")
        self.max_depth()  # raises on a cycle or a node reachable twice

    def max_depth(self) -> int:
        """The number of decisions on the longest root-to-leaf path (0 for single-leaf trees).
        Raises ValueError when a node is reachable twice (a cycle or a shared subtree)."""
        seen = np.zeros(self.n_nodes, dtype=np.int32)
        np.add.at(seen, self.roots, 1)
        if np.any(seen > 1):
            raise ValueError(f"node {_first(seen > 1)} is the root of more than one tree")
        frontier = self.roots
        depth = -1
        while frontier.size:
            depth += 1
            frontier = frontier[self.feature[frontier] >= 0]
            frontier = np.concatenate([self.left[frontier], self.right[frontier]])
            np.add.at(seen, frontier, 1)
            if np.any(seen[frontier] > 1):
                i = int(frontier[seen[frontier] > 1][0])
                raise ValueError(f"node {i} is reachable twice (a cycle or shared subtree)")
        return depth


def _check_array(name: str, arr: np.ndarray, dtype: type, length: int) -> None:
    if not isinstance(arr, np.ndarray) or arr.dtype != dtype or arr.ndim != 1:
        got = f"{arr.dtype}[{arr.ndim}d]" if isinstance(arr, np.ndarray) else type(arr).__name__
        raise ValueError(f"{name} must be a 1-d {np.dtype(dtype).name} array, got {got}")
    if arr.shape[0] != length:
        raise ValueError(f"{name} has {arr.shape[0]} entries, expected {length}")
    if not arr.flags.c_contiguous:
        raise ValueError(f"{name} must be contiguous")


def _first(mask: np.ndarray) -> int:
    return int(np.flatnonzero(mask)[0])



@dataclass(frozen=True, eq=False)  # arrays: identity equality and hashing
class CompactForest:
    """The forest renumbered for branch-free traversal: no leaf tests, no per-node branches.

    Nodes are renumbered breadth-first within each tree so that an inner node's children are
    ``left[k]`` and ``left[k] + 1``; a leaf is its own left child with threshold +inf, so a row
    that reached it stays there. A row walks exactly ``depth[t]`` steps of tree ``t``:
    ``k = left[k] + (0 if go_left else 1)``. ``code`` is ``feature + n_features * variant``
    with the variant saying what is missing and where it goes: 0 NaN goes right, 1 NaN goes
    left, 2 NaN and zero (``|v| <= ZERO_THRESHOLD``) go right, 3 they go left. Other values go
    left iff ``v <= threshold``, a float32 (the largest <= the Forest's, exact for float32 v).
    The CPU kernel reads each row as ``n_copies`` side-by-side copies with the missing values
    of variant ``i`` written as +inf (even ``i``) or -inf (odd ``i``) in copy ``i``, which turns
    every step into one load and one compare.
    """

    #: int32 [n_nodes]: feature + n_features * variant (leaves: variant 1, feature 0).
    code: np.ndarray
    #: float32 [n_nodes]: split threshold (+inf for leaves).
    threshold: np.ndarray
    #: int32 [n_nodes]: the left child (the right one follows it); a leaf's own index.
    left: np.ndarray
    #: float64 [n_nodes]: leaf values (0 for inner nodes).
    value: np.ndarray
    #: int32 [n_trees]: each tree's root.
    roots: np.ndarray
    #: int32 [n_trees]: each tree's depth (0 for a single leaf).
    depth: np.ndarray
    #: Copies of a row the CPU kernel needs: 2, or 4 when a node treats zero as missing.
    n_copies: int
    #: An inner node has threshold +inf: the CPU kernel (NaN read as +inf) cannot take it.
    has_inf_threshold: bool


def compact_layout(forest: Forest) -> CompactForest:
    """Build :class:`CompactForest` for a validated ``forest``."""
    nf = forest.n_features
    # Breadth-first over all trees at once; sorting by (tree, visit order) keeps each tree's
    # nodes together in breadth-first order with siblings side by side.
    visits, trees, levels = [], [], []
    frontier = forest.roots.astype(np.int64)
    owner = np.arange(forest.n_trees)
    level = 0
    while frontier.size:
        visits.append(frontier)
        trees.append(owner)
        levels.append(np.full(frontier.size, level))
        inner = forest.feature[frontier] >= 0
        frontier = np.stack([forest.left[frontier[inner]], forest.right[frontier[inner]]],
                            axis=1).ravel().astype(np.int64)
        owner = np.repeat(owner[inner], 2)
        level += 1
    old = np.concatenate(visits)
    tree = np.concatenate(trees)
    order = np.lexsort((np.arange(old.size), tree))
    old, tree, lvl = old[order], tree[order], np.concatenate(levels)[order]
    new = np.full(forest.n_nodes, -1, dtype=np.int64)
    new[old] = np.arange(old.size)
    inner = forest.feature[old] >= 0
    depth = np.zeros(forest.n_trees, dtype=np.int32)
    np.maximum.at(depth, tree[inner], lvl[inner].astype(np.int32) + 1)

    thr64 = forest.threshold[old]
    t32 = thr64.astype(np.float32)
    t32 = np.where(t32.astype(np.float64) > thr64, np.nextafter(t32, np.float32(-np.inf)), t32)
    mt = forest.missing_type[old]
    nan_left = np.where(mt == MISSING_NONE, thr64 >= 0.0, forest.default_left[old] != 0)
    variant = nan_left + 2 * (mt == MISSING_ZERO)
    return CompactForest(
        code=np.where(inner, forest.feature[old] + nf * variant, nf).astype(np.int32),
        threshold=np.where(inner, t32, np.float32(np.inf)).astype(np.float32),
        left=np.where(inner, new[forest.left[old]], np.arange(old.size)).astype(np.int32),
        value=np.where(inner, 0.0, forest.value[old]),
        roots=new[forest.roots].astype(np.int32),
        depth=depth,
        n_copies=4 if np.any(inner & (mt == MISSING_ZERO)) else 2,
        has_inf_threshold=bool(np.any(inner & (t32 == np.inf))),
    )


def synthetic_forest(n_trees: int, depth: int, n_features: int, *, n_groups: int = 1,
                     leaf_prob: float = 0.1, seed: int = 0) -> Forest:
    """A random, validated forest for tests and benchmarks (no training library needed):
    trees up to ``depth`` deep whose nodes below the root stop early with ``leaf_prob``,
    random features, float32-valued N(0, 1) thresholds, random missing directions (NaN type),
    N(0, 0.1) leaves; sigmoid for one group, softmax for more (trees round-robin)."""
    rng = np.random.default_rng(seed)
    feature: list[int] = []
    left: list[int] = []
    right: list[int] = []
    roots: list[int] = []
    threshold: list[float] = []
    value: list[float] = []

    def grow(level: int) -> int:
        index = len(feature)
        feature.append(-1)
        threshold.append(0.0)
        left.append(-1)
        right.append(-1)
        value.append(0.0)
        if level == depth or (level > 0 and rng.random() < leaf_prob):
            value[index] = float(rng.normal(0.0, 0.1))
            return index
        feature[index] = int(rng.integers(n_features))
        threshold[index] = float(np.float32(rng.normal()))
        left[index] = grow(level + 1)
        right[index] = grow(level + 1)
        return index

    for _ in range(n_trees):
        roots.append(grow(0))
    n = len(feature)
    forest = Forest(
        feature=np.array(feature, dtype=np.int32), threshold=np.array(threshold),
        left=np.array(left, dtype=np.int32), right=np.array(right, dtype=np.int32),
        default_left=rng.integers(0, 2, n).astype(np.uint8),
        missing_type=np.full(n, MISSING_NAN, dtype=np.uint8), value=np.array(value),
        roots=np.array(roots, dtype=np.int32),
        groups=(np.arange(n_trees) % n_groups).astype(np.int32), n_features=n_features,
        n_groups=n_groups, base_score=np.zeros(n_groups),
        transform="sigmoid" if n_groups == 1 else "softmax",
    )
    forest.validate()
    return forest
