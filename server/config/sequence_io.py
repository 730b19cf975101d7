"""A sequence model's tensors checked against its model file, and split into the client's and
the server's (issue 16 item 5).

Control inputs and state inputs are fed by the server, so clients neither send nor see them;
state outputs are kept by the server and answered to a client only when config.pbtxt lists
them as outputs (Triton's rule: "for debugging purposes the client can request the output
state").
"""

from __future__ import annotations

from dataclasses import replace

from sluice.server.config.model import ModelConfig, ModelIO
from sluice.server.errors import ModelLoadError
from sluice.server.types import TensorSpec


def split_sequence_io(config: ModelConfig, io: ModelIO) -> ModelIO:
    """What the model file declares, less the server's tensors, once those check out: every
    control and state input and every state output exists with the configured datatype (a
    control holds one value per row). Models without sequence_batching: ``io`` as it is."""
    settings = config.sequence_batching
    if settings is None:
        return io
    name = config.name
    inputs = {t.name: t for t in io.inputs}
    outputs = {t.name: t for t in io.outputs}
    batched = config.max_batch_size > 0 or all(
        t.dims and t.dims[0] == -1 for t in (*io.inputs, *io.outputs)
    )

    def find(kind: str, tensors: dict[str, TensorSpec], tensor: str, datatype: str,
             what: str) -> TensorSpec:
        real = tensors.get(tensor)
        if real is None:
            raise ModelLoadError(
                f"model '{name}': sequence_batching {what} '{tensor}' is not an {kind} of the "
                f"model file (it has {sorted(tensors)})"
            )
        if real.datatype != datatype:
            raise ModelLoadError(
                f"model '{name}': sequence_batching {what} '{tensor}' is {datatype} but the "
                f"model file has {real.datatype}"
            )
        return real

    for control in settings.controls:
        real = find("input", inputs, control.input_name, control.datatype,
                    f"control CONTROL_SEQUENCE_{control.kind}")
        dims = real.dims[1:] if batched and real.dims else real.dims
        if any(d not in (1, -1) for d in dims) or len(dims) > 1:
            raise ModelLoadError(
                f"model '{name}': sequence_batching control input '{control.input_name}' "
                f"must hold one value per request (shape [1]), the model file has {list(dims)}"
            )
    for state in settings.states:
        find("input", inputs, state.input_name, state.datatype, "state input")
        find("output", outputs, state.output_name, state.datatype, "state output")
    declared_outputs = {t.name for t in config.outputs}
    state_outputs = {s.output_name for s in settings.states} - declared_outputs
    return replace(
        io,
        inputs=tuple(t for t in io.inputs if t.name not in settings.server_inputs),
        outputs=tuple(t for t in io.outputs if t.name not in state_outputs),
    )
