"""Triton's sequence example models as ONNX files (issue 16 item 5), built with onnx.helper.

What they compute is what Triton defines for them (its qa generator for the ONNX flavours,
gen_qa_sequence_models / gen_qa_dyna_sequence_models, and the example clients' checks):

- ``simple_sequence``: OUTPUT = READY * (INPUT + START); START/READY INT32 controls, the
  default (direct) strategy, max_batch_size 8; the config is Triton's docs repository's.
- ``simple_dyna_sequence``: OUTPUT = READY * (INPUT + START + END * CORRID), CORRID UINT64,
  the oldest strategy (Triton's docs config, ONNX platform).
- ``simple_string_dyna_sequence``: the accumulator the dyna clients check string ids against,
  here with implicit state: ACC = ACC_IN + INPUT (the server feeds ACC_IN, zeros at START),
  OUTPUT = READY * (ACC + END * int(CORRID)), CORRID a string control.
- ``accumulate`` (ours): OUTPUT = STATE_IN + INPUT, STATE_OUT = OUTPUT, for interleaving,
  idle-release and backlog tests; its strategy, slots and idle time are arguments;
  ``busy_accumulate`` the same with a costly term that adds zero (batching tests).
"""

from __future__ import annotations

from pathlib import Path

import onnx
from onnx import TensorProto, helper

from tests.support.onnx_models import write_model

I32 = TensorProto.INT32


def _model(inputs: list, outputs: list, nodes: list, initializers=()) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "sequence", inputs, outputs,
                              initializer=list(initializers))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def _io(name: str, elem: int = I32) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, elem, ["batch", 1])


def _control(name: str, kind: str, datatype: str = "") -> str:
    if kind == "CORRID":
        return (f"{{ name: '{name}' control [{{ kind: CONTROL_SEQUENCE_CORRID "
                f"data_type: {datatype} }}] }}")
    return (f"{{ name: '{name}' control [{{ kind: CONTROL_SEQUENCE_{kind} "
            "int32_false_true: [0, 1] }] }")


_TENSORS = """
input [{ name: "INPUT" data_type: TYPE_INT32 dims: [1] }]
output [{ name: "OUTPUT" data_type: TYPE_INT32 dims: [1] }]
instance_group [{ kind: KIND_CPU }]
"""


def simple_sequence() -> tuple[onnx.ModelProto, str]:
    nodes = [
        helper.make_node("Add", ["INPUT", "START"], ["sum"]),
        helper.make_node("Mul", ["READY", "sum"], ["OUTPUT"]),
    ]
    model = _model([_io("INPUT"), _io("START"), _io("READY")], [_io("OUTPUT")], nodes)
    config = (
        'name: "simple_sequence"\nplatform: "onnxruntime_onnx"\nmax_batch_size: 8\n'
        "sequence_batching { control_input ["
        f"{_control('START', 'START')}, {_control('READY', 'READY')}] }}" + _TENSORS
    )
    return model, config


def simple_dyna_sequence() -> tuple[onnx.ModelProto, str]:
    nodes = [
        helper.make_node("Cast", ["CORRID"], ["corrid"], to=I32),
        helper.make_node("Mul", ["END", "corrid"], ["tail"]),
        helper.make_node("Add", ["INPUT", "START"], ["head"]),
        helper.make_node("Add", ["head", "tail"], ["sum"]),
        helper.make_node("Mul", ["READY", "sum"], ["OUTPUT"]),
    ]
    inputs = [_io("INPUT"), _io("START"), _io("END"), _io("READY"),
              _io("CORRID", TensorProto.UINT64)]
    model = _model(inputs, [_io("OUTPUT")], nodes)
    config = (
        'name: "simple_dyna_sequence"\nplatform: "onnxruntime_onnx"\nmax_batch_size: 8\n'
        "sequence_batching { max_sequence_idle_microseconds: 10000000\n"
        "oldest { max_candidate_sequences: 1024 max_queue_delay_microseconds: 10000 }\n"
        f"control_input [{_control('START', 'START')}, {_control('END', 'END')}, "
        f"{_control('READY', 'READY')}, {_control('CORRID', 'CORRID', 'TYPE_UINT64')}] }}"
        + _TENSORS.replace("{ kind: KIND_CPU }", "{ count: 2 kind: KIND_CPU }")
    )
    return model, config


