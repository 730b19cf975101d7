"""The routing tests' model: versions of one tiny graph that add their own constant, so the
version that answered can be read off the output."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper

CONFIG = "max_batch_size: 8\nversion_policy { all {} }\ndynamic_batching {}"
X = np.array([[1.0, 2.0]], dtype=np.float32)


def add_model(constant: float) -> onnx.ModelProto:
    """IN_x FP32 [batch, 2] -> OUT_x = IN_x + constant."""
    graph = helper.make_graph(
        [helper.make_node("Add", ["IN_x", "C"], ["OUT_x"])], "add",
        [helper.make_tensor_value_info("IN_x", TensorProto.FLOAT, ["batch", 2])],
        [helper.make_tensor_value_info("OUT_x", TensorProto.FLOAT, ["batch", 2])],
        initializer=[helper.make_tensor("C", TensorProto.FLOAT, [1], [constant])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model
