"""Helpers of the system shared memory tests (tests/integration/shm/): the inputs they send
Triton's ``simple`` model (built by :mod:`tests.support.triton_models`) and the checks they
share."""

from __future__ import annotations

import numpy as np
import pytest
import tritonclient.grpc as tc
from tritonclient.utils import InferenceServerException

TENSOR_BYTES = 16 * 4  # one row of INT32 [16]


def mappings_of(key: str) -> int:
    """How many times this process maps the object ``key`` (/proc/self/maps)."""
    path = "/dev/shm/" + key.lstrip("/")
    with open("/proc/self/maps") as maps:
        return sum(1 for line in maps if line.rstrip().endswith(path))


def refused(call, *args, **kwargs) -> InferenceServerException:
    with pytest.raises(InferenceServerException) as info:
        call(*args, **kwargs)
    return info.value


def simple_inputs() -> tuple[np.ndarray, np.ndarray]:
    return (np.arange(16, dtype=np.int32).reshape(1, 16),
            np.full((1, 16), 3, dtype=np.int32))


def infer_placed(client, input_at: tuple[str, int, int], output_at=None):
    """``simple`` with INPUT0 placed at (region, byte_size, offset), INPUT1 raw, and OUTPUT0 at
    ``output_at`` when given."""
    inputs = [tc.InferInput("INPUT0", [1, 16], "INT32"), tc.InferInput("INPUT1", [1, 16], "INT32")]
    region, size, offset = input_at
    inputs[0].set_shared_memory(region, size, offset=offset)
    inputs[1].set_data_from_numpy(simple_inputs()[1])
    outputs = None
    if output_at is not None:
        outputs = [tc.InferRequestedOutput("OUTPUT0")]
        outputs[0].set_shared_memory(output_at[0], output_at[1], offset=output_at[2])
    return client.infer("simple", inputs, outputs=outputs)
