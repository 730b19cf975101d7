"""Triton's own example clients, call for call, against the models Triton's documentation defines
(issue 16): simple_grpc_string_infer_client.py, simple_grpc_model_control.py, image_client.py
with -c (classification), and the error texts the examples check.

One server (explicit model control) serves the whole module; each test loads what it needs."""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.grpc.model_config_pb2 as mc
from tritonclient.utils import InferenceServerException

from sluice.server.config.settings import ServerConfig
from tests.support.metrics import labels, scrape
from tests.support.onnx_models import write_model
from tests.support.running import RunningServer, start_server
from tests.support.triton_models import (
    SIMPLE_CONFIG,
    SIMPLE_STRING_CONFIG,
    image_classifier_model,
    reshape_by_input_model,
    simple_model,
    simple_string_model,
)

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


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("triton-repo")
    write_model(root, "simple_string", simple_string_model(), SIMPLE_STRING_CONFIG)
    write_model(root, "simple", simple_model(), SIMPLE_CONFIG)
    write_model(root, "reshape_default", reshape_by_input_model(), _RESHAPE)
    write_model(root, "reshape_file", reshape_by_input_model(),
                _warmup("two_by_two", 'input_data_file: "shape_2x2"'))
    (root / "reshape_file" / "warmup").mkdir()
    (root / "reshape_file" / "warmup" / "shape_2x2").write_bytes(
        np.array([2, 2], np.int64).tobytes())
    write_model(root, "reshape_zero", reshape_by_input_model(),
                _warmup("zeros", "zero_data: true"))
    write_model(root, "densenet_onnx", image_classifier_model(_WEIGHTS), _DENSENET)
    (root / "densenet_onnx" / "densenet_labels.txt").write_text("\n".join(_LABELS) + "\n")
    write_model(root, "no_labels", image_classifier_model(_WEIGHTS),
                _DENSENET.replace("densenet_onnx", "no_labels"))
    write_model(root, "flat_image", image_classifier_model(_WEIGHTS), _DENSENET.replace(
        "densenet_onnx", "flat_image").replace("dims: [ 3, 4, 4 ]", "dims: [ 48 ]\n    "
                                               "reshape: { shape: [ 3, 4, 4 ] }"))
    return root


@pytest.fixture(scope="module")
def server(repo: Path, tmp_path_factory: pytest.TempPathFactory):
    running = start_server(ServerConfig(
        model_repository=repo, grpc_port=0, metrics_port=0, model_control="explicit",
        state_dir=tmp_path_factory.mktemp("triton-state"), max_load_file_bytes=_FILE_CAP,
    ))
    yield running
    running.stop()


@pytest.fixture
def client(server: RunningServer):
    with grpcclient.InferenceServerClient(server.address) as c:
        yield c


def _strings(values: np.ndarray) -> np.ndarray:
    return np.array([str(x).encode("utf-8") for x in values.ravel()],
                    dtype=np.object_).reshape(values.shape)


# -- item 1: string models and warm-up --------------------------------------------------------


def test_simple_string_loads_and_answers_as_the_string_example_checks(client):
    # Its default warm-up fed empty strings to the Cast and failed the load before.
    client.load_model("simple_string")
    assert client.is_model_ready("simple_string")
    # simple_grpc_string_infer_client.py, call for call
    in0 = np.expand_dims(np.arange(start=0, stop=16, dtype=np.int32), axis=0)
    in1 = np.ones(shape=(1, 16), dtype=np.int32)
    inputs = [grpcclient.InferInput("INPUT0", [1, 16], "BYTES"),
              grpcclient.InferInput("INPUT1", [1, 16], "BYTES")]
    inputs[0].set_data_from_numpy(_strings(in0))
    inputs[1].set_data_from_numpy(_strings(in1))
    outputs = [grpcclient.InferRequestedOutput("OUTPUT0"),
               grpcclient.InferRequestedOutput("OUTPUT1")]
    results = client.infer(model_name="simple_string", inputs=inputs, outputs=outputs)
    output0, output1 = results.as_numpy("OUTPUT0"), results.as_numpy("OUTPUT1")
    assert output0.shape == output1.shape == (1, 16)
    for i in range(16):
        assert int(output0[0][i]) == in0[0][i] + in1[0][i]
        assert int(output1[0][i]) == in0[0][i] - in1[0][i]


