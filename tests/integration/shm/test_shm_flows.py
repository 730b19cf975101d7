"""System shared memory (Triton's extension, issue 16 item 4) through a real server and
tritonclient, as Triton's ``simple_grpc_shm_client.py`` uses it: regions made with
``tritonclient.utils.shared_memory``, registered, inputs read from and outputs written into
them, checked against numpy; then the regions' lifetime (unregister, re-register, shutdown) read
from this process's own memory map. The bounds checks are in test_shm_bounds.py.
"""

from __future__ import annotations

import os
import socket

import numpy as np
import pytest
import tritonclient.grpc as tc
import tritonclient.utils.shared_memory as shm
from tritonclient.utils import serialize_byte_tensor, serialized_byte_size, triton_to_np_dtype

from sluice.server.config.settings import ServerConfig
from tests.support.running import start_server
from tests.support.system_shm import (
    TENSOR_BYTES,
    infer_placed,
    mappings_of,
    refused,
    simple_inputs,
)


def test_simple_grpc_shm_client_flow(client, regions):
    """What Triton's simple_grpc_shm_client.py does, check for check."""
    input0, input1 = simple_inputs()
    out_handle, out_key = regions("output_data", TENSOR_BYTES * 2)
    in_handle, in_key = regions("input_data", TENSOR_BYTES * 2)
    shm.set_shared_memory_region(in_handle, [input0])
    shm.set_shared_memory_region(in_handle, [input1], offset=TENSOR_BYTES)
    client.register_system_shared_memory("output_data", out_key, TENSOR_BYTES * 2)
    client.register_system_shared_memory("input_data", in_key, TENSOR_BYTES * 2)

    inputs = [tc.InferInput("INPUT0", [1, 16], "INT32"), tc.InferInput("INPUT1", [1, 16], "INT32")]
    inputs[0].set_shared_memory("input_data", TENSOR_BYTES)
    inputs[1].set_shared_memory("input_data", TENSOR_BYTES, offset=TENSOR_BYTES)
    outputs = [tc.InferRequestedOutput("OUTPUT0"), tc.InferRequestedOutput("OUTPUT1")]
    outputs[0].set_shared_memory("output_data", TENSOR_BYTES)
    outputs[1].set_shared_memory("output_data", TENSOR_BYTES, offset=TENSOR_BYTES)
    results = client.infer("simple", inputs, outputs=outputs)

    output0 = results.get_output("OUTPUT0")
    output1 = results.get_output("OUTPUT1")
    assert (output0.datatype, list(output0.shape)) == ("INT32", [1, 16])
    sums = shm.get_contents_as_numpy(out_handle, triton_to_np_dtype(output0.datatype),
                                     output0.shape)
    diffs = shm.get_contents_as_numpy(out_handle, triton_to_np_dtype(output1.datatype),
                                      output1.shape, offset=TENSOR_BYTES)
    np.testing.assert_array_equal(sums, input0 + input1)
    np.testing.assert_array_equal(diffs, input0 - input1)
    # Written into the region, not also sent back (as Triton: one empty entry per output).
    assert list(results.get_response().raw_output_contents) == [b"", b""]

    status = client.get_system_shared_memory_status(as_json=True)["regions"]
    assert status == {
        "input_data": {"name": "input_data", "key": in_key, "byte_size": str(TENSOR_BYTES * 2)},
        "output_data": {"name": "output_data", "key": out_key,
                        "byte_size": str(TENSOR_BYTES * 2)},
    }  # (proto3 JSON leaves offset 0 out and writes uint64 as strings)
    one = client.get_system_shared_memory_status("input_data", as_json=True)["regions"]
    assert list(one) == ["input_data"]
    client.unregister_system_shared_memory()
    assert client.get_system_shared_memory_status(as_json=True) == {}


