"""Rebuild Sluice's bundled example model repository (Triton layout).

    python model_repository/build_models.py [--repo DIR]

Writes, for every model, ``<repo>/<model>/config.pbtxt`` and
``<repo>/<model>/<version>/model.onnx`` (overwriting them), plus ``<repo>/digits/test_split.npz``,
then loads every model with onnxruntime (CPUExecutionProvider) and runs it at batch 1 and at its
max_batch_size.

Everything is deterministic: fixed seeds, fixed ONNX opset/IR version and a fixed zip timestamp
for the .npz, so re-running the script with the same library versions reproduces the committed
files (other scikit-learn or BLAS builds move trained weights in the last digits).

Models:
  digits    versions 1 (StandardScaler + LogisticRegression) and 2 (StandardScaler + a small
            MLP), trained on scikit-learn's bundled digits data (stratified 80/20 split),
            exported with skl2onnx (zipmap=False); built by build_digits.py.
  cnn       small random-weight CNN (~58 MFLOP/image) built with onnx.helper, for throughput.
  identity  INPUT0 -> Identity -> OUTPUT0, the server-overhead probe.
  add_sub   OUTPUT0 = INPUT0 + INPUT1, OUTPUT1 = INPUT0 - INPUT1; its config.pbtxt omits the
            input/output blocks, so the server must derive them from the ONNX model.
  (build_pipeline.py adds the tree model and the digits pipeline.)

Needs the ``models`` extra (onnx, scikit-learn, skl2onnx) plus numpy and onnxruntime.
"""

from __future__ import annotations

import argparse
import io
import sys
import zipfile
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

REPO_DIR = Path(__file__).resolve().parent

OPSET = 17
IR_VERSION = 8  # loadable by onnxruntime >= 1.14, so comfortably by our floor of 1.18
BATCH_DIM = "batch"
SEED = 20240607
MAX_ONNX_BYTES = 1_000_000

# ---------------------------------------------------------------------------------------------
# config.pbtxt files (protobuf text format, Triton ModelConfig field names)
# ---------------------------------------------------------------------------------------------

CNN_CONFIG = """\
name: "cnn"
platform: "onnxruntime_onnx"
max_batch_size: 128
input [
  {
    name: "image"
    data_type: TYPE_FP32
    dims: [ 3, 32, 32 ]
  }
]
output [
  {
    name: "logits"
    data_type: TYPE_FP32
    dims: [ 10 ]
  }
]
dynamic_batching { }
instance_group [
  {
    count: 1
    kind: KIND_CPU
  }
]
"""

IDENTITY_CONFIG = """\
name: "identity"
platform: "onnxruntime_onnx"
max_batch_size: 512
input [
  {
    name: "INPUT0"
    data_type: TYPE_FP32
    dims: [ 16 ]
  }
]
output [
  {
    name: "OUTPUT0"
    data_type: TYPE_FP32
    dims: [ 16 ]
  }
]
dynamic_batching { }
instance_group [
  {
    count: 1
    kind: KIND_CPU
  }
]
"""

# Deliberately minimal: no input/output blocks. The server derives them from the ONNX model
# (names, element types, non-batch dims), like Triton's auto-complete for onnxruntime_onnx.
ADD_SUB_CONFIG = """\
name: "add_sub"
platform: "onnxruntime_onnx"
max_batch_size: 64
"""


# ---------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------


