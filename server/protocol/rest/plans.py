"""Decode plans of REST infer bodies with binary tensor data: the JSON part decoded and checked
once, kept by its bytes, so a body whose JSON part is byte for byte one seen before (what
``perf_analyzer -i http`` and a ``tritonclient.http`` loop send: same inputs, shapes, outputs
and parameters, no id) skips the JSON parse and the checks and only cuts its binary part.

Only what the JSON part alone decides is kept (names, datatypes, shapes, sizes, outputs,
parameters, every limit on them), so a plan's outcome is the one a full decode of the same JSON
part has. What depends on the binary part is done again per body: its length (a body that does
not match its plan's sizes is decoded in full, which names the fault), BOOL and BYTES contents
(:func:`sluice.proto.tensors.decode_tensor`) and the BYTES element cap. Any failure on the
plan's path falls back to the full decode, which raises the error it always raised. Bodies with
an ``id`` or JSON ``data`` are never planned (their JSON part differs per request).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from sluice.proto import tensors
from sluice.proto.datatypes import dtype_for
from sluice.server.config.settings import RequestLimits
from sluice.server.serving.budget import check_element_bytes
from sluice.server.types import InferRequest

#: (name, datatype, shape, binary bytes, dtype; None: decoded by ``decode_tensor``) per input.
PlanInput = tuple[str, str, tuple[int, ...], int, "np.dtype[Any] | None"]


@dataclass(frozen=True, slots=True)
class Plan:
    """What a full decode of one JSON part found, minus the arrays."""

    inputs: tuple[PlanInput, ...]
    binary_size: int
    requested: tuple[str, ...] | None
    parameters: dict[str, Any]
    priority: int
    #: :attr:`InferRequest.signature`: None when an input is BYTES (its size varies).
    signature: tuple[tuple[str, str, tuple[int, ...]], ...] | None
    binary: dict[str, bool | None]
    binary_default: bool


class Plans:
    """A bounded map of JSON parts (with their model and version) to plans; cleared when full,
    as the model's own check cache is (a steady load has a handful of distinct bodies)."""

    def __init__(self, capacity: int = 256, max_json_bytes: int = 4096) -> None:
        self._capacity = capacity
        self.max_json_bytes = max_json_bytes
        self._plans: dict[tuple[str, str, bytes], Plan] = {}
        #: Bodies decoded by a plan.
        self.hits = 0

    def __len__(self) -> int:
        return len(self._plans)

    def decode(self, text: bytes, binary: memoryview, model: str, version: str,
               limits: RequestLimits | None) -> tuple[InferRequest, Plan] | None:
        """The request ``text`` + ``binary`` decodes to under ``limits`` (those its plan was
        learnt under), when ``text`` has a plan and ``binary`` fits it; else None (decode it in
        full)."""
        plan = self._plans.get((model, version, text))
        if plan is None or len(binary) != plan.binary_size:
            return None
        arrays: dict[str, np.ndarray] = {}
        offset = 0
        try:
            for name, datatype, shape, size, dtype in plan.inputs:
                if dtype is not None:
                    arrays[name] = np.frombuffer(
                        binary, dtype, size // dtype.itemsize, offset).reshape(shape)
                else:
                    array = tensors.decode_tensor(
                        name, datatype, shape, binary[offset:offset + size].tobytes(), None)
                    if datatype == "BYTES" and limits is not None:
                        check_element_bytes(limits, name, array.ravel().tolist())
                    arrays[name] = array
                offset += size
        except Exception:  # the full decode raises what it always raised
            return None
        request = InferRequest(
            model, version, arrays, "", plan.requested,
            dict(plan.parameters) if plan.parameters else {}, None, plan.priority,
            plan.signature)
        self.hits += 1
        return request, plan

    def learn(self, text: bytes, request: InferRequest, inputs: list[tuple[str, int | None]],
              binary: dict[str, bool | None], binary_default: bool) -> None:
        """Keep the plan of ``text``, fully decoded to ``request``; ``inputs`` is (datatype,
        binary bytes or None for JSON data) of each input in order."""
        if request.id or len(text) > self.max_json_bytes or any(
                size is None for _, size in inputs):
            return
        planned: list[PlanInput] = []
        total = 0
        for (name, array), (datatype, size) in zip(request.inputs.items(), inputs, strict=True):
            assert size is not None
            shape = tuple(array.shape)
            fixed = datatype not in ("BYTES", "BOOL") and math.prod(shape) > 0
            planned.append((name, datatype, shape, size,
                            dtype_for(datatype, name) if fixed else None))
            total += size
        signature = None if any(p[1] == "BYTES" for p in planned) else tuple(
            (name, datatype, shape) for name, datatype, shape, _, _ in planned)
        if len(self._plans) >= self._capacity:
            self._plans.clear()
        self._plans[(request.model_name, request.model_version, text)] = Plan(
            tuple(planned), total, request.requested_outputs, dict(request.parameters),
            request.priority, signature, binary, binary_default)
