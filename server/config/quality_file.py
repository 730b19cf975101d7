"""The ``quality:`` block of a model's deployment.yaml: how live quality reads its answers.

::

    quality:
      enabled: true            # false: no live quality for this model
      kind: classifier         # or regressor; default: decided from the model's outputs
      prediction: label        # the output holding the predicted class id (or value)
      scores: probabilities    # class probabilities or logits: confidence (and argmax)
      window_rows: 10000       # predicted rows kept per (version, arm)
      window_s: 3600           # seconds a prediction stays in the window

Live quality is off for a model whose deployment.yaml has no ``quality`` block: keeping every
prediction in memory costs the hub's thread time on every request, for nothing when no label
will ever come. Within the block every key is optional; the monitor decides what it does not say
from the outputs alone (:func:`sluice.server.monitoring.quality_spec.decide`). Output names are
checked against the model's config there, once the model is loaded. Blocking reads; errors
name the file and key.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sluice.server.config.deployment_file import read_monitor_block

KINDS = ("classifier", "regressor")
_KEYS = ("enabled", "kind", "prediction", "scores", "window_rows", "window_s")


@dataclass(frozen=True, slots=True)
class QualityDeclared:
    """What a model's owner declared about its live quality (None: not said)."""

    #: False turns live quality off for the model.
    enabled: bool = True
    #: False when deployment.yaml has no quality block (live quality off).
    present: bool = True
    #: "classifier" or "regressor"; None: decided from the outputs.
    kind: str | None = None
    #: Output holding the prediction (class id, or value for a regressor).
    prediction: str | None = None
    #: Output of class probabilities or logits (top-class confidence; argmax without a label).
    scores: str | None = None
    #: Predicted rows a (version, arm) window keeps; None: the server's default.
    window_rows: int | None = None
    #: Seconds a prediction stays in the window; None: the server's default.
    window_s: float | None = None


def read_quality(model_dir: Path) -> QualityDeclared:
    """The ``quality`` block of ``model_dir/deployment.yaml`` (``present=False`` when there is no
    file or no block). Raises ModelLoadError naming the file and the offending key."""
    return read_monitor_block(model_dir, "quality", parse_quality)


def parse_quality(block: Any) -> QualityDeclared:
    """A ``quality`` block (already parsed YAML) as a declaration; ValueError names the key."""
    if block is None:
        return QualityDeclared(present=False)
    if not isinstance(block, Mapping):
        raise ValueError("quality: must be a mapping")
    unknown = sorted(str(k) for k in block if k not in _KEYS)
    if unknown:
        raise ValueError(f"quality: unknown key(s) {unknown} (expected {', '.join(_KEYS)})")
    enabled = block.get("enabled", True)
    if not isinstance(enabled, bool):
        raise ValueError(f"quality.enabled: must be true or false, not {enabled!r}")
    kind = block.get("kind")
    if kind is not None and kind not in KINDS:
        raise ValueError(f"quality.kind: must be one of {', '.join(KINDS)}, not {kind!r}")
    names = {}
    for key in ("prediction", "scores"):
        value = block.get(key)
        if value is not None and (not isinstance(value, str) or not value):
            raise ValueError(f"quality.{key}: must be an output name, not {value!r}")
        names[key] = value
    rows = block.get("window_rows")
    if rows is not None and (isinstance(rows, bool) or not isinstance(rows, int) or rows < 1):
        raise ValueError(f"quality.window_rows: must be a whole number >= 1, not {rows!r}")
    seconds = block.get("window_s")
    if seconds is not None and (
        isinstance(seconds, bool) or not isinstance(seconds, int | float)
        or not math.isfinite(seconds) or seconds <= 0
    ):
        raise ValueError(f"quality.window_s: must be a number of seconds > 0, not {seconds!r}")
    return QualityDeclared(
        enabled=enabled, kind=kind, prediction=names["prediction"], scores=names["scores"],
        window_rows=rows, window_s=None if seconds is None else float(seconds),
    )
