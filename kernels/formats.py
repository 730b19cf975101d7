"""Tree-ensemble model files -> :class:`sluice.kernels.forest.Forest`, checked once at model load.

Two formats, both the libraries' own text formats: XGBoost's JSON model (``Booster.save_model``
to ``model.json`` / ``xgboost.json``) and LightGBM's text model (``Booster.save_model`` to
``model.txt``). The loaders translate each library's split rule into the Forest's single rule
(see :mod:`sluice.kernels.forest`) so the kernels reproduce ``Booster.predict`` exactly, NaN
included. Every failure is a :class:`FormatError` whose message names the file and the problem.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from sluice.kernels import ubjson
from sluice.kernels.forest import MISSING_NAN, ZERO_THRESHOLD, Forest


class FormatError(ValueError):
    """A model file Sluice cannot read; the message names the file and the problem."""

#: File names looked for when no ``model_type`` is given, and the loader each selects.
XGBOOST_JSON_FILES = ("model.json", "xgboost.json")
LIGHTGBM_FILES = ("model.txt",)
#: Triton FIL ``model_type`` values this server reads, and those it refuses.
MODEL_TYPES = ("xgboost_json", "lightgbm")
UNSUPPORTED_MODEL_TYPES = ("xgboost", "treelite_checkpoint")

#: XGBoost objective -> (transform, base_score is a probability whose logit is the margin).
_XGB_OBJECTIVES = {
    "binary:logistic": ("sigmoid", True),
    "reg:logistic": ("sigmoid", True),
    "binary:logitraw": ("identity", False),
    "reg:squarederror": ("identity", False),
    "reg:absoluteerror": ("identity", False),
    "reg:pseudohubererror": ("identity", False),
    "multi:softprob": ("softmax", False),
}
#: LightGBM objectives whose output is the raw score.
_LGB_IDENTITY = ("regression", "regression_l1", "huber", "fair", "quantile", "mape")


def load_tree_model(model_dir: Path, model_type: str | None) -> Forest:
    """Load the tree model in ``model_dir`` (a version directory).

    ``model_type`` is Triton FIL's parameter: ``xgboost_json`` or ``lightgbm``; ``None`` picks
    by file name (``model.json`` / ``xgboost.json`` -> XGBoost JSON, ``model.txt`` ->
    LightGBM). XGBoost's binary format and Treelite checkpoints are refused.
    """
    model_dir = Path(model_dir)
    if model_type in UNSUPPORTED_MODEL_TYPES:
        raise FormatError(f"model_type '{model_type}' is not supported, save the model as "
                             "JSON (XGBoost: Booster.save_model('model.json'))")
    if model_type is not None and model_type not in MODEL_TYPES:
        raise FormatError(f"unknown model_type '{model_type}'; expected one of "
                             f"{', '.join(MODEL_TYPES)}")
    xgb = [model_dir / n for n in XGBOOST_JSON_FILES if (model_dir / n).is_file()]
    lgb = [model_dir / n for n in LIGHTGBM_FILES if (model_dir / n).is_file()]
    if model_type == "xgboost_json":
        lgb = []
    elif model_type == "lightgbm":
        xgb = []
    found = xgb + lgb
    if not found:
        if (model_dir / "xgboost.model").is_file() or any(model_dir.glob("*.ubj")):
            raise FormatError("XGBoost's binary model format is not supported, save the "
                                 "model as JSON (Booster.save_model('model.json'))")
        wanted = {"xgboost_json": XGBOOST_JSON_FILES, "lightgbm": LIGHTGBM_FILES}.get(
            model_type or "", XGBOOST_JSON_FILES + LIGHTGBM_FILES)
        raise FormatError(f"no tree model file in version {model_dir.name}: expected "
                             f"{' or '.join(wanted)}")
    if len(found) > 1:
        raise FormatError(f"more than one tree model file ({', '.join(p.name for p in found)}"
                             "); keep one or set the model_type parameter")
    return load_xgboost_json(found[0]) if xgb else load_lightgbm_text(found[0])


def check_feature_count(forest: Forest, n_columns: int, source: str) -> None:
    """Raise FormatError unless ``n_columns`` (the width ``source`` declares, e.g. an input
    in config.pbtxt) equals the number of features the model reads."""
    if n_columns != forest.n_features:
        raise FormatError(f"{source} has {n_columns} columns but the model reads "
                             f"{forest.n_features} features")


# --- XGBoost JSON ---------------------------------------------------------------------------


def load_xgboost_json(path: Path) -> Forest:
    """Read an XGBoost JSON (or UBJSON) model (gbtree booster, numerical splits, one target)."""
    path = Path(path)
    name = path.name
    doc = _read_json(path)
    try:
        learner = _field(doc, "learner", name, dict)
        objective = _field(_field(learner, "objective", name, dict), "name", name, str)
        if objective not in _XGB_OBJECTIVES:
            raise FormatError(f"{name}: objective '{objective}' is not supported (supported: "
                                 f"{', '.join(_XGB_OBJECTIVES)})")
        transform, logit_base = _XGB_OBJECTIVES[objective]
        param = _field(learner, "learner_model_param", name, dict)
        n_features = int(_field(param, "num_feature", name, str))
        n_groups = max(1, int(_field(param, "num_class", name, str)))
        if int(param.get("num_target", "1")) != 1:
            raise FormatError(f"{name}: multi-target models are not supported")
        if "c" in learner.get("feature_types", []):
            raise FormatError(f"{name}: categorical features are not supported")
        base = _xgb_base_score(_field(param, "base_score", name, str), n_groups, name)
        if logit_base:
            base = -np.log(np.float32(1.0) / base.astype(np.float32) - np.float32(1.0))
        booster = _field(learner, "gradient_booster", name, dict)
        kind = _field(booster, "name", name, str)
        if kind != "gbtree":
            raise FormatError(f"{name}: booster '{kind}' is not supported (only gbtree)")
        model = _field(booster, "model", name, dict)
        trees = _field(model, "trees", name, list)
        tree_info = _field(model, "tree_info", name, list)
        if len(tree_info) != len(trees):
            raise FormatError(f"{name}: tree_info has {len(tree_info)} entries for "
                                 f"{len(trees)} trees")
        parts = [_xgb_tree(tree, i, name) for i, tree in enumerate(trees)]
    except (KeyError, TypeError, ValueError) as exc:
        raise FormatError(f"{name}: malformed XGBoost model: {exc}") from None
    if not parts:
        raise FormatError(f"{name}: the model has no trees")
    return _assemble(parts, np.asarray(tree_info, dtype=np.int32), n_features, n_groups,
                     np.asarray(base, dtype=np.float64), transform, 1.0, name)


def _read_json(path: Path) -> dict:
    """The model document, from JSON or from UBJSON (XGBoost's ``model.ubj``, the same
    document in binary: '{' then a key's length marker where JSON has '"')."""
    try:
        text = path.read_bytes()
    except OSError as exc:
        raise FormatError(f"{path.name}: cannot read: {exc.strerror}") from None
    try:
        if text[:1] == b"{" and text[1:2] in (b"L", b"l", b"i", b"U", b"I", b"#", b"$"):
            doc = ubjson.loads(text)
        else:
            doc = json.loads(text)
    except ubjson.UbjsonError as exc:
        raise FormatError(f"{path.name}: invalid or truncated UBJSON: {exc}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise FormatError(f"{path.name}: invalid or truncated JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise FormatError(f"{path.name}: not an XGBoost JSON model (top level is not an "
                             "object)")
    return doc


def _field(obj: dict, key: str, name: str, kind: type):
    if key not in obj:
        raise FormatError(f"{name}: missing field '{key}'")
    value = obj[key]
    if not isinstance(value, kind):
        raise FormatError(f"{name}: field '{key}' should be a {kind.__name__}")
    return value


def _xgb_base_score(text: str, n_groups: int, name: str) -> np.ndarray:
    """XGBoost >= 3.1 writes a vector ``"[5E-1]"``, older versions a scalar ``"5E-1"``."""
    values = [float(v) for v in text.strip("[]").split(",") if v.strip()]
    if len(values) == 1:
        values = values * n_groups
    if len(values) != n_groups:
        raise FormatError(f"{name}: base_score has {len(values)} values for {n_groups} "
                             "output groups")
    return np.asarray(values, dtype=np.float32)


def _xgb_tree(tree: dict, index: int, name: str) -> dict[str, np.ndarray]:
    size_leaf = int(tree.get("tree_param", {}).get("size_leaf_vector", "1"))
    if size_leaf > 1:
        raise FormatError(f"{name}: tree {index} has vector leaves (multi-output trees are "
                             "not supported)")
    if any(t != 0 for t in tree.get("split_type", ())):
        raise FormatError(f"{name}: tree {index} has categorical splits, which are not "
                             "supported")
    left = np.asarray(_field(tree, "left_children", name, list), dtype=np.int64)
    n = left.shape[0]
    arrays: dict[str, np.ndarray] = {
        "right": np.asarray(_field(tree, "right_children", name, list), dtype=np.int64),
        "feature": np.asarray(_field(tree, "split_indices", name, list), dtype=np.int64),
        "cond": np.asarray(_field(tree, "split_conditions", name, list), dtype=np.float32),
        "default_left": np.asarray(_field(tree, "default_left", name, list), dtype=np.uint8),
    }
    for key, arr in arrays.items():
        if arr.shape != (n,):
            raise FormatError(f"{name}: tree {index}: {key} has {arr.shape[0]} entries, "
                                 f"expected {n}")
    if n == 0:
        raise FormatError(f"{name}: tree {index} has no nodes")
    leaf = left == -1
    # XGBoost goes left iff x < t (float32); for float32 x that is x <= the float32 below t.
    below = np.nextafter(arrays["cond"], np.float32(-np.inf))
    return {
        "feature": np.where(leaf, -1, arrays["feature"]),
        "threshold": np.where(leaf, 0.0, below.astype(np.float64)),
        "left": np.where(leaf, -1, left),
        "right": np.where(leaf, -1, arrays["right"]),
        "default_left": np.where(leaf, 0, arrays["default_left"]),
        "missing_type": np.full(n, MISSING_NAN),
        "value": np.where(leaf, arrays["cond"].astype(np.float64), 0.0),
    }


# --- LightGBM text --------------------------------------------------------------------------


def load_lightgbm_text(path: Path) -> Forest:
    """Read a LightGBM text model (gbdt/goss/dart output, numerical splits, constant leaves)."""
    path = Path(path)
    name = path.name
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise FormatError(f"{path.name}: cannot read: {exc}") from None
    header, blocks = _lgb_sections(text, name)
    try:
        if "average_output" in header:
            raise FormatError(f"{name}: random-forest models (average_output) are not "
                                 "supported")
        n_groups = int(_lgb_field(header, "num_tree_per_iteration", name))
        n_classes = int(_lgb_field(header, "num_class", name))
        n_features = int(_lgb_field(header, "max_feature_idx", name)) + 1
        transform, scale = _lgb_objective(_lgb_field(header, "objective", name), name)
        if transform == "softmax" and n_classes != n_groups:
            raise FormatError(f"{name}: num_class {n_classes} != num_tree_per_iteration "
                                 f"{n_groups}")
        if transform != "softmax" and n_groups != 1:
            raise FormatError(f"{name}: num_tree_per_iteration {n_groups} for a "
                                 "single-output objective")
        parts = [_lgb_tree(block, i, name) for i, block in enumerate(blocks)]
    except ValueError as exc:
        raise FormatError(f"{name}: malformed LightGBM model: {exc}") from None
    if not parts:
        raise FormatError(f"{name}: the model has no trees")
    groups = np.arange(len(parts), dtype=np.int32) % n_groups
    return _assemble(parts, groups, n_features, n_groups, np.zeros(n_groups), transform, scale,
                     name)


def _lgb_sections(text: str, name: str) -> tuple[dict[str, str], list[dict[str, str]]]:
    """Split the file into its header and one ``key=value`` dict per tree."""
    lines = text.splitlines()
    if not lines or lines[0].strip() != "tree":
        raise FormatError(f"{name}: not a LightGBM text model (it must start with 'tree')")
    header: dict[str, str] = {}
    blocks: list[dict[str, str]] = []
    current = header
    ended = False
    for line in lines[1:]:
        line = line.strip()
        if line == "end of trees":
            ended = True
            break
        if line.startswith("Tree="):
            current = {}
            blocks.append(current)
            continue
        key, sep, value = line.partition("=")
        if sep:
            current[key] = value
        elif line:
            current[line] = ""  # bare flags such as 'average_output'
    if not ended:
        raise FormatError(f"{name}: truncated LightGBM model ('end of trees' not found)")
    return header, blocks


def _lgb_field(fields: dict[str, str], key: str, name: str, tree: int | None = None) -> str:
    if key not in fields:
        where = f"tree {tree}: " if tree is not None else ""
        raise FormatError(f"{name}: {where}missing field '{key}'")
    return fields[key]


def _lgb_objective(line: str, name: str) -> tuple[str, float]:
    tokens = line.split()
    objective = tokens[0] if tokens else ""
    options = dict(t.partition(":")[::2] for t in tokens[1:])
    if objective == "binary":
        return "sigmoid", float(options.get("sigmoid", "1"))
    if objective == "multiclass":
        return "softmax", 1.0
    if objective in _LGB_IDENTITY and "sqrt" not in options:
        return "identity", 1.0
    shown = line.strip() or "(empty)"
    raise FormatError(f"{name}: objective '{shown}' is not supported (supported: binary, "
                         f"multiclass, {', '.join(_LGB_IDENTITY)})")


def _lgb_ints(fields: dict[str, str], key: str, count: int, name: str, tree: int) -> np.ndarray:
    values = np.array(_lgb_field(fields, key, name, tree).split(), dtype=np.int64)
    if values.shape[0] != count:
        raise FormatError(f"{name}: tree {tree}: {key} has {values.shape[0]} entries, "
                             f"expected {count}")
    return values


def _lgb_tree(fields: dict[str, str], index: int, name: str) -> dict[str, np.ndarray]:
    leaves = int(_lgb_field(fields, "num_leaves", name, index))
    if leaves < 1:
        raise FormatError(f"{name}: tree {index}: num_leaves must be >= 1")
    if int(fields.get("num_cat", "0")) > 0:
        raise FormatError(f"{name}: tree {index} has categorical splits, which are not "
                             "supported")
    if fields.get("is_linear", "0") not in ("0", ""):
        raise FormatError(f"{name}: tree {index} is a linear tree, which is not supported")
    value = np.array(_lgb_field(fields, "leaf_value", name, index).split(), dtype=np.float64)
    if value.shape[0] != leaves:
        raise FormatError(f"{name}: tree {index}: leaf_value has {value.shape[0]} entries, "
                             f"expected {leaves}")
    inner = leaves - 1
    if inner == 0:  # a constant tree: just one leaf
        return _single_leaf(value[0])
    feature = _lgb_ints(fields, "split_feature", inner, name, index)
    decision = _lgb_ints(fields, "decision_type", inner, name, index)
    threshold = np.array(_lgb_field(fields, "threshold", name, index).split(), dtype=np.float64)
    if threshold.shape[0] != inner:
        raise FormatError(f"{name}: tree {index}: threshold has {threshold.shape[0]} "
                             f"entries, expected {inner}")
    if np.any(decision & 1):
        raise FormatError(f"{name}: tree {index} has categorical splits, which are not "
                             "supported")
    # Children >= 0 are inner nodes; ~c for c < 0 is a leaf. Leaves follow the inner nodes.
    left, right = (np.where(c >= 0, c, inner + ~c) for c in (
        _lgb_ints(fields, "left_child", inner, name, index),
        _lgb_ints(fields, "right_child", inner, name, index)))
    missing = (decision >> 2) & 3
    if np.any(missing > MISSING_NAN):
        raise FormatError(f"{name}: tree {index}: unknown missing type in decision_type")
    pad_i = np.full(leaves, -1)
    return {
        "feature": np.concatenate([feature, pad_i]),
        "threshold": np.concatenate([_lgb_zero_snap(threshold), np.zeros(leaves)]),
        "left": np.concatenate([left, pad_i]),
        "right": np.concatenate([right, pad_i]),
        "default_left": np.concatenate([(decision >> 1) & 1, np.zeros(leaves, np.int64)]),
        "missing_type": np.concatenate([missing, np.zeros(leaves, np.int64)]),
        "value": np.concatenate([np.zeros(inner), value]),
    }


def _lgb_zero_snap(threshold: np.ndarray) -> np.ndarray:
    """LightGBM reads inputs with ``|x| <= ZERO_THRESHOLD`` as exactly 0 before any split. For
    float32 ``x``, "snap(x) <= t" equals "x <= t'" with t' moved off the snapped interval:
    t in [0, z) -> z (the whole interval goes left); t in [-z, 0) -> the float32 below -z."""
    z = ZERO_THRESHOLD
    below = float(np.nextafter(np.float32(-z), np.float32(-np.inf)))
    out = np.where((threshold >= 0.0) & (threshold < z), z, threshold)
    return np.where((threshold >= -z) & (threshold < 0.0), below, out)


# --- shared ---------------------------------------------------------------------------------


def _single_leaf(value: float) -> dict[str, np.ndarray]:
    return {"feature": np.array([-1]), "threshold": np.zeros(1), "left": np.array([-1]),
            "right": np.array([-1]), "default_left": np.zeros(1, np.int64),
            "missing_type": np.zeros(1, np.int64), "value": np.array([value])}


def _assemble(parts: list[dict[str, np.ndarray]], groups: np.ndarray, n_features: int,
              n_groups: int, base_score: np.ndarray, transform: str, scale: float,
              name: str) -> Forest:
    """Concatenate per-tree arrays (child indices local to the tree, root at 0) into one
    validated Forest."""
    sizes = np.array([p["feature"].shape[0] for p in parts])
    offsets = np.concatenate([[0], np.cumsum(sizes)[:-1]])

    def cat(key: str, dtype: type, shift: bool = False) -> np.ndarray:
        arrays = [p[key] + (off if shift else 0) * (p[key] >= 0)
                  for p, off in zip(parts, offsets, strict=True)]
        return np.ascontiguousarray(np.concatenate(arrays), dtype=dtype)

    forest = Forest(
        feature=cat("feature", np.int32), threshold=cat("threshold", np.float64),
        left=cat("left", np.int32, shift=True), right=cat("right", np.int32, shift=True),
        default_left=cat("default_left", np.uint8),
        missing_type=cat("missing_type", np.uint8), value=cat("value", np.float64),
        roots=np.ascontiguousarray(offsets, dtype=np.int32),  # every tree's root is its 0
        groups=np.ascontiguousarray(groups, dtype=np.int32), n_features=n_features,
        n_groups=n_groups, base_score=np.ascontiguousarray(base_score, dtype=np.float64),
        transform=transform, sigmoid_scale=scale,
    )
    try:
        forest.validate()
    except ValueError as exc:
        raise FormatError(f"{name}: inconsistent model: {exc}") from None
    return forest

