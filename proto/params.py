"""``map<string, InferParameter>`` <-> Python values; shared by the server and the clients."""

from __future__ import annotations

from typing import Any

ParameterValue = bool | int | float | str


def param_value(param: Any) -> ParameterValue | None:
    """The Python value an InferParameter holds (None when unset)."""
    which = param.WhichOneof("parameter_choice")
    return getattr(param, which) if which else None


def set_param(params: Any, key: str, value: ParameterValue) -> None:
    """Set ``params[key]`` from a bool, int (int64, or uint64 above 2**63-1), float or str.

    Raises ValueError for an int out of the uint64/int64 range and TypeError for other types;
    both messages name the parameter.
    """
    target = params[key]
    if isinstance(value, bool):
        target.bool_param = value
    elif isinstance(value, int):
        if not -(2**63) <= value < 2**64:
            raise ValueError(f"parameter '{key}': {value} is out of range")
        if value < 2**63:
            target.int64_param = value
        else:  # only uint64 holds it
            target.uint64_param = value
    elif isinstance(value, float):
        target.double_param = value
    elif isinstance(value, str):
        target.string_param = value
    else:
        raise TypeError(
            f"parameter '{key}': {type(value).__name__} is not bool, int, float or str"
        )
