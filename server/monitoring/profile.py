"""A model version's reference profile: what its inputs and predictions looked like in training.

Stored as ``<model>/<version>/reference_profile.json`` (JSON: small, diffable, readable without
Sluice; the bundled digits profiles are about 40 KB). Written by ``sluice profile``
(``sluice.server.cli_profile``), read and checked against the model's config at model load
(:func:`load_profile`; a mismatch fails the load, naming the feature).

Features are the columns of the model's numeric inputs: an input holding one value per row is
the feature named after it; any other shape is flattened, and its columns are named
``input[0]``, ``input[1]``, ... (row-major over the non-batch dims). BYTES inputs, and inputs with
a variable dimension, are not profiled. Per feature the profile keeps the interior quantile bin
edges and the reference share of each bin (:mod:`.drift_stats`), min and max, the missing share,
and the empirical CDF on at most 256 points for the KS statistic.

The prediction is one output: ``class`` (an integer output with one value per row: the share of
each class), ``argmax`` (a float output with several values per row, e.g. probabilities or
logits: the share of each argmax column) or ``value`` (a float output with one value per row, a
regressor: bins and CDF as for a feature).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from sluice.server.config.model import ModelConfig
from sluice.server.errors import ModelLoadError
from sluice.server.monitoring.drift_stats import ecdf_points, quantile_edges
from sluice.server.types import TensorSpec

FILENAME = "reference_profile.json"
FORMAT = "sluice.reference_profile/1"
#: Quantile bins per feature unless told otherwise (ties merge bins).
DEFAULT_BINS = 10
#: Most points of a feature's reference CDF kept for KS.
DEFAULT_KS_POINTS = 256
#: Most classes a class prediction may have (the bins of a prediction are its classes).
MAX_CLASSES = 1000
#: Most bins and most KS points a feature may have: what drift's per-value codes hold
#: (``sluice.kernels.drift_codes``: 14 bits of bin, 15 of KS point).
MAX_BINS = 1 << 14
MAX_KS_POINTS = (1 << 15) - 1
_INTEGER = ("INT8", "INT16", "INT32", "INT64", "UINT8", "UINT16", "UINT32", "UINT64", "BOOL")
_FLOAT = ("FP16", "FP32", "FP64", "BF16")


@dataclass(frozen=True)
class FeatureProfile:
    """One feature's reference distribution."""

    name: str
    #: Interior bin edges, ascending; bin k is (edges[k-1], edges[k]].
    edges: np.ndarray
    #: Reference share of each bin (len(edges) + 1; NaN rows left out; sums to 1).
    fractions: np.ndarray
    min: float
    max: float
    #: Reference share of NaN values.
    missing: float
    #: The reference CDF for KS: ascending values and the share <= each (empty: no KS).
    ks_values: np.ndarray
    ks_cdf: np.ndarray


@dataclass(frozen=True)
class PredictionProfile:
    """The reference distribution of the model's prediction."""

    output: str
    #: "class", "argmax" or "value" (see the module docstring).
    kind: str
    #: Bins as for a feature; for classes, edges half-way between the classes.
    bins: FeatureProfile
    #: The classes in bin order ("class" and "argmax"); empty for "value".
    classes: tuple[float, ...] = ()


@dataclass(frozen=True)
class Profile:
    """Everything the drift monitor compares a model version's live traffic with."""

    rows: int
    #: Profiled inputs in feature order: (name, non-batch dims).
    inputs: tuple[tuple[str, tuple[int, ...]], ...]
    features: tuple[FeatureProfile, ...]
    prediction: PredictionProfile | None


def feature_names(name: str, dims: tuple[int, ...]) -> list[str]:
    """The feature names of an input with non-batch ``dims``: its own name for one value per
    row, else ``name[i]`` per flattened column."""
    if len(dims) <= 1 and math.prod(dims) == 1:
        return [name]
    return [f"{name}[{i}]" for i in range(math.prod(dims))]


def profiled_inputs(config: ModelConfig) -> list[TensorSpec]:
    """The inputs of ``config`` that have features: numeric, fixed non-batch shape."""
    return [spec for spec in config.inputs
            if spec.datatype != "BYTES" and all(d > 0 for d in spec.dims)]


def describe(values: np.ndarray, name: str, bins: int, ks_points: int) -> FeatureProfile:
    """The profile of one feature from its reference ``values`` (1-D; NaN = missing)."""
    values = np.asarray(values, dtype=np.float64)
    present = values[~np.isnan(values)]
    edges = quantile_edges(present, bins)
    counts = np.bincount(np.searchsorted(edges, present, side="left"), minlength=edges.size + 1)
    ks_values, ks_cdf = ecdf_points(present, ks_points)
    return FeatureProfile(
        name=name, edges=edges, fractions=counts / max(present.size, 1),
        min=float(present.min()) if present.size else math.nan,
        max=float(present.max()) if present.size else math.nan,
        missing=float(1 - present.size / values.size) if values.size else 0.0,
        ks_values=ks_values, ks_cdf=ks_cdf,
    )


def class_bins(classes: np.ndarray, labels: np.ndarray, name: str = "prediction") -> FeatureProfile:
    """A class prediction as bins: one bin per class of ``classes`` (ascending), edges half-way
    between neighbours; ``labels`` are the reference predictions."""
    classes = np.asarray(classes, dtype=np.float64)
    edges = (classes[:-1] + classes[1:]) / 2
    labels = np.asarray(labels, dtype=np.float64)
    counts = np.bincount(np.searchsorted(edges, labels, side="left"), minlength=classes.size)
    return FeatureProfile(
        name=name, edges=edges, fractions=counts / max(labels.size, 1),
        min=float(classes[0]), max=float(classes[-1]), missing=0.0,
        ks_values=np.zeros(0), ks_cdf=np.zeros(0),
    )


