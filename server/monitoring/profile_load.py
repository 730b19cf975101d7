"""Reading a reference profile at model load and checking it against the model.

:func:`load_profile` runs on the loader thread for every version (``ModelRepository``'s
``check_version`` hook, wired by the composition root). No file: no profile, no drift. A file
that is not a profile, or one that does not match the model's inputs or outputs, fails the load
with a :class:`ModelLoadError` naming the model, the version, the file and the feature (never a
full path or a traceback).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from sluice.server.config.model import ModelConfig
from sluice.server.errors import ModelLoadError
from sluice.server.monitoring.profile import (
    FILENAME,
    FORMAT,
    MAX_BINS,
    MAX_CLASSES,
    MAX_KS_POINTS,
    FeatureProfile,
    PredictionProfile,
    Profile,
    choose_prediction,
    feature_names,
    profiled_inputs,
)

_KINDS = ("class", "argmax", "value")


class _Bad(ValueError):
    """What is wrong with the document; the caller adds where."""


def load_profile(config: ModelConfig, version_dir: Path) -> Profile | None:
    """The version's profile checked against ``config`` (complete: inputs and outputs known);
    None when the version has none. Blocking (reads one file)."""
    path = version_dir / FILENAME
    where = f"model '{config.name}' version {version_dir.name}: {FILENAME}"
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise ModelLoadError(f"{where}: cannot be read ({exc.strerror})") from None
    try:
        doc = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ModelLoadError(f"{where}: not valid JSON ({exc})") from None
    try:
        profile = parse_profile(doc)
        check_profile(profile, config)
    except _Bad as exc:
        raise ModelLoadError(f"{where}: {exc}") from None
    return profile


def parse_profile(doc: Any) -> Profile:
    """A profile from its JSON document; _Bad (a ValueError) names what is wrong."""
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise _Bad(f"not a reference profile (expected \"format\": \"{FORMAT}\")")
    inputs = []
    for item in _list(doc, "inputs"):
        if not isinstance(item, dict) or not isinstance(item.get("name"), str):
            raise _Bad("inputs: each entry needs a name and dims")
        dims = item.get("dims")
        if not isinstance(dims, list) or not all(isinstance(d, int) and d > 0 for d in dims):
            raise _Bad(f"input '{item['name']}': dims must be a list of positive integers")
        inputs.append((item["name"], tuple(dims)))
    features = tuple(_feature(item, f"features[{i}]")
                     for i, item in enumerate(_list(doc, "features")))
    prediction = None
    if doc.get("prediction") is not None:
        item = doc["prediction"]
        bins = _feature(item, "prediction")
        kind, output = item.get("kind"), item.get("output")
        if kind not in _KINDS or not isinstance(output, str):
            raise _Bad(f"prediction: kind must be one of {', '.join(_KINDS)}, with an output")
        classes = tuple(float(c) for c in _numbers(item, "classes", "prediction"))
        if kind != "value" and (len(classes) != bins.fractions.size
                                or not 0 < len(classes) <= MAX_CLASSES):
            raise _Bad("prediction: one class per bin is needed")
        prediction = PredictionProfile(output=output, kind=kind, bins=bins, classes=classes)
    rows = doc.get("rows")
    if not isinstance(rows, int) or rows < 1:
        raise _Bad("rows must be a positive integer")
    return Profile(rows=rows, inputs=tuple(inputs), features=features, prediction=prediction)


def check_profile(profile: Profile, config: ModelConfig) -> None:
    """_Bad naming the first feature (or output) the profile and the model disagree on."""
    model_inputs = {spec.name: spec for spec in profiled_inputs(config)}
    expected: list[str] = []
    for name, dims in profile.inputs:
        spec = model_inputs.get(name)
        if spec is None:
            raise _Bad(f"feature '{feature_names(name, dims)[0]}': the model has no numeric "
                       f"input '{name}' of fixed shape (inputs: {', '.join(model_inputs)})")
        if math.prod(spec.dims) != math.prod(dims):
            have = feature_names(name, spec.dims)
            raise _Bad(f"feature '{feature_names(name, dims)[-1]}': input '{name}' has "
                       f"{len(have)} features ({have[0]} .. {have[-1]}), the profile "
                       f"{math.prod(dims)}")
        expected += feature_names(name, spec.dims)
    got = [f.name for f in profile.features]
    if got != expected:
        extra = [n for n in got if n not in expected]
        missing = [n for n in expected if n not in got]
        if extra:
            raise _Bad(f"feature '{extra[0]}' is not a feature of the model's inputs")
        if missing:
            raise _Bad(f"feature '{missing[0]}' is missing from the profile")
        first = next(a for a, b in zip(got, expected, strict=True) if a != b)
        raise _Bad(f"feature '{first}' is out of order (the model's feature order is expected)")
    if profile.prediction is not None:
        output = profile.prediction.output
        spec = config.output(output)
        if spec is None:
            raise _Bad(f"prediction: the model has no output '{output}' (outputs: "
                       f"{', '.join(o.name for o in config.outputs)})")
        try:
            _, kind = choose_prediction(config, output) or ("", "")
        except ModelLoadError:
            kind = ""
        if kind != profile.prediction.kind:
            raise _Bad(f"prediction: output '{output}' is {spec.datatype} {list(spec.dims)}, "
                       f"which is not a '{profile.prediction.kind}' prediction")


def _list(doc: dict[str, Any], key: str) -> list[Any]:
    value = doc.get(key)
    if not isinstance(value, list):
        raise _Bad(f"{key} must be a list")
    return value


def _numbers(item: dict[str, Any], key: str, where: str) -> np.ndarray:
    value = item.get(key)
    if not isinstance(value, list) or not all(
        isinstance(v, int | float) and not isinstance(v, bool) for v in value
    ):
        raise _Bad(f"{where}: {key} must be a list of numbers")
    return np.asarray(value, dtype=np.float64)


def _feature(item: Any, where: str) -> FeatureProfile:
    if not isinstance(item, dict) or not isinstance(item.get("name"), str):
        raise _Bad(f"{where}: a feature needs a name")
    where = f"feature '{item['name']}'" if where.startswith("features") else where
    edges = _numbers(item, "edges", where)
    fractions = _numbers(item, "fractions", where)
    if np.any(np.diff(edges) <= 0) or not np.all(np.isfinite(edges)):
        raise _Bad(f"{where}: edges must be finite and strictly ascending")
    if fractions.size != edges.size + 1 or np.any(fractions < 0) or not np.isclose(
        fractions.sum(), 1.0, atol=1e-4
    ):
        raise _Bad(f"{where}: fractions must be {edges.size + 1} shares summing to 1")
    ks_values, ks_cdf = _numbers(item, "ks_values", where), _numbers(item, "ks_cdf", where)
    if ks_values.size != ks_cdf.size or np.any(np.diff(ks_values) <= 0) or np.any(
        np.diff(ks_cdf) < 0
    ):
        raise _Bad(f"{where}: ks_values and ks_cdf must be ascending and of one length")
    if edges.size + 1 > MAX_BINS or ks_values.size > MAX_KS_POINTS:
        raise _Bad(f"{where}: at most {MAX_BINS} bins and {MAX_KS_POINTS} ks_values, not "
                   f"{edges.size + 1} and {ks_values.size}")
    bounds = []
    for key in ("min", "max", "missing"):
        value = item.get(key)
        if not isinstance(value, int | float) or isinstance(value, bool):
            raise _Bad(f"{where}: {key} must be a number")
        bounds.append(float(value))
    return FeatureProfile(name=item["name"], edges=edges, fractions=fractions, min=bounds[0],
                          max=bounds[1], missing=bounds[2], ks_values=ks_values, ks_cdf=ks_cdf)
