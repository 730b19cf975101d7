"""Every model's recorded deployment state, how a new one is committed, and how it is reconciled.

The :class:`~sluice.server.rollout.router.Router` resolves requests and offers the change verbs;
this module keeps what those verbs produce and decides what is served. It owns, per model, the
recorded entry (state, rollback history, sha256 of the deployment.yaml it came from), the lock
that runs changes one at a time, and the routing table served from the state. Promises:

- **Commit** (:meth:`DeploymentLedger.commit`): validate (every version named is loaded,
  weights > 0, samples in (0, 1], the canary record is JSON; a version that is not loaded is
  refused with what the change tried, which alias, route or shadow names it, and the
  repository's advice on loading it) -> persist atomically -> record it
  and swap the table at one instant (whoever reads the state sees what requests are routed by)
  -> append the audit record. Nothing changes when validation or persisting fails; what is
  persisted is served even if auditing fails, since a restart would serve it. The replaced state
  goes on the persisted history (at most ``HISTORY_LIMIT``), which rollback pops.
- **Conflicts**: under ``--workers N`` every process has its own ledger over one state
  directory. A commit computed from a state another process replaced meanwhile is refused
  (DeploymentConflict) and the current state is adopted first, so a retry works.
- **Reconciling** state that did not come from a commit here: on model load
  (:meth:`DeploymentLedger.model_loaded`) the persisted state wins unless the model's
  deployment.yaml changed since it was persisted; another process's change
  (:meth:`DeploymentLedger.adopt`, called by :mod:`sluice.server.rollout.state_sync`) is served when
  it can be served here, else logged and the old state kept serving.
- ``tables`` is one dict for the ledger's life (entries are replaced, the dict never is), so the
  router reads it on the request path without a lock; ``revision`` moves whenever an entry is
  replaced.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import logging
import math
from collections.abc import Callable, Mapping
from typing import Any, Protocol

from sluice.server.errors import InvalidInput, ModelNotFound, SluiceError
from sluice.server.rollout.deploy_store import (
    HISTORY_LIMIT,
    DeploymentConflict,
    DeploymentStore,
    StoredDeployment,
)
from sluice.server.rollout.deployment import DeploymentState, check_alias
from sluice.server.rollout.routing_table import RoutingTable
from sluice.server.serving.repository import ModelRepository

log = logging.getLogger(__name__)

#: declared(model name) -> (state from deployment.yaml, sha256 of its text), or None when the
#: model has no deployment.yaml. Blocking (reads a file); raises a SluiceError naming the problem.
DeclaredReader = Callable[[str], tuple[DeploymentState, str] | None]


class FleetStore(Protocol):
    """A store shared by a fleet of replicas (etcd: sluice.server.fleet): the file store's
    methods as coroutines, which the ledger awaits on the loop."""

    async def load_all(self) -> dict[str, StoredDeployment]: ...

    async def save(self, model: str, state: DeploymentState, *,
                   history: tuple[DeploymentState, ...] = (), yaml_sha256: str | None = None,
                   expect: DeploymentState | None = None) -> None: ...

    async def audit(self, record: Mapping[str, Any]) -> dict[str, Any]: ...


#: Default of DeploymentLedger.commit's ``digest``: keep the recorded deployment.yaml hash.
KEEP_DIGEST: Any = object()

#: on_swap(model name, state served until now, state served from now on).
SwapHook = Callable[[str, DeploymentState, DeploymentState], None]

#: What an action tries, for errors when the caller gives no more precise words.
_TRIED = {
    "set_routes": "change the routes", "set_alias": "change an alias", "switch": "switch",
    "rollback": "roll back to the previous deployment", "shadow_start": "start a shadow",
    "shadow_stop": "stop a shadow", "canary_start": "start a canary",
    "canary_step": "move the canary to its next step",
    "canary_promote": "promote the canary's candidate", "canary_rollback": "roll the canary back",
    "canary_abort": "abort the canary", "apply_deployment_yaml": "apply its deployment.yaml",
}


class _VersionNotLoaded(ModelNotFound):
    """A state names a version that is not loaded (``what``: the alias, route or shadow)."""

    def __init__(self, name: str, version: int, what: str) -> None:
        super().__init__(f"model '{name}': {what} names version {version}, which is not loaded")
        self.version = version
        self.what = what


class DeploymentLedger:
    """Owns every model's recorded deployment state and the routing tables served from it."""

    def __init__(self, repository: ModelRepository, store: DeploymentStore | FleetStore | None,
                 declared: DeclaredReader | None = None, *,
                 on_swap: SwapHook | None = None) -> None:
        """``store`` None keeps state in memory only; ``declared`` reads deployment.yaml;
        ``on_swap`` is called, synchronously and at the instant of the swap, whenever the state
        a model is routed by changes (a commit, an adopted change, a load applying another);
        what it raises is logged, never the caller's failure."""
        self._repo = repository
        self._store = store
        self._declared = declared
        self._on_swap = on_swap
        self._entries: dict[str, StoredDeployment] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        #: model name -> the table its requests are routed by (absent: newest-version routing).
        self.tables: dict[str, RoutingTable] = {}
        #: Bumped whenever an entry is replaced (a commit, or adopting another process's).
        self.revision = 0

    async def open(self) -> None:
        """Read the persisted state (before models load). Raises DeploymentStateError when it
        is unusable and so is its last good copy."""
        if self._store is not None:
            self._entries = await self._io(self._store.load_all)

    # -- reading ------------------------------------------------------------------------------

    def state(self, name: str) -> DeploymentState:
        entry = self._entries.get(name)
        return entry.state if entry is not None else DeploymentState()

    def history(self, name: str) -> tuple[DeploymentState, ...]:
        """States a rollback would return to, newest first."""
        entry = self._entries.get(name)
        return entry.history if entry is not None else ()

    def models(self) -> list[str]:
        """Models with recorded deployment state (persisted or changed since start)."""
        return sorted(self._entries)

    def lock(self, name: str) -> asyncio.Lock:
        """The lock that runs ``name``'s changes one at a time (hold it around :meth:`commit`)."""
        lock = self._locks.get(name)
        if lock is None:
            lock = self._locks[name] = asyncio.Lock()
        return lock

    # -- committing ---------------------------------------------------------------------------

    async def commit(self, name: str, action: str, new: DeploymentState, *, caller: str,
                     reason: str, push: bool = True, digest: Any = KEEP_DIGEST,
                     tried: str = "") -> DeploymentState:
        """Validate -> persist -> record and swap -> audit; returns ``new``. Hold :meth:`lock`.
        ``push`` False pops the history instead (a rollback); ``digest``: the deployment.yaml
        hash to record (by default the one recorded stays). ``tried`` says what the change
        does, for errors (e.g. "switch all traffic to version 2"; default: from ``action``)."""
        await self._check(name, new, tried or _TRIED.get(action, action.replace("_", " ")))
        entry = self._entries.get(name) or StoredDeployment(DeploymentState())
        old = entry.state
        history = (old, *entry.history) if push else entry.history[1:]
        history = history[:HISTORY_LIMIT]
        yaml_sha: str | None = entry.yaml_sha256 if digest is KEEP_DIGEST else digest
        if self._store is not None:
            try:
                await self._io(self._store.save, name, new, history=history,
                               yaml_sha256=yaml_sha, expect=old)
            except DeploymentConflict as exc:
                self.adopt(name, exc.current)
                raise
        self.revision += 1
        # Persisted is what a restart would serve: record it and route by it at one instant (no
        # await between), so that nobody reads a state that requests are not yet routed by (a
        # canary reported rolled back while a slow audit write still sent callers to the
        # candidate), and serve it even if auditing fails.
        self._entries[name] = StoredDeployment(new, history, yaml_sha)
        self._swap(name, new)
        if self._store is not None:
            await self._io(self._store.audit, {
                "caller": caller or None, "model": name, "action": action,
                "reason": reason, "before": old.to_json(), "after": new.to_json(),
            })
        log.info("model '%s': deployment %s by %s%s", name, action, caller or "unknown",
                 f" ({reason})" if reason else "")
        return new

    # -- reconciling --------------------------------------------------------------------------

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
        async with self.lock(name):
            entry = self._entries.get(name)
            try:
                declared = None
                if self._declared is not None:
                    declared = await asyncio.to_thread(self._declared, name)
                digest = declared[1] if declared is not None else None
                if entry is not None and entry.yaml_sha256 == digest:
                    await self._check(name, entry.state, "restore its saved deployment")
                    self._swap(name, entry.state)
                elif declared is not None or entry is not None:
                    new = declared[0] if declared is not None else DeploymentState()
                    await self.commit(name, "apply_deployment_yaml", new,
                                      caller="deployment.yaml", reason="deployment.yaml changed",
                                      digest=digest)
            except DeploymentConflict:
                pass  # another worker applied it first, and commit adopted its state
            except SluiceError:
                self._fall_back(name, entry)
                raise

    def adopt(self, name: str, entry: StoredDeployment | None) -> None:
        """Take ``entry`` (None: no state), persisted and audited by another process, as
        ``name``'s; serve its state if it differs and can be served here, else log why and keep
        serving what was served. Synchronous, so it cannot interleave with a commit's swap."""
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

    @staticmethod
    async def _io(method: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Any:
        """Call a store method: the file store's block (a worker thread runs them); a fleet
        store's (etcd) are coroutines, awaited on the loop."""
        if inspect.iscoroutinefunction(method):
            return await method(*args, **kwargs)
        return await asyncio.to_thread(method, *args, **kwargs)

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
        self.tables.pop(name, None)

    async def _check(self, name: str, state: DeploymentState, tried: str) -> None:
        """:meth:`_validate`, with what was ``tried`` and how to load a missing version in the
        error: the version an alias names is often one the caller never typed (``switch 2``
        points ``stable`` at 2)."""
        try:
            self._validate(name, state)
        except _VersionNotLoaded as exc:
            how = await asyncio.to_thread(self._repo.version_hint, name, exc.version)
            loaded = ", ".join(map(str, self._repo.versions(name))) or "none"
            raise ModelNotFound(
                f"model '{name}': cannot {tried}: {exc.what} would name version {exc.version}, "
                f"which is not loaded (loaded versions: {loaded}); {how}"
            ) from None

    def _validate(self, name: str, state: DeploymentState) -> None:
        self._repo.get(name)  # ModelNotFound / ModelNotReady when the model is not serving

        def loaded(version: int, what: str) -> None:
            if not self._repo.ready(name, str(version)):
                raise _VersionNotLoaded(name, version, what)

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
            loaded(target.version, "the shadow")
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

    def _swap(self, name: str, state: DeploymentState) -> None:
        table = self.tables.get(name)
        old = table.state if table is not None else DeploymentState()
        if state.empty:
            self.tables.pop(name, None)
        else:
            self.tables[name] = RoutingTable(state)
        if self._on_swap is not None and old != state:
            try:
                self._on_swap(name, old, state)
            except Exception:  # our bug; the state is served all the same
                log.exception("model '%s': deployment swap hook failed", name)
