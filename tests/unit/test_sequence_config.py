"""config.pbtxt's sequence_batching: parsed, written back, and checked against the model file
(issue 16 item 5). No server."""

from __future__ import annotations

import numpy as np
import pytest

from sluice.server.config.model import ModelIO
from sluice.server.config.pbtxt import from_proto, parse_model_config, to_proto
from sluice.server.config.sequence import SequenceControl, SequenceState, warmup_tensors
from sluice.server.config.validation import complete_model_config
from sluice.server.errors import InvalidInput, ModelLoadError
from sluice.server.serving.sequences import sequence_params
from sluice.server.types import TensorSpec

DYNA = """
max_batch_size: 8
sequence_batching {
  max_sequence_idle_microseconds: 5000000
  oldest { max_candidate_sequences: 4 preferred_batch_size: [2, 4]
           max_queue_delay_microseconds: 100 }
  control_input [
    { name: "START" control [{ kind: CONTROL_SEQUENCE_START fp32_false_true: [0, 1] }] },
    { name: "END" control [{ kind: CONTROL_SEQUENCE_END bool_false_true: [false, true] }] },
    { name: "READY" control [{ kind: CONTROL_SEQUENCE_READY int32_false_true: [-1, 7] }] },
    { name: "CORRID" control [{ kind: CONTROL_SEQUENCE_CORRID data_type: TYPE_STRING }] }
  ]
  state [{ input_name: "S_IN" output_name: "S_OUT" data_type: TYPE_FP32 dims: [-1]
           initial_state { name: "z" data_type: TYPE_FP32 dims: [3] zero_data: true } }]
}
"""


def config_of(text: str, name: str = "m"):
    return from_proto(parse_model_config(text, source="test"), name)


def test_every_field_is_read_and_written_back():
    config = config_of(DYNA)
    sb = config.sequence_batching
    assert sb is not None and sb.strategy == "oldest"
    assert sb.max_sequence_idle_us == 5_000_000
    assert (sb.max_candidate_sequences, sb.preferred_batch_sizes, sb.max_queue_delay_us) == (
        4, (2, 4), 100)
    assert sb.controls == (
        SequenceControl("START", "START", "FP32", (0.0, 1.0)),
        SequenceControl("END", "END", "BOOL", (False, True)),
        SequenceControl("READY", "READY", "INT32", (-1, 7)),
        SequenceControl("CORRID", "CORRID", "BYTES"),
    )
    assert sb.states == (SequenceState("S_IN", "S_OUT", "FP32", (-1,), (3,)),)
    assert sb.server_inputs == {"START", "END", "READY", "CORRID", "S_IN"}
    assert from_proto(to_proto(config), "m") == config  # ModelConfig answers what was read


def test_defaults_are_tritons():
    sb = config_of("sequence_batching { }").sequence_batching
    assert sb is not None
    assert (sb.strategy, sb.max_sequence_idle_us, sb.controls, sb.states) == (
        "direct", 1_000_000, (), ())


def test_warmup_tensors_hold_false_flags_zero_corrid_and_zero_state():
    out = warmup_tensors(config_of(DYNA).sequence_batching, rows=2, batched=True)
    np.testing.assert_array_equal(out["START"], np.zeros((2, 1), np.float32))
    np.testing.assert_array_equal(out["READY"], np.full((2, 1), -1, np.int32))
    assert out["END"].dtype == np.bool_ and not out["END"].any()
    assert out["CORRID"].tolist() == [[b"0"], [b"0"]]
    np.testing.assert_array_equal(out["S_IN"], np.zeros((2, 3), np.float32))


@pytest.mark.parametrize(("block", "needle"), [
    ("control_input [{ name: 'S' control [{ kind: CONTROL_SEQUENCE_START }] }]",
     "control_input 'S': CONTROL_SEQUENCE_START needs one of int32_false_true"),
    ("control_input [{ name: 'S' control [{ kind: CONTROL_SEQUENCE_START "
     "int32_false_true: [0, 1, 2] }] }]", "two values [false, true]"),
    ("control_input [{ name: 'C' control [{ kind: CONTROL_SEQUENCE_CORRID "
     "data_type: TYPE_FP32 }] }]", "CONTROL_SEQUENCE_CORRID needs data_type one of"),
    ("control_input [{ name: 'A' control [{ kind: CONTROL_SEQUENCE_START "
     "int32_false_true: [0, 1] }] }, { name: 'B' control [{ kind: CONTROL_SEQUENCE_START "
     "int32_false_true: [0, 1] }] }]", "CONTROL_SEQUENCE_START twice"),
    ("state [{ input_name: 'I' output_name: 'O' dims: [1] }]", "state 'I' has no data_type"),
    ("state [{ input_name: 'I' output_name: 'O' data_type: TYPE_INT32 dims: [1] "
     "initial_state { data_type: TYPE_INT32 dims: [1] data_file: 'f' } }]",
     "sequence_batching.state.initial_state.data_file"),
    ("state [{ input_name: 'I' output_name: 'O' data_type: TYPE_INT32 dims: [1] "
     "use_same_buffer_for_input_output: true }]",
     "sequence_batching.state.use_same_buffer_for_input_output"),
    ("direct { minimum_slot_utilization: 0.5 }", "direct.minimum_slot_utilization"),
])
def test_a_bad_block_is_a_load_error_naming_the_field(block, needle):
    with pytest.raises(ModelLoadError) as info:
        config_of(f"max_batch_size: 8\nsequence_batching {{ {block} }}")
    assert needle in info.value.message