def test_inputs_and_outputs_mix_shared_memory_and_raw_contents(client, regions):
    """INPUT1 raw while INPUT0 is in a region; OUTPUT0 in a region while OUTPUT1 comes back
    raw: Triton's positional rules on both sides (raw entries only for inputs not in shared
    memory; an empty raw entry for each output that is)."""
    input0, input1 = simple_inputs()
    handle, key = regions("mixed", TENSOR_BYTES * 3)
    shm.set_shared_memory_region(handle, [input0], offset=TENSOR_BYTES)
    client.register_system_shared_memory("mixed", key, TENSOR_BYTES * 3)
    inputs = [tc.InferInput("INPUT0", [1, 16], "INT32"), tc.InferInput("INPUT1", [1, 16], "INT32")]
    inputs[0].set_shared_memory("mixed", TENSOR_BYTES, offset=TENSOR_BYTES)
    inputs[1].set_data_from_numpy(input1)
    outputs = [tc.InferRequestedOutput("OUTPUT0"), tc.InferRequestedOutput("OUTPUT1")]
    outputs[0].set_shared_memory("mixed", TENSOR_BYTES, offset=2 * TENSOR_BYTES)
    results = client.infer("simple", inputs, outputs=outputs)
    np.testing.assert_array_equal(results.as_numpy("OUTPUT1"), input0 - input1)
    written = shm.get_contents_as_numpy(handle, np.int32, [1, 16], offset=2 * TENSOR_BYTES)
    np.testing.assert_array_equal(written, input0 + input1)
    # The input's bytes in the region are left as the client wrote them.
    np.testing.assert_array_equal(
        shm.get_contents_as_numpy(handle, np.int32, [1, 16], offset=TENSOR_BYTES), input0)


def test_bytes_tensors_travel_through_shared_memory_both_ways(client, regions):
    """As Triton's simple_grpc_shm_string_client.py: serialized, length-prefixed elements."""
    strings = np.array([[b"a", b"", b"sluice"], [b"x" * 40, "é".encode(), b"z"]], dtype=object)
    serialized = serialize_byte_tensor(strings)
    size = serialized_byte_size(serialized)
    assert size == sum(4 + len(s) for s in strings.ravel())
    in_handle, in_key = regions("strings_in", size)
    out_handle, out_key = regions("strings_out", size + 16)
    shm.set_shared_memory_region(in_handle, [serialized])
    client.register_system_shared_memory("strings_in", in_key, size)
    client.register_system_shared_memory("strings_out", out_key, size + 16)
    tensor = tc.InferInput("IN_s", [2, 3], "BYTES")
    tensor.set_shared_memory("strings_in", size)
    output = tc.InferRequestedOutput("OUT_s")
    output.set_shared_memory("strings_out", size + 16)
    result = client.infer("strings", [tensor], outputs=[output]).get_output("OUT_s")
    back = shm.get_contents_as_numpy(out_handle, np.object_, result.shape)
    assert back.tolist() == strings.tolist()


def test_streaming_requests_use_shared_memory_too(client, regions):
    input0, input1 = simple_inputs()
    handle, key = regions("streamed", TENSOR_BYTES * 3)
    shm.set_shared_memory_region(handle, [input0, input1])
    client.register_system_shared_memory("streamed", key, TENSOR_BYTES * 3)
    inputs = [tc.InferInput("INPUT0", [1, 16], "INT32"), tc.InferInput("INPUT1", [1, 16], "INT32")]
    inputs[0].set_shared_memory("streamed", TENSOR_BYTES)
    inputs[1].set_shared_memory("streamed", TENSOR_BYTES, offset=TENSOR_BYTES)
    output = tc.InferRequestedOutput("OUTPUT1")
    output.set_shared_memory("streamed", TENSOR_BYTES, offset=2 * TENSOR_BYTES)
    answers: list = []
    client.start_stream(callback=lambda result, error: answers.append((result, error)))
    try:
        client.async_stream_infer("simple", inputs, outputs=[output])
    finally:
        client.stop_stream()  # waits for the answer
    [(result, error)] = answers
    assert error is None
    assert list(result.get_response().raw_output_contents) == [b""]
    np.testing.assert_array_equal(
        shm.get_contents_as_numpy(handle, np.int32, [1, 16], offset=2 * TENSOR_BYTES),
        input0 - input1)


# -- lifetime -----------------------------------------------------------------------------------

