"""The clients' error classes against a real server: an invalid input or an unknown model or
version raises the class for its status, naming the offending thing; an unencodable input fails
before sending; stream error messages map to the same classes.
"""

from __future__ import annotations

import grpc
import numpy as np
import pytest

from sluice.clients import InvalidInput, ModelNotFound, Overloaded, SluiceClientError
from sluice.clients.errors import error_from_stream_message


def bad_requests() -> list[tuple[str, str, dict[str, np.ndarray], str]]:
    """(case id, model, inputs, input name the error must mention)."""
    ok = np.zeros((2, 16), np.float32)
    return [
        ("wrong-dtype", "identity", {"INPUT0": ok.astype(np.float64)}, "INPUT0"),
        ("wrong-shape", "identity", {"INPUT0": np.zeros((2, 15), np.float32)}, "INPUT0"),
        ("missing-input", "add_sub", {"INPUT0": ok}, "INPUT1"),
    ]


BAD = bad_requests()


@pytest.mark.parametrize(("model", "inputs", "name"), [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_sync_invalid_input_names_the_input(client, model, inputs, name):
    with pytest.raises(InvalidInput) as info:
        client.infer(model, inputs)
    assert info.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert name in info.value.details
    assert info.value.attempts == 1


@pytest.mark.parametrize(("model", "inputs", "name"), [b[1:] for b in BAD], ids=[b[0] for b in BAD])
async def test_async_invalid_input_names_the_input(aclient, model, inputs, name):
    with pytest.raises(InvalidInput) as info:
        await aclient.infer(model, inputs)
    assert name in info.value.details


def test_sync_unknown_model_and_version(client):
    inputs = {"INPUT0": np.zeros((1, 16), np.float32)}
    with pytest.raises(ModelNotFound) as info:
        client.infer("no_such_model", inputs)
    assert info.value.code == grpc.StatusCode.NOT_FOUND
    assert "no_such_model" in info.value.details
    with pytest.raises(ModelNotFound):
        client.infer("identity", inputs, version="99")
    with pytest.raises(ModelNotFound):
        client.model_metadata("no_such_model")


async def test_async_unknown_model_and_version(aclient):
    inputs = {"INPUT0": np.zeros((1, 16), np.float32)}
    with pytest.raises(ModelNotFound):
        await aclient.infer("no_such_model", inputs)
    with pytest.raises(ModelNotFound):
        await aclient.infer("identity", inputs, version="99")


def test_unencodable_input_fails_before_sending(client):
    with pytest.raises(InvalidInput) as info:
        client.infer("identity", {"INPUT0": np.zeros((1, 16), np.complex64)})
    assert "INPUT0" in info.value.details


def test_stream_error_messages_map_to_classes():
    assert isinstance(error_from_stream_message("[NOT_FOUND] model 'x'"), ModelNotFound)
    error = error_from_stream_message("[UNAVAILABLE] queue full")
    assert isinstance(error, Overloaded) and error.details == "queue full"
    unknown = error_from_stream_message("something odd")
    assert type(unknown).__name__ == "ServerError"
    assert unknown.code == grpc.StatusCode.UNKNOWN


def test_error_base_class_carries_code_and_details():
    error = SluiceClientError(grpc.StatusCode.INTERNAL, "boom")
    assert error.code == grpc.StatusCode.INTERNAL and error.details == "boom"
    assert "INTERNAL" in str(error)
