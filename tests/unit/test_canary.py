"""CanaryController against the real Router and DeploymentStore, with a fake clock.

Traffic is simulated in the fake ``sleep``: each simulated second, ``rate`` requests are routed
by the router (weights as the canary set them) and recorded as successes or failures of the
version that served them, so steps, gates and rollbacks run as they would in a server, only
instantly and deterministically.
"""

from __future__ import annotations

import asyncio
import dataclasses
import random
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from sluice.server.errors import InvalidInput, ModelNotFound
from sluice.server.rollout.canary import CanaryController
from sluice.server.rollout.canary_plan import (
    ABORTED,
    PROMOTED,
    ROLLED_BACK,
    RUNNING,
    CanaryConflict,
    CanaryGates,
    routes_for,
)
from sluice.server.rollout.deploy_store import DeploymentStore
from sluice.server.rollout.router import DeploymentState, Route, Router, ShadowTarget
from tests.support.fake_repository import FakeRepository

MODEL = "m"


@dataclass
class Traffic:
    """Fake time plus simulated requests: ``rate`` per second, outcome per version."""

    router: Router
    rate: int = 20
    #: version -> (error probability, latency seconds)
    behaviour: dict[int, tuple[float, float]] = field(default_factory=dict)
    now: float = 0.0
    rng: random.Random = field(default_factory=lambda: random.Random(7))

    def clock(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        requests = round(self.rate * seconds)
        self.now += seconds
        for i in range(requests):
            served, arm = self.router.resolve(MODEL, "", f"key-{self.now}-{i}")
            error_p, latency = self.behaviour.get(served.version, (0.0, 0.001))
            ok = self.rng.random() >= error_p
            self.router.record(MODEL, arm, latency, ok, version=served.version)
        await asyncio.sleep(0)


async def until(condition, limit_s: float = 30.0) -> None:
    """Run the loop until ``condition()`` holds (bounded in real time: state writes run on
    worker threads, which take many loop passes on a busy machine)."""
    deadline = time.monotonic() + limit_s
    while not condition():
        assert time.monotonic() < deadline, "condition never held"
        await asyncio.sleep(0)


@dataclass
class Rig:
    router: Router
    store: DeploymentStore
    traffic: Traffic
    canary: CanaryController

    def actions(self) -> list[str]:
        return [r["action"] for r in self.store.read_audit()]

    async def finished(self, limit_s: float = 30.0) -> dict:
        """Run the loop until the canary is no longer running; its final status. Bounded in
        real time, not loop passes: each change writes the state file on a worker thread, and
        on a busy machine that takes many passes."""
        deadline = time.monotonic() + limit_s
        while time.monotonic() < deadline:
            status = self.canary.status(MODEL)
            if status is not None and status["state"] != RUNNING:
                # The driver ends once its last change is persisted and audited.
                await asyncio.gather(*self.canary._tasks)
                return status
            await asyncio.sleep(0)
        raise AssertionError(f"canary still running: {self.canary.status(MODEL)}")


async def make_rig(tmp_path: Path, *, stable: int = 1, **traffic) -> Rig:
    store = DeploymentStore(tmp_path / "state")
    router = Router(FakeRepository({MODEL: [1, 2, 3]}), store, rng=random.Random(1))
    await router.open()
    await router.switch(MODEL, stable, caller="test")
    t = Traffic(router, **traffic)
    canary = CanaryController(router, clock=t.clock, sleep=t.sleep)
    return Rig(router, store, t, canary)


async def test_steps_advance_and_the_candidate_is_promoted(tmp_path: Path) -> None:
    rig = await make_rig(tmp_path, rate=50)  # >= 20 candidate requests even in the 10 % step
    status = await rig.canary.start(MODEL, 2, steps=(10, 50, 100), interval_s=10.0,
                                    caller="alice")
    assert status["state"] == RUNNING and status["percent"] == 10.0
    assert rig.router.state(MODEL).routes == (Route("stable", 1, 90.0),
                                              Route("candidate", 2, 10.0))
    final = await rig.finished()
    assert final["state"] == PROMOTED, final
    state = rig.router.state(MODEL)
    assert state.alias("stable") == 2 and state.alias("candidate") is None
    assert state.routes == (Route("stable", 2, 100.0),)
    assert rig.actions() == ["switch", "canary_start", "canary_step", "canary_step",
                             "canary_promote"]
    audit = rig.store.read_audit()
    assert audit[1]["caller"] == "alice" and audit[-1]["caller"] == "sluice-canary"
    assert "step 100% passed" in audit[-1]["reason"]
    # Each step spent its interval: three steps of 10 s.
    assert 30.0 <= rig.traffic.now < 31.0
    await rig.canary.close()


async def test_promotion_ends_the_candidates_shadow_and_an_abort_keeps_it(
    tmp_path: Path,
) -> None:
    """A shadow of the candidate compares stable's requests through every step (the 100 % step
    included: a rollback there must find it still running); promotion ends it, since the
    candidate now answers everything. Other shadows stay, and so does all of it on abort."""
    shadows = (ShadowTarget(2, 1.0), ShadowTarget(3, 0.5))
    for outcome in (PROMOTED, ABORTED):
        rig = await make_rig(tmp_path / outcome, rate=50)
        state = dataclasses.replace(rig.router.state(MODEL), shadows=shadows)
        await rig.router.change(MODEL, "shadow_start", state, caller="test")
        await rig.canary.start(MODEL, 2, steps=(50, 100), interval_s=10.0)
        if outcome == ABORTED:
            await rig.canary.abort(MODEL)
        final = await rig.finished()
        assert final["state"] == outcome
        steps = [r["after"] for r in rig.store.read_audit() if r["action"] == "canary_step"]
        assert all(len(after["shadows"]) == 2 for after in steps)
        kept = (ShadowTarget(3, 0.5),) if outcome == PROMOTED else shadows
        assert rig.router.state(MODEL).shadows == kept
        await rig.canary.close()


async def test_a_conflicting_change_from_another_worker_is_followed_not_rolled_back(
    tmp_path: Path,
) -> None:
    """Two workers share the state directory. When this worker's 10 % step ends, the other
    worker has already written the canary's next step (50 %) through its own store: this
    worker's write from the stale step is refused, its router adopts the other's state, and
    the driver carries on from 50 % (neither rolling back nor redoing the step)."""
    rig = await make_rig(tmp_path, rate=50)
    other = Router(FakeRepository({MODEL: [1, 2, 3]}), DeploymentStore(tmp_path / "state"))
    written: list[DeploymentState] = []

    async def sleep(seconds: float) -> None:
        await rig.traffic.sleep(seconds)
        if rig.traffic.now >= 10.0 and not written:  # the 10 % step ends: the other moves first
            await other.open()
            await other.model_loaded(MODEL)
            state = other.state(MODEL)
            new = dataclasses.replace(state, routes=routes_for(1, 2, 50.0), canary={
                **state.canary, "step": 1, "reason": "step 10% passed on worker 2"})
            written.append(await other.change(MODEL, "canary_step", new, caller="sluice-canary",
                                              reason="worker 2: candidate now 50%"))

    canary = CanaryController(rig.router, clock=rig.traffic.clock, sleep=sleep)
    await canary.start(MODEL, 2, steps=(10, 50, 100), interval_s=10.0)
    started = rig.router.state(MODEL)
    await asyncio.gather(*canary._tasks)  # the driver ends with the canary

    # Step 10 % (0-10 s, judged by the other worker), 50 % and 100 % (10 s each, judged here).
    assert rig.traffic.now == 30.0
    # All traffic on the candidate for the last step: 50 requests/s for 10 s.
    promoted = {**started.canary, "step": 2, "state": PROMOTED,
                "reason": "step 100% passed: candidate error rate 0.0000 over 500 requests"}
    assert rig.router.state(MODEL) == DeploymentState(
        aliases=(("stable", 2),), routes=(Route("stable", 2, 100.0),), canary=promoted)
    assert DeploymentStore(tmp_path / "state").load()[MODEL] == rig.router.state(MODEL)

    audit = rig.store.read_audit()
    assert [r["action"] for r in audit] == [
        "switch", "canary_start", "canary_step", "canary_step", "canary_promote"]
    # The refused write left no record; the other worker's step is the only 10 % -> 50 % one.
    theirs, ours, last = audit[2:]
    assert theirs["reason"] == "worker 2: candidate now 50%"
    assert theirs["before"] == started.to_json() and theirs["after"] == written[0].to_json()
    # This worker's next change starts from the state the other worker wrote.
    assert ours["caller"] == "sluice-canary" and ours["before"] == theirs["after"]
    assert ours["after"]["canary"]["step"] == 2
    assert ours["after"]["routes"] == [{"arm": "candidate", "version": 2, "weight": 100.0}]
    assert ours["reason"].startswith("step 50% passed: candidate error rate 0.0000 over ")
    assert ours["reason"].endswith(" requests; candidate now 100%")
    assert last["before"] == ours["after"] and last["reason"] == promoted["reason"]
    await canary.close()


async def test_an_erroring_candidate_is_rolled_back_early_with_the_reason(tmp_path: Path) -> None:
    rig = await make_rig(tmp_path, behaviour={2: (0.5, 0.001)})
    await rig.canary.start(MODEL, 2, steps=(50, 100), interval_s=60.0,
                           gates=CanaryGates(max_error_rate=0.01, min_requests=20))
    final = await rig.finished()
    assert final["state"] == ROLLED_BACK
    assert final["reason"].startswith("gate error_rate: candidate 0.")
    assert "> 0.01 over" in final["reason"]
    # Rolled back by the mid-step check, long before the 60 s step ended.
    assert rig.traffic.now < 10.0
    state = rig.router.state(MODEL)
    assert state.routes == (Route("stable", 1, 100.0),) and state.alias("stable") == 1
    last = rig.store.read_audit()[-1]
    assert last["action"] == "canary_rollback" and last["reason"] == final["reason"]
    assert last["after"]["canary"]["state"] == ROLLED_BACK
    await rig.canary.close()


async def test_a_slow_candidate_fails_the_p99_gate_at_the_step_boundary(tmp_path: Path) -> None:
    rig = await make_rig(tmp_path, behaviour={1: (0.0, 0.002), 2: (0.0, 0.010)})
    await rig.canary.start(MODEL, 2, steps=(50, 100), interval_s=5.0,
                           gates=CanaryGates(max_p99_ratio=1.5))
    final = await rig.finished()
    assert final["state"] == ROLLED_BACK
    assert final["reason"].startswith("gate p99_ratio: candidate p99 ")
    assert "> 1.5" in final["reason"]
    assert rig.traffic.now == pytest.approx(5.0)
    await rig.canary.close()


async def test_a_step_without_enough_requests_is_extended_not_judged(tmp_path: Path) -> None:
    # 1 req/s at 10 %: ~1 candidate request per 10 s step, min_requests 3 -> extensions.
    rig = await make_rig(tmp_path, rate=1)
    await rig.canary.start(MODEL, 2, steps=(10, 100), interval_s=10.0,
                           gates=CanaryGates(min_requests=3))
    final = await rig.finished()
    assert final["state"] == PROMOTED
    assert rig.traffic.now > 20.0  # the first step ran longer than its interval


async def test_no_traffic_at_all_rolls_back_after_the_extension_limit(tmp_path: Path) -> None:
    rig = await make_rig(tmp_path, rate=0)
    await rig.canary.start(MODEL, 2, steps=(10, 100), interval_s=10.0)
    final = await rig.finished()
    assert final["state"] == ROLLED_BACK
    assert final["reason"] == "gate min_requests: candidate 0 < 20 requests after 6 intervals"
    assert rig.traffic.now == pytest.approx(60.0)


async def test_abort_sends_traffic_back_and_a_second_start_is_refused(tmp_path: Path) -> None:
    rig = await make_rig(tmp_path)
    await rig.canary.start(MODEL, 2, steps=(10, 100), interval_s=100.0)
    with pytest.raises(CanaryConflict, match="already runs a canary of version 2"):
        await rig.canary.start(MODEL, 3)
    status = await rig.canary.abort(MODEL, caller="bob", reason="changed my mind")
    assert status["state"] == ABORTED and status["reason"] == "changed my mind"
    assert rig.router.state(MODEL).routes == (Route("stable", 1, 100.0),)
    assert rig.actions()[-1] == "canary_abort"
    with pytest.raises(CanaryConflict, match="no running canary"):
        await rig.canary.abort(MODEL)
    await until(lambda: not rig.canary._drivers)  # the driver ends on its next tick
    assert rig.actions()[-1] == "canary_abort"


async def test_a_manual_rollback_stops_the_driver(tmp_path: Path) -> None:
    rig = await make_rig(tmp_path)
    await rig.canary.start(MODEL, 2, steps=(10, 100), interval_s=10.0)
    async with rig.canary.guard(MODEL):  # as the admin service does
        await rig.router.rollback(MODEL, caller="ops")  # back to before the canary
        rig.canary.sync(MODEL)
    await until(lambda: not rig.canary._drivers)
    assert rig.actions() == ["switch", "canary_start", "rollback"]
    assert rig.router.state(MODEL).routes == (Route("stable", 1, 1.0),)


async def test_a_rollback_to_a_running_step_resumes_driving_it(tmp_path: Path) -> None:
    rig = await make_rig(tmp_path, rate=50)
    await rig.canary.start(MODEL, 2, steps=(10, 50, 100), interval_s=10.0)
    final = await rig.finished()
    assert final["state"] == PROMOTED
    async with rig.canary.guard(MODEL):  # undo the promotion: back to the 50 % step
        await rig.router.rollback(MODEL, caller="ops")
        rig.canary.sync(MODEL)
    assert rig.canary.status(MODEL)["state"] == RUNNING
    assert (await rig.finished())["state"] == PROMOTED
    assert rig.actions()[-2:] == ["rollback", "canary_promote"]


async def test_a_canary_resumes_after_a_restart(tmp_path: Path) -> None:
    rig = await make_rig(tmp_path)
    await rig.canary.start(MODEL, 2, steps=(10, 50, 100), interval_s=10.0)
    await until(lambda: rig.canary.status(MODEL)["step"] == 1)
    await rig.canary.close()  # the server stops mid-canary
    assert rig.router.state(MODEL).canary["step"] == 1

    router = Router(FakeRepository({MODEL: [1, 2, 3]}), DeploymentStore(tmp_path / "state"))
    await router.open()
    await router.model_loaded(MODEL)  # what the server does once the model loaded
    traffic = Traffic(router)
    again = CanaryController(router, clock=traffic.clock, sleep=traffic.sleep)
    await again.resume_all([MODEL])
    rig2 = Rig(router, rig.store, traffic, again)
    assert (await rig2.finished())["state"] == PROMOTED
    assert rig2.actions()[-2:] == ["canary_step", "canary_promote"]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"steps": (50, 25)}, "must increase"),
        ({"steps": (0, 100)}, r"in \(0, 100\]"),
        ({"interval_s": 0.0}, "interval_s must be > 0"),
        ({"gates": None, "candidate": 1}, "is the stable one"),
    ],
)
async def test_bad_plans_are_refused(tmp_path: Path, kwargs: dict, message: str) -> None:
    rig = await make_rig(tmp_path)
    candidate = kwargs.pop("candidate", 2)
    with pytest.raises(InvalidInput, match=message):
        await rig.canary.start(MODEL, candidate, **kwargs)
    assert rig.router.state(MODEL).canary is None


