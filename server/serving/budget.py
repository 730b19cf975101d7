"""Server-wide caps: the in-flight bytes budget every model's admission shares, and the size
limits of one request (checked before anything is decoded)."""

from __future__ import annotations

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
