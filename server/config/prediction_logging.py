"""A model's prediction-log settings: which share of its requests is logged, whether their inputs
are kept, and which inputs never are.

Declared in deployment.yaml beside config.pbtxt::

    logging:
      sample: 0.25        # fraction of requests logged, in [0, 1]; 0 (or no block): off
      inputs: false       # keep the inputs too (default false: they may hold personal data)
      exclude: [ssn]      # inputs never logged, even with inputs: true

or set through the admin API (``SetPredictionLogging``, ``sluice logging MODEL ...``). This module
only parses and checks; :mod:`sluice.server.monitoring.prediction_log` applies the settings.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

_KEYS = ("sample", "inputs", "exclude")


@dataclass(frozen=True, slots=True)
class LoggingConfig:
    """How one model's finished requests are logged."""

    #: Fraction of requests logged, in [0, 1]; 0 logs nothing.
    sample: float = 0.0
    #: Keep the request's inputs (outputs are always kept).
    inputs: bool = False
    #: Input names never logged, sorted.
    exclude: tuple[str, ...] = ()

    @property
    def on(self) -> bool:
        return self.sample > 0

    def to_json(self) -> dict[str, Any]:
        return {"sample": self.sample, "inputs": self.inputs, "exclude": list(self.exclude)}

    def digest(self) -> str:
        """sha256 of the canonical JSON form (what the admin store compares against the yaml)."""
        text = json.dumps(self.to_json(), sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()

    def check_inputs(self, model: str, inputs: Iterable[str]) -> None:
        """ValueError naming the first name of ``exclude`` that is not one of ``inputs``."""
        known = set(inputs)
        for name in self.exclude:
            if name not in known:
                raise ValueError(
                    f"logging.exclude: model '{model}' has no input '{name}' "
                    f"(its inputs: {', '.join(sorted(known))})"
                )


def parse_logging(value: Any, where: str = "logging") -> LoggingConfig:
    """The ``logging`` block of deployment.yaml (or its JSON form) as a :class:`LoggingConfig`;
    ValueError names the key and the value that is wrong."""
    if value is None:
        return LoggingConfig()
    if not isinstance(value, Mapping):
        raise ValueError(f"{where}: must be a mapping with keys {', '.join(_KEYS)}")
    for key in value:
        if key not in _KEYS:
            raise ValueError(f"{where}: unknown key {key!r} (expected {', '.join(_KEYS)})")
    return LoggingConfig(
        sample=check_sample(value.get("sample", 0.0), f"{where}.sample"),
        inputs=_bool(value.get("inputs", False), f"{where}.inputs"),
        exclude=check_exclude(value.get("exclude") or (), f"{where}.exclude"),
    )


def check_sample(value: Any, where: str = "sample") -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not (
        math.isfinite(value) and 0 <= value <= 1
    ):
        raise ValueError(f"{where}: must be a fraction in [0, 1], not {value!r}")
    return float(value)


def check_exclude(value: Any, where: str = "exclude") -> tuple[str, ...]:
    if isinstance(value, str) or not isinstance(value, list | tuple):
        raise ValueError(f"{where}: must be a list of input names, not {value!r}")
    for name in value:
        if not isinstance(name, str) or not name:
            raise ValueError(f"{where}: {name!r} is not an input name")
    return tuple(sorted(set(value)))


def _bool(value: Any, where: str) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"{where}: must be true or false, not {value!r}")
    return value