def _finalize(model: onnx.ModelProto, name: str) -> onnx.ModelProto:
    """Pin IR version / opsets, name the batch dimension, drop duplicate opset imports, check."""
    model.ir_version = IR_VERSION
    model.producer_name = "sluice-build_models"
    model.producer_version = "1"
    model.graph.name = name
    seen: dict[str, int] = {}
    for opset in model.opset_import:
        seen[opset.domain] = max(seen.get(opset.domain, 0), opset.version)
    # skl2onnx declares the lowest opset its operators need (16 for an MLP): every bundled
    # model states the same one, OPSET.
    seen[""] = max(seen.get("", 0), OPSET)
    del model.opset_import[:]
    for domain in sorted(seen):
        model.opset_import.append(helper.make_opsetid(domain, seen[domain]))
    for value_info in list(model.graph.input) + list(model.graph.output):
        dims = value_info.type.tensor_type.shape.dim
        if dims and not dims[0].HasField("dim_value"):
            dims[0].dim_param = BATCH_DIM
    onnx.checker.check_model(model, full_check=True)
    return model


def _write_model(
    repo: Path, name: str, model: onnx.ModelProto, config: str, version: int = 1
) -> Path:
    model_dir = repo / name
    (model_dir / str(version)).mkdir(parents=True, exist_ok=True)
    (model_dir / "config.pbtxt").write_text(config)
    path = model_dir / str(version) / "model.onnx"
    data = model.SerializeToString()
    if len(data) >= MAX_ONNX_BYTES:
        raise SystemExit(f"{path}: {len(data)} bytes, over the {MAX_ONNX_BYTES} byte budget")
    path.write_bytes(data)
    return path


def _write_npz(path: Path, **arrays: np.ndarray) -> None:
    """Like np.savez_compressed, but with a fixed zip timestamp so the bytes are reproducible."""
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for key, array in arrays.items():
            buf = io.BytesIO()
            np.lib.format.write_array(buf, np.ascontiguousarray(array), allow_pickle=False)
            info = zipfile.ZipInfo(f"{key}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            zf.writestr(info, buf.getvalue())


def _session(path: Path) -> ort.InferenceSession:
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


# ---------------------------------------------------------------------------------------------
# cnn: a compute-heavier random-weight CNN for throughput work
# ---------------------------------------------------------------------------------------------


def _he_conv(rng: np.random.Generator, c_out: int, c_in: int, k: int) -> np.ndarray:
    std = np.sqrt(2.0 / (c_in * k * k))
    return (rng.standard_normal((c_out, c_in, k, k)) * std).astype(np.float32)


def build_cnn(repo: Path) -> Path:
    rng = np.random.default_rng(SEED)
    w1, b1 = _he_conv(rng, 32, 3, 3), np.zeros(32, np.float32)
    w2, b2 = _he_conv(rng, 64, 32, 3), np.zeros(64, np.float32)
    w3, b3 = _he_conv(rng, 64, 64, 3), np.zeros(64, np.float32)
    wfc = (rng.standard_normal((64, 10)) * np.sqrt(2.0 / 64)).astype(np.float32)
    bfc = np.zeros(10, np.float32)
    initializers = [
        numpy_helper.from_array(arr, name)
        for name, arr in [
            ("conv1.weight", w1),
            ("conv1.bias", b1),
            ("conv2.weight", w2),
            ("conv2.bias", b2),
            ("conv3.weight", w3),
            ("conv3.bias", b3),
            ("fc.weight", wfc),
            ("fc.bias", bfc),
        ]
    ]
    conv = {"kernel_shape": [3, 3], "pads": [1, 1, 1, 1]}
    pool = {"kernel_shape": [2, 2], "strides": [2, 2]}
    nodes = [
        helper.make_node("Conv", ["image", "conv1.weight", "conv1.bias"], ["c1"], "conv1", **conv),
        helper.make_node("Relu", ["c1"], ["r1"], "relu1"),
        helper.make_node("Conv", ["r1", "conv2.weight", "conv2.bias"], ["c2"], "conv2", **conv),
        helper.make_node("Relu", ["c2"], ["r2"], "relu2"),
        helper.make_node("MaxPool", ["r2"], ["p2"], "pool2", **pool),
        helper.make_node("Conv", ["p2", "conv3.weight", "conv3.bias"], ["c3"], "conv3", **conv),
        helper.make_node("Relu", ["c3"], ["r3"], "relu3"),
        helper.make_node("MaxPool", ["r3"], ["p3"], "pool3", **pool),
        helper.make_node("GlobalAveragePool", ["p3"], ["gap"], "gap"),
        helper.make_node("Flatten", ["gap"], ["flat"], "flatten", axis=1),
        helper.make_node("Gemm", ["flat", "fc.weight", "fc.bias"], ["logits"], "fc"),
    ]
    graph = helper.make_graph(
        nodes,
        "cnn",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, [BATCH_DIM, 3, 32, 32])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [BATCH_DIM, 10])],
        initializer=initializers,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model = _finalize(model, "cnn")
    return _write_model(repo, "cnn", model, CNN_CONFIG)