def test_gates_validate_and_round_trip() -> None:
    gates = CanaryGates(max_error_rate=0.05, max_p99_ratio=None, min_agreement=0.9,
                        min_requests=5)
    assert CanaryGates.from_json(gates.to_json()) == gates
    with pytest.raises(InvalidInput, match="max_error_rate"):
        CanaryGates(max_error_rate=2.0)
    with pytest.raises(InvalidInput, match=r"unknown canary gate\(s\) \['bogus'\]"):
        CanaryGates.from_json({"bogus": 1})


async def test_unknown_candidate_version_names_it(tmp_path: Path) -> None:
    rig = await make_rig(tmp_path)
    with pytest.raises(ModelNotFound, match="version 9"):
        await rig.canary.start(MODEL, 9)




# -- feedback + quality: the accuracy gates (pure checks; judged on a real server in
# tests/integration/test_quality_canary.py)


def test_accuracy_gates_wait_for_labels_then_name_the_breach():
    from sluice.server.rollout.canary_plan import accuracy_gate, accuracy_pending

    gates = CanaryGates(min_accuracy=0.9, max_accuracy_drop=0.02, min_labels=10)
    assert accuracy_pending((0.5, 9), (1.0, 50), gates) == "candidate 9 < 10 labelled rows"
    assert accuracy_pending((0.95, 10), (1.0, 3), gates) == "stable 3 < 10 labelled rows"
    assert accuracy_gate((0.5, 9), (1.0, 50), gates) == ""  # not judged without labels
    assert accuracy_gate((0.85, 20), (0.86, 20), gates) == (
        "gate min_accuracy: candidate accuracy 0.8500 < 0.9 over 20 labelled rows")
    assert accuracy_gate((0.93, 20), (0.96, 40), gates) == (
        "gate accuracy_drop: stable 0.9600 - candidate 0.9300 = 0.0300 > 0.02 over 40 / 20 "
        "labelled rows")
    assert accuracy_gate((0.95, 20), (0.96, 40), gates) == ""
    assert accuracy_pending((None, 0), (None, 0), CanaryGates()) == ""  # gates off
    with pytest.raises(InvalidInput, match="gate min_accuracy must be in"):
        CanaryGates(min_accuracy=1.5)
    assert CanaryGates.from_json(gates.to_json()) == gates
