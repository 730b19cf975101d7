"""The models of Triton's documentation (``docs/examples/model_repository``) as small ONNX files,
with the config.pbtxt Triton ships for them, for the tests that do what Triton's example clients
do (tests/integration/triton_parity/)."""

from __future__ import annotations

import onnx
from onnx import TensorProto, helper

_OPSET = [helper.make_opsetid("", 17)]


def _model(graph: onnx.GraphProto) -> onnx.ModelProto:
    model = helper.make_model(graph, opset_imports=_OPSET)
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def simple_string_model() -> onnx.ModelProto:
    """Triton's ``simple_string``: INPUT0, INPUT1 BYTES [batch, 16], each element the text of
    an integer; OUTPUT0 = INPUT0 + INPUT1 and OUTPUT1 = INPUT0 - INPUT1, as text (a Cast from
    string to INT32 and back)."""
    text, number = TensorProto.STRING, TensorProto.INT32
    return _model(helper.make_graph(
        [
            helper.make_node("Cast", ["INPUT0"], ["a"], to=number),
            helper.make_node("Cast", ["INPUT1"], ["b"], to=number),
            helper.make_node("Add", ["a", "b"], ["sum"]),
            helper.make_node("Sub", ["a", "b"], ["difference"]),
            helper.make_node("Cast", ["sum"], ["OUTPUT0"], to=text),
            helper.make_node("Cast", ["difference"], ["OUTPUT1"], to=text),
        ],
        "simple_string",
        [helper.make_tensor_value_info(n, text, ["batch", 16]) for n in ("INPUT0", "INPUT1")],
        [helper.make_tensor_value_info(n, text, ["batch", 16]) for n in ("OUTPUT0", "OUTPUT1")],
    ))


#: Triton's config.pbtxt of simple_string (its platform line aside: ours is ONNX).
SIMPLE_STRING_CONFIG = """
name: "simple_string"
max_batch_size: 8
input [
  { name: "INPUT0" data_type: TYPE_STRING dims: [ 16 ] },
  { name: "INPUT1" data_type: TYPE_STRING dims: [ 16 ] }
]
output [
  { name: "OUTPUT0" data_type: TYPE_STRING dims: [ 16 ] },
  { name: "OUTPUT1" data_type: TYPE_STRING dims: [ 16 ] }
]
"""


def simple_model() -> onnx.ModelProto:
    """Triton's ``simple``: INPUT0, INPUT1 INT32 [batch, 16]; OUTPUT0 sum, OUTPUT1 difference."""
    number = TensorProto.INT32
    return _model(helper.make_graph(
        [
            helper.make_node("Add", ["INPUT0", "INPUT1"], ["OUTPUT0"]),
            helper.make_node("Sub", ["INPUT0", "INPUT1"], ["OUTPUT1"]),
        ],
        "simple",
        [helper.make_tensor_value_info(n, number, ["batch", 16]) for n in ("INPUT0", "INPUT1")],
        [helper.make_tensor_value_info(n, number, ["batch", 16]) for n in ("OUTPUT0", "OUTPUT1")],
    ))


SIMPLE_CONFIG = """
name: "simple"
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


def reshape_by_input_model() -> onnx.ModelProto:
    """DATA FP32 [4] reshaped to the shape in SHAPE INT64 [2] (OUT). Zeros in SHAPE fail in
    the runtime (a 0 copies a dimension DATA lacks): a model whose all-zero warm-up fails
    while real data ([2, 2]) works."""
    return _model(helper.make_graph(
        [helper.make_node("Reshape", ["DATA", "SHAPE"], ["OUT"])],
        "reshape_by_input",
        [helper.make_tensor_value_info("DATA", TensorProto.FLOAT, [4]),
         helper.make_tensor_value_info("SHAPE", TensorProto.INT64, [2])],
        [helper.make_tensor_value_info("OUT", TensorProto.FLOAT, [-1, -1])],
    ))


def image_classifier_model(weights) -> onnx.ModelProto:
    """A densenet-like classifier in miniature: data_0 FP32 [batch, 3, 4, 4] (NCHW) ->
    global average pool -> Gemm with ``weights`` [3, classes] -> softmax ``fc6_1`` [batch,
    classes]."""
    classes = weights.shape[1]
    return _model(helper.make_graph(
        [
            helper.make_node("GlobalAveragePool", ["data_0"], ["pooled"]),
            helper.make_node("Flatten", ["pooled"], ["flat"]),
            helper.make_node("Gemm", ["flat", "W"], ["logits"]),
            helper.make_node("Softmax", ["logits"], ["fc6_1"], axis=1),
        ],
        "classifier",
        [helper.make_tensor_value_info("data_0", TensorProto.FLOAT, ["batch", 3, 4, 4])],
        [helper.make_tensor_value_info("fc6_1", TensorProto.FLOAT, ["batch", classes])],
        initializer=[helper.make_tensor("W", TensorProto.FLOAT, list(weights.shape),
                                        weights.astype("float32").ravel().tolist())],
    ))
