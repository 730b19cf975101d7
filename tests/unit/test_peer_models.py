"""The peers benchmark's models and bare servicers without a server: the MLP computes the NumPy
formula of its own weights, what ModelMetadata/ModelConfig say matches what the model returns,
and the inline-ORT servicer answers a request exactly as onnxruntime does."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from onnx import numpy_helper

from loadtests.ceiling import CeilingServicer, constant_response
from loadtests.inline_ort import InlineOrtServicer
from loadtests.peer_metadata import PeerModel
from loadtests.peer_models import build_repository, config_text, mlp_model
from sluice.clients.messages import build_request
from sluice.proto import grpc_service_pb2 as pb
from sluice.proto import model_config_pb2
from sluice.proto.tensors import decode_outputs

INPUTS = {"mlp": ("features", (64,)), "cnn28": ("image", (1, 28, 28))}


@pytest.fixture(scope="module")
def repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_repository(tmp_path_factory.mktemp("peers"))


def session(model: PeerModel) -> ort.InferenceSession:
    return ort.InferenceSession(str(model.onnx_path), providers=["CPUExecutionProvider"])


def test_the_mlp_is_gemm_relu_gemm_of_its_weights():
    weights = {t.name: numpy_helper.to_array(t) for t in mlp_model().graph.initializer}
    x = np.random.default_rng(3).random((5, 64), dtype=np.float32)
    x[0] = 0.0  # a row whose hidden layer is just relu(b1)
    expected = np.maximum(x @ weights["w1"] + weights["b1"], 0) @ weights["w2"] + weights["b2"]
    built = mlp_model().SerializeToString()
    [got] = ort.InferenceSession(built, providers=["CPUExecutionProvider"]).run(
        None, {"features": x})
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", ["mlp", "cnn28"])
def test_metadata_config_and_constant_answer_match_the_model(repository, name):
    model = PeerModel.load(repository / name)
    input_name, dims = INPUTS[name]
    [tensor] = model.metadata.inputs
    assert (tensor.name, tensor.datatype, list(tensor.shape)) == (input_name, "FP32", [-1, *dims])
    config = model.config_response.config
    assert config.max_batch_size == 64 and config.HasField("dynamic_batching")
    cpu = model_config_pb2.ModelInstanceGroup.KIND_CPU
    assert [(g.count, g.kind) for g in config.instance_group] == [(1, cpu)]
    [actual] = session(model).run(None, {input_name: np.zeros((1, *dims), np.float32)})
    constant = decode_outputs(model.zeros_response())["logits"]
    assert constant.shape == actual.shape == (1, 10) and constant.dtype == actual.dtype


def test_tensors_a_config_leaves_out_are_read_from_the_onnx_file(tmp_path):
    build_repository(tmp_path, ["mlp"])
    (tmp_path / "mlp" / "config.pbtxt").write_text("max_batch_size: 8\n")
    model = PeerModel.load(tmp_path / "mlp")
    assert [(t.name, list(t.shape)) for t in model.metadata.inputs] == [("features", [-1, 64])]
    assert [(t.name, list(t.shape)) for t in model.metadata.outputs] == [("logits", [-1, 10])]
    assert model.name == "mlp" and model.version == "1"


def test_config_text_declares_fp32_tensors_without_the_batch_dim():
    text = config_text("m", {"a": [1, 2]}, {"b": [3]})
    assert 'input [ { name: "a" data_type: TYPE_FP32 dims: [ 1, 2 ] } ]' in text
    assert 'output [ { name: "b" data_type: TYPE_FP32 dims: [ 3 ] } ]' in text


@pytest.mark.parametrize("name", ["identity", "mlp", "cnn28"])
async def test_inline_ort_answers_as_onnxruntime_does(repository, name):
    model = PeerModel.load(repository / name)
    [tensor] = model.metadata.inputs
    rows = np.random.default_rng(7).random((3, *tensor.shape[1:]), dtype=np.float32)
    request = build_request(name, {tensor.name: rows}, request_id="r-1")
    response = await InlineOrtServicer(model).ModelInfer(request, None)
    assert (response.model_name, response.model_version, response.id) == (name, "1", "r-1")
    [expected] = session(model).run(None, {tensor.name: rows})
    [(output, got)] = decode_outputs(response).items()
    assert output == model.metadata.outputs[0].name
    np.testing.assert_array_equal(got, expected)


async def test_the_ceiling_still_answers_identitys_constant_by_default(repository):
    answer = constant_response()
    assert (answer.model_name, answer.model_version) == ("identity", "1")
    np.testing.assert_array_equal(decode_outputs(answer)["OUTPUT0"], np.zeros((1, 16), np.float32))
    ceiling = CeilingServicer(repository / "cnn28")
    assert await ceiling.ModelInfer(None, None) is ceiling._response
    assert decode_outputs(ceiling._response)["logits"].shape == (1, 10)
    described = await ceiling.ModelConfig(pb.ModelConfigRequest(name="cnn28"), None)
    assert described.config.name == "cnn28" and described.config.max_batch_size == 64