def simple_string_dyna_sequence() -> tuple[onnx.ModelProto, str]:
    nodes = [
        helper.make_node("Add", ["ACC_IN", "INPUT"], ["ACC_OUT"]),
        helper.make_node("Cast", ["CORRID"], ["corrid"], to=I32),
        helper.make_node("Mul", ["END", "corrid"], ["tail"]),
        helper.make_node("Add", ["ACC_OUT", "tail"], ["sum"]),
        helper.make_node("Mul", ["READY", "sum"], ["OUTPUT"]),
    ]
    inputs = [_io("INPUT"), _io("START"), _io("END"), _io("READY"),
              _io("CORRID", TensorProto.STRING), _io("ACC_IN")]
    model = _model(inputs, [_io("OUTPUT"), _io("ACC_OUT")], nodes)
    config = (
        'name: "simple_string_dyna_sequence"\nplatform: "onnxruntime_onnx"\n'
        "max_batch_size: 8\nsequence_batching { oldest { max_candidate_sequences: 64 }\n"
        f"control_input [{_control('START', 'START')}, {_control('END', 'END')}, "
        f"{_control('READY', 'READY')}, {_control('CORRID', 'CORRID', 'TYPE_STRING')}]\n"
        "state [{ input_name: 'ACC_IN' output_name: 'ACC_OUT' data_type: TYPE_INT32 "
        "dims: [1] }] }" + _TENSORS
    )
    return model, config


def accumulate(name: str = "accumulate", *, strategy: str = "oldest { }",
               max_batch_size: int = 8, idle_us: int = 10_000_000, instances: int = 1,
               work: int = 0) -> tuple[onnx.ModelProto, str]:
    """``work`` > 0: that many rounds of a 64-wide tanh(v @ W) on the input first (its result
    times zero joins the sum), so a batch computes long enough to leave the event loop and
    let the queue grow (a tiny model runs inline, one request at a time)."""
    nodes = [helper.make_node("Add", ["STATE_IN", "INPUT"], ["OUTPUT"]),
             helper.make_node("Identity", ["OUTPUT"], ["STATE_OUT"])]
    initializers = []
    if work:
        nodes, initializers = _busy(nodes, work)
    model = _model([_io("INPUT"), _io("STATE_IN")], [_io("OUTPUT"), _io("STATE_OUT")], nodes,
                   initializers)
    config = (
        f'name: "{name}"\nmax_batch_size: {max_batch_size}\n'
        f"sequence_batching {{ max_sequence_idle_microseconds: {idle_us} {strategy}\n"
        "state [{ input_name: 'STATE_IN' output_name: 'STATE_OUT' data_type: TYPE_INT32 "
        "dims: [1] initial_state { name: 'zeros' data_type: TYPE_INT32 dims: [1] "
        "zero_data: true } }] }\n"
        f"instance_group [{{ count: {instances} kind: KIND_CPU }}]\n"
    )
    return model, config


def write_sequence_repository(repo: Path) -> Path:
    """The three Triton example models and ``accumulate`` under ``repo``."""
    for build in (simple_sequence, simple_dyna_sequence, simple_string_dyna_sequence):
        model, config = build()
        write_model(repo, build.__name__, model, config)
    model, config = accumulate()
    write_model(repo, "accumulate", model, config)
    model, config = accumulate("busy_accumulate", work=400)
    write_model(repo, "busy_accumulate", model, config)
    return repo


def _busy(nodes: list, rounds: int) -> tuple[list, list]:
    """``nodes`` of accumulate with OUTPUT = STATE_IN + INPUT + 0 * f(INPUT), f costly."""
    width = 64
    weight = helper.make_tensor("W", TensorProto.FLOAT, [width, width],
                                [0.5 if i % (width + 1) == 0 else 0.0 for i in range(width**2)])
    body = helper.make_graph(
        [helper.make_node("Identity", ["cond_in"], ["cond_out"]),
         helper.make_node("MatMul", ["v_in", "W"], ["mm"]),
         helper.make_node("Tanh", ["mm"], ["v_out"])],
        "round",
        [helper.make_tensor_value_info("i", TensorProto.INT64, []),
         helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
         helper.make_tensor_value_info("v_in", TensorProto.FLOAT, ["batch", width])],
        [helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
         helper.make_tensor_value_info("v_out", TensorProto.FLOAT, ["batch", width])],
    )
    busy = [
        helper.make_node("Cast", ["INPUT"], ["x"], to=TensorProto.FLOAT),
        helper.make_node("Constant", [], ["reps"], value=helper.make_tensor(
            "reps_value", TensorProto.INT64, [2], [1, width])),
        helper.make_node("Tile", ["x", "reps"], ["v0"]),
        helper.make_node("Constant", [], ["trips"], value=helper.make_tensor(
            "trips_value", TensorProto.INT64, [], [rounds])),
        helper.make_node("Constant", [], ["go"], value=helper.make_tensor(
            "go_value", TensorProto.BOOL, [], [True])),
        helper.make_node("Loop", ["trips", "go", "v0"], ["v"], body=body),
        helper.make_node("ReduceSum", ["v"], ["s"], keepdims=1),
        helper.make_node("Constant", [], ["zero"], value=helper.make_tensor(
            "zero_value", TensorProto.FLOAT, [], [0.0])),
        helper.make_node("Mul", ["s", "zero"], ["nothing"]),
        helper.make_node("Cast", ["nothing"], ["nothing_i"], to=I32),
        helper.make_node("Add", ["INPUT", "nothing_i"], ["input_plus"]),
        helper.make_node("Add", ["STATE_IN", "input_plus"], ["OUTPUT"]),
        nodes[1],
    ]
    return busy, [weight]
