"""Triton's own example clients, call for call, against the models Triton's documentation defines
(issue 16), loading models: simple_grpc_string_infer_client.py with the warm-up rules, and
simple_grpc_model_control.py with load-time overrides and model files sent with the request.

One server (explicit model control, tests/integration/triton_parity/conftest.py) serves the
module; each test loads what it needs."""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from tests.support.metrics import labels, scrape
from tests.support.onnx_models import write_model
from tests.support.running import RunningServer
from tests.support.triton_models import SIMPLE_STRING_CONFIG, simple_model, simple_string_model
from tests.support.triton_parity import _FILE_CAP, _fails, _strings

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


