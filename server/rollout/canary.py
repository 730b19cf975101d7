"""Progressive delivery: a candidate version takes a growing share of traffic, gated by evidence.

A canary moves a model's traffic through steps (e.g. 5, 25, 50, 100 % to the candidate), each
lasting ``interval_s``. At each step boundary the gates are checked on that step's numbers only
(:attr:`CanaryController.evidence`: this process's per-arm epochs, or a fleet's numbers through
etcd or Prometheus, see :mod:`~sluice.server.rollout.gate_evidence`): candidate error rate,
candidate p99 / stable p99, and shadow agreement when a shadow of the candidate reported. While
the evidence cannot be read, the step waits (``waiting`` in the status says why). A step with
fewer than ``min_requests`` candidate requests is extended (up to ``max_extensions`` times)
rather than judged on no data. The error-rate gate is also checked every ``check_every_s``
within a step, so a broken candidate is rolled back within seconds. A breach sends all traffic
back to the stable version (action ``canary_rollback``, reason naming the gate and its numbers);
passing the last step promotes the candidate: alias ``stable`` -> candidate, all traffic to it,
and a shadow of it ends (``canary_promote``). The step numbers are the arms' as their versions
answered them.

The deployment state is the truth: progress lives in ``DeploymentState.canary`` (a JSON record,
see :func:`new_record`), persisted and audited by the router with every step. A driver task
follows that record; when a change it did not make replaces the record (a rollback, an abort),
the driver stops or restarts at the restored step. After a restart :meth:`resume_all` resumes
running canaries at their current step, with a fresh interval (the step's stats were in memory).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any

from sluice.server.errors import InvalidInput, SluiceError
from sluice.server.rollout.canary_plan import (
    ABORTED,
    CANARY_CALLER,
    DEFAULT_STEPS,
    PROMOTED,
    ROLLED_BACK,
    RUNNING,
    Accuracy,
    CanaryConflict,
    CanaryGates,
    accuracy_gate,
    accuracy_pending,
    check_plan,
    error_gate,
    is_running,
    new_record,
    routes_for,
)
from sluice.server.rollout.deploy_store import DeploymentConflict
from sluice.server.rollout.deployment import DeploymentState, Route
from sluice.server.rollout.gate_evidence import GateEvidence, LocalEvidence, StepEvidence

if TYPE_CHECKING:
    from sluice.server.rollout.router import Router
    from sluice.server.rollout.shadow import ShadowMirror

log = logging.getLogger(__name__)

class CanaryController:
    """Runs at most one canary per model; owns one driver task per running canary.

    Every change it makes happens under :meth:`guard` (one lock per model), after checking the
    record it judged is still the current one; admin changes that could race a canary take the
    same lock. ``clock`` (monotonic seconds) and ``sleep`` are injectable for tests.
    """

    #: Fleet (issue 15): whether this replica may drive canaries now (None: always).
    may_drive: Callable[[], bool] | None = None

    def __init__(
        self, router: Router, shadow: ShadowMirror | None = None, *,  # None: router.shadow
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        check_every_s: float = 1.0, max_extensions: int = 5,
        quality: Callable[[str, str, int], Accuracy] | None = None,
    ) -> None:
        """``quality(model, arm, version)``: (accuracy, labelled rows) of an arm's live quality
        window, for the accuracy gates (None: a canary asking for them is refused)."""
        self._router = router
        self._clock = clock
        self._sleep = sleep
        self._check_every_s = check_every_s
        self._max_extensions = max_extensions
        self._quality = quality
        #: What the gates are judged on (issue 15: the fleet's numbers replace these).
        self.evidence: GateEvidence = LocalEvidence(router, shadow, quality)
        #: model -> (canary id, its driver task); every task ever spawned is in _tasks until done.
        self._drivers: dict[str, tuple[str, asyncio.Task[None]]] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._locks: dict[str, asyncio.Lock] = {}
        #: model -> live progress of the current step (not persisted).
        self._progress: dict[str, dict[str, Any]] = {}
        self._closed = False

    def guard(self, name: str) -> asyncio.Lock:
        """The lock serializing deployment changes of ``name`` with the canary's own."""
        return self._locks.setdefault(name, asyncio.Lock())

    # -- public API ---------------------------------------------------------------------------

    async def start(
        self, name: str, candidate: int, *, steps: Iterable[float] = DEFAULT_STEPS,
        interval_s: float = 60.0, gates: CanaryGates | None = None, caller: str = "",
        reason: str = "",
    ) -> dict[str, Any]:
        """Start a canary of ``candidate`` against the stable version; returns its status.

        The stable version is alias ``stable``, else the single routed version, else the newest.
        Raises CanaryConflict if one runs already, InvalidInput for a bad plan or a candidate
        equal to stable, ModelNotFound (from the router) for an unknown model or version.
        """
        plan = check_plan(steps, interval_s)
        gates = gates or CanaryGates()
        if gates.wants_accuracy and self._quality is None:
            raise InvalidInput("gates min_accuracy / max_accuracy_drop need live quality, which "
                               "this server does not run")
        async with self.guard(name):
            state = self._router.state(name)
            if is_running(state):
                raise CanaryConflict(f"model '{name}' already runs a canary of version "
                                     f"{state.canary['candidate']}; abort it first")  # type: ignore[index]
            stable = self._stable_version(name, state)
            if candidate == stable:
                raise InvalidInput(f"model '{name}': candidate version {candidate} is the "
                                   "stable one")
            record = new_record(stable, candidate, plan, interval_s, gates, caller=caller)
            new = dataclasses.replace(
                state.with_alias("stable", stable).with_alias("candidate", candidate),
                routes=routes_for(stable, candidate, plan[0]), canary=record,
            )
            note = reason or (f"canary of version {candidate} over stable {stable}: steps "
                              f"{list(plan)} % every {interval_s:g}s")
            await self._router.change(
                name, "canary_start", new, caller=caller, reason=note,
                tried=f"start a canary of version {candidate} over stable version {stable}")
            self.sync(name)  # drives it here unless another replica is the fleet's driver
        return self.status(name) or record

    async def abort(self, name: str, *, caller: str = "", reason: str = "") -> dict[str, Any]:
        """Stop the running canary; all traffic back to stable. Raises CanaryConflict if none.
        The driver notices the finished record on its next tick and ends."""
        async with self.guard(name):
            state = self._router.state(name)
            if not is_running(state):
                raise CanaryConflict(f"model '{name}' has no running canary")
            record = dict(state.canary)  # type: ignore[arg-type]
            await self._finish(name, record, ABORTED, reason or "aborted", caller=caller)
        return self.status(name) or record

    def status(self, name: str) -> dict[str, Any] | None:
        """The canary record of ``name`` (running or finished) plus live step progress."""
        record = self._router.state(name).canary
        if not record or "state" not in record:
            return None
        out = {**record, "percent": record["steps"][record["step"]]}
        if out["state"] == RUNNING:
            out.update(self._progress.get(name, {}))
        return out

    def sync(self, name: str) -> None:
        """Make a driver follow the model's state: start one when the state holds a running
        canary nobody drives (after a restart, or a rollback to a running step)."""
        state = self._router.state(name)
        if self._closed or not is_running(state) or (self.may_drive and not self.may_drive()):
            return
        cid = state.canary["id"]  # type: ignore[index]
        current = self._drivers.get(name)
        if current is None or current[0] != cid or current[1].done():
            self._spawn(name, cid)

    async def resume_all(self, names: Iterable[str]) -> None:
        """At start-up, once the models and their deployments are loaded: resume every running
        canary of ``names``. A record without ``state`` is a plan (a deployment.yaml ``canary``
        block: candidate, steps, interval_s, gates) and is started now."""
        for name in names:
            record = self._router.state(name).canary
            if record and "state" not in record:
                try:
                    await self._start_planned(name, record)
                except SluiceError as exc:
                    log.error("model '%s': canary from deployment.yaml not started: %s",
                              name, exc.message)
            elif record:
                self.sync(name)

    async def stand_down(self) -> None:
        """Stop driving (fleet leadership lost); the canaries keep running in the state."""
        for name, (_, task) in list(self._drivers.items()):
            async with self.guard(name):
                task.cancel()

    async def close(self) -> None:
        """Cancel every driver (never in the middle of a change) and wait for them. Running
        canaries stay running in the persisted state; resume_all continues them."""
        self._closed = True
        for name, (_, task) in list(self._drivers.items()):
            async with self.guard(name):
                task.cancel()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.evidence.close()

    # -- driver -------------------------------------------------------------------------------

    def _spawn(self, name: str, cid: str) -> None:
        old = self._drivers.get(name)
        if old is not None:
            old[1].cancel()  # between ticks (spawned under the guard): never mid-change
        task = asyncio.get_running_loop().create_task(
            self._drive(name, cid), name=f"canary:{name}:{cid}")
        self._drivers[name] = (cid, task)
        self._tasks.add(task)
        task.add_done_callback(lambda t: self._forget(name, t))

    def _forget(self, name: str, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        current = self._drivers.get(name)
        if current is not None and current[1] is task:
            del self._drivers[name]
            self._progress.pop(name, None)

    def _record(self, name: str, cid: str) -> dict[str, Any] | None:
        """The running record with id ``cid``, or None when a change replaced it."""
        state = self._router.state(name)
        if is_running(state) and state.canary.get("id") == cid:  # type: ignore[union-attr]
            return dict(state.canary)  # type: ignore[arg-type]
        return None

    async def _drive(self, name: str, cid: str) -> None:
        record = None
        try:
            while (record := self._record(name, cid)) is not None:
                verdict = await self._run_step(name, cid, record)
                if verdict is None:
                    continue  # the record changed under us: follow the new one (or stop)
                async with self.guard(name):
                    if self._record(name, cid) != record:
                        continue  # changed while judging: follow the new state
                    try:
                        await self._act(name, record, *verdict)
                    except DeploymentConflict:
                        # another worker's driver (or an admin change there) moved first; the
                        # router adopted its state: follow it rather than roll back a good step
                        continue
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # never leave a half-rolled-out candidate unattended
            log.exception("model '%s': canary driver failed; rolling back", name)
            async with self.guard(name):
                if (record := self._record(name, cid)) is not None:
                    why = f"canary controller error: {type(exc).__name__}"
                    await self._finish(name, record, ROLLED_BACK, why, caller=CANARY_CALLER)

    async def _act(self, name: str, record: dict[str, Any], passed: bool, why: str) -> None:
        """Apply a verdict: roll back, promote after the last step, or take the next step."""
        if not passed:
            log.warning("model '%s': canary rolled back: %s", name, why)
            await self._finish(name, record, ROLLED_BACK, why, caller=CANARY_CALLER)
            return
        step = record["step"] + 1
        if step >= len(record["steps"]):
            await self._finish(name, record, PROMOTED, why, caller=CANARY_CALLER)
            return
        percent = record["steps"][step]
        new = dataclasses.replace(
            self._router.state(name),
            routes=routes_for(record["stable"], record["candidate"], percent),
            canary={**record, "step": step, "reason": why},
        )
        await self._router.change(name, "canary_step", new, caller=CANARY_CALLER,
                                  reason=f"{why}; candidate now {percent:g}%")

    async def _run_step(
        self, name: str, cid: str, record: dict[str, Any]
    ) -> tuple[bool, str] | None:
        """Wait out one step and judge it: (passed, why), or None if the record changed."""
        gates = CanaryGates.from_json(record["gates"])
        interval = float(record["interval_s"])
        await self.evidence.start_step(name, record)
        deadline = self._clock() + interval
        extensions = 0
        self._progress[name] = {"extensions": 0}
        while True:
            await self._sleep(max(min(self._check_every_s, deadline - self._clock()), 0.0))
            current = self._record(name, cid)
            if current is None or current["step"] != record["step"]:
                return None
            seen = await self.evidence.read(name, record)
            if seen.pending:  # no numbers, no verdict: the step waits (extensions untouched)
                self._progress[name] = {"extensions": extensions, "waiting": seen.pending}
                continue
            self._progress[name] = {"extensions": extensions}
            candidate = seen.candidate
            # Early error gate: no need to wait out the step to see a broken candidate.
            if candidate.requests >= gates.min_requests and (breach := error_gate(candidate,
                                                                                   gates)):
                return False, breach
            if self._clock() < deadline:
                continue
            waiting = accuracy_pending(*seen.accuracies, gates)
            if candidate.requests >= gates.min_requests and not waiting:
                return self._judge(record, gates, seen)
            if extensions >= self._max_extensions:
                if candidate.requests >= gates.min_requests:
                    return False, f"gate min_labels: {waiting} after {extensions + 1} intervals"
                return False, (f"gate min_requests: candidate {candidate.requests} < "
                               f"{gates.min_requests} requests after {extensions + 1} intervals")
            extensions += 1
            self._progress[name] = {"extensions": extensions}
            deadline += interval

    def _judge(self, record: dict[str, Any], gates: CanaryGates,
               seen: StepEvidence) -> tuple[bool, str]:
        candidate, stable = seen.candidate, seen.stable
        if breach := error_gate(candidate, gates):
            return False, breach
        # At 100 % the stable arm takes no traffic: nothing to compare the p99 with.
        if (gates.max_p99_ratio is not None and candidate.p99_s is not None
                and stable.requests > 0 and stable.p99_s):
            ratio = candidate.p99_s / stable.p99_s
            if ratio > gates.max_p99_ratio:
                return False, (
                    f"gate p99_ratio: candidate p99 {candidate.p99_s * 1e3:.3f} ms / stable p99 "
                    f"{stable.p99_s * 1e3:.3f} ms = {ratio:.2f} > {gates.max_p99_ratio:g}")
        if gates.min_agreement is not None:
            for seen_agreement in seen.agreements:
                if seen_agreement.agreement < gates.min_agreement:
                    return False, (
                        f"gate agreement: shadow agreement {seen_agreement.agreement:.4f} < "
                        f"{gates.min_agreement:g} over {seen_agreement.compared} comparisons")
        if breach := accuracy_gate(*seen.accuracies, gates):
            return False, breach
        percent = record["steps"][record["step"]]
        return True, (f"step {percent:g}% passed: candidate error rate "
                      f"{candidate.error_rate:.4f} over {candidate.requests} requests")

    async def _finish(
        self, name: str, record: dict[str, Any], outcome: str, why: str, *, caller: str
    ) -> None:
        """End the canary: promote the candidate, or send all traffic back to stable."""
        state = self._router.state(name)
        if outcome == PROMOTED:
            winner, action = int(record["candidate"]), "canary_promote"
            state = state.with_alias("candidate", None)
        else:
            winner = int(record["stable"])
            action = "canary_abort" if outcome == ABORTED else "canary_rollback"
        new = dataclasses.replace(
            state.with_alias("stable", winner), routes=(Route("stable", winner, 100.0),),
            canary={**record, "state": outcome, "reason": why},
        ).without_served_shadow()  # a promoted candidate's shadow has nothing left to compare
        await self._router.change(name, action, new, caller=caller, reason=why)

    # -- helpers ------------------------------------------------------------------------------

    async def _start_planned(self, name: str, plan: Mapping[str, Any]) -> None:
        unknown = sorted(set(plan) - {"candidate", "steps", "interval_s", "gates"})
        if unknown:
            raise InvalidInput(f"canary block: unknown field(s) {unknown}")
        if not isinstance(plan.get("candidate"), int):
            raise InvalidInput("canary block: 'candidate' (a version number) is required")
        await self.start(
            name, plan["candidate"], steps=plan.get("steps") or DEFAULT_STEPS,
            interval_s=float(plan.get("interval_s", 60.0)),
            gates=CanaryGates.from_json(plan.get("gates")), caller="deployment.yaml",
        )

    def _stable_version(self, name: str, state: DeploymentState) -> int:
        stable = state.alias("stable")
        if stable is not None:
            return stable
        versions = {route.version for route in state.routes}
        if len(versions) > 1:
            raise InvalidInput(
                f"model '{name}' routes to versions {sorted(versions)}: set alias 'stable' "
                "(or switch to one version) before starting a canary")
        return versions.pop() if versions else self._router.resolve(name, "", None)[0].version
