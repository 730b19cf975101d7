"""Where an ONNX file says its tensors' data lives, read before onnxruntime opens the file.

An ONNX tensor may keep its data in another file (``external_data`` entries ``location``,
``offset``, ``length``), named relative to the model file. A hostile model names
``../../etc/passwd`` or an absolute path, and an onnxruntime that does not check (before 1.2x)
reads whatever that is into a tensor. :func:`check_external_data` walks the model's protobuf
with a minimal wire-format reader (no onnx package at run time: it is a test and model-building
dependency only) and refuses any location that is absolute, climbs with '..', or resolves
(following links) outside the model file's directory. The walk descends into every place a
tensor can sit: graph initializers, sparse initializers, node attributes (tensors and subgraphs,
nested), functions and training graphs.

Field numbers are onnx.proto's (ModelProto.graph = 7, GraphProto.initializer = 5, TensorProto.
external_data = 13, ...); tests/unit/test_external_data.py builds models with the onnx package
and checks the reader finds what onnx itself wrote.
"""

from __future__ import annotations

import mmap
import os
from pathlib import Path, PurePosixPath, PureWindowsPath

from sluice.server.errors import ModelLoadError

#: message kind -> {field number: kind of the message it holds}
_CHILDREN: dict[str, dict[int, str]] = {
    "model": {7: "graph", 20: "training", 25: "function"},
    "training": {1: "graph", 2: "graph"},
    "graph": {1: "node", 5: "tensor", 15: "sparse"},
    "function": {7: "node", 11: "attribute"},
    "node": {5: "attribute"},
    "attribute": {5: "tensor", 6: "graph", 10: "tensor", 11: "graph", 22: "sparse", 23: "sparse"},
    "sparse": {1: "tensor", 2: "tensor"},
    "tensor": {13: "entry"},
}
#: Nesting deeper than this is refused (protobuf's own parsers stop at 100).
_MAX_DEPTH = 100


class _Malformed(Exception):
    pass


def _varint(data: memoryview, pos: int, end: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if pos >= end or shift > 63:
            raise _Malformed
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, pos
        shift += 7


def external_locations(data: memoryview) -> list[tuple[str, str]]:
    """(tensor name, location) of every external-data entry in the serialized ModelProto
    ``data``. Raises ModelLoadError when the bytes are not a protobuf message."""
    found: list[tuple[str, str]] = []
    stack: list[tuple[str, int, int, int]] = [("model", 0, len(data), 0)]
    try:
        while stack:
            kind, pos, end, depth = stack.pop()
            children = _CHILDREN[kind]
            name = ""
            locations: list[str] = []
            while pos < end:
                tag, pos = _varint(data, pos, end)
                number, wire = tag >> 3, tag & 7
                if wire == 0:
                    _, pos = _varint(data, pos, end)
                elif wire == 1 or wire == 5:
                    pos += 8 if wire == 1 else 4
                elif wire == 2:
                    length, pos = _varint(data, pos, end)
                    if pos + length > end:
                        raise _Malformed
                    child = children.get(number)
                    if child == "entry":  # read here: the tensor around it has the name
                        key, value = _entry(data, pos, pos + length)
                        if key == "location":
                            locations.append(value)
                    elif child is not None:
                        if depth >= _MAX_DEPTH:
                            raise _Malformed
                        stack.append((child, pos, pos + length, depth + 1))
                    elif kind == "tensor" and number == 8:
                        name = bytes(data[pos:pos + length]).decode("utf-8", "replace")
                    pos += length
                else:
                    raise _Malformed  # groups (3, 4) and 6, 7 are not in onnx.proto
            if pos != end:
                raise _Malformed
            found.extend((name, location) for location in locations)
    except _Malformed:
        raise ModelLoadError("is not a valid ONNX model (its protobuf does not parse)") from None
    return found


def _entry(data: memoryview, pos: int, end: int) -> tuple[str, str]:
    """(key, value) of a StringStringEntryProto."""
    key = value = ""
    while pos < end:
        tag, pos = _varint(data, pos, end)
        if tag & 7 != 2:
            if tag & 7 == 0:
                _, pos = _varint(data, pos, end)
                continue
            raise _Malformed
        length, pos = _varint(data, pos, end)
        if pos + length > end:
            raise _Malformed
        text = bytes(data[pos:pos + length]).decode("utf-8", "replace")
        if tag >> 3 == 1:
            key = text
        elif tag >> 3 == 2:
            value = text
        pos += length
    return key, value


def _escapes(location: str, base: Path) -> bool:
    """Whether ``location`` (relative to ``base``, a resolved directory) leaves ``base``."""
    for pure in (PurePosixPath(location), PureWindowsPath(location)):
        if pure.is_absolute() or pure.anchor or ".." in pure.parts:
            return True
    if "\0" in location:
        return True
    target = Path(os.path.realpath(base / location))
    return target != base and base not in target.parents


def check_external_data(model_file: Path, where: str) -> None:
    """Refuse ``model_file`` when a tensor's external data lies outside its directory.
    ``where`` ("model 'm' version 1") starts the message, which names the file and the tensor,
    never the location or a directory. Blocking (maps the file)."""
    base = Path(os.path.realpath(model_file.parent))
    with open(model_file, "rb") as handle:
        if os.fstat(handle.fileno()).st_size == 0:
            return  # onnxruntime says what is wrong with an empty file
        with mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as mapped:
            view = memoryview(mapped)
            try:
                try:
                    found = external_locations(view)
                except ModelLoadError as exc:
                    raise ModelLoadError(f"{where}: {model_file.name} {exc.message}") from None
            finally:
                view.release()
    for tensor, location in found:
        if _escapes(location, base):
            raise ModelLoadError(
                f"{where}: {model_file.name}: tensor '{tensor}' keeps its data outside the "
                "version directory; external data must be a file beside the model"
            )
