"""config.pbtxt's ``sequence_batching`` <-> :class:`SequenceBatching` (issue 16 item 5); kept
apart from the settings so the request path never imports protobuf."""

from __future__ import annotations

from typing import Any

from sluice.proto import model_config_pb2 as mc
from sluice.server.config.sequence import (
    CORRID_TYPES,
    DEFAULT_IDLE_US,
    KINDS,
    SequenceBatching,
    SequenceControl,
    SequenceState,
)
from sluice.server.errors import ModelLoadError

#: config.pbtxt field paths of sequence_batching that Sluice implements.
SEQUENCE_FIELDS = frozenset({
    "sequence_batching", "sequence_batching.max_sequence_idle_microseconds",
    "sequence_batching.direct", "sequence_batching.direct.max_queue_delay_microseconds",
    "sequence_batching.oldest", "sequence_batching.oldest.max_candidate_sequences",
    "sequence_batching.oldest.preferred_batch_size",
    "sequence_batching.oldest.max_queue_delay_microseconds",
    "sequence_batching.oldest.preserve_ordering",
    "sequence_batching.control_input", "sequence_batching.control_input.name",
    "sequence_batching.control_input.control", "sequence_batching.control_input.control.kind",
    "sequence_batching.control_input.control.int32_false_true",
    "sequence_batching.control_input.control.fp32_false_true",
    "sequence_batching.control_input.control.bool_false_true",
    "sequence_batching.control_input.control.data_type",
    "sequence_batching.state", "sequence_batching.state.input_name",
    "sequence_batching.state.output_name", "sequence_batching.state.data_type",
    "sequence_batching.state.dims", "sequence_batching.state.initial_state",
    "sequence_batching.state.initial_state.name",
    "sequence_batching.state.initial_state.data_type",
    "sequence_batching.state.initial_state.dims",
    "sequence_batching.state.initial_state.zero_data",
})


def parse_sequence_batching(sb: mc.ModelSequenceBatching, where: str) -> SequenceBatching:
    """The settings of a parsed (field-checked) sequence_batching block; errors name the
    field."""
    controls = []
    for entry in sb.control_input:
        if not entry.name:
            raise ModelLoadError(f"{where}: a sequence_batching.control_input has no name")
        if len(entry.control) != 1:
            raise ModelLoadError(
                f"{where}: sequence_batching.control_input '{entry.name}' must have exactly "
                f"one control (it has {len(entry.control)})"
            )
        controls.append(_control(entry.name, entry.control[0], where))
    kinds = [c.kind for c in controls]
    for kind in KINDS:
        if kinds.count(kind) > 1:
            raise ModelLoadError(f"{where}: sequence_batching has CONTROL_SEQUENCE_{kind} twice")
    states = []
    for state in sb.state:
        if not state.input_name or not state.output_name:
            raise ModelLoadError(
                f"{where}: a sequence_batching.state needs input_name and output_name"
            )
        datatype = _datatype(state.data_type)
        if datatype is None:
            raise ModelLoadError(
                f"{where}: sequence_batching.state '{state.input_name}' has no data_type"
            )
        initial = None
        if state.initial_state:
            if len(state.initial_state) != 1:
                raise ModelLoadError(
                    f"{where}: sequence_batching.state '{state.input_name}' takes one "
                    "initial_state"
                )
            init = state.initial_state[0]
            if not init.zero_data:
                raise ModelLoadError(
                    f"{where}: sequence_batching.state '{state.input_name}'.initial_state "
                    "needs zero_data: true (data_file is not supported)"
                )
            initial = tuple(init.dims)
            if any(d < 1 for d in initial):
                raise ModelLoadError(
                    f"{where}: sequence_batching.state '{state.input_name}'.initial_state "
                    f"dims {list(initial)} must be fixed and positive"
                )
        states.append(SequenceState(
            state.input_name, state.output_name, datatype, tuple(state.dims), initial
        ))
    names = [c.input_name for c in controls] + [s.input_name for s in states]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise ModelLoadError(f"{where}: sequence_batching feeds input(s) {twice} twice")
    strategy = sb.WhichOneof("strategy_choice") or "direct"
    oldest = sb.oldest
    delay = (oldest.max_queue_delay_microseconds if strategy == "oldest"
             else sb.direct.max_queue_delay_microseconds)
    return SequenceBatching(
        strategy=strategy,
        max_sequence_idle_us=sb.max_sequence_idle_microseconds or DEFAULT_IDLE_US,
        controls=tuple(controls),
        states=tuple(states),
        max_candidate_sequences=(
            oldest.max_candidate_sequences or None if strategy == "oldest" else None
        ),
        preferred_batch_sizes=tuple(oldest.preferred_batch_size) if strategy == "oldest" else (),
        max_queue_delay_us=delay,
    )


