"""Server-wide caps: the in-flight bytes budget every model's admission shares, and the size
limits of one request (checked before anything is decoded)."""

from __future__ import annotations

import math
from collections.abc import Iterable

from sluice.server.config.settings import RequestLimits
from sluice.server.errors import ResourceExhausted


class InflightBudget:
    """Server-wide bound on the input bytes of admitted requests not yet answered.

    One per server, owned by the app and shared by every model version's admission; acquired
    when a request is admitted and released when it is answered (whatever the outcome).
    """

    def __init__(self, limit_bytes: int | None) -> None:
        #: None: no bound (the bytes are still counted).
        self.limit_bytes = limit_bytes
        self.bytes = 0
        self.peak_bytes = 0

    def fits(self, nbytes: int) -> bool:
        return self.limit_bytes is None or self.bytes + nbytes <= self.limit_bytes

    def acquire(self, nbytes: int) -> None:
        self.bytes += nbytes
        if self.bytes > self.peak_bytes:
            self.peak_bytes = self.bytes

    def release(self, nbytes: int) -> None:
        self.bytes -= nbytes


def check_request_limits(limits: RequestLimits, inputs: int, outputs: int, rank: int) -> None:
    """Refuse a request with more inputs, requested outputs or input dimensions than allowed."""
    if inputs > limits.max_inputs:
        raise ResourceExhausted(
            f"request has {inputs} inputs; the server allows at most {limits.max_inputs} "
            "(max_request_inputs)"
        )
    if outputs > limits.max_outputs:
        raise ResourceExhausted(
            f"request asks for {outputs} outputs; the server allows at most "
            f"{limits.max_outputs} (max_request_outputs)"
        )
    if rank > limits.max_rank:
        raise ResourceExhausted(
            f"an input has {rank} dimensions; the server allows at most {limits.max_rank} "
            "(max_tensor_rank)"
        )


# hardened input (issue 14 item 4): the caps below are checked on what the request declares,
# before any tensor is decoded (element counts) or as it is (BYTES elements).


def check_shape(limits: RequestLimits, name: str, shape: tuple[int, ...]) -> None:
    """Refuse input ``name`` whose ``shape`` has more elements, or a larger dimension, than
    ``max_elements`` (a negative dimension is left to the decoder, which names it)."""
    if not shape:
        return
    cap = limits.max_elements
    if max(shape) > cap:
        raise ResourceExhausted(
            f"input '{name}': dimension {max(shape)} of shape {_shape(shape)} exceeds the "
            f"server's {cap} elements per tensor (max_tensor_elements)"
        )
    if min(shape) < 0:
        return
    count = math.prod(shape)
    if count > cap:
        raise ResourceExhausted(
            f"input '{name}': shape {_shape(shape)} has {count} elements; the server allows "
            f"at most {cap} (max_tensor_elements)"
        )


def check_parameters(limits: RequestLimits, where: str, count: int) -> None:
    """Refuse a parameters map (of ``where``: "request", "input 'x'", "output 'y'") with more
    entries than ``max_parameters``."""
    if count > limits.max_parameters:
        raise ResourceExhausted(
            f"{where} has {count} parameters; the server allows at most "
            f"{limits.max_parameters} (max_request_parameters)"
        )


def check_element_bytes(limits: RequestLimits, name: str, elements: Iterable[bytes]) -> None:
    """Refuse BYTES input ``name`` with an element longer than ``max_element_bytes``."""
    cap = limits.max_element_bytes
    for index, element in enumerate(elements):
        if len(element) > cap:
            raise ResourceExhausted(
                f"input '{name}': BYTES element {index} holds {len(element)} bytes; the "
                f"server allows at most {cap} (max_element_bytes)"
            )


def _shape(shape: tuple[int, ...]) -> str:
    return "[" + ",".join(map(str, shape)) + "]"
