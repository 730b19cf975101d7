"""Helpers of the Triton parity tests (tests/integration/triton_parity/): the miniature densenet
and the reshape models' configs the module's repository holds, the file cap its server runs
with, and the checks the tests share."""

from __future__ import annotations

import numpy as np
import pytest
from tritonclient.utils import InferenceServerException

_FILE_CAP = 64 * 1024
#: The miniature densenet: 3 channels -> 5 classes, with Triton's densenet_onnx config shape.
_WEIGHTS = np.array([[4.0, 0.5, -1.0, 2.0, 0.0],
                     [0.0, 3.0, 1.0, -2.0, 0.5],
                     [-1.0, 0.0, 2.5, 1.0, 0.5]], np.float32)
_LABELS = ["TENCH", "GOLDFISH", "WHITE SHARK", "TIGER SHARK", "HAMMERHEAD"]
_DENSENET = """
name: "densenet_onnx"
max_batch_size: 2
input [{ name: "data_0" data_type: TYPE_FP32 format: FORMAT_NCHW dims: [ 3, 4, 4 ] }]
output [{ name: "fc6_1" data_type: TYPE_FP32 dims: [ 5 ] label_filename: "densenet_labels.txt" }]
"""

_RESHAPE = """
max_batch_size: 0
input [
  { name: "DATA" data_type: TYPE_FP32 dims: [ 4 ] },
  { name: "SHAPE" data_type: TYPE_INT64 dims: [ 2 ] }
]
"""


def _warmup(name: str, shape_source: str) -> str:
    return _RESHAPE + f"""
model_warmup [{{
  name: "{name}"
  batch_size: 1
  count: 2
  inputs {{ key: "DATA" value: {{ data_type: TYPE_FP32 dims: [ 4 ] random_data: true }} }}
  inputs {{ key: "SHAPE" value: {{ data_type: TYPE_INT64 dims: [ 2 ] {shape_source} }} }}
}}]
"""


def _strings(values: np.ndarray) -> np.ndarray:
    return np.array([str(x).encode("utf-8") for x in values.ravel()],
                    dtype=np.object_).reshape(values.shape)


def _fails(call, *args, **kwargs) -> InferenceServerException:
    with pytest.raises(InferenceServerException) as info:
        call(*args, **kwargs)
    return info.value
