"""Model repository: Triton layout, strict configs, version policies, and load / unload /
reload at run time without losing a request."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
import tritonclient.grpc as tc
from tritonclient.utils import InferenceServerException

from tests.support.onnx_models import identity_model, write_model

IDENTITY = identity_model({"x": ("FP32", ["batch", 4])})


def infer_x(client, model="m", version="", rows=2):
    value = np.arange(rows * 4, dtype=np.float32).reshape(rows, 4)
    tensor = tc.InferInput("IN_x", list(value.shape), "FP32")
    tensor.set_data_from_numpy(value)
    result = client.infer(model, [tensor], model_version=version)
    np.testing.assert_array_equal(result.as_numpy("OUT_x"), value)
    return result.get_response().model_version


def status_of(call):
    with pytest.raises(InferenceServerException) as info:
        call()
    return info.value.status(), info.value.message()


def test_version_policies(make_server, tmp_path):
    for v in (1, 2, 3):
        write_model(tmp_path, "latest", IDENTITY, "max_batch_size: 8", version=v)
        write_model(tmp_path, "all", IDENTITY,
                    "max_batch_size: 8\nversion_policy { all {} }", version=v)
        write_model(tmp_path, "specific", IDENTITY,
                    "max_batch_size: 8\nversion_policy { specific { versions: [1, 3] } }",
                    version=v)
        write_model(tmp_path, "two", IDENTITY,
                    "max_batch_size: 8\nversion_policy { latest { num_versions: 2 } }",
                    version=v)
    running = make_server(tmp_path)
    with tc.InferenceServerClient(running.address) as client:
        def ready(model):
            return [v for v in "123" if client.is_model_ready(model, v)]

        assert ready("latest") == ["3"]
        assert ready("all") == ["1", "2", "3"]
        assert ready("specific") == ["1", "3"]
        assert ready("two") == ["2", "3"]
        assert infer_x(client, "all") == "3"  # no version: the newest
        assert infer_x(client, "all", "1") == "1"


def test_config_may_be_absent_and_inputs_are_derived(make_server, tmp_path):
    write_model(tmp_path, "bare", IDENTITY)  # no config.pbtxt at all
    running = make_server(tmp_path)
    with tc.InferenceServerClient(running.address) as client:
        config = client.get_model_config("bare", as_json=True)["config"]
        assert config["max_batch_size"] == 64  # the server default for a batchable model
        assert config["input"][0]["name"] == "IN_x" and config["input"][0]["dims"] == ["4"]
        infer_x(client, "bare")


@pytest.mark.parametrize(
    ("config", "needle"),
    [
        ("max_batch_size: 8\nsequence_batching { iterative_sequence: true }",
         "sequence_batching.iterative_sequence"),
        ("max_batch_size: 8\nmodel_warmup { name: 'w' }", "model_warmup"),
        ("max_batch_size: 8\ninput [{ name: 'IN_x' data_type: TYPE_FP32 dims: [5] }]",
         "'IN_x' is declared with dims [5]"),
        ("max_batch_size: 8\ninput [{ name: 'IN_x' data_type: TYPE_INT32 dims: [4] }]",
         "declared INT32"),
        ("max_batch_size: 8\ninput [{ name: 'nope' data_type: TYPE_FP32 dims: [4] }]",
         "'nope' is not in the model file"),
        ("max_batch_size: 8\nbogus_field: 1", "bogus_field"),
        ("name: 'other'", "differs from its directory"),
        ("backend: 'tensorflow'", "backend 'tensorflow'"),
        ("max_batch_size: 8\ndynamic_batching { preferred_batch_size: [16] }",
         "preferred_batch_size 16"),
    ],
)
def test_bad_configs_fail_the_load_with_the_field_named(make_server, tmp_path, config, needle):
    write_model(tmp_path, "good", IDENTITY, "max_batch_size: 8")
    write_model(tmp_path, "bad", IDENTITY, config)
    running = make_server(tmp_path)
    with tc.InferenceServerClient(running.address) as client:
        assert client.is_model_ready("good")
        assert not client.is_model_ready("bad")
        index = {m["name"]: m for m in client.get_model_repository_index(as_json=True)["models"]}
        assert index["bad"]["state"] == "UNAVAILABLE"
        assert needle in index["bad"]["reason"]
        code, message = status_of(lambda: client.load_model("bad"))
        assert code == "StatusCode.INVALID_ARGUMENT" and needle in message
        infer_x(client, "good")  # the server keeps serving


def test_model_names_cannot_escape_the_repository(make_server, tmp_path):
    write_model(tmp_path / "repo", "m", IDENTITY, "max_batch_size: 8")
    write_model(tmp_path, "outside", IDENTITY, "max_batch_size: 8")
    running = make_server(tmp_path / "repo")
    with tc.InferenceServerClient(running.address) as client:
        for name in ("../outside", "..", "a/b", "/etc"):
            code, message = status_of(lambda name=name: client.load_model(name))
            assert code == "StatusCode.INVALID_ARGUMENT", (name, message)
            assert "invalid model name" in message
        assert not client.is_model_ready("../outside")


def test_explicit_model_control(make_server, tmp_path):
    write_model(tmp_path, "a", IDENTITY, "max_batch_size: 8")
    write_model(tmp_path, "b", IDENTITY, "max_batch_size: 8")
    running = make_server(tmp_path, model_control="explicit", startup_models=("a",))
    with tc.InferenceServerClient(running.address) as client:
        assert client.is_model_ready("a") and not client.is_model_ready("b")
        code, _ = status_of(lambda: infer_x(client, "b"))
        assert code == "StatusCode.NOT_FOUND"
        client.load_model("b")
        infer_x(client, "b")
        client.unload_model("a")
        assert not client.is_model_ready("a")
        code, _ = status_of(lambda: client.load_model("c"))
        assert code == "StatusCode.NOT_FOUND"


def test_failed_reload_keeps_the_previous_version_serving(make_server, tmp_path):
    model_dir = write_model(tmp_path, "m", IDENTITY, "max_batch_size: 8").parent
    running = make_server(tmp_path)
    with tc.InferenceServerClient(running.address) as client:
        assert infer_x(client) == "1"
        (model_dir / "2").mkdir()
        (model_dir / "2" / "model.onnx").write_bytes(b"this is not an onnx file")
        code, message = status_of(lambda: client.load_model("m"))
        assert code == "StatusCode.INVALID_ARGUMENT" and "version 2" in message
        assert infer_x(client) == "1"
        index = client.get_model_repository_index(as_json=True)["models"]
        assert [(m["version"], m["state"]) for m in index] == [("1", "READY")]


def test_gpu_instances_fall_back_to_cpu_with_a_note(make_server, tmp_path):
    write_model(tmp_path, "g", IDENTITY,
                "max_batch_size: 8\ninstance_group [{ kind: KIND_GPU count: 2 }]")
    running = make_server(tmp_path)
    with tc.InferenceServerClient(running.address) as client:
        config = client.get_model_config("g", as_json=True)["config"]
        params = {k: v["string_value"] for k, v in config["parameters"].items()}
        import onnxruntime as ort

        if "CUDAExecutionProvider" not in ort.get_available_providers():
            assert "CUDAExecutionProvider is not available" in params["sluice.notes"]
            assert params["sluice.execution_providers"] == "CPUExecutionProvider"
        assert config["instance_group"][0]["count"] == 2
        infer_x(client, "g")


def test_load_unload_reload_under_32_callers_loses_nothing(make_server, tmp_path):
    write_model(tmp_path, "m", IDENTITY, "max_batch_size: 8\ndynamic_batching {}")
    running = make_server(tmp_path)
    stop = threading.Event()
    failures: list[str] = []
    counts = [0] * 32
    versions: set[str] = set()

    def caller(i: int) -> None:
        with tc.InferenceServerClient(running.address) as client:
            while not stop.is_set():
                try:
                    versions.add(infer_x(client, rows=1 + i % 4))
                    counts[i] += 1
                except Exception as exc:  # any failure is a lost request
                    failures.append(repr(exc))

    threads = [threading.Thread(target=caller, args=(i,)) for i in range(32)]
    for t in threads:
        t.start()
    with tc.InferenceServerClient(running.address) as admin:
        time.sleep(0.3)
        for round_ in range(3):
            admin.load_model("m")  # reload v1 in place
            time.sleep(0.2)
            write_model(tmp_path, "m", IDENTITY, version=2 + round_)
            admin.load_model("m")  # swap to the new latest version
            time.sleep(0.2)
    stop.set()
    for t in threads:
        t.join(30)
    assert failures == []
    assert min(counts) > 0
    assert {"1", "4"} <= versions


def test_unload_while_calling_answers_every_request(make_server, tmp_path):
    write_model(tmp_path, "m", IDENTITY, "max_batch_size: 8\ndynamic_batching {}")
    running = make_server(tmp_path)
    outcomes: list[str] = []
    stop = threading.Event()

    def caller() -> None:
        with tc.InferenceServerClient(running.address) as client:
            while not stop.is_set():
                try:
                    infer_x(client)
                    outcomes.append("ok")
                except InferenceServerException as exc:
                    outcomes.append(exc.status())

    threads = [threading.Thread(target=caller) for _ in range(8)]
    for t in threads:
        t.start()
    time.sleep(0.3)
    with tc.InferenceServerClient(running.address) as admin:
        admin.unload_model("m")
        time.sleep(0.2)
    stop.set()
    for t in threads:
        t.join(30)
    # every request got exactly one answer: a result, or an explicit status once unloaded
    assert "ok" in outcomes
    assert set(outcomes) <= {"ok", "StatusCode.NOT_FOUND"}
