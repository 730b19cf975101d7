"""Protobuf answers of the servicer as the JSON the KServe v2 REST protocol and Triton's HTTP
endpoints write: field names as in the .proto (``max_batch_size``, ``data_type``), enums by
name, every field present (zero values too, as Triton writes them), and 64-bit integers as JSON
numbers (protobuf's own JSON mapping writes them as strings, which ``perf_analyzer`` and
``tritonclient.http`` do not expect in a model config's ``dims``)."""

from __future__ import annotations

from typing import Any

from google.protobuf import json_format
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message

_WIDE = frozenset({FieldDescriptor.CPPTYPE_INT64, FieldDescriptor.CPPTYPE_UINT64})


def to_json(message: Message) -> dict[str, Any]:
    """``message`` as a JSON-ready dict (see the module docstring)."""
    doc = json_format.MessageToDict(
        message, always_print_fields_with_no_presence=True, preserving_proto_field_name=True
    )
    _numbers(message.DESCRIPTOR, doc)
    return doc


def _numbers(descriptor: Descriptor, doc: dict[str, Any]) -> None:
    """Turn the 64-bit integers of ``doc`` (a message of ``descriptor``) back into ints."""
    for field in descriptor.fields:
        value = doc.get(field.name)
        if value is None:
            continue
        if field.cpp_type in _WIDE:
            doc[field.name] = [int(v) for v in value] if isinstance(value, list) else int(value)
        elif field.cpp_type == FieldDescriptor.CPPTYPE_MESSAGE:
            kind = field.message_type
            if kind.GetOptions().map_entry:
                entry = kind.fields_by_name["value"]
                for key, item in value.items():
                    if entry.cpp_type in _WIDE:
                        value[key] = int(item)
                    elif entry.cpp_type == FieldDescriptor.CPPTYPE_MESSAGE:
                        _numbers(entry.message_type, item)
            elif isinstance(value, list):
                for item in value:
                    _numbers(kind, item)
            elif isinstance(value, dict):
                _numbers(kind, value)
