"""What the monitors see of one finished inference request (:class:`Finished`).

Its own module so that the hub and the drained batches it hands over (:mod:`.drained`) can both
use it; :mod:`.hub` re-exports it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass(slots=True)
class Finished:
    """One finished inference request, as the monitors see it. Arrays are the request's own
    (never copied: nothing writes to them once answered)."""

    #: The response's id (the request's own, else the one the server made).
    id: str
    #: Wall-clock seconds since the epoch when the answer was ready.
    time: float
    model: str
    version: int
    #: The deployment arm that served it ("" on the plain path).
    arm: str
    #: Who called (the token's subject once authentication lands; "" when unknown).
    caller: str
    #: Outputs as returned; empty when the request failed.
    outputs: dict[str, np.ndarray]
    #: Inputs as received.
    inputs: dict[str, np.ndarray]
    latency_s: float
    #: "OK" or the failure's status code name (e.g. "UNAVAILABLE").
    status: str = "OK"
    parameters: dict[str, object] = field(default_factory=dict)
