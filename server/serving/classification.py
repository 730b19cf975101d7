"""Triton's classification extension (issue 16 item 3): an output requested with the
``classification`` parameter (a class count k) answers, instead of its tensor, the k
highest-valued elements of each batch row as BYTES ``"<value>:<index>[:<label>]"``, shape
[batch, k] (a model that does not batch: [k]).

As Triton does it (server/src/classification.cc): each row's elements (all non-batch dims
flattened) are ordered by value, highest first; k is at most the row's element count; the value
is printed as C++ ``std::to_string`` prints it (``%f`` for FP32/FP64, the integer for integer
types); the label is line ``index`` of the output's ``label_filename``, left out when the file
has no such line. Types without an order Triton defines (BOOL, BYTES, FP16, BF16) are refused
with Triton's words. Ties: the lower index first (Triton's std::sort leaves them unspecified).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from sluice.server.config.model import ModelConfig
from sluice.server.errors import InvalidInput, ModelLoadError

#: Datatypes Triton answers classifications for.
CLASSIFIABLE = frozenset({
    "UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32", "INT64", "FP32", "FP64",
})


def check_classifiable(output: str, datatype: str) -> None:
    if datatype not in CLASSIFIABLE:
        raise InvalidInput(
            f"class result not available for output due to unsupported type '{datatype}' "
            f"(output '{output}')"
        )


def top_k(
    values: np.ndarray, k: int, *, batched: bool, labels: Sequence[str] = ()
) -> np.ndarray:
    """The classification tensor of ``values`` (an output, batch first when ``batched``)."""
    rows = values.reshape(values.shape[0], -1) if batched else values.reshape(1, -1)
    count = min(k, rows.shape[1])
    floating = rows.dtype.kind == "f"
    out = np.empty((rows.shape[0], count), dtype=object)
    n = rows.shape[1]
    for r, row in enumerate(rows):
        # highest first, the lower index first among equals: a stable ascending sort of the
        # reversed row, read backwards
        order = (n - 1 - np.argsort(row[::-1], kind="stable")[::-1])[:count]
        for j, index in enumerate(order.tolist()):
            value = row[index]
            text = f"{float(value):f}" if floating else str(int(value))
            text += f":{index}"
            if index < len(labels):
                text += f":{labels[index]}"
            out[r, j] = text.encode("utf-8")
    return out if batched else out[0]


def read_labels(config: ModelConfig, model_dir: Path) -> dict[str, tuple[str, ...]]:
    """Output name -> its labels (one a line of ``label_filename`` in ``model_dir``). Blocking;
    ModelLoadError names the output and the file when it cannot be read."""
    labels = {}
    for spec in config.outputs:
        if spec.label_filename is None:
            continue
        try:
            text = (model_dir / spec.label_filename).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            why = "is not UTF-8 text" if isinstance(exc, UnicodeDecodeError) else (
                "is not a readable file in the model directory")
            raise ModelLoadError(
                f"model '{config.name}': output '{spec.name}' label_filename "
                f"'{spec.label_filename}' {why}"
            ) from None
        labels[spec.name] = tuple(text.splitlines())
    return labels
