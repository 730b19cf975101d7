"""Model name + version field -> the version that serves a request, and the arm it counts for.

A request names a version ("3"), an alias ("candidate") or nothing; with nothing, the model's
deployment decides: weighted routes (canary, A/B) or, without routes, the newest ready version.
:meth:`Router.resolve` is synchronous and reads a routing table prebuilt per model, so the
servicer can resolve and queue on the chosen version without an await in between: a request
finishes on the version that admitted it even if a switch lands meanwhile, and since every
version has its own batcher no batch ever mixes versions.

**Sticky assignment** (request parameter ``sticky_key`` or metadata ``x-sluice-sticky-key``)
uses weighted rendezvous hashing (:mod:`server.rollout.routing_table`): the same key gets the same
arm while weights are unchanged, and changing weights moves only the keys that must move.

Changes (:meth:`Router.change` and the helpers built on it) run one at a time per model: validate
(every version named is loaded, weights > 0, samples in (0, 1]) -> persist atomically -> append
the audit record -> swap the table. The state replaced is pushed on a persisted history stack,
so :meth:`Router.rollback` returns to it in one call. Under ``--workers N`` every process has
its own router over one state directory: a change computed from a state another process has
replaced meanwhile is refused (DeploymentConflict; the new state is adopted, so a retry works),
and :mod:`server.rollout.state_sync` makes each router :meth:`Router.adopt` the others' changes.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import random
import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from server.errors import InvalidInput, ModelNotFound, SluiceError
from server.rollout.arm_stats import ArmStats, EpochStats
from server.rollout.deploy_store import (
    HISTORY_LIMIT,
    DeploymentConflict,
    DeploymentStore,
    StoredDeployment,
)
from server.rollout.deployment import DeploymentState, Route, ShadowTarget, check_alias
from server.rollout.routing_table import RoutingTable, rendezvous_pick
from server.serving.model import ModelVersion
from server.serving.repository import ModelRepository

__all__ = [
    "ARM_PARAM", "STICKY_METADATA", "STICKY_PARAM", "ArmStats", "DeploymentState", "EpochStats",
    "Route", "Router", "ShadowTarget", "rendezvous_pick",
]

log = logging.getLogger(__name__)

#: Response parameter: the arm that answered (only on models with a deployment, or when the
#: request named an alias).
ARM_PARAM = "sluice_arm"
#: Request parameter (string) carrying the sticky key.
STICKY_PARAM = "sticky_key"
#: gRPC metadata key carrying the sticky key (the request parameter wins when both are sent).
STICKY_METADATA = "x-sluice-sticky-key"

#: declared(model name) -> (state from deployment.yaml, sha256 of its text), or None when the
#: model has no deployment.yaml. Blocking (reads a file); raises a SluiceError naming the problem.
DeclaredReader = Callable[[str], tuple[DeploymentState, str] | None]

#: Default of Router._apply's ``digest``: keep the recorded deployment.yaml hash.
_KEEP: Any = object()


class Router:
    """Owns every model's deployment state: resolves requests, applies and persists changes."""

    def __init__(
        self,
        repository: ModelRepository,
        store: DeploymentStore | None,
        shadow: Any = None,  # ShadowMirror | None (server.rollout.shadow); see the servicer's hook
        rng: random.Random | None = None,
        *,
        declared: DeclaredReader | None = None,
        window_s: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """``store`` None keeps state in memory only; ``declared`` reads deployment.yaml."""
        self._repo = repository
        self._store = store
        self.shadow = shadow
        self._uniform = (rng or random.Random()).random
        self._declared = declared
        self._window_s = window_s
        self._clock = clock
        self._entries: dict[str, StoredDeployment] = {}
        self._tables: dict[str, RoutingTable] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self._stats: dict[str, dict[str, ArmStats]] = {}
        #: Bumped whenever an entry is replaced (a change, or adopting another process's).
        self.revision = 0

    async def open(self) -> None:
        """Read the persisted state (before models load). Raises DeploymentStateError when it
        is unusable and so is its last good copy."""
        if self._store is not None:
            self._entries = await asyncio.to_thread(self._store.load_all)

    # -- the request path (synchronous) -------------------------------------------------------

    def route(
        self, name: str, version: str, sticky_key: str | None = None,
        key_source: Callable[[], str | None] | None = None,
    ) -> tuple[ModelVersion, str | None, tuple[ShadowTarget, ...]]:
        """(served version, arm or None, shadow targets). The arm is None on the plain path (no
        deployment and no alias named): nothing to label or count. ``key_source`` supplies the
        sticky key lazily (read only when weights decide and ``sticky_key`` is None)."""
        table = self._tables.get(name)
        if version:
            if version[0].isdigit():
                served = self._repo.get(name, version)
                if table is None:
                    return served, None, ()
                return served, f"v{served.version}", table.shadows
            served = self._repo.get(name, self.version_of(name, version))
            return served, version, table.shadows  # type: ignore[union-attr]  # alias: a table
        if table is None:
            return self._repo.get(name), None, ()
        if not table.arms:
            served = self._repo.get(name)
            return served, f"v{served.version}", table.shadows
        if sticky_key is None and key_source is not None and len(table.arms) > 1:
            sticky_key = key_source()
        i = table.pick(sticky_key, self._uniform)
        return self._repo.get(name, table.versions[i]), table.arms[i], table.shadows

    def resolve(
        self, name: str, version: str, sticky_key: str | None
    ) -> tuple[ModelVersion, str]:
        """(served version, arm label); see :meth:`route`. Raises ModelNotFound naming the
        model and the version or alias."""
        served, arm, _ = self.route(name, version, sticky_key)
        return served, arm if arm is not None else f"v{served.version}"

    def version_of(self, name: str, version: str) -> str:
        """``version`` with an alias replaced by its version number ("" stays "")."""
        if not version or version[0].isdigit():
            return version
        table = self._tables.get(name)
        number = table.aliases.get(version) if table is not None else None
        if number is None:
            self._repo.get(name)  # an unknown model says so first
            raise ModelNotFound(f"model '{name}' has no alias '{version}'")
        return number

    def record(self, name: str, arm: str, seconds: float, ok: bool, *,
               version: int | None = None) -> None:
        """Count one request of ``arm`` (stats restart when the arm's version changes)."""
        arms = self._stats.get(name)
        if arms is None:
            arms = self._stats[name] = {}
        stats = arms.get(arm)
        if stats is None or (version is not None and stats.version != version):
            stats = arms[arm] = ArmStats(version, window_s=self._window_s, clock=self._clock)
        stats.record(seconds, ok)

    # -- reading state ------------------------------------------------------------------------

    def state(self, name: str) -> DeploymentState:
        entry = self._entries.get(name)
        return entry.state if entry is not None else DeploymentState()

    def history(self, name: str) -> tuple[DeploymentState, ...]:
        """States :meth:`rollback` would return to, newest first."""
        entry = self._entries.get(name)
        return entry.history if entry is not None else ()

    def models(self) -> list[str]:
        """Models with recorded deployment state (persisted or changed since start)."""
        return sorted(self._entries)

    def check_model(self, name: str) -> None:
        """Raise ModelNotFound (or ModelNotReady) unless ``name`` is being served."""
        self._repo.get(name)

    def arm_stats(self, name: str) -> dict[str, ArmStats]:
        return dict(self._stats.get(name, {}))

    def all_arm_stats(self) -> Iterator[tuple[str, str, ArmStats]]:
        """(model, arm, stats) for every arm that served a request (for /metrics)."""
        for name, arms in list(self._stats.items()):
            for arm, stats in list(arms.items()):
                yield name, arm, stats

    # -- changes ------------------------------------------------------------------------------

    async def change(self, name: str, action: str, new: DeploymentState, *, caller: str,
                     reason: str = "") -> DeploymentState:
        """Validate, persist, audit and apply ``new`` as ``name``'s state; returns it.

        InvalidInput / ModelNotFound name what is wrong, and nothing changes. The replaced
        state goes on the rollback history."""
        async with self._lock(name):
            return await self._apply(name, action, new, caller=caller, reason=reason)

    async def rollback(self, name: str, *, caller: str, reason: str = "") -> DeploymentState:
        """Go back to the state before the last change (or rollback); returns it."""
        async with self._lock(name):
            history = self.history(name)
            if not history:
                raise InvalidInput(
                    f"model '{name}' has no earlier deployment state to roll back to"
                )
            return await self._apply(name, "rollback", history[0], caller=caller, reason=reason,
                                     push=False)

    async def set_routes(self, name: str, weights: Mapping[str | int, float], *, caller: str,
                         reason: str = "") -> DeploymentState:
        """Route by ``weights``: keys are aliases (the arm is the alias) or versions (the arm is
        "v<N>"); an empty mapping restores newest-version routing."""
        async with self._lock(name):
            state = self.state(name)
            routes = []
            for target, weight in weights.items():
                number, arm = self._target(name, state, target)
                routes.append(Route(arm, number, weight))
            new = DeploymentState(state.aliases, tuple(routes), state.shadows, state.canary)
            return await self._apply(name, "set_routes", new, caller=caller, reason=reason)

    async def set_alias(self, name: str, alias: str, version: int | None, *, caller: str,
                        reason: str = "") -> DeploymentState:
        """Point ``alias`` at ``version`` (None removes it); routes labelled with the alias
        follow it to the new version."""
        try:
            check_alias(alias)
        except ValueError as exc:
            raise InvalidInput(str(exc)) from None
        async with self._lock(name):
            state = self.state(name).with_alias(alias, version)
            if version is None and any(r.arm == alias for r in state.routes):
                raise InvalidInput(
                    f"model '{name}': alias '{alias}' is still used by a route; change the "
                    "routes first"
                )
            routes = tuple(
                Route(r.arm, version, r.weight) if r.arm == alias and version is not None else r
                for r in state.routes
            )
            new = DeploymentState(state.aliases, routes, state.shadows, state.canary)
            return await self._apply(name, "set_alias", new, caller=caller, reason=reason)

    async def switch(self, name: str, target: str | int, *, caller: str,
                     reason: str = "") -> DeploymentState:
        """Blue-green: all unpinned traffic to ``target`` (a version or alias) at once, with
        alias ``stable`` pointing at it. :meth:`rollback` undoes it in one call."""
        async with self._lock(name):
            state = self.state(name)
            number, _ = self._target(name, state, target)
            state = state.with_alias("stable", number)
            new = DeploymentState(
                state.aliases, (Route("stable", number, 1.0),), state.shadows, state.canary
            )
            return await self._apply(name, "switch", new, caller=caller, reason=reason)

    async def model_loaded(self, name: str) -> None:
        """Apply ``name``'s deployment after the repository (re)loaded it.

        Precedence: the persisted state wins, unless the model's deployment.yaml changed since
        that state was persisted (its sha256 is kept with the state; a removed file counts as a
        change); then the yaml is applied as a change (action ``apply_deployment_yaml``, caller
        ``deployment.yaml``), audited and undoable by rollback. Raises a SluiceError naming the
        problem when the yaml is invalid or a state names versions that are not loaded; the
        model then keeps serving its persisted state if that can be served, else its newest
        version, and nothing persisted changes.
        """
        async with self._lock(name):
            entry = self._entries.get(name)
            try:
                declared = None
                if self._declared is not None:
                    declared = await asyncio.to_thread(self._declared, name)
                digest = declared[1] if declared is not None else None
                if entry is not None and entry.yaml_sha256 == digest:
                    self._validate(name, entry.state)
                    self._swap(name, entry.state)
                elif declared is not None or entry is not None:
                    new = declared[0] if declared is not None else DeploymentState()
                    await self._apply(name, "apply_deployment_yaml", new,
                                      caller="deployment.yaml", reason="deployment.yaml changed",
                                      digest=digest)
            except DeploymentConflict:
                pass  # another worker applied it first, and _apply adopted its state
            except SluiceError:
                self._fall_back(name, entry)
                raise

    def _fall_back(self, name: str, entry: StoredDeployment | None) -> None:
        """Serve ``entry``'s state if it can be served, else Triton's default routing."""
        if entry is not None:
            try:
                self._validate(name, entry.state)
            except SluiceError:
                pass
            else:
                self._swap(name, entry.state)
                return
        self._tables.pop(name, None)

    def adopt(self, name: str, entry: StoredDeployment | None) -> None:
        """Take ``entry`` (None: no state), persisted and audited by another process, as
        ``name``'s; serve its state if it differs and can be served here, else log why and keep
        serving what was served. Synchronous, so it cannot interleave with a change's swap."""
        old = self._entries.get(name)
        if old == entry:
            return
        self.revision += 1
        if entry is None:
            self._entries.pop(name, None)
        else:
            self._entries[name] = entry
        state = entry.state if entry is not None else DeploymentState()
        if (old is not None and old.state == state) or not self._repo.ready(name):
            return  # a model not served here gets its state from model_loaded
        try:
            self._validate(name, state)
        except SluiceError as exc:
            log.error("model '%s': deployment changed by another process not applied here: %s",
                      name, exc.message)
            return
        self._swap(name, state)

    # -- internals ----------------------------------------------------------------------------

    def _lock(self, name: str) -> asyncio.Lock:
        lock = self._locks.get(name)
        if lock is None:
            lock = self._locks[name] = asyncio.Lock()
        return lock

    def _target(self, name: str, state: DeploymentState, target: str | int) -> tuple[int, str]:
        """(version, arm label) for a version number or an alias of ``state``."""
        if isinstance(target, str) and target[:1] == "v" and target[1:].isdigit():
            target = target[1:]  # an arm label "v<N>" names version N
        if isinstance(target, int) or (isinstance(target, str) and target.isdigit()):
            return int(target), f"v{int(target)}"
        number = state.alias(target)
        if number is None:
            raise ModelNotFound(f"model '{name}' has no alias '{target}'")
        return number, target

    def _validate(self, name: str, state: DeploymentState) -> None:
        self._repo.get(name)  # ModelNotFound / ModelNotReady when the model is not serving

        def loaded(version: int, what: str) -> None:
            if not self._repo.ready(name, str(version)):
                raise ModelNotFound(f"model '{name}': {what} names version {version}, which is "
                                    "not loaded")

        for alias, version in state.aliases:
            try:
                check_alias(alias, f"model '{name}': alias")
            except ValueError as exc:
                raise InvalidInput(str(exc)) from None
            loaded(version, f"alias '{alias}'")
        seen_versions: set[int] = set()
        seen_arms: set[str] = set()
        for route in state.routes:
            loaded(route.version, f"route '{route.arm}'")
            if not (math.isfinite(route.weight) and route.weight > 0):
                raise InvalidInput(f"model '{name}': route '{route.arm}' weight must be > 0, "
                                   f"not {route.weight}")
            if route.arm != f"v{route.version}" and state.alias(route.arm) != route.version:
                raise InvalidInput(
                    f"model '{name}': route arm '{route.arm}' must be 'v{route.version}' or an "
                    f"alias of version {route.version}"
                )
            if route.version in seen_versions or route.arm in seen_arms:
                raise InvalidInput(f"model '{name}': version {route.version} or arm "
                                   f"'{route.arm}' appears in two routes")
            seen_versions.add(route.version)
            seen_arms.add(route.arm)
        shadowed: set[int] = set()
        for target in state.shadows:
            loaded(target.version, "shadow")
            if not 0 < target.sample <= 1:
                raise InvalidInput(f"model '{name}': shadow of version {target.version}: sample "
                                   f"must be in (0, 1], not {target.sample}")
            if target.version in shadowed:
                raise InvalidInput(f"model '{name}': version {target.version} is shadowed twice")
            shadowed.add(target.version)
        if state.canary is not None:
            try:  # the store must be able to write it
                json.dumps(state.canary, allow_nan=False)
            except (TypeError, ValueError) as exc:
                raise InvalidInput(f"model '{name}': canary record is not JSON ({exc})") from None

    async def _apply(self, name: str, action: str, new: DeploymentState, *, caller: str,
                     reason: str, push: bool = True, digest: Any = _KEEP) -> DeploymentState:
        """Validate -> persist -> audit -> swap. Call with the model's lock held. ``digest``:
        the deployment.yaml hash to record (by default the one recorded stays)."""
        self._validate(name, new)
        entry = self._entries.get(name) or StoredDeployment(DeploymentState())
        old = entry.state
        history = (old, *entry.history) if push else entry.history[1:]
        history = history[:HISTORY_LIMIT]
        yaml_sha: str | None = entry.yaml_sha256 if digest is _KEEP else digest
        if self._store is not None:
            try:
                await asyncio.to_thread(self._store.save, name, new, history=history,
                                        yaml_sha256=yaml_sha, expect=old)
            except DeploymentConflict as exc:
                self.adopt(name, exc.current)
                raise
        self.revision += 1
        self._entries[name] = StoredDeployment(new, history, yaml_sha)
        try:
            if self._store is not None:
                await asyncio.to_thread(self._store.audit, {
                    "caller": caller or None, "model": name, "action": action,
                    "reason": reason, "before": old.to_json(), "after": new.to_json(),
                })
        finally:
            # Persisted is what a restart would serve, so serve it now even if auditing failed.
            self._swap(name, new)
        log.info("model '%s': deployment %s by %s%s", name, action, caller or "unknown",
                 f" ({reason})" if reason else "")
        return new

    def _swap(self, name: str, state: DeploymentState) -> None:
        if state.empty:
            self._tables.pop(name, None)
        else:
            self._tables[name] = RoutingTable(state)

