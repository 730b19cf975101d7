"""Model name + version field -> the version that serves a request, and the arm it counts for.

A request names a version ("3"), an alias ("candidate") or nothing; with nothing, the model's
deployment decides: weighted routes (canary, A/B) or, without routes, the newest ready version.
:meth:`Router.resolve` is synchronous and reads a routing table prebuilt per model, so the
servicer can resolve and queue on the chosen version without an await in between: a request
finishes on the version that admitted it even if a switch lands meanwhile, and since every
version has its own batcher no batch ever mixes versions.

**Sticky assignment** (request parameter ``sticky_key`` or metadata ``x-sluice-sticky-key``)
uses weighted rendezvous hashing (:mod:`sluice.server.rollout.routing_table`): the same key gets the
same arm while weights are unchanged, and changing weights moves only the keys that must move.

Changes (:meth:`Router.change` and the verbs built on it: set_routes, set_alias, switch,
rollback) compute the new state here and commit it through the router's
:class:`~sluice.server.rollout.ledger.DeploymentLedger`, one at a time per model: validate ->
persist atomically -> swap the table -> audit, the replaced state pushed on a persisted history
stack so :meth:`Router.rollback` returns to it in one call. Under ``--workers N`` a change computed
from a state another process replaced meanwhile is refused (DeploymentConflict; the new state is
adopted, so a retry works). The ledger also reconciles: it applies persisted or declared state
when a model loads (:meth:`Router.model_loaded`) and adopts other processes' changes
(:meth:`Router.adopt`, driven by :mod:`sluice.server.rollout.state_sync`).

**Arm statistics** are kept per (arm, version that answered): when an arm moves to another
version (a switch, a promotion), the old version's counts stay under its own label and the new
version's start at zero, even for requests admitted before the move that finish after it. A
version that takes all of a model's traffic stops being a shadow: the verbs that send it there
(switch, set_routes, set_alias, a canary's end) drop its shadow target, and the mirror forgets
the comparisons of a shadow so retired, in whichever process sees the new state.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from sluice.server.errors import InvalidInput, ModelNotFound
from sluice.server.rollout.arm_stats import ArmStats, EpochStats
from sluice.server.rollout.deploy_store import DeploymentStore, StoredDeployment
from sluice.server.rollout.deployment import DeploymentState, Route, ShadowTarget, check_alias
from sluice.server.rollout.ledger import DeclaredReader, DeploymentLedger, FleetStore
from sluice.server.rollout.routing_table import rendezvous_pick
from sluice.server.serving import triton_texts
from sluice.server.serving.model import ModelVersion
from sluice.server.serving.repository import ModelRepository

__all__ = [
    "ARM_PARAM", "STICKY_METADATA", "STICKY_PARAM", "ArmStats", "DeploymentState", "EpochStats",
    "Route", "Router", "ShadowTarget", "rendezvous_pick",
]

#: Response parameter: the arm that answered (only on models with a deployment, or when the
#: request named an alias).
ARM_PARAM = "sluice_arm"
#: Request parameter (string) carrying the sticky key.
STICKY_PARAM = "sticky_key"
#: gRPC metadata key carrying the sticky key (the request parameter wins when both are sent).
STICKY_METADATA = "x-sluice-sticky-key"


class Router:
    """Resolves requests to versions and arms, counts arms, and turns the change verbs into new
    deployment states (committed and kept by its :class:`DeploymentLedger`)."""

    def __init__(
        self,
        repository: ModelRepository,
        store: DeploymentStore | FleetStore | None,
        shadow: Any = None,  # ShadowMirror | None (sluice.server.rollout.shadow); see the
        # servicer's hook
        rng: random.Random | None = None,
        *,
        declared: DeclaredReader | None = None,
        window_s: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """``store`` None keeps state in memory only; ``declared`` reads deployment.yaml."""
        self._repo = repository
        self._ledger = DeploymentLedger(repository, store, declared,
                                        on_swap=self._served_changed)
        self._tables = self._ledger.tables  # one dict for the ledger's life
        self.shadow = shadow
        self._uniform = (rng or random.Random()).random
        self._window_s = window_s
        self._clock = clock
        #: model -> (arm, version that answered) -> its statistics.
        self._stats: dict[str, dict[tuple[str, int | None], ArmStats]] = {}

    @property
    def revision(self) -> int:
        """Bumped whenever a model's recorded state is replaced (a change, or adopting another
        process's)."""
        return self._ledger.revision

    async def open(self) -> None:
        """Read the persisted state (before models load). Raises DeploymentStateError when it
        is unusable and so is its last good copy."""
        await self._ledger.open()

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
            # Triton's wording first (issue 16 item 6): INVALID_ARGUMENT, as in Triton
            raise triton_texts.bad_version(version, f"model '{name}' has no alias '{version}'")
        return number

    def record(self, name: str, arm: str, seconds: float, ok: bool, *,
               version: int | None = None) -> None:
        """Count one request of ``arm`` answered by ``version`` (each version of an arm has
        its own counts)."""
        arms = self._stats.get(name)
        if arms is None:
            arms = self._stats[name] = {}
        stats = arms.get((arm, version))
        if stats is None:
            stats = arms[(arm, version)] = ArmStats(version, window_s=self._window_s,
                                                     clock=self._clock)
        stats.record(seconds, ok)

    # -- reading state ------------------------------------------------------------------------

    def state(self, name: str) -> DeploymentState:
        return self._ledger.state(name)

    def history(self, name: str) -> tuple[DeploymentState, ...]:
        """States :meth:`rollback` would return to, newest first."""
        return self._ledger.history(name)

    def models(self) -> list[str]:
        """Models with recorded deployment state (persisted or changed since start)."""
        return self._ledger.models()

    def check_model(self, name: str) -> None:
        """Raise ModelNotFound (or ModelNotReady) unless ``name`` is being served."""
        self._repo.get(name)

    def arm_stats(self, name: str) -> dict[tuple[str, int | None], ArmStats]:
        """(arm, version that answered) -> statistics, for every pair that had a request."""
        return dict(self._stats.get(name, {}))

    def all_arm_stats(self) -> Iterator[tuple[str, str, ArmStats]]:
        """(model, arm, stats) for every arm and version that served a request (for /metrics;
        ``stats.version`` is the version)."""
        for name, arms in list(self._stats.items()):
            for (arm, _), stats in list(arms.items()):
                yield name, arm, stats

    # -- changes ------------------------------------------------------------------------------

    async def change(self, name: str, action: str, new: DeploymentState, *, caller: str,
                     reason: str = "", tried: str = "") -> DeploymentState:
        """Validate, persist, audit and apply ``new`` as ``name``'s state; returns it.

        InvalidInput / ModelNotFound name what is wrong (``tried``, e.g. "start a shadow of
        version 2", says what the change does; default: from ``action``), and nothing changes.
        The replaced state goes on the rollback history."""
        async with self._ledger.lock(name):
            return await self._ledger.commit(name, action, new, caller=caller, reason=reason,
                                             tried=tried)

    async def rollback(self, name: str, *, caller: str, reason: str = "") -> DeploymentState:
        """Go back to the state before the last change (or rollback); returns it."""
        async with self._ledger.lock(name):
            history = self.history(name)
            if not history:
                raise InvalidInput(
                    f"model '{name}' has no earlier deployment state to roll back to"
                )
            return await self._ledger.commit(name, "rollback", history[0], caller=caller,
                                             reason=reason, push=False)

    async def set_routes(self, name: str, weights: Mapping[str | int, float], *, caller: str,
                         reason: str = "") -> DeploymentState:
        """Route by ``weights``: keys are aliases (the arm is the alias) or versions (the arm is
        "v<N>"); an empty mapping restores newest-version routing."""
        async with self._ledger.lock(name):
            state = self.state(name)
            routes = []
            for target, weight in weights.items():
                number, arm = self._target(name, state, target)
                routes.append(Route(arm, number, weight))
            new = DeploymentState(state.aliases, tuple(routes), state.shadows, state.canary)
            new = new.without_served_shadow()
            tried = ("route " + " ".join(f"{r.arm}={r.weight:g}" for r in routes) if routes
                     else "route to the newest version")
            return await self._ledger.commit(name, "set_routes", new, caller=caller,
                                             reason=reason, tried=tried)

    async def set_alias(self, name: str, alias: str, version: int | None, *, caller: str,
                        reason: str = "") -> DeploymentState:
        """Point ``alias`` at ``version`` (None removes it); routes labelled with the alias
        follow it to the new version."""
        try:
            check_alias(alias)
        except ValueError as exc:
            raise InvalidInput(str(exc)) from None
        async with self._ledger.lock(name):
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
            new = new.without_served_shadow()
            tried = (f"remove alias '{alias}'" if version is None
                     else f"point alias '{alias}' at version {version}")
            return await self._ledger.commit(name, "set_alias", new, caller=caller,
                                             reason=reason, tried=tried)

    async def switch(self, name: str, target: str | int, *, caller: str,
                     reason: str = "") -> DeploymentState:
        """Blue-green: all unpinned traffic to ``target`` (a version or alias) at once, with
        alias ``stable`` pointing at it. :meth:`rollback` undoes it in one call."""
        async with self._ledger.lock(name):
            state = self.state(name)
            number, arm = self._target(name, state, target)
            state = state.with_alias("stable", number)
            new = DeploymentState(
                state.aliases, (Route("stable", number, 1.0),), state.shadows, state.canary
            ).without_served_shadow()
            named = "" if arm == f"v{number}" else f" (alias '{arm}')"
            return await self._ledger.commit(
                name, "switch", new, caller=caller, reason=reason,
                tried=f"switch all traffic to version {number}{named}")

    # -- state from elsewhere (reconciled by the ledger) --------------------------------------

    async def model_loaded(self, name: str) -> None:
        """Apply ``name``'s persisted or declared deployment after the repository (re)loaded it;
        see :meth:`DeploymentLedger.model_loaded` for the precedence and what failure leaves.
        Arm statistics of versions no longer loaded are dropped."""
        arms = self._stats.get(name)
        if arms:
            for key in [k for k in arms if k[1] is not None
                        and not self._repo.ready(name, str(k[1]))]:
                del arms[key]
        await self._ledger.model_loaded(name)

    def adopt(self, name: str, entry: StoredDeployment | None) -> None:
        """Take ``entry``, persisted and audited by another process, as ``name``'s; see
        :meth:`DeploymentLedger.adopt`. Synchronous."""
        self._ledger.adopt(name, entry)

    # -- internals ----------------------------------------------------------------------------

    def _served_changed(self, name: str, old: DeploymentState, new: DeploymentState) -> None:
        """The ledger's swap hook: a shadow that ``new`` ended by sending all traffic to its
        version has no comparisons left to make; forget the ones it made."""
        served = new.sole_version()
        if self.shadow is None or served is None:
            return
        if any(s.version == served for s in old.shadows) and not any(
            s.version == served for s in new.shadows
        ):
            self.shadow.reset(name, served)

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