def prediction_values(kind: str, output: np.ndarray) -> np.ndarray:
    """One prediction per row of an output's ``[rows, ...]`` array (argmax for "argmax")."""
    rows = output.reshape(output.shape[0], -1) if output.ndim else output.reshape(1, -1)
    if kind == "argmax":
        return np.argmax(rows, axis=1).astype(np.float64)
    return rows[:, 0].astype(np.float64)


def choose_prediction(config: ModelConfig, wanted: str | None = None) -> tuple[str, str] | None:
    """(output, kind) the profile describes: ``wanted`` if given, else the first integer output
    with one value per row (class), else the first such float output (value), else the first
    float output with several (argmax). None when no output fits. ModelLoadError names an
    unusable ``wanted``."""
    candidates = []
    for spec in config.outputs:
        if any(d <= 0 for d in spec.dims):
            continue
        width = math.prod(spec.dims)
        if spec.datatype in _INTEGER and width == 1:
            candidates.append((0, spec.name, "class"))
        elif spec.datatype in _FLOAT:
            candidates.append((1 if width == 1 else 2, spec.name, "value" if width == 1
                               else "argmax"))
    if wanted is not None:
        found = [c for c in candidates if c[1] == wanted]
        if not found:
            raise ModelLoadError(f"model '{config.name}': output '{wanted}' cannot be profiled "
                                 "(a numeric output with a fixed shape is needed)")
        return found[0][1], found[0][2]
    return (min(candidates)[1], min(candidates)[2]) if candidates else None


def build_profile(
    config: ModelConfig, inputs: dict[str, np.ndarray], predictions: np.ndarray | None = None,
    prediction: tuple[str, str] | None = None, *, bins: int = DEFAULT_BINS,
    ks_points: int = DEFAULT_KS_POINTS,
) -> Profile:
    """The profile of reference rows: ``inputs`` maps each profiled input of ``config`` to its
    ``[rows, *dims]`` array; ``predictions`` (one per row) are the model's own on those rows,
    described as ``prediction`` (output, kind) (:func:`choose_prediction`)."""
    specs = profiled_inputs(config)
    rows = {len(inputs[spec.name]) for spec in specs}
    if len(rows) != 1:
        raise ValueError("every input needs the same number of rows")
    n = rows.pop()
    features: list[FeatureProfile] = []
    for spec in specs:
        block = np.asarray(inputs[spec.name], dtype=np.float64).reshape(n, -1)
        for j, name in enumerate(feature_names(spec.name, spec.dims)):
            features.append(describe(block[:, j], name, bins, ks_points))
    predicted = None
    if prediction is not None and predictions is not None:
        output, kind = prediction
        values = np.asarray(predictions, dtype=np.float64)
        if kind == "value":
            predicted = PredictionProfile(output, kind, describe(values, "prediction", bins,
                                                                 ks_points))
        else:
            classes = np.unique(values[~np.isnan(values)])
            if kind == "argmax":
                width = math.prod(config.output(output).dims)  # type: ignore[union-attr]
                classes = np.arange(width, dtype=np.float64)
            if classes.size > MAX_CLASSES:
                raise ValueError(f"output '{output}': {classes.size} classes (at most "
                                 f"{MAX_CLASSES})")
            predicted = PredictionProfile(output, kind, class_bins(classes, values),
                                          tuple(float(c) for c in classes))
    return Profile(rows=n, inputs=tuple((s.name, s.dims) for s in specs),
                   features=tuple(features), prediction=predicted)


# -- JSON ----------------------------------------------------------------------------------------


def _floats(values: np.ndarray) -> list[float]:
    return [float(f"{v:.7g}") for v in np.asarray(values, dtype=np.float64)]


def _feature_json(f: FeatureProfile) -> dict[str, Any]:
    return {"name": f.name, "edges": _floats(f.edges), "fractions": _floats(f.fractions),
            "min": f.min, "max": f.max, "missing": f.missing,
            "ks_values": _floats(f.ks_values), "ks_cdf": _floats(f.ks_cdf)}


def profile_json(profile: Profile, **about: Any) -> dict[str, Any]:
    """The profile as the JSON document :func:`write_profile` writes (``about``: extra
    top-level keys, e.g. model, version, source)."""
    doc: dict[str, Any] = {"format": FORMAT, **about, "rows": profile.rows,
                           "inputs": [{"name": n, "dims": list(d)} for n, d in profile.inputs],
                           "features": [_feature_json(f) for f in profile.features]}
    if profile.prediction is not None:
        p = profile.prediction
        doc["prediction"] = {"output": p.output, "kind": p.kind, "classes": list(p.classes),
                             **_feature_json(p.bins)}
    return doc


def write_profile(path: Path, profile: Profile, **about: Any) -> None:
    """Write the profile as JSON, one feature per line (small, and diffs show features)."""
    doc = profile_json(profile, **about)
    features = doc.pop("features")
    head = json.dumps(doc, separators=(",", ":"))[:-1]
    lines = ",\n".join(json.dumps(f, separators=(",", ":")) for f in features)
    path.write_text(f'{head},\n"features":[\n{lines}\n]}}\n')
