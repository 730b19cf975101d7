"""config.pbtxt parsing, normalization and validation (no server)."""

from __future__ import annotations

import pytest

from sluice.server.config.model import (
    InstanceKind,
    ModelConfig,
    ModelIO,
    QueuePolicy,
    TimeoutAction,
    VersionPolicy,
    check_model_name,
)
from sluice.server.config.pbtxt import from_proto, parse_model_config, to_proto
from sluice.server.config.validation import complete_model_config
from sluice.server.errors import ModelLoadError
from sluice.server.types import TensorSpec

TRITON_CONFIG = """
name: "resnet"
platform: "onnxruntime_onnx"
max_batch_size: 32
input [{ name: "x" data_type: TYPE_FP32 dims: [3, -1] }]
output [{ name: "y" data_type: TYPE_INT64 dims: [1] reshape: { shape: [] } }]
version_policy { specific { versions: [2, 5] } }
dynamic_batching {
  preferred_batch_size: [8, 16]
  max_queue_delay_microseconds: 250
  preserve_ordering: true
  default_queue_policy { max_queue_size: 100 default_timeout_microseconds: 5000 }
}
instance_group [{ count: 2 kind: KIND_GPU gpus: [1] }]
parameters { key: "intra_op_thread_count" value { string_value: "1" } }
optimization { execution_accelerators { gpu_execution_accelerator: [{ name: "tensorrt" }] } }
"""


def test_a_full_triton_config_translates_field_by_field():
    config = from_proto(parse_model_config(TRITON_CONFIG, source="t"), "resnet")
    assert config.backend == "onnxruntime" and config.max_batch_size == 32
    assert config.inputs == (TensorSpec("x", "FP32", (3, -1)),)
    assert config.outputs == (TensorSpec("y", "INT64", (1,), reshape=()),)
    assert config.version_policy == VersionPolicy(kind="specific", versions=(2, 5))
    batching = config.dynamic_batching
    assert batching is not None
    assert batching.preferred_batch_sizes == (8, 16) and batching.max_queue_delay_us == 250
    assert batching.max_queue_size == 100 and batching.default_timeout_us == 5000
    assert config.instance_groups[0].kind is InstanceKind.GPU
    assert config.instance_groups[0].count == 2 and config.instance_groups[0].gpus == (1,)
    assert config.parameters == {"intra_op_thread_count": "1"}
    assert config.gpu_accelerators == ("tensorrt",)
    # and back: what ModelConfig returns parses to the same config
    again = from_proto(to_proto(config), "resnet")
    assert again == config


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("sequence_batching { state [{ use_growable_memory: true }] }",
         "sequence_batching.state.use_growable_memory"),
        ("batch_input [{ kind: BATCH_ELEMENT_COUNT }]", "batch_input"),
        ("input [{ name: 'x' data_type: TYPE_FP32 dims: [1] allow_ragged_batch: true }]",
         "input.allow_ragged_batch"),
        ("output [{ name: 'y' data_type: TYPE_FP32 dims: [1] is_shape_tensor: true }]",
         "output.is_shape_tensor"),
        ("instance_group [{ profile: 'p' }]", "instance_group.profile"),
        ("instance_group [{ rate_limiter {} }]", "instance_group.rate_limiter"),
        ("parameters { key: 'k' value { string_value: 'v' } } response_cache { enable: true }",
         "response_cache"),
        ("no_such_field: 1", "no_such_field"),
        ("max_batch_size: 'eight'", "max_batch_size"),
    ],
)
def test_unsupported_or_malformed_fields_are_named(text, needle):
    with pytest.raises(ModelLoadError, match=needle):
        parse_model_config(text, source="model 'm' config.pbtxt")


def test_queue_policies_and_priorities_translate_and_round_trip():
    text = """
    dynamic_batching {
      priority_levels: 3
      default_priority_level: 2
      default_queue_policy { timeout_action: DELAY default_timeout_microseconds: 2000 }
      priority_queue_policy { key: 1 value { max_queue_size: 16 allow_timeout_override: true } }
    }
    parameters { key: "latency_budget_ms" value { string_value: "250" } }
    parameters { key: "priority_budget_fractions" value { string_value: "1, 0.5, 0.25" } }
    parameters { key: "max_queue_rows" value { string_value: "512" } }
    parameters { key: "codel_target_ms" value { string_value: "5" } }
    parameters { key: "fallback_model" value { string_value: "small" } }
    parameters { key: "intra_op_thread_count" value { string_value: "1" } }
    """
    config = from_proto(parse_model_config(text, source="t"), "m")
    batching = config.dynamic_batching
    assert batching is not None
    assert batching.priority_levels == 3 and batching.default_priority_level == 2
    assert batching.policy(2).timeout_action is TimeoutAction.DELAY
    assert batching.policy(2).default_timeout_us == 2000
    assert batching.policy(1) == QueuePolicy(max_queue_size=16, allow_timeout_override=True)
    overload = config.overload
    assert overload.latency_budget_ms == 250 and overload.max_queue_rows == 512
    assert overload.priority_budget_fractions == (1.0, 0.5, 0.25)
    assert overload.codel_target_ms == 5 and overload.codel_interval_ms == 100
    assert overload.fallback_model == "small" and overload.max_queue_bytes is None
    # Sluice's own parameters never reach the backend
    assert config.parameters == {"intra_op_thread_count": "1"}
    assert from_proto(to_proto(config), "m") == config


