"""The validate step: each check fails with its figures; rows with NaN are dropped within the
allowance."""

from __future__ import annotations

import numpy as np
import pytest

from sluice.server.retrain.checks import ValidationFailed, validate_rows
from sluice.server.retrain.spec import ValidateSpec


def _rows(per_class: list[int]) -> tuple[np.ndarray, np.ndarray]:
    y = np.repeat(np.arange(len(per_class)), per_class).astype(np.int64)
    return np.ones((len(y), 4), np.float32), y


def test_rows_that_pass_come_back_with_their_class_counts():
    x, y = _rows([5, 3, 2])
    valid = validate_rows(x, y, (4,), ValidateSpec(min_rows=10, min_class_share=0.2), 3)
    assert valid.per_class == (5, 3, 2) and len(valid.y) == 10 and valid.dropped_missing == 0
    assert valid.summary() == ("10 rows, 3 classes (smallest 2 rows, 0.200), 0 dropped for "
                               "missing values")


def test_rows_with_nan_or_inf_are_dropped_within_max_missing_and_fail_beyond_it():
    x, y = _rows([10, 10])
    x[3, 1], x[12, 0] = np.nan, np.inf
    valid = validate_rows(x, y, (4,), ValidateSpec(min_rows=1, max_missing=0.1), 2)
    assert valid.dropped_missing == 2 and valid.per_class == (9, 9)
    assert np.isfinite(valid.x).all()
    with pytest.raises(ValidationFailed, match=r"^missing values: 2 of 20 rows \(0.100\) hold a "
                       "NaN or infinity, more than max_missing 0.05"):
        validate_rows(x, y, (4,), ValidateSpec(min_rows=1, max_missing=0.05), 2)


@pytest.mark.parametrize(("spec", "shape", "classes", "message"), [
    (ValidateSpec(), (8,), 2, r"^schema: rows have shape \[4\], the model input takes \[8\]"),
    (ValidateSpec(min_rows=21), (4,), 2, "^minimum rows: 20 rows, validate.min_rows needs 21"),
    (ValidateSpec(min_rows=1, min_class_share=0.3), (4,), 2,
     r"^label balance: class 1 has 4 of 20 rows \(0.200\), validate.min_class_share needs 0.3"),
    (ValidateSpec(min_rows=1), (4,), 1, r"^labels: 4 rows have labels outside \[0, 1\) "
     r"\(e.g. \[1\]\)"),
])
def test_each_failed_check_names_itself_and_its_figures(spec, shape, classes, message):
    x, y = _rows([16, 4])
    with pytest.raises(ValidationFailed, match=message):
        validate_rows(x, y, shape, spec, classes)
