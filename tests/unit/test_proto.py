"""Our generated protocol modules are wire-identical to tritonclient's and coexist with them."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from google.protobuf import descriptor_pool, text_format
from google.protobuf.descriptor import Descriptor, EnumDescriptor, FieldDescriptor, FileDescriptor
from tritonclient.grpc import model_config_pb2 as triton_config
from tritonclient.grpc import service_pb2 as triton_service

from sluice.proto import _pool, grpc_service_pb2, grpc_service_pb2_grpc, model_config_pb2

REPO_ROOT = Path(__file__).resolve().parents[2]

FILE_PAIRS = [
    pytest.param(triton_config.DESCRIPTOR, model_config_pb2.DESCRIPTOR, id="model_config"),
    pytest.param(triton_service.DESCRIPTOR, grpc_service_pb2.DESCRIPTOR, id="grpc_service"),
]


def _walk(messages: list[Descriptor]) -> Iterator[Descriptor]:
    for message in messages:
        yield message
        yield from _walk(list(message.nested_types))


def all_messages(file: FileDescriptor) -> dict[str, Descriptor]:
    """Every message of a file by full name, nested types and map entries included."""
    return {m.full_name: m for m in _walk(list(file.message_types_by_name.values()))}


def all_enums(file: FileDescriptor) -> dict[str, EnumDescriptor]:
    """Every enum of a file by full name, nested ones included."""
    enums = {e.full_name: e for e in file.enum_types_by_name.values()}
    for message in all_messages(file).values():
        enums.update({e.full_name: e for e in message.enum_types})
    return enums


def field_signature(field: FieldDescriptor) -> dict[str, object]:
    """Everything about a field that affects the wire format or the generated API."""
    target = field.message_type or field.enum_type
    return {
        "number": field.number,
        "type": field.type,
        "repeated": field.is_repeated,
        "required": field.is_required,
        "presence": field.has_presence,
        "type_name": target.full_name if target is not None else None,
        "oneof": field.containing_oneof.name if field.containing_oneof else None,
        "json_name": field.json_name,
    }


@pytest.mark.parametrize(("theirs", "ours"), FILE_PAIRS)
def test_same_package_and_same_type_names(theirs: FileDescriptor, ours: FileDescriptor) -> None:
    assert ours.package == theirs.package == "inference"
    assert set(all_messages(ours)) == set(all_messages(theirs))
    assert set(all_enums(ours)) == set(all_enums(theirs))


@pytest.mark.parametrize(("theirs", "ours"), FILE_PAIRS)
def test_every_message_has_identical_fields(theirs: FileDescriptor, ours: FileDescriptor) -> None:
    their_messages, our_messages = all_messages(theirs), all_messages(ours)
    shared = sorted(set(their_messages) & set(our_messages))
    assert shared
    for full_name in shared:
        mine, reference = our_messages[full_name], their_messages[full_name]
        assert mine.GetOptions().map_entry == reference.GetOptions().map_entry, full_name
        assert [f.name for f in mine.fields] == [f.name for f in reference.fields], full_name
        for field in reference.fields:
            ours_field = mine.fields_by_name[field.name]
            assert field_signature(ours_field) == field_signature(field), (
                f"{full_name}.{field.name}"
            )
        assert [o.name for o in mine.oneofs] == [o.name for o in reference.oneofs], full_name
        for oneof in reference.oneofs:
            assert [f.name for f in mine.oneofs_by_name[oneof.name].fields] == [
                f.name for f in oneof.fields
            ], f"{full_name}.{oneof.name}"


@pytest.mark.parametrize(("theirs", "ours"), FILE_PAIRS)
def test_every_enum_has_identical_values(theirs: FileDescriptor, ours: FileDescriptor) -> None:
    their_enums, our_enums = all_enums(theirs), all_enums(ours)
    for full_name in sorted(set(their_enums) & set(our_enums)):
        mine = [(v.name, v.number) for v in our_enums[full_name].values]
        reference = [(v.name, v.number) for v in their_enums[full_name].values]
        assert mine == reference, full_name


def test_service_has_every_method_with_same_signature() -> None:
    reference = triton_service.DESCRIPTOR.services_by_name["GRPCInferenceService"]
    ours = grpc_service_pb2.DESCRIPTOR.services_by_name["GRPCInferenceService"]
    assert ours.full_name == reference.full_name == "inference.GRPCInferenceService"

    def signature(service):  # type: ignore[no-untyped-def]
        return {
            m.name: (
                m.input_type.full_name,
                m.output_type.full_name,
                m.client_streaming,
                m.server_streaming,
            )
            for m in service.methods
        }

    assert signature(ours) == signature(reference)
    assert signature(ours)["ModelStreamInfer"][2:] == (True, True)
    # The generated stub and servicer expose every method.
    for method in reference.methods:
        assert hasattr(grpc_service_pb2_grpc.GRPCInferenceServiceServicer, method.name)


def test_ours_live_in_a_private_pool_beside_tritonclient() -> None:
    assert grpc_service_pb2.DESCRIPTOR.pool is _pool.POOL
    assert model_config_pb2.DESCRIPTOR.pool is _pool.POOL
    default = descriptor_pool.Default()
    assert default.FindMessageTypeByName("inference.ModelInferRequest") is (
        triton_service.ModelInferRequest.DESCRIPTOR
    )
    assert _pool.POOL.FindMessageTypeByName("inference.ModelInferRequest") is (
        grpc_service_pb2.ModelInferRequest.DESCRIPTOR
    )


def test_importing_in_either_order_in_a_fresh_process_works() -> None:
    script = (
        "import sluice.proto.grpc_service_pb2_grpc, sluice.proto.tensors\n"
        "import tritonclient.grpc, tritonclient.grpc.aio\n"
        "import sluice.proto.model_config_pb2\n"
    )
    for code in (script, "\n".join(reversed(script.splitlines()))):
        subprocess.run(
            [sys.executable, "-W", "error", "-c", code], cwd=REPO_ROOT, check=True, timeout=60
        )


def test_generated_files_are_up_to_date() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "sluice.proto.generate", "--check"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def _triton_request() -> triton_service.ModelInferRequest:
    request = triton_service.ModelInferRequest(model_name="simple", model_version="3", id="r-1")
    request.parameters["priority"].uint64_param = 1
    request.parameters["timeout"].int64_param = 5_000
    request.parameters["flag"].bool_param = True
    request.parameters["note"].string_param = "héllo"
    request.parameters["scale"].double_param = 0.25
    raw_input = request.inputs.add(name="INPUT0", datatype="FP32", shape=[2, 2])
    raw_input.parameters["binary_data_size"].int64_param = 16
    request.raw_input_contents.append(b"\x00\x00\x80\x3f" * 4)
    typed = request.inputs.add(name="INPUT1", datatype="INT32", shape=[3])
    typed.contents.int_contents.extend([-1, 0, 2**31 - 1])
    request.outputs.add(name="OUTPUT0").parameters["binary_data"].bool_param = True
    return request


def test_tritonclient_request_parses_and_round_trips_byte_identically() -> None:
    wire = _triton_request().SerializeToString(deterministic=True)
    ours = grpc_service_pb2.ModelInferRequest.FromString(wire)
    assert ours.SerializeToString(deterministic=True) == wire
    assert ours.inputs[1].contents.int_contents[:] == [-1, 0, 2**31 - 1]
    assert ours.parameters["priority"].WhichOneof("parameter_choice") == "uint64_param"
    # And back: tritonclient parses what we produce.
    again = triton_service.ModelInferRequest.FromString(ours.SerializeToString(deterministic=True))
    assert again == _triton_request()


def test_stream_response_fields() -> None:
    response = grpc_service_pb2.ModelStreamInferResponse(error_message="boom")
    response.infer_response.model_name = "m"
    wire = response.SerializeToString()
    theirs = triton_service.ModelStreamInferResponse.FromString(wire)
    assert (theirs.error_message, theirs.infer_response.model_name) == ("boom", "m")


CONFIG_PBTXT = """
name: "densenet"
platform: "onnxruntime_onnx"
max_batch_size: 8
version_policy { latest { num_versions: 2 } }
input [
  { name: "data_0" data_type: TYPE_FP32 format: FORMAT_NCHW dims: [3, 224, 224]
    reshape { shape: [1, 3, 224, 224] } }
]
output [
  { name: "fc6_1" data_type: TYPE_STRING dims: [-1] label_filename: "labels.txt" }
]
dynamic_batching {
  preferred_batch_size: [4, 8]
  max_queue_delay_microseconds: 100
  priority_levels: 2
  default_queue_policy { timeout_action: REJECT default_timeout_microseconds: 1000 }
  priority_queue_policy { key: 1 value { max_queue_size: 16 allow_timeout_override: true } }
}
instance_group [ { kind: KIND_GPU count: 2 gpus: [0] }, { kind: KIND_CPU count: 1 } ]
optimization {
  execution_accelerators {
    gpu_execution_accelerator: [ { name: "tensorrt" parameters { key: "precision_mode"
      value: "FP16" } } ]
  }
  cuda { graphs: true graph_spec [ { batch_size: 4 input { key: "data_0"
    value { dim: [3, 224, 224] } } } ] }
}
parameters { key: "intra_op_thread_count" value { string_value: "4" } }
model_warmup [ { name: "zeros" batch_size: 1 inputs { key: "data_0"
  value { data_type: TYPE_FP32 dims: [3, 224, 224] zero_data: true } } } ]
model_transaction_policy { decoupled: false }
response_cache { enable: true }
"""


def test_triton_config_pbtxt_parses_identically() -> None:
    ours = text_format.Parse(CONFIG_PBTXT, model_config_pb2.ModelConfig())
    theirs = text_format.Parse(CONFIG_PBTXT, triton_config.ModelConfig())
    assert ours.SerializeToString(deterministic=True) == theirs.SerializeToString(
        deterministic=True
    )
    assert ours.WhichOneof("scheduling_choice") == "dynamic_batching"
    assert ours.input[0].data_type == model_config_pb2.TYPE_FP32
    assert ours.dynamic_batching.priority_queue_policy[1].max_queue_size == 16
    response = grpc_service_pb2.ModelConfigResponse(config=ours)
    parsed = triton_service.ModelConfigResponse.FromString(response.SerializeToString())
    assert parsed.config == theirs
