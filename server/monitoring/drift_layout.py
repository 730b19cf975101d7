"""A reference profile laid out flat for drift's kernels (``sluice.kernels.drift_codes``).

Columns are the profile's features in order, then the prediction (when profiled). Per column:
its interior PSI edges, reference range and fractions, and its ECDF points for KS (none for a
class prediction, or a feature profiled without points), each concatenated into one array with
the offsets where a column's part starts. Made once per window, on the loader's thread.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from sluice.server.monitoring.profile import FeatureProfile, Profile

#: ks_guide(values, ks_starts, guide, scale): ``sluice.kernels.drift_codes.ks_guide``.
GuideKernel = Callable[..., None]


@dataclass(frozen=True, eq=False)
class Layout:
    """One profile's columns as the kernels read them."""

    columns: tuple[FeatureProfile, ...]
    #: Interior edges, column ``j``'s at ``starts[j]:starts[j + 1]``.
    edges: np.ndarray
    starts: np.ndarray
    #: Reference minimum and maximum per column.
    lo: np.ndarray
    hi: np.ndarray
    #: ECDF points and the CDF at them, column ``j``'s at ``ks_starts[j]:ks_starts[j + 1]``,
    #: with the kernels' search guide (``ks_guide``).
    ks_values: np.ndarray
    ks_cdf: np.ndarray
    ks_starts: np.ndarray
    guide: np.ndarray
    scale: np.ndarray
    #: Bins per column, the widest, and the reference fractions padded to it with zeros.
    bins: np.ndarray
    width: int
    reference: np.ndarray
    #: Each column's edges and fractions as reports carry them (tuples, made once).
    fixed: tuple[tuple[tuple[float, ...], tuple[float, ...]], ...]

    @property
    def kernel_args(self) -> tuple[np.ndarray, ...]:
        """What the coding kernels take after the rows: edges, starts, lo, hi, ECDF values,
        their starts, guide and scale."""
        return (self.edges, self.starts, self.lo, self.hi, self.ks_values, self.ks_starts,
                self.guide, self.scale)

    @property
    def cells(self) -> int:
        """Size of the window's KS cells: ``2K + 1`` per column."""
        return 2 * int(self.ks_starts[-1]) + len(self.columns)


def layout(profile: Profile, guide_kernel: GuideKernel, guide_cells: int) -> Layout:
    """``guide_kernel`` fills the search guide of ``guide_cells`` cells per KS point."""
    columns = list(profile.features)
    kinds = [""] * len(profile.features)
    if profile.prediction is not None:
        columns.append(profile.prediction.bins)
        kinds.append(profile.prediction.kind)
    # KS where it is reported: features, and a regressor's values (not classes)
    points = [c.ks_values.size if k in ("", "value") else 0
              for c, k in zip(columns, kinds, strict=True)]
    ks_values = np.concatenate(
        [c.ks_values[:n] for c, n in zip(columns, points, strict=True)] + [np.zeros(0)]
    ).astype(np.float64)
    ks_cdf = np.concatenate(
        [c.ks_cdf[:n] for c, n in zip(columns, points, strict=True)] + [np.zeros(0)]
    ).astype(np.float64)
    ks_starts = np.cumsum([0, *points]).astype(np.int64)
    guide = np.zeros(guide_cells * int(ks_starts[-1]) + len(columns), dtype=np.int64)
    scale = np.zeros(len(columns))
    guide_kernel(ks_values, ks_starts, guide, scale)
    bins = np.array([c.edges.size + 1 for c in columns], dtype=np.int64)
    width = int(bins.max()) if columns else 1
    reference = np.zeros((len(columns), width))
    for j, column in enumerate(columns):
        reference[j, :column.fractions.size] = column.fractions
    return Layout(
        columns=tuple(columns),
        edges=np.concatenate([c.edges for c in columns] + [np.zeros(0)]).astype(np.float64),
        starts=np.cumsum([0] + [c.edges.size for c in columns]).astype(np.int64),
        lo=np.array([c.min for c in columns], dtype=np.float64),
        hi=np.array([c.max for c in columns], dtype=np.float64),
        ks_values=ks_values, ks_cdf=ks_cdf, ks_starts=ks_starts, guide=guide, scale=scale,
        bins=bins, width=width, reference=reference,
        fixed=tuple((tuple(c.edges.tolist()), tuple(c.fractions.tolist())) for c in columns),
    )