def test_unregister_unmaps_and_a_name_is_registered_once(client, regions):
    handle, key = regions("life", TENSOR_BYTES)
    shm.set_shared_memory_region(handle, [simple_inputs()[0]])
    before = mappings_of(key)  # the client's own mapping
    client.register_system_shared_memory("life", key, TENSOR_BYTES)
    assert mappings_of(key) == before + 1
    infer_placed(client, ("life", TENSOR_BYTES, 0))
    error = refused(client.register_system_shared_memory, "life", key, TENSOR_BYTES)
    assert error.status() == "StatusCode.ALREADY_EXISTS"
    assert error.message() == ("shared memory region 'life' already in manager: the name is "
                               "already in use (unregister it first)")
    assert mappings_of(key) == before + 1  # the refused twin mapped nothing

    client.unregister_system_shared_memory("life")
    assert mappings_of(key) == before
    error = refused(infer_placed, client, ("life", TENSOR_BYTES, 0))
    assert error.status() == "StatusCode.NOT_FOUND"
    assert "Unable to find shared memory region: 'life'" in error.message()
    error = refused(client.get_system_shared_memory_status, "life")
    assert error.status() == "StatusCode.NOT_FOUND"
    assert error.message() == "Unable to find system shared memory region: 'life'"
    client.unregister_system_shared_memory("life")  # again: not an error (as Triton)
    client.register_system_shared_memory("life", key, TENSOR_BYTES)  # the name is free again
    infer_placed(client, ("life", TENSOR_BYTES, 0))


def test_status_and_unregister_all_with_nothing_registered_are_not_errors(client):
    assert client.get_system_shared_memory_status(as_json=True) == {}
    client.unregister_system_shared_memory()
    assert "system_shared_memory" in client.get_server_metadata(as_json=True)["extensions"]


def test_a_region_shrunk_after_registering_is_refused_not_a_crash(client, regions):
    handle, key = regions("shrunk", TENSOR_BYTES * 2)
    client.register_system_shared_memory("shrunk", key, TENSOR_BYTES * 2)
    fd = os.open("/dev/shm/" + key.lstrip("/"), os.O_RDWR)
    try:
        os.ftruncate(fd, 16)
    finally:
        os.close(fd)
    error = refused(infer_placed, client, ("shrunk", TENSOR_BYTES, 0))
    assert error.status() == "StatusCode.INVALID_ARGUMENT"
    assert "smaller than the region registered (16 bytes now)" in error.message()


def test_shutdown_unmaps_every_region(repo, tmp_path, regions):
    running = start_server(ServerConfig(model_repository=repo, grpc_port=0, metrics_port=None,
                                        state_dir=tmp_path / "state"))
    try:
        _, key = regions("kept", TENSOR_BYTES)
        before = mappings_of(key)
        with tc.InferenceServerClient(running.address) as c:
            c.register_system_shared_memory("kept", key, TENSOR_BYTES)
            c.register_system_shared_memory("kept_too", key, TENSOR_BYTES)
        assert mappings_of(key) == before + 2
    finally:
        running.stop()
    assert mappings_of(key) == before


def test_a_client_on_another_host_cannot_register(repo, tmp_path, regions):
    """A peer that is not on loopback (this host's own network address stands in for one)."""
    probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        probe.connect(("192.0.2.1", 9))  # a UDP connect sends nothing: it picks the route
        address = probe.getsockname()[0]
    except OSError:
        address = None
    finally:
        probe.close()
    if address is not None and address.startswith("127."):
        address = None
    if address is None:
        pytest.skip("this host has no non-loopback IPv4 address")
    running = start_server(ServerConfig(model_repository=repo, grpc_port=0, metrics_port=None,
                                        host="0.0.0.0", insecure=True,
                                        state_dir=tmp_path / "state"))
    try:
        _, key = regions("remote", TENSOR_BYTES)
        with tc.InferenceServerClient(f"{address}:{running.port}") as c:
            error = refused(c.register_system_shared_memory, "remote", key, TENSOR_BYTES)
        assert error.status() == "StatusCode.FAILED_PRECONDITION"
        assert "for clients on the server's own host" in error.message()
        with tc.InferenceServerClient(running.address) as c:  # loopback: fine
            c.register_system_shared_memory("remote", key, TENSOR_BYTES)
    finally:
        running.stop()
