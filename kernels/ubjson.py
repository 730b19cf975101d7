"""Universal Binary JSON (UBJSON), decoded into the values ``json.loads`` would give.

XGBoost's default model format since 2.0 (``Booster.save_model('model.ubj')``, and what MLflow
writes by default, ``model_format='ubj'``) is its JSON model document written as UBJSON: the same
objects and keys, with numbers big-endian and the long per-node arrays as *typed* arrays
(``[$d#L<count>`` then raw float32s). The document is decoded into dicts, lists, str, int, float,
bool and None, so :func:`sluice.kernels.formats` reads it with the JSON model's code; a typed array
becomes a list through one numpy read (no per-element Python loop over the bytes).

Only decoding; bounded by the input: every count and length is checked against the bytes left, so a
truncated or hostile file is a :class:`UbjsonError` naming the offset, never a huge allocation.
"""

from __future__ import annotations

import struct

import numpy as np


class UbjsonError(ValueError):
    """The bytes are not valid UBJSON; the message names the byte offset."""


#: Fixed-size number markers -> big-endian numpy dtype.
_NUMBERS = {
    "i": np.dtype(">i1"), "U": np.dtype(">u1"), "I": np.dtype(">i2"), "l": np.dtype(">i4"),
    "L": np.dtype(">i8"), "d": np.dtype(">f4"), "D": np.dtype(">f8"),
}
_STRUCTS = {marker: struct.Struct(">" + code) for marker, code in zip("iUIlLdD", "bBhiqfd",
                                                                    strict=True)}
#: Nesting beyond this is refused (XGBoost's document is 6 deep).
MAX_DEPTH = 64


def loads(data: bytes) -> object:
    """Decode one UBJSON value that fills ``data`` exactly."""
    reader = _Reader(memoryview(data))
    value = reader.value(reader.marker(), 0)
    if reader.pos != len(data):
        raise UbjsonError(f"{len(data) - reader.pos} bytes after the value at offset "
                          f"{reader.pos}")
    return value


class _Reader:
    def __init__(self, data: memoryview) -> None:
        self.data = data
        self.pos = 0

    def take(self, n: int) -> memoryview:
        if n < 0 or self.pos + n > len(self.data):
            raise UbjsonError(f"truncated at offset {self.pos} (needs {n} more bytes)")
        out = self.data[self.pos:self.pos + n]
        self.pos += n
        return out

    def marker(self) -> str:
        marker = chr(self.take(1)[0])
        while marker == "N":  # no-op padding
            marker = chr(self.take(1)[0])
        return marker

    def number(self, marker: str) -> int | float:
        where = self.pos
        fmt = _STRUCTS.get(marker)
        if fmt is None:
            raise UbjsonError(f"expected a number at offset {where}, found marker {marker!r}")
        return fmt.unpack(self.take(fmt.size))[0]

    def length(self) -> int:
        where = self.pos
        n = self.number(self.marker())
        if not isinstance(n, int) or n < 0:
            raise UbjsonError(f"invalid length {n} at offset {where}")
        return n

    def text(self) -> str:
        where = self.pos
        raw = self.take(self.length())
        try:
            return str(raw, "utf-8")
        except UnicodeDecodeError:
            raise UbjsonError(f"string at offset {where} is not UTF-8") from None

    def value(self, marker: str, depth: int) -> object:
        if marker in _STRUCTS:
            return self.number(marker)
        if marker == "S":
            return self.text()
        if marker == "C":
            return chr(self.take(1)[0])
        if marker in "TF":
            return marker == "T"
        if marker == "Z":
            return None
        if marker == "H":  # high-precision number, as text
            text = self.text()
            return float(text) if any(c in text for c in ".eE") else int(text)
        if depth >= MAX_DEPTH:
            raise UbjsonError(f"nesting deeper than {MAX_DEPTH} at offset {self.pos}")
        if marker == "[":
            return self.array(depth + 1)
        if marker == "{":
            return self.object(depth + 1)
        raise UbjsonError(f"unknown marker {marker!r} at offset {self.pos - 1}")

    def container_header(self) -> tuple[str | None, int | None]:
        """Optional ``$type`` and ``#count`` after '[' or '{'."""
        kind = count = None
        if self.pos < len(self.data) and chr(self.data[self.pos]) == "$":
            self.pos += 1
            kind = chr(self.take(1)[0])
            if self.pos >= len(self.data) or chr(self.data[self.pos]) != "#":
                raise UbjsonError(f"typed container without a count at offset {self.pos}")
        if self.pos < len(self.data) and chr(self.data[self.pos]) == "#":
            self.pos += 1
            count = self.length()
        return kind, count

    def array(self, depth: int) -> list:
        kind, count = self.container_header()
        if count is None:
            items = []
            marker = self.marker()
            while marker != "]":
                items.append(self.value(marker, depth))
                marker = self.marker()
            return items
        if kind in _NUMBERS:  # the long per-node arrays: one read, no loop over bytes
            dtype = _NUMBERS[kind]
            raw = self.take(count * dtype.itemsize)
            return np.frombuffer(raw, dtype=dtype).tolist()
        if count > len(self.data) - self.pos and kind not in ("T", "F", "Z"):
            raise UbjsonError(f"array of {count} items at offset {self.pos} is longer than "
                              "the bytes left")
        return [self.value(kind or self.marker(), depth) for _ in range(count)]

    def object(self, depth: int) -> dict:
        kind, count = self.container_header()
        out: dict[str, object] = {}
        if count is None:
            while True:
                if self.pos < len(self.data) and chr(self.data[self.pos]) == "}":
                    self.pos += 1
                    return out
                key = self.text()
                out[key] = self.value(self.marker(), depth)
        if count > len(self.data) - self.pos:
            raise UbjsonError(f"object of {count} entries at offset {self.pos} is longer "
                              "than the bytes left")
        for _ in range(count):
            key = self.text()
            out[key] = self.value(kind or self.marker(), depth)
        return out
