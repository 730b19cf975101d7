"""Fixtures of the Triton parity tests: the models Triton's documentation defines, one server per
module (explicit model control; each test loads what it needs) and a tritonclient gRPC client."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient

from sluice.server.config.settings import ServerConfig
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
from tests.support.triton_parity import _DENSENET, _FILE_CAP, _LABELS, _RESHAPE, _WEIGHTS, _warmup


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

