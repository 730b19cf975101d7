"""Triton's ``sequence_batching`` block as frozen settings (issue 16 item 5); config.pbtxt
reads and writes it in :mod:`sluice.server.config.sequence_pbtxt`.

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

from sluice.server.types import DATATYPE_DTYPES

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
