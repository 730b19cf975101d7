"""The models :mod:`loadtests.peers` measures every server on, written as a Triton-layout
repository in a directory the caller owns (usually a temporary one).

- ``identity``: the bundled one (``model_repository/identity``), copied as is;
- ``mlp``: ``features`` FP32 [batch, 64] -> Gemm 128 -> Relu -> Gemm 10 -> ``logits`` [batch, 10];
- ``cnn28``: ``image`` FP32 [batch, 1, 28, 28] -> Conv 8x3x3 (pad 1) -> Relu -> MaxPool 2x2 ->
  Flatten -> Gemm 10 -> ``logits`` [batch, 10].

The two built models are made with ``onnx.helper`` (weights from a fixed seed, so every run
serves the same model) and get ``max_batch_size: 64``, ``dynamic_batching { }`` and one CPU
instance. Nothing here imports ``server`` or ``tests``.
"""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from loadtests.models import MODEL_REPOSITORY

MODELS = ("identity", "mlp", "cnn28")
"""Every model this module can write, in the order the peers table lists them."""

_MAX_BATCH_SIZE = 64
_OPSET = 17


def _weight(name: str, shape: tuple[int, ...], rng: np.random.Generator) -> onnx.TensorProto:
    # Scaled so activations stay near 1 whatever the fan-in: no inf/NaN to slow any kernel.
    fan_in = int(np.prod(shape[1:])) if len(shape) > 1 else shape[0]
    values = rng.standard_normal(shape).astype(np.float32) / np.float32(np.sqrt(fan_in))
    return numpy_helper.from_array(values, name)


def _finish(graph: onnx.GraphProto) -> onnx.ModelProto:
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", _OPSET)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def mlp_model(seed: int = 0) -> onnx.ModelProto:
    """``features`` FP32 [batch, 64] -> ``logits`` FP32 [batch, 10]: Gemm+Relu+Gemm."""
    rng = np.random.default_rng(seed)
    weights = [
        _weight("w1", (64, 128), rng), _weight("b1", (128,), rng),
        _weight("w2", (128, 10), rng), _weight("b2", (10,), rng),
    ]
    graph = helper.make_graph(
        [
            helper.make_node("Gemm", ["features", "w1", "b1"], ["hidden"]),
            helper.make_node("Relu", ["hidden"], ["active"]),
            helper.make_node("Gemm", ["active", "w2", "b2"], ["logits"]),
        ],
        "mlp",
        [helper.make_tensor_value_info("features", TensorProto.FLOAT, ["batch", 64])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 10])],
        initializer=weights,
    )
    return _finish(graph)


def cnn_model(seed: int = 0) -> onnx.ModelProto:
    """``image`` FP32 [batch, 1, 28, 28] -> ``logits`` FP32 [batch, 10]."""
    rng = np.random.default_rng(seed)
    weights = [
        _weight("conv_w", (8, 1, 3, 3), rng), _weight("conv_b", (8,), rng),
        _weight("fc_w", (10, 8 * 14 * 14), rng), _weight("fc_b", (10,), rng),
    ]
    graph = helper.make_graph(
        [
            helper.make_node("Conv", ["image", "conv_w", "conv_b"], ["conv"],
                             kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
            helper.make_node("Relu", ["conv"], ["active"]),
            helper.make_node("MaxPool", ["active"], ["pooled"], kernel_shape=[2, 2],
                             strides=[2, 2]),
            helper.make_node("Flatten", ["pooled"], ["flat"], axis=1),
            helper.make_node("Gemm", ["flat", "fc_w", "fc_b"], ["logits"], transB=1),
        ],
        "cnn28",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["batch", 1, 28, 28])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 10])],
        initializer=weights,
    )
    return _finish(graph)


def config_text(name: str, inputs: dict[str, list[int]], outputs: dict[str, list[int]]) -> str:
    """A Triton ``config.pbtxt`` for an FP32 ONNX model (dims exclude the batch dim)."""

    def tensors(entries: dict[str, list[int]]) -> str:
        return ", ".join(
            f'{{ name: "{tensor}" data_type: TYPE_FP32 dims: [ {", ".join(map(str, dims))} ] }}'
            for tensor, dims in entries.items()
        )

    return (
        f'name: "{name}"\n'
        'platform: "onnxruntime_onnx"\n'
        f"max_batch_size: {_MAX_BATCH_SIZE}\n"
        f"input [ {tensors(inputs)} ]\n"
        f"output [ {tensors(outputs)} ]\n"
        "dynamic_batching { }\n"
        "instance_group [ { count: 1 kind: KIND_CPU } ]\n"
    )


def _write(repository: Path, name: str, model: onnx.ModelProto, config: str) -> None:
    version_dir = repository / name / "1"
    version_dir.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(version_dir / "model.onnx"))
    (repository / name / "config.pbtxt").write_text(config)


def build_repository(repository: Path, names: Sequence[str] = MODELS) -> Path:
    """Write the models named (each one of :data:`MODELS`) under ``repository``; returns it."""
    unknown = sorted(set(names) - set(MODELS))
    if unknown:
        raise ValueError(f"unknown peer model(s) {unknown}; known: {list(MODELS)}")
    repository.mkdir(parents=True, exist_ok=True)
    for name in names:
        if name == "identity":
            shutil.copytree(MODEL_REPOSITORY / "identity", repository / "identity",
                            dirs_exist_ok=True)
        elif name == "mlp":
            _write(repository, name, mlp_model(),
                   config_text(name, {"features": [64]}, {"logits": [10]}))
        else:
            _write(repository, name, cnn_model(),
                   config_text(name, {"image": [1, 28, 28]}, {"logits": [10]}))
    return repository