def cnn_mflop_per_image() -> float:
    """Multiply-adds x 2 of the convolutions and the Gemm (ReLU/pooling ignored)."""
    macs = 32 * 32 * 32 * (3 * 9)  # conv1 at 32x32
    macs += 32 * 32 * 64 * (32 * 9)  # conv2 at 32x32
    macs += 16 * 16 * 64 * (64 * 9)  # conv3 at 16x16
    macs += 64 * 10  # fc
    return 2 * macs / 1e6


# ---------------------------------------------------------------------------------------------
# identity and add_sub
# ---------------------------------------------------------------------------------------------


def build_identity(repo: Path) -> Path:
    graph = helper.make_graph(
        [helper.make_node("Identity", ["INPUT0"], ["OUTPUT0"], "identity")],
        "identity",
        [helper.make_tensor_value_info("INPUT0", TensorProto.FLOAT, [BATCH_DIM, 16])],
        [helper.make_tensor_value_info("OUTPUT0", TensorProto.FLOAT, [BATCH_DIM, 16])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    return _write_model(repo, "identity", _finalize(model, "identity"), IDENTITY_CONFIG)


def build_add_sub(repo: Path) -> Path:
    graph = helper.make_graph(
        [
            helper.make_node("Add", ["INPUT0", "INPUT1"], ["OUTPUT0"], "add"),
            helper.make_node("Sub", ["INPUT0", "INPUT1"], ["OUTPUT1"], "sub"),
        ],
        "add_sub",
        [
            helper.make_tensor_value_info("INPUT0", TensorProto.FLOAT, [BATCH_DIM, 16]),
            helper.make_tensor_value_info("INPUT1", TensorProto.FLOAT, [BATCH_DIM, 16]),
        ],
        [
            helper.make_tensor_value_info("OUTPUT0", TensorProto.FLOAT, [BATCH_DIM, 16]),
            helper.make_tensor_value_info("OUTPUT1", TensorProto.FLOAT, [BATCH_DIM, 16]),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    return _write_model(repo, "add_sub", _finalize(model, "add_sub"), ADD_SUB_CONFIG)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repo", type=Path, default=REPO_DIR, help="output model repository")
    args = parser.parse_args()
    repo: Path = args.repo.resolve()

    import build_digits  # both versions of digits

    digits = build_digits.build_digits(repo)
    paths = {
        **{f"digits/{version}": path for version, path in digits.items()},
        "cnn": build_cnn(repo),
        "identity": build_identity(repo),
        "add_sub": build_add_sub(repo),
    }
    import build_pipeline  # the tree model and the digits pipeline
    import model_checks  # loading, running and timing what was written

    model_checks.check_models(repo, paths)

    build_pipeline.build_all(repo, sys.modules[__name__])
    import build_profiles  # digits' reference profiles, by `sluice profile`

    build_profiles.build_profiles(repo)
    ms = model_checks.time_cnn(paths["cnn"])
    print(
        f"cnn: ~{cnn_mflop_per_image():.1f} MFLOP/image; batch 32 on CPU: {ms:.3f} ms/image "
        f"(best of 20, onnxruntime {ort.__version__}, default threads)"
    )


if __name__ == "__main__":
    main()
