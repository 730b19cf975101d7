"""What ``sluice infer`` sends: the ``--input NAME=VALUE`` flags read and checked against the
model's metadata, or random tensors of the right shape when no ``--input`` is given at all.

Every mistake is an :class:`InputError` whose one-line message names the flag, the file or the
input and says what would work; the command prints it and exits 2 (a usage error), never a
traceback. Nothing here talks to the server: the caller passes the metadata it fetched.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np


class InputError(ValueError):
    """A ``--input`` the command cannot use; the message is the whole explanation."""


def parse_inputs(flags: Sequence[str]) -> dict[str, np.ndarray]:
    """``NAME=file.npy`` (any case of ``.npy``) or ``NAME=<JSON array>`` flags, by name."""
    given: dict[str, np.ndarray] = {}
    for flag in flags:
        name, sep, value = flag.partition("=")
        if not sep or not name or not value:
            raise InputError(f"--input {flag!r}: expected NAME=file.npy or NAME=<JSON array>, "
                             "e.g. --input 'INPUT0=[[1,2,3]]'")
        if name in given:
            raise InputError(f"--input {name!r} is given twice")
        given[name] = _load_value(name, value)
    return given


def _load_value(name: str, text: str) -> np.ndarray:
    if text.lower().endswith(".npy"):
        path = Path(text)
        try:
            return np.load(path, allow_pickle=False)
        except FileNotFoundError:
            raise InputError(f"--input {name}: no file {text!r}") from None
        except (OSError, ValueError) as exc:
            raise InputError(f"--input {name}: {text!r} is not a readable .npy file "
                             f"({exc})") from None
    try:
        return np.asarray(json.loads(text))
    except json.JSONDecodeError as exc:
        raise InputError(f"--input {name}: neither a .npy file nor a JSON array "
                         f"({exc.msg} at column {exc.colno})") from None


def request_inputs(
    model: str, metadata: Mapping[str, Any], given: Mapping[str, np.ndarray], batch: int,
    rng: np.random.Generator,
) -> dict[str, np.ndarray]:
    """The tensors to send: exactly the ``given`` ones, cast to the model's datatypes, or (when
    none is given) random ones with ``batch`` rows. Raises InputError naming an unknown or a
    missing input together with the model's inputs."""
    specs = {tensor["name"]: tensor for tensor in metadata["inputs"]}
    names = ", ".join(specs)
    unknown = [name for name in given if name not in specs]
    if unknown:
        raise InputError(f"model '{model}' has no input {', '.join(map(repr, unknown))}; "
                         f"its inputs: {names}")
    missing = [name for name in specs if given and name not in given]
    if missing:
        raise InputError(f"model '{model}' also needs {', '.join(map(repr, missing))}; give "
                         f"every input ({names}), or none for random ones")
    if given:
        return {name: _cast(name, value, specs[name]["datatype"], rng)
                for name, value in given.items()}
    return {
        name: random_tensor(spec["datatype"], [
            batch if i == 0 and d == -1 else (1 if d == -1 else d)
            for i, d in enumerate(spec["shape"])
        ], rng)
        for name, spec in specs.items()
    }


def random_tensor(datatype: str, shape: list[int], rng: np.random.Generator) -> np.ndarray:
    """Random values of a KServe ``datatype``: normal floats, 0/1 booleans, small integers."""
    if datatype == "BYTES":
        return np.array([b"sluice"] * int(np.prod(shape)), dtype=object).reshape(shape)
    dtype = np.dtype({"BOOL": "bool", "FP16": "<f2", "FP32": "<f4", "FP64": "<f8"}.get(
        datatype, datatype.lower()))
    if dtype.kind == "f":
        return rng.standard_normal(shape).astype(dtype)
    if dtype.kind == "b":
        return rng.integers(0, 2, shape).astype(bool)
    return rng.integers(0, 10, shape).astype(dtype)


def _cast(name: str, value: np.ndarray, datatype: str, rng: np.random.Generator) -> np.ndarray:
    try:
        return value.astype(random_tensor(datatype, [1], rng).dtype, copy=False)
    except (TypeError, ValueError):
        raise InputError(f"--input {name}: its values are not {datatype} "
                         f"(got {value.dtype} {list(value.shape)})") from None
