"""The server's own request and response types: numpy arrays in, numpy arrays out.

The transport layer (``sluice.server.protocol``) decodes wire messages into these; the core never
sees protobuf.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

#: KServe v2 datatype name -> numpy dtype (little-endian). BYTES travels as object arrays of bytes.
DATATYPE_DTYPES: dict[str, np.dtype[Any]] = {
    "BOOL": np.dtype(np.bool_),
    "UINT8": np.dtype("<u1"),
    "UINT16": np.dtype("<u2"),
    "UINT32": np.dtype("<u4"),
    "UINT64": np.dtype("<u8"),
    "INT8": np.dtype("<i1"),
    "INT16": np.dtype("<i2"),
    "INT32": np.dtype("<i4"),
    "INT64": np.dtype("<i8"),
    "FP16": np.dtype("<f2"),
    "FP32": np.dtype("<f4"),
    "FP64": np.dtype("<f8"),
    "BYTES": np.dtype(object),
}


def datatype_of(array: np.ndarray) -> str:
    """The KServe datatype name of ``array`` (object/str/bytes arrays are BYTES)."""
    kind = array.dtype.kind
    if kind in "OSU":
        return "BYTES"
    if array.dtype.name == "bfloat16":
        return "BF16"
    for name, dtype in DATATYPE_DTYPES.items():
        if dtype.kind == kind and dtype.itemsize == array.dtype.itemsize:
            return name
    raise ValueError(f"no KServe datatype for numpy dtype {array.dtype}")


@dataclass(frozen=True, slots=True)
class TensorSpec:
    """One model input or output as the model declares it.

    ``dims`` excludes the batch dimension when the model batches; -1 marks a variable size.
    """

    name: str
    datatype: str
    dims: tuple[int, ...]
    optional: bool = False
    #: Triton's reshape: the non-batch shape the model itself sees, when it differs from dims.
    reshape: tuple[int, ...] | None = None
    # Triton parity (issue 16 item 3)
    #: Image layout of an input (Triton's input.format: "FORMAT_NHWC" or "FORMAT_NCHW");
    #: None for FORMAT_NONE. Kept and reported, never acted on (as in Triton).
    format: str | None = None
    #: Labels file of an output (a file in the model directory, one class label a line), for
    #: the classification extension; None: classes answer without labels.
    label_filename: str | None = None

    @property
    def model_dims(self) -> tuple[int, ...]:
        """Non-batch dims as the model file has them."""
        return self.dims if self.reshape is None else self.reshape


@dataclass(slots=True)
class InferRequest:
    """One decoded inference request. Arrays may be read-only views over the wire bytes."""

    model_name: str
    model_version: str
    inputs: dict[str, np.ndarray]
    id: str = ""
    #: Names of the outputs to return; None means all of the model's outputs.
    requested_outputs: tuple[str, ...] | None = None
    parameters: dict[str, Any] = field(default_factory=dict)
    #: time.monotonic() instant after which the answer is useless; None means no deadline.
    deadline: float | None = None
    #: Triton priority level, 1 = highest; 0 = the model's default.
    priority: int = 0
    #: (name, datatype, shape) of each raw input, when the decoder took its short path (the
    #: same tuple means the same checks pass); None otherwise.
    signature: tuple[tuple[str, str, tuple[int, ...]], ...] | None = None
    #: System shared memory (issue 16 item 4): the protocol's record of the inputs read from
    #: and outputs to write into client regions; None when the request uses none.
    shared_memory: Any = None
    #: Requested output -> how many classes to answer it with (Triton's classification
    #: extension: the top classes as BYTES "score:index[:label]"); None: none asked for.
    classification: dict[str, int] | None = None


@dataclass(slots=True)
class InferResponse:
    """The answer to one :class:`InferRequest`."""

    model_name: str
    model_version: str
    outputs: dict[str, np.ndarray]
    id: str = ""
    parameters: dict[str, Any] = field(default_factory=dict)