def test_a_failing_default_warm_up_is_a_counted_warning_and_the_model_serves(client, server):
    before = scrape(server).get(
        ("sluice_warmup_failures_total", labels(model="reshape_default")), 0.0)
    client.load_model("reshape_default")  # zeros in SHAPE fail the runtime's Reshape
    assert client.is_model_ready("reshape_default")
    after = scrape(server)[("sluice_warmup_failures_total", labels(model="reshape_default"))]
    assert after - before == 1
    data = grpcclient.InferInput("DATA", [4], "FP32")
    data.set_data_from_numpy(np.arange(4, dtype=np.float32))
    shape = grpcclient.InferInput("SHAPE", [2], "INT64")
    shape.set_data_from_numpy(np.array([2, 2], np.int64))
    out = client.infer("reshape_default", [data, shape]).as_numpy("OUT")
    np.testing.assert_array_equal(out, np.arange(4, dtype=np.float32).reshape(2, 2))


def test_declared_warm_up_samples_run_with_their_data_and_a_failing_one_fails_the_load(
    client, server
):
    before = scrape(server)
    # Its sample reads SHAPE [2, 2] from warmup/shape_2x2: the same model with zeros fails.
    client.load_model("reshape_file")
    assert client.is_model_ready("reshape_file")
    with pytest.raises(InferenceServerException) as info:
        client.load_model("reshape_zero")
    message = info.value.message()
    assert info.value.status() == "StatusCode.INVALID_ARGUMENT"
    assert message.startswith("failed to load 'reshape_zero'"), message
    assert "warm-up sample 'zeros' failed" in message
    assert not client.is_model_ready("reshape_zero")
    after = scrape(server)
    for model in ("reshape_file", "reshape_zero"):  # declared samples are no warnings
        key = ("sluice_warmup_failures_total", labels(model=model))
        assert after.get(key, 0.0) == before.get(key, 0.0)


def test_warm_up_bytes_data_files_hold_length_prefixed_elements(repo, tmp_path):
    from sluice.server.config.pbtxt import read_model_config
    from sluice.server.serving.warmup import sample_inputs

    config = SIMPLE_STRING_CONFIG + """
model_warmup [{ name: "s" batch_size: 2
  inputs { key: "INPUT0" value: { data_type: TYPE_STRING dims: [ 16 ] input_data_file: "in0" } }
  inputs { key: "INPUT1" value: { data_type: TYPE_STRING dims: [ 16 ] random_data: true } } }]
"""
    write_model(tmp_path, "simple_string", simple_string_model(), config)
    elements = [str(i).encode() for i in range(16)]
    (tmp_path / "simple_string" / "warmup").mkdir()
    (tmp_path / "simple_string" / "warmup" / "in0").write_bytes(
        b"".join(struct.pack("<I", len(e)) + e for e in elements))
    parsed, _ = read_model_config(tmp_path / "simple_string", "simple_string")
    inputs = sample_inputs(parsed, parsed.warmup[0], tmp_path / "simple_string")
    assert inputs["INPUT0"].shape == (2, 16) and inputs["INPUT0"][1].tolist() == elements
    assert all(x.decode().isdigit() for x in inputs["INPUT1"].ravel())


# -- item 2: load-time overrides (simple_grpc_model_control.py) -------------------------------


def _fails(call, *args, **kwargs) -> InferenceServerException:
    with pytest.raises(InferenceServerException) as info:
        call(*args, **kwargs)
    return info.value


def _infer_simple(client, model: str) -> None:
    """simple's check: OUTPUT0 is the sum, OUTPUT1 the difference, against numpy."""
    in0 = np.arange(16, dtype=np.int32).reshape(1, 16)
    in1 = np.full((1, 16), 3, np.int32)
    inputs = [grpcclient.InferInput("INPUT0", [1, 16], "INT32"),
              grpcclient.InferInput("INPUT1", [1, 16], "INT32")]
    inputs[0].set_data_from_numpy(in0)
    inputs[1].set_data_from_numpy(in1)
    result = client.infer(model, inputs)
    np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), in0 + in1)
    np.testing.assert_array_equal(result.as_numpy("OUTPUT1"), in0 - in1)


