"""Sluice's overload settings as config.pbtxt ``parameters`` (``latency_budget_ms``, CoDel,
queue bounds, priority budget fractions, ``fallback_model``), read and written back (moved out
of :mod:`sluice.server.config.pbtxt`)."""

from __future__ import annotations

from dataclasses import replace

from sluice.server.config.model import OVERLOAD_PARAMETERS, OverloadPolicy
from sluice.server.errors import ModelLoadError


def overload_policy(params: dict[str, str], where: str) -> OverloadPolicy:
    """Sluice's overload parameters; each error names the parameter."""

    def number(key: str, kind: type = float) -> float | int | None:
        text = params.get(key)
        if text is None:
            return None
        try:
            return kind(text)
        except ValueError:
            raise ModelLoadError(
                f"{where}: parameter '{key}' must be a{'n integer' if kind is int else ' number'}"
                f", got {text!r}"
            ) from None

    policy = OverloadPolicy()
    values: dict[str, object] = {}
    for key in ("latency_budget_ms", "codel_interval_ms"):
        if key in params:
            values[key] = number(key)
    for key in ("max_queue_rows", "max_queue_bytes"):
        if key in params:
            values[key] = number(key, int)
    if "codel_target_ms" in params:
        off = params["codel_target_ms"].strip().lower() in ("off", "none", "")
        values["codel_target_ms"] = None if off else number("codel_target_ms")
    if "priority_budget_fractions" in params:
        try:
            values["priority_budget_fractions"] = tuple(
                float(part) for part in params["priority_budget_fractions"].split(",")
            )
        except ValueError:
            raise ModelLoadError(
                f"{where}: parameter 'priority_budget_fractions' must be comma-separated "
                f"numbers, got {params['priority_budget_fractions']!r}"
            ) from None
    if params.get("fallback_model"):
        values["fallback_model"] = params["fallback_model"].strip()
    return replace(policy, **values)  # type: ignore[arg-type]


def overload_parameters(policy: OverloadPolicy) -> dict[str, str]:
    """The inverse of :func:`overload_policy`: the parameters that differ from the defaults."""
    default = OverloadPolicy()
    out: dict[str, str] = {}
    for key in sorted(OVERLOAD_PARAMETERS):
        value = getattr(policy, key)
        if value == getattr(default, key):
            continue
        if key == "codel_target_ms" and value is None:
            out[key] = "off"
        elif isinstance(value, tuple):
            out[key] = ",".join(repr(v) for v in value)
        else:
            out[key] = repr(value) if isinstance(value, float) else str(value)
    return out