@pytest.mark.parametrize(
    ("params", "batching", "needle"),
    [
        ({"latency_budget_ms": "soon"}, "", "'latency_budget_ms' must be a number"),
        ({"max_queue_rows": "1.5"}, "", "'max_queue_rows' must be an integer"),
        ({"max_queue_bytes": "0"}, "", "'max_queue_bytes' must be > 0"),
        ({"priority_budget_fractions": "1,0.5"}, "priority_levels: 3 default_priority_level: 1",
         "one fraction per priority level (3)"),
        ({"priority_budget_fractions": "1,1.5"}, "priority_levels: 2 default_priority_level: 1",
         "each must be in (0, 1]"),
        ({"codel_interval_ms": "-1"}, "", "'codel_interval_ms' must be > 0"),
        ({"fallback_model": "m"}, "", "may not name the model itself"),
        ({}, "priority_levels: 2", "default_priority_level 0 must be in 1..priority_levels"),
        ({}, "priority_levels: 2 default_priority_level: 1 priority_queue_policy { key: 3 "
             "value { } }", "priority_queue_policy key 3"),
    ],
)
def test_bad_overload_settings_are_named(params, batching, needle):
    text = f"max_batch_size: 8\ndynamic_batching {{ {batching} }}\n" + "".join(
        f'parameters {{ key: "{k}" value {{ string_value: "{v}" }} }}\n'
        for k, v in params.items()
    )
    with pytest.raises(ModelLoadError) as info:
        config = from_proto(parse_model_config(text, source="t"), "m")
        complete_model_config(config, IO, max_batch_size_set=True, default_max_batch_size=64)
    assert needle in str(info.value)


@pytest.mark.parametrize("name", ["", "..", "../x", "a/b", "a\\b", ".hidden", "x" * 200])
def test_model_names_are_checked(name):
    with pytest.raises(ModelLoadError, match="invalid model name"):
        check_model_name(name)


def test_good_model_names_pass():
    for name in ("resnet50", "my-model_v2", "a.b"):
        assert check_model_name(name) == name


IO = ModelIO(
    inputs=(TensorSpec("x", "FP32", (-1, 4)),),
    outputs=(TensorSpec("y", "FP32", (-1, 2)), TensorSpec("label", "INT64", (-1,))),
)


def test_missing_io_is_derived_and_batch_defaults_when_unset():
    config = complete_model_config(ModelConfig(name="m"), IO, max_batch_size_set=False,
                                   default_max_batch_size=64)
    assert config.max_batch_size == 64
    assert [t.dims for t in config.inputs] == [(4,)]
    assert [t.dims for t in config.outputs] == [(2,), ()]


def test_explicit_max_batch_size_zero_means_unbatched():
    config = complete_model_config(ModelConfig(name="m"), IO, max_batch_size_set=True,
                                   default_max_batch_size=64)
    assert config.max_batch_size == 0
    assert config.inputs[0].dims == (-1, 4)


def test_batching_a_model_with_a_fixed_first_dim_is_an_error():
    io = ModelIO(inputs=(TensorSpec("x", "FP32", (1, 4)),),
                 outputs=(TensorSpec("y", "FP32", (1,)),))
    with pytest.raises(ModelLoadError, match="variable first dimension.*'x'"):
        complete_model_config(ModelConfig(name="m", max_batch_size=8), io,
                              max_batch_size_set=True, default_max_batch_size=64)


def test_declared_io_must_match_the_model_file():
    declared = ModelConfig(name="m", max_batch_size=8,
                           inputs=(TensorSpec("x", "FP32", (4,)),),
                           outputs=(TensorSpec("label", "INT64", (1,), reshape=()),))
    config = complete_model_config(declared, IO, max_batch_size_set=True,
                                   default_max_batch_size=64)
    assert config.outputs[0].model_dims == ()
    bad = ModelConfig(name="m", max_batch_size=8, inputs=(TensorSpec("x", "FP32", (5,)),))
    with pytest.raises(ModelLoadError, match=r"'x' is declared with dims \[5\]"):
        complete_model_config(bad, IO, max_batch_size_set=True, default_max_batch_size=64)


def test_reshape_must_hold_the_same_elements():
    declared = ModelConfig(name="m", max_batch_size=8,
                           inputs=(TensorSpec("x", "FP32", (2, 3), reshape=(4,)),))
    with pytest.raises(ModelLoadError, match="reshape"):
        complete_model_config(declared, IO, max_batch_size_set=True, default_max_batch_size=64)


def test_version_policy_selection():
    available = [3, 1, 10, 2]
    assert VersionPolicy().select(available) == [10]
    assert VersionPolicy(num_versions=2).select(available) == [3, 10]
    assert VersionPolicy(kind="all").select(available) == [1, 2, 3, 10]
    assert VersionPolicy(kind="specific", versions=(2, 7)).select(available) == [2]


def test_an_invalid_escape_in_config_text_is_a_load_error_naming_the_file():
    """protobuf only warns on "\\i" (a later version refuses it); found by the fuzz campaign,
    where the warning escaped as an error instead of a ModelLoadError."""
    from sluice.server.config.pbtxt import parse_model_config

    with pytest.raises(ModelLoadError, match=r"^model 'm' config.pbtxt: not valid protobuf text: "
                                             r".*invalid escape sequence"):
        parse_model_config('name: "a\\i"', source="model 'm' config.pbtxt")


def test_an_enum_number_out_of_range_is_a_load_error_naming_the_file():
    """protobuf's text parser raises ValueError, not its ParseError, when setting an enum to a
    number past int32 (found by the fuzz campaign: data_type: 99999999999999999999)."""
    from sluice.server.config.pbtxt import parse_model_config

    with pytest.raises(ModelLoadError, match=r"^model 'm' config.pbtxt: not valid protobuf text: "
                                             r"Value out of range: 99999999999999999999"):
        parse_model_config("input [ { name: \"x\" data_type: 99999999999999999999 } ]",
                           source="model 'm' config.pbtxt")
