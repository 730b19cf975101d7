"""The validate step: are these rows fit to train on? Pure numpy, no I/O.

Checks, in order, each failing with a message naming what is wrong and by how much: the schema
(every row has the model input's shape), missing values (rows holding a NaN or infinity are
dropped, failing when they are more than ``max_missing`` of the rows), labels (class ids in
``[0, classes)``), the minimum number of rows, and label balance (every class at least
``min_class_share`` of the rows).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from sluice.server.retrain.spec import ValidateSpec


class ValidationFailed(ValueError):
    """The rows fail a check; the message says which and with what figures."""


@dataclass(frozen=True, slots=True)
class Validated:
    x: np.ndarray
    y: np.ndarray
    #: Rows dropped for holding a NaN or infinity.
    dropped_missing: int
    #: Rows per class, index = class id.
    per_class: tuple[int, ...]

    def summary(self) -> str:
        smallest = min(self.per_class) if self.per_class else 0
        return (f"{len(self.y)} rows, {len(self.per_class)} classes (smallest {smallest} rows, "
                f"{smallest / max(len(self.y), 1):.3f}), {self.dropped_missing} dropped for "
                "missing values")


def validate_rows(x: np.ndarray, y: np.ndarray, feature_shape: tuple[int, ...],
                  spec: ValidateSpec, classes: int) -> Validated:
    """``x`` [rows, *feature_shape] and ``y`` [rows] after the checks of ``spec``; ``classes``
    is the number of classes (spec.classes, else the caller's)."""
    if x.ndim < 1 or tuple(x.shape[1:]) != tuple(feature_shape):
        raise ValidationFailed(f"schema: rows have shape {list(x.shape[1:])}, the model input "
                               f"takes {list(feature_shape)}")
    if len(x) != len(y):
        raise ValidationFailed(f"schema: {len(x)} rows of features but {len(y)} labels")
    finite = np.isfinite(x.reshape(len(x), -1)).all(axis=1) if len(x) else np.ones(0, bool)
    dropped = int(len(x) - finite.sum())
    if len(x) and dropped / len(x) > spec.max_missing:
        raise ValidationFailed(
            f"missing values: {dropped} of {len(x)} rows ({dropped / len(x):.3f}) hold a NaN or "
            f"infinity, more than max_missing {spec.max_missing:g}")
    x, y = x[finite], y[finite]
    outside = (y < 0) | (y >= classes)
    if outside.any():
        bad = np.unique(y[outside])[:5].tolist()
        raise ValidationFailed(f"labels: {int(outside.sum())} rows have labels outside "
                               f"[0, {classes}) (e.g. {bad})")
    if len(y) < spec.min_rows:
        raise ValidationFailed(f"minimum rows: {len(y)} rows, validate.min_rows needs "
                               f"{spec.min_rows}")
    counts = np.bincount(y, minlength=classes)
    share = counts / len(y)
    if spec.min_class_share > 0 and share.min() < spec.min_class_share:
        worst = int(share.argmin())
        raise ValidationFailed(
            f"label balance: class {worst} has {int(counts[worst])} of {len(y)} rows "
            f"({share[worst]:.3f}), validate.min_class_share needs {spec.min_class_share:g}")
    return Validated(x=x, y=y, dropped_missing=dropped, per_class=tuple(int(c) for c in counts))