def _datatype(proto_type: int) -> str | None:
    if proto_type == mc.TYPE_INVALID:
        return None
    name = mc.DataType.Name(proto_type).removeprefix("TYPE_")
    return "BYTES" if name == "STRING" else name


def _control(name: str, control: Any, where: str) -> SequenceControl:
    kind = mc.ModelSequenceBatching.Control.Kind.Name(control.kind).removeprefix(
        "CONTROL_SEQUENCE_"
    )
    here = f"{where}: sequence_batching.control_input '{name}'"
    if kind == "CORRID":
        datatype = _datatype(control.data_type)
        if datatype not in CORRID_TYPES:
            raise ModelLoadError(
                f"{here}: CONTROL_SEQUENCE_CORRID needs data_type one of "
                f"{', '.join('TYPE_STRING' if t == 'BYTES' else 'TYPE_' + t for t in CORRID_TYPES)}"
            )
        return SequenceControl(name, kind, datatype)
    given = [
        (datatype, tuple(values)) for datatype, values in (
            ("INT32", control.int32_false_true), ("FP32", control.fp32_false_true),
            ("BOOL", control.bool_false_true),
        ) if values
    ]
    if len(given) != 1 or len(given[0][1]) != 2:
        raise ModelLoadError(
            f"{here}: CONTROL_SEQUENCE_{kind} needs one of int32_false_true, fp32_false_true, "
            "bool_false_true with two values [false, true]"
        )
    datatype, pair = given[0]
    return SequenceControl(name, kind, datatype, (pair[0], pair[1]))


def write_sequence_batching(settings: SequenceBatching, target: mc.ModelSequenceBatching) -> None:
    """The inverse of :func:`parse_sequence_batching` (what ModelConfig answers)."""
    target.SetInParent()
    target.max_sequence_idle_microseconds = settings.max_sequence_idle_us
    if settings.strategy == "oldest":
        target.oldest.max_candidate_sequences = settings.max_candidate_sequences or 0
        target.oldest.preferred_batch_size.extend(settings.preferred_batch_sizes)
        target.oldest.max_queue_delay_microseconds = settings.max_queue_delay_us
    else:
        target.direct.max_queue_delay_microseconds = settings.max_queue_delay_us
    for control in settings.controls:
        entry = target.control_input.add(name=control.input_name).control.add()
        entry.kind = mc.ModelSequenceBatching.Control.Kind.Value(
            "CONTROL_SEQUENCE_" + control.kind
        )
        if control.false_true is None:
            entry.data_type = _proto_type(control.datatype)
        else:
            field = {"INT32": entry.int32_false_true, "FP32": entry.fp32_false_true,
                     "BOOL": entry.bool_false_true}[control.datatype]
            field.extend(control.false_true)
    for state in settings.states:
        entry = target.state.add(
            input_name=state.input_name, output_name=state.output_name,
            data_type=_proto_type(state.datatype),
        )
        entry.dims.extend(state.dims)
        if state.initial_dims is not None:
            initial = entry.initial_state.add(
                name="initial state", data_type=_proto_type(state.datatype), zero_data=True
            )
            initial.dims.extend(state.initial_dims)


def _proto_type(datatype: str) -> int:
    return mc.DataType.Value("TYPE_" + ("STRING" if datatype == "BYTES" else datatype))