def test_the_model_control_example(client, server):
    # simple_grpc_model_control.py, check for check (its repository holds other models)
    assert "simple" in {m.name for m in client.get_model_repository_index().models}
    client.load_model("simple")
    assert client.is_model_ready("simple")
    error = _fails(client.load_model, "simple",
                   config='"parameters": {"config": {{"max_batch_size": "16"}}}')
    assert "failed to load" in error.message() and "not valid JSON" in error.message()
    assert error.status() == "StatusCode.INVALID_ARGUMENT"
    client.load_model("simple", config='{"max_batch_size":"16"}')
    assert client.get_model_config("simple").config.max_batch_size == 16
    _infer_simple(client, "simple")
    client.unload_model("simple")
    assert not client.is_model_ready("simple")
    error = _fails(client.load_model, "simple", config="{}", files={"file:" + "A" * 256: b"a"})
    assert error.status() == "StatusCode.INVALID_ARGUMENT"
    assert "Invalid file path" in error.message()
    assert client.is_server_live()
    error = _fails(client.load_model, "wrong_model_name")
    assert "failed to load" in error.message()
    assert error.status() == "StatusCode.NOT_FOUND"


def test_an_override_naming_fields_sluice_lacks_is_refused_by_name(client):
    for config, needle in (('{"response_cache": {"enable": true}}', "response_cache"),
                           ('{"bogus": 1}', "bogus"), ("[1]", "JSON object"),
                           ('{"name": "other"}', "name 'other'")):
        error = _fails(client.load_model, "simple", config=config)
        assert error.status() == "StatusCode.INVALID_ARGUMENT", error.message()
        assert error.message().startswith("failed to load 'simple'")
        assert needle in error.message(), error.message()


def _staged_dirs(server: RunningServer) -> list[str]:
    root = server.server.repository.staging._root
    return sorted(p.name for p in root.iterdir()) if root is not None else []


def test_model_files_in_the_request_load_from_private_staging_removed_on_replace_and_unload(
    client, server, repo
):
    model = simple_model().SerializeToString()
    config = '{"max_batch_size": 8}'
    # a model the repository does not hold: its whole directory comes with the request
    client.load_model("sent_simple", config=config, files={"file:1/model.onnx": model})
    _infer_simple(client, "sent_simple")
    assert client.get_model_config("sent_simple").config.max_batch_size == 8
    first = _staged_dirs(server)
    assert len(first) == 1 and not (repo / "sent_simple").exists()
    client.load_model("sent_simple", config=config, files={"file:2/model.onnx": model})
    assert [m.version for m in client.get_model_repository_index().models
            if m.name == "sent_simple" and m.state == "READY"] == ["2"]
    second = _staged_dirs(server)
    assert len(second) == 1 and second != first  # the replaced staging is gone
    client.unload_model("sent_simple")
    assert _staged_dirs(server) == []


@pytest.mark.parametrize("path", [
    "../escaped", "1/../../escaped", "/tmp/escaped", "1//model.onnx", "./1/model.onnx",
    "1\\..\\model.onnx", "1/model.onnx\0",
])
def test_a_file_path_that_would_leave_staging_is_refused(client, server, repo, path):
    before = sorted(p.name for p in repo.parent.iterdir())
    error = _fails(client.load_model, "sent_escape", config="{}",
                   files={"file:" + path: b"x", "file:1/model.onnx": b"y"})
    assert error.status() == "StatusCode.INVALID_ARGUMENT"
    assert error.message().startswith("failed to load 'sent_escape'; Invalid file path")
    assert sorted(p.name for p in repo.parent.iterdir()) == before
    assert not Path("/tmp/escaped").exists()
    assert _staged_dirs(server) == []
    assert client.is_server_live()


