"""Small ONNX models built on the fly for tests (onnx.helper; no files committed)."""

from __future__ import annotations

from pathlib import Path

import onnx
from onnx import TensorProto, helper

#: KServe datatype -> ONNX element type, for every datatype Sluice serves.
ONNX_TYPES = {
    "BOOL": TensorProto.BOOL,
    "UINT8": TensorProto.UINT8,
    "UINT16": TensorProto.UINT16,
    "UINT32": TensorProto.UINT32,
    "UINT64": TensorProto.UINT64,
    "INT8": TensorProto.INT8,
    "INT16": TensorProto.INT16,
    "INT32": TensorProto.INT32,
    "INT64": TensorProto.INT64,
    "FP16": TensorProto.FLOAT16,
    "FP32": TensorProto.FLOAT,
    "FP64": TensorProto.DOUBLE,
    "BYTES": TensorProto.STRING,
}


def identity_model(tensors: dict[str, tuple[str, list]]) -> onnx.ModelProto:
    """One Identity per entry: input IN_<name> -> output OUT_<name>, given datatype and shape
    (use "batch" for a dynamic first dim)."""
    inputs, outputs, nodes = [], [], []
    for name, (datatype, shape) in tensors.items():
        elem = ONNX_TYPES[datatype]
        inputs.append(helper.make_tensor_value_info(f"IN_{name}", elem, shape))
        outputs.append(helper.make_tensor_value_info(f"OUT_{name}", elem, shape))
        nodes.append(helper.make_node("Identity", [f"IN_{name}"], [f"OUT_{name}"]))
    graph = helper.make_graph(nodes, "identity", inputs, outputs)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def write_model(repo: Path, name: str, model: onnx.ModelProto, config: str | None = None,
                version: int = 1) -> Path:
    """Write ``repo/name/version/model.onnx`` (and config.pbtxt when given)."""
    target = repo / name / str(version)
    target.mkdir(parents=True, exist_ok=True)
    onnx.save(model, target / "model.onnx")
    if config is not None:
        (repo / name / "config.pbtxt").write_text(config)
    return target


def slow_model(width: int = 64, iterations: int = 200, name: str = "x") -> onnx.ModelProto:
    """IN_<name> FP32 [batch, width] -> OUT_<name>: ``iterations`` rounds of tanh(v @ W) in an
    ONNX Loop. A real model whose compute time is set by ``iterations`` (overload tests)."""
    import numpy as np

    weight = helper.make_tensor(
        "W", TensorProto.FLOAT, [width, width],
        (np.eye(width, dtype=np.float32) * 0.5).ravel().tolist(),
    )
    body = helper.make_graph(
        [
            helper.make_node("Identity", ["cond_in"], ["cond_out"]),
            helper.make_node("MatMul", ["v_in", "W"], ["mm"]),
            helper.make_node("Tanh", ["mm"], ["v_out"]),
        ],
        "round",
        [
            helper.make_tensor_value_info("i", TensorProto.INT64, []),
            helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
            helper.make_tensor_value_info("v_in", TensorProto.FLOAT, ["batch", width]),
        ],
        [
            helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
            helper.make_tensor_value_info("v_out", TensorProto.FLOAT, ["batch", width]),
        ],
    )
    graph = helper.make_graph(
        [
            helper.make_node("Constant", [], ["trips"], value=helper.make_tensor(
                "trips_value", TensorProto.INT64, [], [iterations])),
            helper.make_node("Constant", [], ["go"], value=helper.make_tensor(
                "go_value", TensorProto.BOOL, [], [True])),
            helper.make_node("Loop", ["trips", "go", f"IN_{name}"], [f"OUT_{name}"], body=body),
        ],
        "slow",
        [helper.make_tensor_value_info(f"IN_{name}", TensorProto.FLOAT, ["batch", width])],
        [helper.make_tensor_value_info(f"OUT_{name}", TensorProto.FLOAT, ["batch", width])],
        initializer=[weight],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model
