"""``<model dir>/deployment.yaml``: a model's deployment, declared beside its config.pbtxt.

::

    aliases:          # alias -> version
      stable: 1
      candidate: 2
    routes:           # arm -> relative weight; an arm is an alias above or a version (3 or v3)
      stable: 90
      candidate: 10
    shadows:          # version or alias -> fraction of live requests mirrored, in (0, 1]
      v3: 0.25
    canary: {...}     # passed through untouched to the canary controller (server.rollout.canary)

Every key is optional; an unknown key is an error naming it and the file. Versions are checked
against what is loaded when the state is applied (``Router.model_loaded``), not here.

Precedence (see ``Router.model_loaded``): the state persisted in the state directory wins over
this file, unless the file changed since that state was persisted (its sha256 is stored with the
state); then the file is applied again as an audited change. Editing the yaml is therefore how to
make it authoritative again after admin changes.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from server.errors import ModelLoadError
from server.rollout.deployment import DeploymentState, Route, ShadowTarget, check_alias

FILENAME = "deployment.yaml"
_KEYS = ("aliases", "routes", "shadows", "canary")


def read_deployment(model_dir: Path) -> tuple[DeploymentState, str] | None:
    """(declared state, sha256 hex of the file's bytes), or None when there is no file.

    Blocking. Raises ModelLoadError naming the file and the offending key or value."""
    path = model_dir / FILENAME
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise ModelLoadError(f"{path}: cannot be read ({exc.strerror})") from None
    return parse_deployment(raw, path), hashlib.sha256(raw).hexdigest()


def parse_deployment(raw: bytes | str, path: Path | str = FILENAME) -> DeploymentState:
    """Parse deployment.yaml text; ModelLoadError names ``path`` and what is wrong."""
    try:
        data = yaml.safe_load(raw)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1} column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise ModelLoadError(f"{path}: not valid YAML{where}: {problem}") from None
    try:
        return _state(data)
    except ValueError as exc:
        raise ModelLoadError(f"{path}: {exc}") from None


def _state(data: Any) -> DeploymentState:
    if data is None:
        return DeploymentState()
    if not isinstance(data, Mapping):
        raise ValueError(f"must be a mapping with keys {', '.join(_KEYS)}")
    for key in data:
        if key not in _KEYS:
            raise ValueError(f"unknown key {key!r} (expected {', '.join(_KEYS)})")
    aliases: dict[str, int] = {}
    for name, version in _mapping(data.get("aliases"), "aliases").items():
        aliases[check_alias(str(name), f"aliases.{name}")] = _version(version, f"aliases.{name}")
    routes = []
    for target, weight in _mapping(data.get("routes"), "routes").items():
        where = f"routes.{target}"
        version, arm = _target(target, aliases, where)
        if isinstance(weight, bool) or not isinstance(weight, int | float) or not weight > 0:
            raise ValueError(f"{where}: weight must be a number > 0, not {weight!r}")
        routes.append(Route(arm, version, float(weight)))
    shadows = []
    for target, sample in _mapping(data.get("shadows"), "shadows").items():
        where = f"shadows.{target}"
        version, _ = _target(target, aliases, where)
        if isinstance(sample, bool) or not isinstance(sample, int | float) or not 0 < sample <= 1:
            raise ValueError(f"{where}: sample must be a fraction in (0, 1], not {sample!r}")
        shadows.append(ShadowTarget(version, float(sample)))
    canary = data.get("canary")
    if canary is not None and not isinstance(canary, Mapping):
        raise ValueError("canary: must be a mapping")
    state = DeploymentState(tuple(sorted(aliases.items())), tuple(routes), tuple(shadows))
    if canary is None:
        return state
    # from_json gives the canary block a private JSON-clean copy, refusing what JSON cannot hold
    # (YAML dates, sets), so the store can always write it.
    return DeploymentState.from_json({**state.to_json(), "canary": canary})


def _mapping(value: Any, where: str) -> Mapping[Any, Any]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise ValueError(f"{where}: must be a mapping")
    return value


def _version(value: Any, where: str) -> int:
    if isinstance(value, str) and value.isdigit():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{where}: must be a version number >= 1, not {value!r}")
    return value


def _target(target: Any, aliases: Mapping[str, int], where: str) -> tuple[int, str]:
    """(version, arm label) for a version number ("3" or "v3") or an alias in ``aliases``."""
    if isinstance(target, str) and target[:1] == "v" and target[1:].isdigit():
        target = target[1:]
    if isinstance(target, int) or (isinstance(target, str) and target.isdigit()):
        version = _version(target, where)
        return version, f"v{version}"
    if isinstance(target, str) and target in aliases:
        return aliases[target], target
    raise ValueError(f"{where}: {target!r} is neither a version number nor an alias declared "
                     "under 'aliases'")