def test_files_over_the_cap_and_files_without_a_config_are_refused(client, server):
    error = _fails(client.load_model, "sent_big", config="{}",
                   files={"file:1/model.onnx": b"x" * (_FILE_CAP + 1)})
    assert error.status() == "StatusCode.RESOURCE_EXHAUSTED"
    assert f"the limit is {_FILE_CAP}" in error.message()
    error = _fails(client.load_model, "sent_bare", files={"file:1/model.onnx": b"x"})
    assert error.status() == "StatusCode.INVALID_ARGUMENT"
    assert "need a 'config' parameter" in error.message()
    assert _staged_dirs(server) == []


# -- item 3: input.format, label_filename, classification (image_client.py -c 3) ---------------


def _image(seed: int) -> np.ndarray:
    """An 'image' as image_client.py has it after PIL: HWC uint8."""
    return np.random.default_rng(seed).integers(0, 256, (4, 4, 3)).astype(np.uint8)


def test_the_image_client_flow_with_classification(client, server, repo):
    client.load_model("densenet_onnx")
    # image_client.py's parse_model, on metadata and config as it reads them
    metadata = client.get_model_metadata("densenet_onnx")
    config = client.get_model_config("densenet_onnx").config
    assert len(metadata.inputs) == len(metadata.outputs) == len(config.input) == 1
    assert metadata.outputs[0].datatype == "FP32"
    assert config.input[0].format == mc.ModelInput.FORMAT_NCHW
    assert config.output[0].label_filename == "densenet_labels.txt"
    assert list(metadata.inputs[0].shape) == [-1, 3, 4, 4]
    c, h, w = metadata.inputs[0].shape[1:]
    # preprocess: to the input's datatype, HWC -> CHW for FORMAT_NCHW; a batch of 2 images
    batch = np.stack([np.transpose(_image(seed).astype(np.float32), (2, 0, 1))
                      for seed in (1, 2)])
    assert batch.shape == (2, c, h, w)
    inputs = [grpcclient.InferInput(metadata.inputs[0].name, list(batch.shape), "FP32")]
    inputs[0].set_data_from_numpy(batch)
    outputs = [grpcclient.InferRequestedOutput(metadata.outputs[0].name, class_count=3)]
    result = client.infer("densenet_onnx", inputs, outputs=outputs)
    answer = result.as_numpy("fc6_1")
    assert answer.shape == (2, 3) and answer.dtype == np.object_
    assert result.get_output("fc6_1").datatype == "BYTES"
    # the reference: onnxruntime on the same file, top 3 by hand, Triton's "%f:index:label"
    session = ort.InferenceSession(str(repo / "densenet_onnx" / "1" / "model.onnx"))
    probabilities = session.run(None, {"data_0": batch})[0]
    for row, got in zip(probabilities, answer, strict=True):
        top = sorted(range(5), key=lambda i: -row[i])[:3]
        assert [x.decode() for x in got] == [
            f"{row[i]:f}:{i}:{_LABELS[i]}" for i in top]  # C printf %f
        # image_client.py's postprocess reads each as score (index) = label
        for entry in got:
            score, index, label = "".join(chr(x) for x in entry).split(":")
            assert _LABELS[int(index)] == label and abs(float(score) - row[int(index)]) < 1e-6


def test_classification_of_integer_outputs_without_labels_and_of_unsorted_types(client):
    client.load_model("simple")
    in0 = np.array([[5, 1, 9, 9] + [0] * 12], np.int32)
    inputs = [grpcclient.InferInput("INPUT0", [1, 16], "INT32"),
              grpcclient.InferInput("INPUT1", [1, 16], "INT32")]
    inputs[0].set_data_from_numpy(in0)
    inputs[1].set_data_from_numpy(np.ones((1, 16), np.int32))
    result = client.infer("simple", inputs, outputs=[
        grpcclient.InferRequestedOutput("OUTPUT0", class_count=3),
        grpcclient.InferRequestedOutput("OUTPUT1")])
    # 10 at 2 and 3 (the lower index first), then 6 at 0; no label file: "value:index"
    assert result.as_numpy("OUTPUT0").tolist() == [[b"10:2", b"10:3", b"6:0"]]
    np.testing.assert_array_equal(result.as_numpy("OUTPUT1"), in0 - 1)
    error = _fails(client.infer, "simple", inputs, outputs=[
        grpcclient.InferRequestedOutput("OUTPUT0", class_count=-2)])
    assert error.status() == "StatusCode.INVALID_ARGUMENT"
    assert "'classification' must be a positive integer" in error.message()
    client.load_model("simple_string")
    strings = [grpcclient.InferInput(n, [1, 16], "BYTES") for n in ("INPUT0", "INPUT1")]
    for tensor in strings:
        tensor.set_data_from_numpy(_strings(np.ones((1, 16), np.int32)))
    error = _fails(client.infer, "simple_string", strings, outputs=[
        grpcclient.InferRequestedOutput("OUTPUT0", class_count=1)])
    assert error.status() == "StatusCode.INVALID_ARGUMENT"
    assert error.message().startswith(
        "class result not available for output due to unsupported type 'BYTES'")


