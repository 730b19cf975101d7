"""A model's drift settings: the ``drift`` key of its ``deployment.yaml``.

::

    drift:
      sample: 0.1        # share of requests whose rows enter the live window, in (0, 1]
      window_rows: 5000  # the window keeps the newest sampled rows, at most this many ...
      window_s: 3600     # ... and none older than this (seconds)

or ``drift: false`` to turn drift off for a model whose versions ship a reference profile. Every
key is optional (the defaults above); drift runs only for versions that have a profile. An
unknown key or a value out of range is a load error naming the key.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sluice.server.config.deployment_file import read_monitor_block

_KEYS = ("sample", "window_rows", "window_s")


@dataclass(frozen=True, slots=True)
class DriftSettings:
    """How one model's live windows are filled."""

    #: Share of finished requests sampled into the window, in (0, 1].
    sample: float = 0.1
    #: Most sampled rows the window keeps (the newest).
    window_rows: int = 5000
    #: Oldest a row in the window may be, in seconds.
    window_s: float = 3600.0


def parse_drift(value: Any) -> DriftSettings | None:
    """The settings a ``drift`` value declares (None or absent: the defaults; False: off, None
    returned). ValueError names the key."""
    if value is None or value is True:
        return DriftSettings()
    if value is False:
        return None
    if not isinstance(value, Mapping):
        raise ValueError("drift: must be a mapping or false")
    for key in value:
        if key not in _KEYS:
            raise ValueError(f"drift: unknown key {key!r} (expected {', '.join(_KEYS)})")
    default = DriftSettings()
    sample = value.get("sample", default.sample)
    rows = value.get("window_rows", default.window_rows)
    seconds = value.get("window_s", default.window_s)
    if isinstance(sample, bool) or not isinstance(sample, int | float) or not 0 < sample <= 1:
        raise ValueError(f"drift.sample: must be a fraction in (0, 1], not {sample!r}")
    if isinstance(rows, bool) or not isinstance(rows, int) or not 1 <= rows <= 1_000_000:
        raise ValueError(f"drift.window_rows: must be an integer in [1, 1000000], not {rows!r}")
    if isinstance(seconds, bool) or not isinstance(seconds, int | float) or not seconds > 0:
        raise ValueError(f"drift.window_s: must be a number of seconds > 0, not {seconds!r}")
    return DriftSettings(sample=float(sample), window_rows=rows, window_s=float(seconds))


def read_drift(model_dir: Path) -> DriftSettings | None:
    """The model's drift settings from its deployment.yaml (the defaults when it has none or
    says nothing of drift; None when it turns drift off). Blocking; ModelLoadError names the
    file and the key."""
    return read_monitor_block(model_dir, "drift", parse_drift)
