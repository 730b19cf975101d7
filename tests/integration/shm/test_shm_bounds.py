"""System shared memory bounds (Triton's extension, issue 16 item 4) through a real server and
tritonclient: every offset and size checked against its region, on inputs, outputs and
registration, each refused with a precise status while the server keeps serving."""

from __future__ import annotations

import os

import numpy as np
import pytest
import tritonclient.grpc as tc
import tritonclient.utils.shared_memory as shm

from tests.support.system_shm import TENSOR_BYTES, infer_placed, refused, simple_inputs


@pytest.mark.parametrize(("size", "offset"), [
    (TENSOR_BYTES, TENSOR_BYTES // 2),  # past the end by half a tensor
    (TENSOR_BYTES, TENSOR_BYTES),  # starts at the end
    (TENSOR_BYTES, -1),
    (-TENSOR_BYTES, 0),
    (TENSOR_BYTES, 2**63 - 1),
    (2**62, 0),
    (2**63 - 1, 1),  # offset + size overflows int64
])
def test_every_input_placement_is_checked_against_its_region(client, regions, size, offset):
    handle, key = regions("bounded", TENSOR_BYTES)
    shm.set_shared_memory_region(handle, [simple_inputs()[0]])
    client.register_system_shared_memory("bounded", key, TENSOR_BYTES)
    error = refused(infer_placed, client, ("bounded", size, offset))
    assert error.status() == "StatusCode.INVALID_ARGUMENT"
    assert error.message() == (
        f"input 'INPUT0': shared memory region 'bounded': offset {offset} and byte_size "
        f"{size} do not fit in the region's {TENSOR_BYTES} bytes")
    result = infer_placed(client, ("bounded", TENSOR_BYTES, 0))  # the server still serves
    np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), sum(simple_inputs()))


def test_a_region_smaller_than_the_tensor_is_refused_naming_both_sizes(client, regions):
    handle, key = regions("small", TENSOR_BYTES // 2)
    client.register_system_shared_memory("small", key, TENSOR_BYTES // 2)
    error = refused(infer_placed, client, ("small", TENSOR_BYTES // 2, 0))
    assert error.status() == "StatusCode.INVALID_ARGUMENT"
    assert error.message() == (
        "input 'INPUT0': expected 64 bytes of raw data for INT32 [1,16], got 32")


def test_output_placements_are_checked_before_and_after_compute(client, regions, server):
    input0, input1 = simple_inputs()
    handle, key = regions("outs", TENSOR_BYTES * 2)
    shm.set_shared_memory_region(handle, [input0])
    client.register_system_shared_memory("outs", key, TENSOR_BYTES * 2)
    computed = server.server.repository.get("simple").stats.success_count
    error = refused(infer_placed, client, ("outs", TENSOR_BYTES, 0),
                    ("outs", TENSOR_BYTES, TENSOR_BYTES + 8))
    assert error.status() == "StatusCode.INVALID_ARGUMENT"
    assert error.message() == (
        f"output 'OUTPUT0': shared memory region 'outs': offset {TENSOR_BYTES + 8} and "
        f"byte_size {TENSOR_BYTES} do not fit in the region's {TENSOR_BYTES * 2} bytes")
    assert server.server.repository.get("simple").stats.success_count == computed  # no compute
    error = refused(infer_placed, client, ("outs", TENSOR_BYTES, 0),
                    ("outs", TENSOR_BYTES - 4, TENSOR_BYTES))
    assert error.status() == "StatusCode.INVALID_ARGUMENT"
    assert error.message() == (
        "shared memory size specified with the request for output 'OUTPUT0' (60 bytes) "
        "should be at least 64 bytes to hold the results")


def test_half_given_placements_and_unknown_regions_are_refused(client):
    tensor = tc.InferInput("INPUT0", [1, 16], "INT32")
    tensor.set_shared_memory("nowhere", TENSOR_BYTES)
    error = refused(infer_placed, client, ("nowhere", TENSOR_BYTES, 0))
    assert error.status() == "StatusCode.NOT_FOUND"
    assert error.message() == "input 'INPUT0': Unable to find shared memory region: 'nowhere'"
    half = tc.InferInput("INPUT0", [1, 16], "INT32")
    half._input.parameters["shared_memory_region"].string_param = "r"  # no byte_size
    raw = tc.InferInput("INPUT1", [1, 16], "INT32")
    raw.set_data_from_numpy(simple_inputs()[1])
    error = refused(client.infer, "simple", [half, raw])
    assert error.status() == "StatusCode.INVALID_ARGUMENT"
    assert error.message() == ("input 'INPUT0': shared memory needs both 'shared_memory_region' "
                               "and 'shared_memory_byte_size' (got 'shared_memory_region')")


def test_registration_is_checked_against_the_object(client, regions):
    _, key = regions("obj", 256)
    error = refused(client.register_system_shared_memory, "r", key, 200, offset=100)
    assert error.status() == "StatusCode.INVALID_ARGUMENT"
    assert error.message() == (
        f"failed to register shared memory region 'r': offset 100 + byte_size 200 = 300 "
        f"exceeds the 256 bytes of shared memory object '{key}'")
    missing = f"/sluice_test_{os.getpid()}_missing"
    error = refused(client.register_system_shared_memory, "r", missing, 64)
    assert error.status() == "StatusCode.NOT_FOUND"
    assert error.message() == (
        f"failed to register shared memory region 'r': Unable to open shared memory region: "
        f"'{missing}' (no such shared memory object)")
    error = refused(client.register_system_shared_memory, "r", "/dev/shm/../../etc/passwd", 64)
    assert error.status() == "StatusCode.INVALID_ARGUMENT"
    assert "not a POSIX shared memory name" in error.message()
    assert "etc" not in error.message()  # never echoes a path
    assert client.get_system_shared_memory_status(as_json=True) == {}


def test_an_unaligned_registration_offset_maps_the_right_bytes(client, regions):
    """mmap needs page-aligned offsets; the region starts where the client said anyway."""
    input0, input1 = simple_inputs()
    handle, key = regions("unaligned", 8192)
    shm.set_shared_memory_region(handle, [input0], offset=4100)
    client.register_system_shared_memory("unaligned", key, TENSOR_BYTES, offset=4100)
    result = infer_placed(client, ("unaligned", TENSOR_BYTES, 0))
    np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), input0 + input1)


