"""The ONNX external-data reader (server/backends/external_data.py) against the onnx package as
reference: every tensor onnx itself finds (initializers, sparse initializers, node attributes,
subgraphs nested in them, functions) is found with its location; escaping locations are refused
by name of tensor, never echoing the location. Also the path redaction and the repository
containment check the loaders use."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from onnx.external_data_helper import _get_all_tensors

from sluice.server.backends.external_data import check_external_data, external_locations
from sluice.server.config.containment import check_contained
from sluice.server.config.redaction import redact_paths
from sluice.server.errors import ModelLoadError


def external(tensor: TensorProto, location: str) -> TensorProto:
    tensor.ClearField("raw_data")
    tensor.data_location = TensorProto.EXTERNAL
    for key, value in (("location", location), ("offset", "0"), ("length", "16")):
        entry = tensor.external_data.add()
        entry.key, entry.value = key, value
    return tensor


def weight(name: str) -> TensorProto:
    return numpy_helper.from_array(np.zeros(4, np.float32), name)


def everywhere(location: str) -> onnx.ModelProto:
    """A model with external tensors in each place one can sit, each named for its place."""
    inner = helper.make_graph(
        [helper.make_node("Constant", [], ["c"], value=external(weight("in_subgraph_attr"),
                                                                  location))],
        "branch", [], [helper.make_tensor_value_info("c", TensorProto.FLOAT, [4])],
        [external(weight("subgraph_init"), location)])
    sparse = helper.make_sparse_tensor(external(weight("sparse_values"), location),
                                       numpy_helper.from_array(np.arange(4), "sparse_idx"), [8])
    nodes = [
        helper.make_node("If", ["cond"], ["y"], then_branch=inner, else_branch=inner),
        helper.make_node("Constant", [], ["k"], value=external(weight("node_attr"), location)),
    ]
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("cond", TensorProto.BOOL, [])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4])],
        [external(weight("graph_init"), location)], sparse_initializer=[sparse])
    function = onnx.FunctionProto(
        name="f", domain="local", input=[], output=["z"],
        node=[helper.make_node("Constant", [], ["z"], value=external(weight("function_attr"),
                                                                      location))])
    return helper.make_model(graph, functions=[function],
                             opset_imports=[helper.make_opsetid("", 17)])


def test_the_reader_finds_every_external_tensor_onnx_finds():
    model = everywhere("data.bin")
    found = external_locations(memoryview(model.SerializeToString()))
    reference = {(t.name, e.value) for t in _get_all_tensors(model) for e in t.external_data
                 if e.key == "location"}
    # onnx's helper looks neither in functions nor at sparse initializers
    reference |= {("function_attr", "data.bin"), ("sparse_values", "data.bin")}
    assert set(found) == reference
    assert {name for name, _ in found} == {
        "in_subgraph_attr", "subgraph_init", "sparse_values", "node_attr", "graph_init",
        "function_attr"}


@pytest.mark.parametrize("location", [
    "../../etc/passwd", "/etc/passwd", "sub/../../x", "..\\..\\x", "C:\\x", "C:x", "\\\\host\\s"])
def test_locations_that_leave_the_version_directory_are_refused(tmp_path, location):
    path = tmp_path / "model.onnx"
    onnx.save(everywhere(location), path)
    with pytest.raises(ModelLoadError) as info:
        check_external_data(path, "model 'm' version 1")
    assert info.value.message.startswith("model 'm' version 1: model.onnx: tensor '")
    assert "keeps its data outside the version directory" in info.value.message
    assert location not in info.value.message and str(tmp_path) not in info.value.message


def test_a_link_beside_the_model_that_leads_out_is_refused(tmp_path):
    version = tmp_path / "1"
    version.mkdir()
    (tmp_path / "secret.bin").write_bytes(b"\0" * 16)
    os.symlink(tmp_path / "secret.bin", version / "data.bin")
    onnx.save(everywhere("data.bin"), version / "model.onnx")
    with pytest.raises(ModelLoadError, match="outside the version directory"):
        check_external_data(version / "model.onnx", "model 'm' version 1")
    (version / "data.bin").unlink()
    (version / "data.bin").write_bytes(b"\0" * 16)
    check_external_data(version / "model.onnx", "model 'm' version 1")  # beside it: fine
    (version / "sub").mkdir()
    onnx.save(everywhere("sub/data.bin"), version / "model.onnx")
    check_external_data(version / "model.onnx", "model 'm' version 1")


@pytest.mark.parametrize("data", [b"\x3a\x05ab", b"\x0f", b"\x3a\xff\xff\xff\xff\xff\xff\xff\xff"
                                  b"\xff\xff\x01", b"\x0b"])
def test_bytes_that_are_no_protobuf_are_refused_cleanly(tmp_path, data):
    path = tmp_path / "model.onnx"
    path.write_bytes(data)
    with pytest.raises(ModelLoadError) as info:
        check_external_data(path, "model 'm' version 1")
    assert info.value.message == (
        "model 'm' version 1: model.onnx is not a valid ONNX model (its protobuf does not parse)")


def test_nesting_deeper_than_protobuf_allows_is_refused():
    def field(number: int, body: bytes) -> bytes:  # a length-delimited field, framed by hand
        length, size = b"", len(body)
        while True:
            length += bytes([(size & 0x7F) | (0x80 if size > 0x7F else 0)])
            size >>= 7
            if not size:
                break
        return bytes([number << 3 | 2]) + length + body

    graph = b""
    for _ in range(60):  # graph -> node -> attribute -> graph: 180 levels
        graph = field(1, field(5, field(6, graph)))
    with pytest.raises(ModelLoadError, match="does not parse"):
        external_locations(memoryview(field(7, graph)))
    shallow = field(7, field(1, field(5, field(6, b""))))
    assert external_locations(memoryview(shallow)) == []


def test_redact_paths_keeps_only_the_last_part_of_absolute_paths():
    text = ("[ONNXRuntimeError] : 3 : NO_SUCHFILE : Load model from /srv/models/m/1/model.onnx "
            "failed:Load model '/srv/m/x.onnx' failed. C:\\models\\m\\1\\w.bin (errno 2)")
    assert redact_paths(text) == (
        "[ONNXRuntimeError] : 3 : NO_SUCHFILE : Load model from model.onnx failed:Load model "
        "'x.onnx' failed. w.bin (errno 2)")
    for kept in ("m/deployment.yaml: routes", "ratio 1/2", "no path here"):
        assert redact_paths(kept) == kept


def test_links_out_of_the_repository_are_refused_links_inside_are_not(tmp_path):
    root, outside = tmp_path / "repo", tmp_path / "outside"
    (root / "m" / "1").mkdir(parents=True)
    outside.mkdir()
    (outside / "model.onnx").write_bytes(b"x")
    (root / "shared.onnx").write_bytes(b"x")
    os.symlink(root / "shared.onnx", root / "m" / "1" / "model.onnx")
    check_contained(root, root / "m", "m")  # a link within the repository
    os.symlink(outside / "model.onnx", root / "m" / "1" / "other.onnx")
    with pytest.raises(ModelLoadError) as info:
        check_contained(root, root / "m", "m")
    assert info.value.message == (
        "model 'm': 'other.onnx' in '1' is a link to a place outside the model repository")
    os.symlink(outside, root / "linked")
    with pytest.raises(ModelLoadError, match="model 'linked': its directory is a link"):
        check_contained(root, Path(root / "linked"), "linked")
    os.symlink(outside, root / "v")
    (root / "m" / "1" / "other.onnx").unlink()
    os.symlink(outside, root / "m" / "2")
    with pytest.raises(ModelLoadError, match="model 'm': '2' is a link"):
        check_contained(root, root / "m", "m")
