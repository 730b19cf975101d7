"""Triton's own example clients, call for call, against the models Triton's documentation defines
(issue 16), answering: image_client.py with -c (classification, input.format, label_filename),
and the error texts the examples check.

One server (explicit model control, tests/integration/triton_parity/conftest.py) serves the
module; each test loads what it needs."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.grpc.model_config_pb2 as mc

from tests.support.triton_parity import _LABELS, _fails, _strings

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
