"""What a drift compute publishes: a model version's :class:`DriftReport`, one
:class:`FeatureDrift` per feature and for the prediction. Immutable; /metrics
(:mod:`.drift_metrics`) and the ``DriftReport`` admin RPC read them without a lock.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class FeatureDrift:
    """One feature (or the prediction) over the window."""

    name: str
    #: None until the window has a value of it.
    psi: float | None
    ks: float | None
    #: Shares of the window's rows: NaN, below the reference min, above its max.
    missing_rate: float | None
    below_rate: float | None
    above_rate: float | None
    edges: tuple[float, ...]
    reference: tuple[float, ...]
    #: Live rows per bin over the window.
    live: tuple[int, ...]

    @property
    def out_of_range_rate(self) -> float | None:
        if self.below_rate is None or self.above_rate is None:
            return None
        return self.below_rate + self.above_rate


@dataclass(frozen=True)
class DriftReport:
    """A model version's drift as last computed."""

    model: str
    version: int
    sample: float
    window_rows: int
    window_s: float
    #: Rows in the window when computed.
    rows: int
    features: tuple[FeatureDrift, ...]
    prediction: FeatureDrift | None
    prediction_output: str
    #: "class", "argmax" or "value" ("" without a profiled prediction).
    prediction_kind: str
    #: Since the window was made: rows sampled and binned, rows dropped (queue full), records
    #: whose tensors did not fit the profile.
    sampled_rows: int
    dropped_rows: int
    malformed: int
    #: Cumulative live rows per bin and (missing, below, above) per column, features then the
    #: prediction, for the per-bin counters.
    cumulative: np.ndarray
    cumulative_special: np.ndarray

    @property
    def max_psi(self) -> float | None:
        values = [f.psi for f in self.features if f.psi is not None]
        return max(values) if values else None

    @property
    def prediction_drift(self) -> float | None:
        """PSI of the class distribution, or KS for a regressor's values."""
        if self.prediction is None:
            return None
        return self.prediction.ks if self.prediction_kind == "value" else self.prediction.psi
