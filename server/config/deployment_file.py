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
    canary: {...}     # passed through untouched to the canary controller
                      # (sluice.server.rollout.canary)
    quality: {...}    # live quality: read by sluice.server.config.quality_file, not here
    drift: {sample: 0.1, window_rows: 5000, window_s: 3600}   # or false; read by
                      # sluice.server.config.drift, not part of the deployment
    logging:          # the prediction log (sluice.server.config.prediction_logging); not part
      sample: 0.25    # of the deployment state: read_logging reads it, the router never sees it

Every key is optional; an unknown key is an error naming it and the file. Versions are checked
against what is loaded when the state is applied (``Router.model_loaded``), not here.

The reader resolves what is particular to the YAML form (aliases as route targets, ``v3``) and
returns the declaration in the shape of ``DeploymentState.to_json`` (plain, JSON-clean data), which
``DeploymentState.from_json`` in ``sluice.server.rollout.deployment`` turns into the state the
router serves: configuration sits below the deployment machinery and does not import it. The rule
for alias names lives here too (``check_alias``), since it is part of what a declaration may say.

Precedence (see ``Router.model_loaded``): the state persisted in the state directory wins over
this file, unless the file changed since that state was persisted (its sha256 is stored with the
state); then the file is applied again as an audited change. Editing the yaml is therefore how to
make it authoritative again after admin changes.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar

import yaml

from sluice.server.config.prediction_logging import LoggingConfig, parse_logging
from sluice.server.errors import ModelLoadError

FILENAME = "deployment.yaml"
T = TypeVar("T")
_KEYS = ("aliases", "routes", "shadows", "canary")
#: Keys of the monitors, beside the deployment and read by their own parsers (prediction log:
#: ``config.prediction_logging``; live quality: ``config.quality_file``; drift:
#: ``config.drift``); accepted here, not part of the deployment state.
_MONITOR_KEYS = ("logging", "quality", "drift")
#: Alias names: a letter first (so an alias never reads as a version number), then [A-Za-z0-9_.-].
_ALIAS = re.compile(r"^[A-Za-z][A-Za-z0-9_.\-]{0,63}$")
#: Arm labels of routes by version ("v3"); never an alias.
_VERSION_ARM = re.compile(r"^v[0-9]+$")
#: A declaration: DeploymentState.to_json's shape.
Declared = dict[str, Any]


def check_alias(name: str, where: str = "alias") -> str:
    """Return ``name`` if it is a valid alias name, else raise ValueError naming ``where``."""
    if not isinstance(name, str) or not _ALIAS.match(name):
        raise ValueError(
            f"{where}: {name!r} is not a valid alias (a letter, then letters, digits, '_', '-' "
            "or '.', at most 64 characters)"
        )
    if _VERSION_ARM.match(name):
        raise ValueError(f"{where}: {name!r} is reserved: 'v<N>' labels the arm of version N")
    return name


def read_deployment(model_dir: Path) -> tuple[Declared, str] | None:
    """(declaration, sha256 hex of the file's bytes), or None when there is no file, or when it
    declares nothing but the monitors' keys (``logging``, ``quality``, ``drift``: not deployment
    state, so a file that only configures them must not create or override any).

    Blocking. Raises ModelLoadError naming the file and the offending key or value."""
    path = model_dir / FILENAME
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise ModelLoadError(f"{path}: cannot be read ({exc.strerror})") from None
    declared = parse_deployment(raw, path)
    data = yaml.safe_load(raw)
    if isinstance(data, Mapping) and data and set(data) <= set(_MONITOR_KEYS):
        return None
    return declared, hashlib.sha256(raw).hexdigest()


def parse_deployment(raw: bytes | str, path: Path | str = FILENAME) -> Declared:
    """Parse deployment.yaml text into a declaration (``DeploymentState.to_json``'s shape);
    ModelLoadError names ``path`` and what is wrong."""
    try:
        data = yaml.safe_load(raw)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1} column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise ModelLoadError(f"{path}: not valid YAML{where}: {problem}") from None
    try:
        return _declared(data)
    except ValueError as exc:
        raise ModelLoadError(f"{path}: {exc}") from None


def _declared(data: Any) -> Declared:
    if data is None:
        return {}
    if not isinstance(data, Mapping):
        raise ValueError(f"must be a mapping with keys {', '.join(_KEYS)}")
    for key in data:
        if key not in _KEYS + _MONITOR_KEYS:
            raise ValueError(f"unknown key {key!r} (expected {', '.join(_KEYS + _MONITOR_KEYS)})")
    parse_logging(data.get("logging"))  # checked with the rest; read_logging returns it
    aliases: dict[str, int] = {}
    for name, version in _mapping(data.get("aliases"), "aliases").items():
        aliases[check_alias(str(name), f"aliases.{name}")] = _version(version, f"aliases.{name}")
    routes = []
    for target, weight in _mapping(data.get("routes"), "routes").items():
        where = f"routes.{target}"
        version, arm = _target(target, aliases, where)
        if isinstance(weight, bool) or not isinstance(weight, int | float) or not weight > 0:
            raise ValueError(f"{where}: weight must be a number > 0, not {weight!r}")
        routes.append({"arm": arm, "version": version, "weight": float(weight)})
    shadows = []
    for target, sample in _mapping(data.get("shadows"), "shadows").items():
        where = f"shadows.{target}"
        version, _ = _target(target, aliases, where)
        if isinstance(sample, bool) or not isinstance(sample, int | float) or not 0 < sample <= 1:
            raise ValueError(f"{where}: sample must be a fraction in (0, 1], not {sample!r}")
        shadows.append({"version": version, "sample": float(sample)})
    declared: Declared = {"aliases": aliases, "routes": routes, "shadows": shadows}
    canary = data.get("canary")
    if canary is None:
        return declared
    if not isinstance(canary, Mapping):
        raise ValueError("canary: must be a mapping")
    # A private JSON-clean copy, refusing what JSON cannot hold (YAML dates, sets), so that the
    # store can always write it.
    try:
        declared["canary"] = json.loads(json.dumps(canary, allow_nan=False))
    except (TypeError, ValueError) as exc:
        raise ValueError(f"canary: not JSON-serializable ({exc})") from None
    return declared


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


def read_monitor_block(model_dir: Path, key: str, parse: Callable[[Any], T]) -> T:
    """``parse`` applied to the ``key`` block of the model's deployment.yaml (to None when
    there is no file or no such block): how each monitor reads its own settings. Blocking.
    Raises ModelLoadError naming ``<model>/deployment.yaml`` (never the full path) and what
    ``parse`` said (a ValueError naming the key)."""
    where = f"{model_dir.name}/{FILENAME}"
    try:
        raw = (model_dir / FILENAME).read_bytes()
    except FileNotFoundError:
        return parse(None)
    except OSError as exc:
        raise ModelLoadError(f"{where}: cannot be read ({exc.strerror})") from None
    try:
        data = yaml.safe_load(raw)
    except yaml.YAMLError:
        raise ModelLoadError(f"{where}: not valid YAML") from None
    try:
        return parse(data.get(key) if isinstance(data, Mapping) else None)
    except ValueError as exc:
        raise ModelLoadError(f"{where}: {exc}") from None


def read_logging(model_dir: Path) -> LoggingConfig | None:
    """The ``logging`` block of the model's deployment.yaml; None when there is no file or no
    block. Blocking. Raises ModelLoadError naming the file and the offending key or value."""
    return read_monitor_block(
        model_dir, "logging", lambda block: None if block is None else parse_logging(block)
    )
