"""Requests refused before they reach a model, counted by status: bytes that are not a valid
protobuf message (any RPC), and inference requests over a size cap or with malformed tensors
or parameters. Exported as ``sluice_refused_requests_total{code}``
(:class:`sluice.server.metrics.RefusalCollector`). A plain counter: the event loop is its only
writer, a scrape reads a copy."""

from __future__ import annotations

from collections import Counter

import grpc

from sluice.proto.datatypes import TensorError
from sluice.server.errors import SluiceError


class Refusals:
    """Counts of refused requests by lower-case status code name (``invalid_argument``,
    ``resource_exhausted``, ``unimplemented``)."""

    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()

    def note(self, exc: BaseException) -> None:
        """Count ``exc``, the error a request was refused with."""
        if isinstance(exc, SluiceError):
            self.counts[exc.code.value] += 1
        elif isinstance(exc, TensorError):
            self.counts["invalid_argument"] += 1
        else:
            self.counts["internal"] += 1

    def note_status(self, method: str, code: grpc.StatusCode) -> None:
        """Count a refusal made with gRPC status ``code`` (``request_parsing``'s callback)."""
        self.counts[code.name.lower()] += 1

    def snapshot(self) -> dict[str, int]:
        return dict(self.counts)
