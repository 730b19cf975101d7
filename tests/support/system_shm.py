"""Helpers of the system shared memory tests (tests/integration/shm/): Triton's ``simple`` model
as its documentation defines it, the inputs the tests send it, and the checks they share."""

from __future__ import annotations

import numpy as np
import pytest
import tritonclient.grpc as tc
from onnx import TensorProto, helper
from tritonclient.utils import InferenceServerException

#: Triton's documented ``simple`` model: INPUT0 + INPUT1 and INPUT0 - INPUT1, INT32 [16].
SIMPLE_CONFIG = """
name: "simple"
platform: "onnxruntime_onnx"
max_batch_size: 8
input [
  { name: "INPUT0" data_type: TYPE_INT32 dims: [ 16 ] },
  { name: "INPUT1" data_type: TYPE_INT32 dims: [ 16 ] }
]
output [
  { name: "OUTPUT0" data_type: TYPE_INT32 dims: [ 16 ] },
  { name: "OUTPUT1" data_type: TYPE_INT32 dims: [ 16 ] }
]
"""
TENSOR_BYTES = 16 * 4  # one row of INT32 [16]


def simple_model():
    io = [helper.make_tensor_value_info(n, TensorProto.INT32, ["batch", 16])
          for n in ("INPUT0", "INPUT1", "OUTPUT0", "OUTPUT1")]
    graph = helper.make_graph(
        [helper.make_node("Add", ["INPUT0", "INPUT1"], ["OUTPUT0"]),
         helper.make_node("Sub", ["INPUT0", "INPUT1"], ["OUTPUT1"])],
        "simple", io[:2], io[2:])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model

def mappings_of(key: str) -> int:
    """How many times this process maps the object ``key`` (/proc/self/maps)."""
    path = "/dev/shm/" + key.lstrip("/")
    with open("/proc/self/maps") as maps:
        return sum(1 for line in maps if line.rstrip().endswith(path))


def refused(call, *args, **kwargs) -> InferenceServerException:
    with pytest.raises(InferenceServerException) as info:
        call(*args, **kwargs)
    return info.value


def simple_inputs() -> tuple[np.ndarray, np.ndarray]:
    return (np.arange(16, dtype=np.int32).reshape(1, 16),
            np.full((1, 16), 3, dtype=np.int32))


def infer_placed(client, input_at: tuple[str, int, int], output_at=None):
    """``simple`` with INPUT0 placed at (region, byte_size, offset), INPUT1 raw, and OUTPUT0 at
    ``output_at`` when given."""
    inputs = [tc.InferInput("INPUT0", [1, 16], "INT32"), tc.InferInput("INPUT1", [1, 16], "INT32")]
    region, size, offset = input_at
    inputs[0].set_shared_memory(region, size, offset=offset)
    inputs[1].set_data_from_numpy(simple_inputs()[1])
    outputs = None
    if output_at is not None:
        outputs = [tc.InferRequestedOutput("OUTPUT0")]
        outputs[0].set_shared_memory(output_at[0], output_at[1], offset=output_at[2])
    return client.infer("simple", inputs, outputs=outputs)
