"""ONNX models for shadow tests: a live classifier, a candidate that disagrees on a computable
subset of rows, and a candidate with a real run-time fault."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper

from tests.support.onnx_models import identity_model, slow_model, write_model

#: Classes of the test classifier (input and output are FP32 [batch, CLASSES]).
CLASSES = 4
#: The "deliberately different" candidate multiplies its input by this, column by column.
CANDIDATE_SCALE = np.array([1.0, 1.0, 1.0, 2.0], np.float32)
#: Width of the slow pair's input and output.
SLOW_WIDTH = 16
#: Table of the faulty candidate: an input value >= its length is an out-of-bounds index.
FAULT_TABLE = 8


def _finish(graph: onnx.GraphProto) -> onnx.ModelProto:
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def _io(width: int) -> tuple[onnx.ValueInfoProto, onnx.ValueInfoProto]:
    return (
        helper.make_tensor_value_info("IN_x", TensorProto.FLOAT, ["batch", width]),
        helper.make_tensor_value_info("OUT_x", TensorProto.FLOAT, ["batch", width]),
    )


def scaled_model(scale: np.ndarray) -> onnx.ModelProto:
    """OUT_x = IN_x * scale (FP32 [batch, len(scale)])."""
    inp, out = _io(len(scale))
    weight = helper.make_tensor("S", TensorProto.FLOAT, [len(scale)], scale.tolist())
    node = helper.make_node("Mul", ["IN_x", "S"], ["OUT_x"])
    return _finish(helper.make_graph([node], "scaled", [inp], [out], initializer=[weight]))


def faulty_model(width: int = CLASSES) -> onnx.ModelProto:
    """OUT_x = table[int(IN_x)]: fine on the zeros of warm-up, but an input value of
    FAULT_TABLE or more makes onnxruntime fail the run (index out of bounds) — a real fault."""
    inp, out = _io(width)
    table = helper.make_tensor(
        "T", TensorProto.FLOAT, [FAULT_TABLE], np.arange(FAULT_TABLE, dtype=np.float32).tolist()
    )
    nodes = [
        helper.make_node("Cast", ["IN_x"], ["idx"], to=TensorProto.INT64),
        helper.make_node("Gather", ["T", "idx"], ["OUT_x"], axis=0),
    ]
    return _finish(helper.make_graph(nodes, "faulty", [inp], [out], initializer=[table]))


def classifier_repo(root: Path, name: str = "clf", *, queue: int | None = None) -> Path:
    """``name`` with version 1 = identity (live), 2 = scaled by CANDIDATE_SCALE, 3 = faulty;
    all versions served, one instance on one ORT thread each."""
    policy = f"default_queue_policy {{ max_queue_size: {queue} }}" if queue else ""
    config = (
        f"max_batch_size: 8\nversion_policy {{ all {{}} }}\ndynamic_batching {{ {policy} }}\n"
        "instance_group [{ count: 1 kind: KIND_CPU }]\n"
        'parameters { key: "intra_op_thread_count" value { string_value: "1" } }\n'
    )
    write_model(root, name, identity_model({"x": ("FP32", ["batch", CLASSES])}), config, 1)
    write_model(root, name, scaled_model(CANDIDATE_SCALE), version=2)
    write_model(root, name, faulty_model(), version=3)
    return root


def slow_pair_repo(root: Path, name: str = "slowpair", *, live_rounds: int = 1600,
                   shadow_rounds: int = 16000, queue: int | None = None) -> Path:
    """``name`` with version 1 = a slow live model and 2 = a slower candidate (the same maths,
    more loop rounds; about 800 rounds per ms): FP32 [batch, SLOW_WIDTH], max batch 8, one
    instance on one ORT thread; ``queue`` bounds every priority level's queue."""
    policy = f"default_queue_policy {{ max_queue_size: {queue} }}" if queue else ""
    config = (
        f"max_batch_size: 8\nversion_policy {{ all {{}} }}\ndynamic_batching {{ {policy} }}\n"
        "instance_group [{ count: 1 kind: KIND_CPU }]\n"
        'parameters { key: "intra_op_thread_count" value { string_value: "1" } }\n'
    )
    write_model(root, name, slow_model(SLOW_WIDTH, live_rounds), config, 1)
    write_model(root, name, slow_model(SLOW_WIDTH, shadow_rounds), version=2)
    return root
