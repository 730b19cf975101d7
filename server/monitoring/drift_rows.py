"""A drift window's rows from finished records: the profiled inputs flattened, then the
prediction, as float64 columns (one row per request row).

Called on the hub's thread by :class:`~.drift_window.VersionWindow` (quick: reshapes and
copies, nothing computed). A record whose tensors do not fit the profile gives None (counted as
malformed by the window).
"""

from __future__ import annotations

import math

import numpy as np

from sluice.server.monitoring.hub import Finished
from sluice.server.monitoring.profile import Profile, prediction_values


def rows_together(profile: Profile, records: list[Finished]) -> np.ndarray | None:
    """:func:`record_rows` of every record, stacked; None unless every record has every profiled
    tensor with the same per-row shape and rows agree (those go one by one)."""
    columns: list[np.ndarray] = []
    counts: list[int] | None = None
    named = [(name, True, int(np.prod(dims))) for name, dims in profile.inputs]
    prediction = profile.prediction
    if prediction is not None:
        named.append((prediction.output, False, 0))
    for name, is_input, width in named:
        parts = [(r.inputs if is_input else r.outputs).get(name) for r in records]
        try:  # refuses a missing (None) or 0-d tensor and mixed per-row shapes
            merged = np.concatenate(parts)
            lengths = [len(part) for part in parts]
        except (ValueError, TypeError):
            return None
        if counts is None:
            counts = lengths
        elif lengths != counts:
            return None
        if is_input:
            if math.prod(merged.shape[1:]) != width:
                return None
            columns.append(merged.reshape(len(merged), width))
        else:
            assert prediction is not None
            try:
                values = prediction_values(prediction.kind, merged.reshape(len(merged), -1))
            except (ValueError, TypeError):
                return None
            columns.append(values.reshape(-1, 1))
    if not columns or not profile.inputs:
        return None
    # each block converted to float64 as it is copied into place: one pass, one array
    # (astype then hstack made two copies of cnn's 3,072 columns: ~60% of the hub thread's
    # samples with drift on, py-spy inside the server)
    rows = np.empty((len(columns[0]), sum(c.shape[1] for c in columns)))
    at = 0
    try:
        for block in columns:
            rows[:, at:at + block.shape[1]] = block
            at += block.shape[1]
    except (ValueError, TypeError):  # not numbers: one by one, where they count as malformed
        return None
    return rows

def record_rows(profile: Profile, batched: bool, record: Finished) -> np.ndarray | None:
    """The record's rows as columns (features, then the prediction); None when a tensor
    does not fit the profile."""
    blocks: list[np.ndarray | None] = []
    n = None
    for name, dims in profile.inputs:
        value = record.inputs.get(name)
        if value is None:
            blocks.append(None)
            continue
        try:
            block = np.asarray(value, dtype=np.float64).reshape(
                -1 if batched else 1, int(np.prod(dims)))
        except (ValueError, TypeError):
            return None
        if n is not None and block.shape[0] != n:
            return None
        n = block.shape[0]
        blocks.append(block)
    if n is None:
        return None
    columns = [np.full((n, int(np.prod(dims))), np.nan) if block is None else block
               for block, (_, dims) in zip(blocks, profile.inputs, strict=True)]
    prediction = profile.prediction
    if prediction is not None:
        out = record.outputs.get(prediction.output)
        try:
            values = (np.full(n, np.nan) if out is None else
                      prediction_values(prediction.kind, np.asarray(out).reshape(n, -1)))
        except (ValueError, TypeError):
            return None
        columns.append(values.reshape(n, 1))
    return np.ascontiguousarray(np.hstack(columns))
