"""Triton's ``sequence_batching`` block: config.pbtxt <-> frozen settings (issue 16 item 5).

A sequence model serves requests that belong together (``sequence_id``, ``sequence_start``,
``sequence_end``). The server itself feeds the model its control inputs (START, END, READY,
CORRID) and its implicit state (the state output of one request of a sequence becomes the state
input of the next): these tensors are the server's, never the client's, so they are not among
the model's client inputs (:func:`split_sequence_io` takes them out of what the model file
declares). What the serving side does with these settings is
:mod:`sluice.server.serving.sequences`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from sluice.proto import model_config_pb2 as mc
from sluice.server.errors import ModelLoadError
from sluice.server.types import DATATYPE_DTYPES

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

#: Triton's default for max_sequence_idle_microseconds (one second).
DEFAULT_IDLE_US = 1_000_000
#: Control kinds (Triton's CONTROL_SEQUENCE_<KIND>).
KINDS = ("START", "READY", "END", "CORRID")
#: Datatypes a CORRID control may take.
CORRID_TYPES = ("UINT64", "INT64", "UINT32", "INT32", "BYTES")


@dataclass(frozen=True, slots=True)
class SequenceControl:
    """One control input the server synthesizes for every request of a sequence."""

    #: The model input that carries it.
    input_name: str
    #: "START", "END", "READY" or "CORRID".
    kind: str
    #: Its datatype: INT32, FP32 or BOOL for flags; CORRID's own data_type.
    datatype: str
    #: (false, true) values of a flag; None for CORRID.
    false_true: tuple[Any, Any] | None = None


@dataclass(frozen=True, slots=True)
class SequenceState:
    """One implicit state: ``output_name`` of a request is ``input_name`` of the next."""

    input_name: str
    output_name: str
    datatype: str
    #: Non-batch dims; -1 marks a size that may change from request to request.
    dims: tuple[int, ...]
    #: Dims of the state a sequence starts with (zeros); None: ``dims`` with -1 as 1.
    initial_dims: tuple[int, ...] | None = None

    @property
    def start_dims(self) -> tuple[int, ...]:
        """Non-batch shape of the zeros fed at START."""
        if self.initial_dims is not None:
            return self.initial_dims
        return tuple(1 if d == -1 else d for d in self.dims)


@dataclass(frozen=True, slots=True)
class SequenceBatching:
    """Triton's sequence_batching block."""

    #: "direct" (each sequence holds a batch slot until it ends) or "oldest".
    strategy: str = "direct"
    #: A sequence with nothing in flight for longer than this is released.
    max_sequence_idle_us: int = DEFAULT_IDLE_US
    controls: tuple[SequenceControl, ...] = ()
    states: tuple[SequenceState, ...] = ()
    #: Oldest: sequences batched at once (others wait for one to end); None: one per batch
    #: row of every instance, as direct.
    max_candidate_sequences: int | None = None
    #: Oldest: batch sizes to wait for (up to the delay).
    preferred_batch_sizes: tuple[int, ...] = ()
    #: How long a batch may wait to fill (either strategy).
    max_queue_delay_us: int = 0

    @property
    def server_inputs(self) -> frozenset[str]:
        """Model inputs the server fills (controls and state inputs)."""
        return frozenset(
            [c.input_name for c in self.controls] + [s.input_name for s in self.states]
        )


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


def flag_tensor(control: SequenceControl, value: bool, shape: tuple[int, ...]) -> np.ndarray:
    """A flag control's tensor of ``shape`` holding its false or true value."""
    assert control.false_true is not None
    return np.full(shape, control.false_true[int(value)], dtype=DATATYPE_DTYPES[control.datatype])


def corrid_tensor(
    control: SequenceControl, sequence_id: int | str, shape: tuple[int, ...]
) -> np.ndarray:
    """The CORRID control's tensor of ``shape``; a string datatype holds the id as text (an
    integer id in decimal). A string id for an integer datatype is the caller's check."""
    if control.datatype == "BYTES":
        return np.full(shape, str(sequence_id).encode(), dtype=object)
    return np.full(shape, sequence_id, dtype=DATATYPE_DTYPES[control.datatype])


def warmup_tensors(settings: SequenceBatching, rows: int, batched: bool) -> dict[str, Any]:
    """The server's tensors of a warm-up request (``rows`` rows): flags false, CORRID 0, each
    state zeros of its starting shape."""
    unit = (rows, 1) if batched else (1,)
    out: dict[str, Any] = {}
    for control in settings.controls:
        if control.false_true is None:
            out[control.input_name] = corrid_tensor(control, 0, unit)
        else:
            out[control.input_name] = flag_tensor(control, False, unit)
    for state in settings.states:
        shape = (rows, *state.start_dims) if batched else state.start_dims
        if state.datatype == "BYTES":
            out[state.input_name] = np.full(shape, b"", dtype=object)
        else:
            out[state.input_name] = np.zeros(shape, dtype=DATATYPE_DTYPES[state.datatype])
    return out
