"""A model's deployment state: aliases, weighted routes and shadow targets, as frozen values.

These are the values the router serves from, the store persists and the audit log records.
``to_json`` / ``from_json`` round-trip exactly; ``from_json`` refuses anything malformed with a
ValueError naming the field (``routes[1].weight: must be > 0``), so a hand-edited or damaged file
never becomes a half-read routing table. ``sluice.server.rollout.router`` re-exports these names.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from sluice.server.config.deployment_file import check_alias


@dataclass(frozen=True, slots=True)
class Route:
    """One arm of a weighted route."""

    #: Label reported in responses and metrics: an alias of ``version`` or "v<version>".
    arm: str
    version: int
    #: Relative share of traffic, > 0 (90/10 routes the same as 0.9/0.1).
    weight: float


@dataclass(frozen=True, slots=True)
class ShadowTarget:
    """Mirror ``sample`` of the model's live requests to ``version`` (never seen by callers)."""

    version: int
    #: Fraction of live requests mirrored, in (0, 1].
    sample: float


@dataclass(frozen=True, slots=True)
class DeploymentState:
    """How one model's traffic is routed. The empty state means Triton's default: a request
    without a version goes to the newest ready version."""

    #: (alias, version) pairs sorted by alias.
    aliases: tuple[tuple[str, int], ...] = ()
    #: Weighted arms; () routes to the newest ready version.
    routes: tuple[Route, ...] = ()
    shadows: tuple[ShadowTarget, ...] = ()
    #: Opaque JSON object owned by ``sluice.server.rollout.canary``; None when no canary is
    #: recorded.
    canary: Mapping[str, Any] | None = None

    def alias(self, name: str) -> int | None:
        """The version alias ``name`` points at, or None."""
        for alias, version in self.aliases:
            if alias == name:
                return version
        return None

    @property
    def empty(self) -> bool:
        """True when nothing differs from Triton's default routing."""
        return not (self.aliases or self.routes or self.shadows or self.canary)

    def sole_version(self) -> int | None:
        """The version every routed request goes to; None without routes or with several."""
        versions = {route.version for route in self.routes}
        return versions.pop() if len(versions) == 1 else None

    def without_served_shadow(self) -> DeploymentState:
        """A copy without the shadow of :meth:`sole_version`: once a version answers every
        request there is no live answer left to compare it with (a promotion ends its shadow)."""
        served = self.sole_version()
        kept = tuple(s for s in self.shadows if s.version != served)
        if len(kept) == len(self.shadows):
            return self
        return DeploymentState(self.aliases, self.routes, kept, self.canary)

    def with_alias(self, name: str, version: int | None) -> DeploymentState:
        """A copy with alias ``name`` pointing at ``version`` (None removes it)."""
        kept = {a: v for a, v in self.aliases if a != name}
        if version is not None:
            kept[name] = version
        return DeploymentState(
            tuple(sorted(kept.items())), self.routes, self.shadows, self.canary
        )

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict (new containers: the caller may keep or change it)."""
        return {
            "aliases": {alias: version for alias, version in self.aliases},
            "routes": [
                {"arm": r.arm, "version": r.version, "weight": r.weight} for r in self.routes
            ],
            "shadows": [{"version": s.version, "sample": s.sample} for s in self.shadows],
            "canary": None if self.canary is None else json.loads(json.dumps(self.canary)),
        }

    @classmethod
    def from_json(cls, data: Any) -> DeploymentState:
        """Parse :meth:`to_json`'s shape; ValueError names the first bad field."""
        if not isinstance(data, Mapping):
            raise ValueError(f"deployment state must be an object, not {type(data).__name__}")
        unknown = set(data) - {"aliases", "routes", "shadows", "canary"}
        if unknown:
            raise ValueError(f"unknown field(s) {sorted(unknown)}")
        aliases_in = data.get("aliases") or {}
        if not isinstance(aliases_in, Mapping):
            raise ValueError("aliases: must be an object of alias -> version")
        aliases = tuple(sorted(
            (check_alias(name, f"aliases.{name}"), _version(v, f"aliases.{name}"))
            for name, v in aliases_in.items()
        ))
        routes = tuple(
            Route(
                arm=_str(_field(item, "arm", f"routes[{i}]"), f"routes[{i}].arm"),
                version=_version(_field(item, "version", f"routes[{i}]"), f"routes[{i}].version"),
                weight=_weight(_field(item, "weight", f"routes[{i}]"), f"routes[{i}].weight"),
            )
            for i, item in enumerate(_list(data.get("routes"), "routes"))
        )
        shadows = tuple(
            ShadowTarget(
                version=_version(_field(item, "version", f"shadows[{i}]"),
                                 f"shadows[{i}].version"),
                sample=_sample(_field(item, "sample", f"shadows[{i}]"), f"shadows[{i}].sample"),
            )
            for i, item in enumerate(_list(data.get("shadows"), "shadows"))
        )
        canary = data.get("canary")
        if canary is not None:
            if not isinstance(canary, Mapping):
                raise ValueError("canary: must be an object or null")
            try:  # a private copy that is certainly JSON (the store must be able to write it)
                canary = json.loads(json.dumps(canary, allow_nan=False))
            except (TypeError, ValueError) as exc:
                raise ValueError(f"canary: not JSON-serializable ({exc})") from None
        return cls(aliases, routes, shadows, canary)


def _list(value: Any, where: str) -> list[Any]:
    if value is None:
        return []
    if not isinstance(value, list | tuple):
        raise ValueError(f"{where}: must be a list")
    return list(value)


def _field(item: Any, key: str, where: str) -> Any:
    if not isinstance(item, Mapping):
        raise ValueError(f"{where}: must be an object")
    unknown = set(item) - {"arm", "version", "weight", "sample"}
    if unknown:
        raise ValueError(f"{where}: unknown field(s) {sorted(unknown)}")
    if key not in item:
        raise ValueError(f"{where}.{key}: missing")
    return item[key]


def _str(value: Any, where: str) -> str:
    if not isinstance(value, str) or not value:
        raise ValueError(f"{where}: must be a non-empty string")
    return value


def _version(value: Any, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{where}: must be a version number >= 1, not {value!r}")
    return value


def _weight(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not (
        math.isfinite(value) and value > 0
    ):
        raise ValueError(f"{where}: must be a number > 0, not {value!r}")
    return float(value)


def _sample(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value <= 1:
        raise ValueError(f"{where}: must be a fraction in (0, 1], not {value!r}")
    return float(value)