def spec(name: str, datatype: str = "INT32", dims=(-1, 1)) -> TensorSpec:
    return TensorSpec(name, datatype, tuple(dims))


ACC = """
max_batch_size: 8
sequence_batching {
  control_input [{ name: "START" control [{ kind: CONTROL_SEQUENCE_START
                                            int32_false_true: [0, 1] }] }]
  state [{ input_name: "S_IN" output_name: "S_OUT" data_type: TYPE_INT32 dims: [1] }]
}
"""
FILE = ModelIO(inputs=(spec("INPUT"), spec("START"), spec("S_IN")),
               outputs=(spec("OUTPUT"), spec("S_OUT")))


def complete(text: str, io: ModelIO = FILE):
    return complete_model_config(config_of(text), io, max_batch_size_set=True,
                                 default_max_batch_size=64)


def test_the_servers_tensors_are_not_the_clients():
    config = complete(ACC)
    assert [t.name for t in config.inputs] == ["INPUT"]
    assert [t.name for t in config.outputs] == ["OUTPUT"]
    # a config may list the state output for debugging (Triton's rule): then clients see it
    listed = complete(ACC + "output [{ name: 'OUTPUT' data_type: TYPE_INT32 dims: [1] },"
                            "{ name: 'S_OUT' data_type: TYPE_INT32 dims: [1] }]")
    assert [t.name for t in listed.outputs] == ["OUTPUT", "S_OUT"]


@pytest.mark.parametrize(("io", "needle"), [
    (ModelIO((spec("INPUT"), spec("S_IN")), FILE.outputs),
     "control CONTROL_SEQUENCE_START 'START' is not an input of the model file"),
    (ModelIO((spec("INPUT"), spec("START", "FP32"), spec("S_IN")), FILE.outputs),
     "'START' is INT32 but the model file has FP32"),
    (ModelIO((spec("INPUT"), spec("START", dims=(-1, 3)), spec("S_IN")), FILE.outputs),
     "must hold one value per request (shape [1]), the model file has [3]"),
    (ModelIO(FILE.inputs, (spec("OUTPUT"),)), "state output 'S_OUT' is not an output"),
    (ModelIO((spec("INPUT"), spec("START"), spec("S_IN", "INT64")), FILE.outputs),
     "state input 'S_IN' is INT32 but the model file has INT64"),
])
def test_the_servers_tensors_are_checked_against_the_model_file(io, needle):
    with pytest.raises(ModelLoadError) as info:
        complete(ACC, io)
    assert needle in info.value.message


@pytest.mark.parametrize(("params", "expected"), [
    ({}, None), ({"sequence_id": 0, "sequence_start": True}, None), ({"sequence_id": ""}, None),
    ({"sequence_id": 7}, (7, False, False)),
    ({"sequence_id": "a", "sequence_start": True, "sequence_end": True}, ("a", True, True)),
    ({"sequence_id": 2**64 - 1, "sequence_end": True}, (2**64 - 1, False, True)),
])
def test_sequence_params(params, expected):
    assert sequence_params(params) == expected


@pytest.mark.parametrize(("params", "needle"), [
    ({"sequence_id": 1.5}, "'sequence_id' must be an integer"),
    ({"sequence_id": True}, "'sequence_id' must be an integer"),
    ({"sequence_id": -3}, "'sequence_id' must not be negative"),
    ({"sequence_id": 1, "sequence_start": 1}, "'sequence_start' must be a bool"),
    ({"sequence_id": 1, "sequence_end": "yes"}, "'sequence_end' must be a bool"),
])
def test_sequence_params_of_the_wrong_type(params, needle):
    with pytest.raises(InvalidInput) as info:
        sequence_params(params)
    assert needle in info.value.message