def test_a_missing_label_file_and_a_format_on_a_flat_input_fail_the_load_by_name(client):
    error = _fails(client.load_model, "no_labels")
    assert error.message().startswith("failed to load 'no_labels'")
    assert "output 'fc6_1' label_filename 'densenet_labels.txt' is not a readable file" in (
        error.message())
    error = _fails(client.load_model, "flat_image")
    assert "input 'data_0' has format FORMAT_NCHW, which needs 3 dims" in error.message()


# -- item 6: the error texts Triton's examples check --------------------------------------------


def test_unknown_models_and_bad_versions_answer_in_tritons_words_first(client):
    for call in (lambda: client.get_model_metadata("wrong_model_name"),
                 lambda: client.get_model_config("wrong_model_name"),
                 lambda: client.infer("wrong_model_name", [])):
        error = _fails(call)
        assert error.status() == "StatusCode.NOT_FOUND"
        assert error.message().startswith(
            "Request for unknown model: 'wrong_model_name' is not found; "), error.message()
    client.load_model("simple")
    error = _fails(client.get_model_metadata, "simple", "7")
    assert error.status() == "StatusCode.NOT_FOUND"
    assert error.message().startswith("Request for unknown model: 'simple' version 7 is not "
                                      "found; model 'simple' has no version '7' (serving [1])")
    error = _fails(client.get_model_metadata, "simple", "x1")
    assert error.status() == "StatusCode.INVALID_ARGUMENT"
    assert error.message().startswith(
        "failed to get model version from specified version string 'x1' (details: ")


def test_the_model_is_resolved_before_any_tensor_counts(server):
    import grpc

    from sluice.proto import grpc_service_pb2 as pb
    from sluice.proto import grpc_service_pb2_grpc as pb_grpc

    with grpc.insecure_channel(server.address) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        # malformed: 12 raw bytes for 16 INT32 elements
        bad = pb.ModelInferRequest(model_name="wrong_model_name", raw_input_contents=[b"x" * 12])
        bad.inputs.add(name="INPUT0", datatype="INT32", shape=[1, 16])
        with pytest.raises(grpc.RpcError) as info:
            stub.ModelInfer(bad, timeout=30)
        assert info.value.code() == grpc.StatusCode.NOT_FOUND
        assert info.value.details().startswith("Request for unknown model: 'wrong_model_name'")
        # grpc_explicit_int_content_client.py: typed contents, then one raw entry added
        stub_client = grpcclient.InferenceServerClient(server.address)
        stub_client.load_model("simple")
        request = pb.ModelInferRequest(model_name="simple")
        for name, values in (("INPUT0", list(range(16))), ("INPUT1", [1] * 16)):
            tensor = request.inputs.add(name=name, datatype="INT32", shape=[1, 16])
            tensor.contents.int_contents[:] = values
        reply = stub.ModelInfer(request, timeout=30)
        np.testing.assert_array_equal(
            np.frombuffer(reply.raw_output_contents[0], np.int32), np.arange(16) + 1)
        request.raw_input_contents.extend([np.arange(8, dtype=np.int32).tobytes()])
        request.inputs[0].contents.int_contents[:] = list(range(8, 16))
        with pytest.raises(grpc.RpcError) as info:
            stub.ModelInfer(request, timeout=30)
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert ("contents field must not be specified when using raw_input_contents for "
                "'INPUT0' for model 'simple'") in info.value.details()
        stub_client.close()
