"""Checks on the bundled example model repository (model_repository/); no server needed.

Every model directory must hold a config.pbtxt that parses as Triton's ModelConfig and whose
declared inputs/outputs (when present) agree with the ONNX graph of every version, and small
<version>/model.onnx files that onnxruntime loads and runs. The models are rebuilt by
model_repository/build_models.py.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc

REPO = Path(__file__).resolve().parents[2] / "model_repository"
EXPECTED_MODELS = {
    "digits", "cnn", "identity", "add_sub",  # ONNX
    "breast_cancer", "digits_standardize", "digits_top3",  # Numba (trees, kernels)
    "digits_linear", "digits_pipeline",  # the pipeline's ONNX step and the pipeline
}
MAX_ONNX_BYTES = 1_000_000

# ONNX TensorProto element type -> Triton DataType
ONNX_TO_TRITON = {
    onnx.TensorProto.BOOL: mc.TYPE_BOOL,
    onnx.TensorProto.UINT8: mc.TYPE_UINT8,
    onnx.TensorProto.UINT16: mc.TYPE_UINT16,
    onnx.TensorProto.UINT32: mc.TYPE_UINT32,
    onnx.TensorProto.UINT64: mc.TYPE_UINT64,
    onnx.TensorProto.INT8: mc.TYPE_INT8,
    onnx.TensorProto.INT16: mc.TYPE_INT16,
    onnx.TensorProto.INT32: mc.TYPE_INT32,
    onnx.TensorProto.INT64: mc.TYPE_INT64,
    onnx.TensorProto.FLOAT16: mc.TYPE_FP16,
    onnx.TensorProto.FLOAT: mc.TYPE_FP32,
    onnx.TensorProto.DOUBLE: mc.TYPE_FP64,
    onnx.TensorProto.STRING: mc.TYPE_STRING,
    onnx.TensorProto.BFLOAT16: mc.TYPE_BF16,
}


def _model_dirs() -> list[Path]:
    return sorted(p for p in REPO.iterdir() if p.is_dir() and not p.name.startswith((".", "_")))


def _onnx_model_dirs() -> list[Path]:
    return [p for p in _model_dirs() if (p / "1" / "model.onnx").is_file()]


def _onnx_files() -> list[Path]:
    """<model>/<version>/model.onnx of every version of every ONNX model."""
    return sorted(
        version / "model.onnx" for model in _onnx_model_dirs() for version in model.iterdir()
        if version.name.isdigit()
    )


def _load_config(model_dir: Path) -> mc.ModelConfig:
    config = mc.ModelConfig()
    text_format.Parse((model_dir / "config.pbtxt").read_text(), config)
    return config


def _session(model_dir: Path, version: int = 1) -> ort.InferenceSession:
    return ort.InferenceSession(
        str(model_dir / str(version) / "model.onnx"), providers=["CPUExecutionProvider"]
    )


def _onnx_dims(value_info: onnx.ValueInfoProto) -> list[int]:
    """Dims of a graph input/output; -1 for a symbolic or unknown dim."""
    return [
        d.dim_value if d.HasField("dim_value") else -1
        for d in value_info.type.tensor_type.shape.dim
    ]


def _config_model_dims(tensor) -> list[int]:
    """The non-batch dims the model sees: the reshape shape when there is one, else dims."""
    return list(tensor.reshape.shape) if tensor.HasField("reshape") else list(tensor.dims)


MODEL_DIRS = _onnx_model_dirs()
MODEL_IDS = [p.name for p in MODEL_DIRS]
ONNX_FILES = _onnx_files()
ONNX_IDS = [f"{p.parent.parent.name}/{p.parent.name}" for p in ONNX_FILES]


def test_repository_holds_the_expected_models():
    assert {p.name for p in _model_dirs()} == EXPECTED_MODELS
    assert {p.name for p in MODEL_DIRS} == {"digits", "cnn", "identity", "add_sub",
                                            "digits_linear"}
    assert (REPO / "build_models.py").is_file()
    assert ONNX_IDS == ["add_sub/1", "cnn/1", "digits/1", "digits/2", "digits_linear/1",
                        "identity/1"]


@pytest.mark.parametrize("onnx_path", ONNX_FILES, ids=ONNX_IDS)
def test_layout_and_onnx_size(onnx_path: Path):
    assert (onnx_path.parent.parent / "config.pbtxt").is_file()
    assert onnx_path.stat().st_size < MAX_ONNX_BYTES
    model = onnx.load(str(onnx_path))
    onnx.checker.check_model(model, full_check=True)
    assert model.ir_version <= 9, "keep ir_version loadable by onnxruntime 1.18"
    opsets = {o.domain: o.version for o in model.opset_import}
    assert opsets.get("", opsets.get("ai.onnx")) == 17


@pytest.mark.parametrize("onnx_path", ONNX_FILES, ids=ONNX_IDS)
def test_config_matches_onnx_graph(onnx_path: Path):
    model_dir = onnx_path.parent.parent
    config = _load_config(model_dir)
    assert config.name == model_dir.name
    assert config.platform == "onnxruntime_onnx"
    assert config.max_batch_size > 0
    for group in config.instance_group:
        assert group.kind == mc.ModelInstanceGroup.KIND_CPU
        assert group.count >= 1

    graph = onnx.load(str(onnx_path)).graph
    initializers = {i.name for i in graph.initializer}
    graph_inputs = {v.name: v for v in graph.input if v.name not in initializers}
    graph_outputs = {v.name: v for v in graph.output}

    # Every graph input/output must be dynamic in its first (batch) dimension.
    for value_info in [*graph_inputs.values(), *graph_outputs.values()]:
        assert _onnx_dims(value_info)[0] == -1, f"{value_info.name}: batch dim is not dynamic"

    for declared, in_graph, kind in (
        (config.input, graph_inputs, "input"),
        (config.output, graph_outputs, "output"),
    ):
        if not declared:  # omitted: the server derives it from the model
            continue
        assert {t.name for t in declared} == set(in_graph), f"{kind} names differ"
        for tensor in declared:
            value_info = in_graph[tensor.name]
            elem_type = value_info.type.tensor_type.elem_type
            assert tensor.data_type == ONNX_TO_TRITON[elem_type], f"{tensor.name}: dtype"
            assert len(tensor.dims) > 0, f"{tensor.name}: Triton needs non-empty dims"
            assert _config_model_dims(tensor) == _onnx_dims(value_info)[1:], (
                f"{tensor.name}: non-batch dims"
            )


def test_add_sub_config_omits_io_blocks():
    config = _load_config(REPO / "add_sub")
    assert not config.input and not config.output
    assert config.max_batch_size == 64


@pytest.mark.parametrize("onnx_path", ONNX_FILES, ids=ONNX_IDS)
def test_runs_at_batch_one_and_max(onnx_path: Path):
    config = _load_config(onnx_path.parent.parent)
    sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    np_types = {"tensor(float)": np.float32, "tensor(int64)": np.int64}
    for batch in (1, config.max_batch_size):
        feed = {
            i.name: rng.standard_normal([batch, *i.shape[1:]]).astype(np_types[i.type])
            for i in sess.get_inputs()
        }
        for out in sess.run(None, feed):
            assert out.shape[0] == batch
            if out.dtype.kind == "f":
                assert np.all(np.isfinite(out))


# Correct held-out rows out of 360, per version: the accuracies the README states (97.5% and
# 98.6%; the split and the models are fixed).
DIGITS_CORRECT = {1: 351, 2: 355}


@pytest.mark.parametrize("version", sorted(DIGITS_CORRECT))
def test_digits_accuracy_and_label_consistency(version: int):
    split = np.load(REPO / "digits" / "test_split.npz")
    x, y = split["X"], split["y"]
    assert x.dtype == np.float32 and x.ndim == 2 and x.shape[1] == 64
    assert y.dtype == np.int64 and y.shape == (x.shape[0],)
    assert set(np.unique(y)) == set(range(10))

    label, probabilities = _session(REPO / "digits", version).run(
        ["label", "probabilities"], {"input": x}
    )
    assert label.dtype == np.int64 and label.shape == y.shape
    assert probabilities.dtype == np.float32 and probabilities.shape == (x.shape[0], 10)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-4)
    np.testing.assert_array_equal(np.argmax(probabilities, axis=1), label)
    assert int(np.sum(label == y)) == DIGITS_CORRECT[version] and y.shape == (360,)


def test_digits_serves_two_different_models():
    """Version 2 is another model, not a copy of version 1: a shadow or a canary of it has
    something to compare. Both versions are served (version_policy all)."""
    assert _load_config(REPO / "digits").version_policy.WhichOneof("policy_choice") == "all"
    graphs = [onnx.load(str(REPO / "digits" / v / "model.onnx")).graph for v in ("1", "2")]
    assert [n.op_type for n in graphs[0].node] != [n.op_type for n in graphs[1].node]
    x = np.load(REPO / "digits" / "test_split.npz")["X"]
    p1, p2 = (_session(REPO / "digits", v).run(["probabilities"], {"input": x})[0]
              for v in (1, 2))
    assert np.abs(p1 - p2).max() > 0.1
    # they disagree on 5 of the 360 held-out rows
    assert int(np.sum(p1.argmax(1) != p2.argmax(1))) == 5


def test_add_sub_outputs():
    rng = np.random.default_rng(1)
    a = rng.standard_normal((5, 16)).astype(np.float32)
    b = rng.standard_normal((5, 16)).astype(np.float32)
    sess = _session(REPO / "add_sub")
    out0, out1 = sess.run(["OUTPUT0", "OUTPUT1"], {"INPUT0": a, "INPUT1": b})
    np.testing.assert_array_equal(out0, a + b)
    np.testing.assert_array_equal(out1, a - b)
    # a requested-output subset works too
    (only1,) = sess.run(["OUTPUT1"], {"INPUT0": a, "INPUT1": b})
    np.testing.assert_array_equal(only1, a - b)


def test_identity_round_trips():
    x = np.random.default_rng(2).standard_normal((7, 16)).astype(np.float32)
    (y,) = _session(REPO / "identity").run(["OUTPUT0"], {"INPUT0": x})
    np.testing.assert_array_equal(y, x)


def test_cnn_is_deterministic_per_row():
    """Rows are independent: a row's logits don't depend on the rest of the batch."""
    x = np.random.default_rng(3).standard_normal((4, 3, 32, 32)).astype(np.float32)
    sess = _session(REPO / "cnn")
    (batched,) = sess.run(["logits"], {"image": x})
    (single,) = sess.run(["logits"], {"image": x[2:3]})
    np.testing.assert_allclose(single[0], batched[2], rtol=1e-4, atol=1e-5)
