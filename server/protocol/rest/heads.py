"""The JSON part of REST infer answers whose outputs are all binary data, kept as text around
the id: the answers of one model to requests of one shape differ only in their id (the server
gives one to each request that has none) and their binary data, so the JSON is written once per
(model, version, outputs' names, datatypes, shapes and sizes) and then only the id is put in.
The bytes are those :func:`sluice.server.protocol.rest.codec.encode_infer` writes by building
and dumping the whole document (the same ``json`` encoder writes the id)."""

from __future__ import annotations

import json
from json.encoder import encode_basestring_ascii  # what json.dumps writes strings with
from typing import Any

import numpy as np

from sluice.proto import tensors
from sluice.server.types import InferResponse

#: Stands for the id while a head is written (JSON-escaped: it cannot be in a name unescaped).
_MARK = "\x00sluice-id\x00"
_MARK_JSON = json.dumps(_MARK)

Head = tuple[bytes, bytes]  # (before the id, after it); after is b"" when there is no id


class Heads:
    """Heads by their key; bounded, cleared when full."""

    def __init__(self, capacity: int = 256) -> None:
        self._capacity = capacity
        self._heads: dict[tuple[Any, ...], Head] = {}

    def __len__(self) -> int:
        return len(self._heads)

    def encode(self, response: InferResponse, binary: dict[str, bool | None],
               binary_default: bool) -> tuple[bytes, int] | None:
        """(body, JSON header length) of ``response`` when every output is asked for as binary
        data and it has no parameters; None otherwise (write it in full)."""
        if response.parameters:
            return None
        raws = []
        key: list[Any] = [response.model_name, response.model_version, bool(response.id)]
        for name, array in response.outputs.items():
            flag = binary.get(name)
            if not (binary_default if flag is None else flag):
                return None
            array = np.asarray(array)
            try:
                raw = tensors.encode_raw(array, label=f"output '{name}'")
            except Exception:  # the full encoding raises what it always raised
                return None
            key.append((name, array.dtype, array.shape, len(raw)))
            raws.append(raw)
        frozen = tuple(key)
        head = self._heads.get(frozen)
        if head is None:
            head = self._learn(frozen, response)
            if head is None:
                return None
        before, after = head
        if response.id:
            header = b"".join([before, encode_basestring_ascii(response.id).encode(), after])
        else:
            header = before
        return b"".join([header, *raws]), len(header)

    def _learn(self, key: tuple[Any, ...], response: InferResponse) -> Head | None:
        outputs = [
            {"name": name, "datatype": tensors.dtype_to_datatype(dtype), "shape": list(shape),
             "parameters": {"binary_data_size": size}}
            for name, dtype, shape, size in key[3:]
        ]
        doc: dict[str, Any] = {"model_name": response.model_name,
                               "model_version": response.model_version}
        if response.id:
            doc["id"] = _MARK
        doc["outputs"] = outputs
        text = json.dumps(doc, separators=(",", ":"))
        if response.id:
            parts = text.split(_MARK_JSON)
            if len(parts) != 2:
                return None
            head = parts[0].encode(), parts[1].encode()
        else:
            head = text.encode(), b""
        if len(self._heads) >= self._capacity:
            self._heads.clear()
        self._heads[key] = head
        return head
