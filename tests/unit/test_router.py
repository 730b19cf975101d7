"""Router: resolution, changes and rollback, deployment.yaml precedence, arm statistics and
shadows after a promotion — over a fake repository (no models, no server). The pure pieces
(rendezvous hashing, state JSON, deployment.yaml parsing): test_deployment_state.py."""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import random
import threading

import pytest

from sluice.server.config.deployment_file import parse_deployment
from sluice.server.errors import InvalidInput, ModelLoadError, ModelNotFound
from sluice.server.rollout.arm_stats import ArmStats
from sluice.server.rollout.deploy_store import DeploymentStore
from sluice.server.rollout.router import (
    DeploymentState,
    Route,
    Router,
    ShadowTarget,
)
from sluice.server.rollout.shadow import ShadowMirror
from tests.support.deployment_states import full_state
from tests.support.fake_repository import FakeRepository

# -- the router over a fake repository --------------------------------------------------------


def make_router(tmp_path=None, declared=None) -> Router:
    store = DeploymentStore(tmp_path) if tmp_path is not None else None
    return Router(FakeRepository({"m": [1, 2, 3]}), store, rng=random.Random(7),
                  declared=declared)


async def test_resolve_versions_aliases_and_weights():
    router = make_router()
    assert router.resolve("m", "", None)[0].version == 3  # no deployment: the newest
    assert router.route("m", "", None)[1] is None  # plain path: nothing to label
    assert router.resolve("m", "2", None)[1] == "v2"
    with pytest.raises(InvalidInput, match="model 'm' has no alias 'stable'"):
        router.resolve("m", "stable", None)
    await router.change("m", "set", full_state(), caller="t")
    served, arm = router.resolve("m", "stable", None)
    assert (served.version, arm) == (1, "stable")
    assert router.resolve("m", "3", None) == (router._repo.get("m", "3"), "v3")
    arms = [router.resolve("m", "", None)[1] for _ in range(4000)]
    assert abs(arms.count("candidate") / 4000 - 0.10) < 0.03
    sticky = {router.resolve("m", "", "user-42")[1] for _ in range(50)}
    assert len(sticky) == 1
    with pytest.raises(InvalidInput, match="no alias 'canary'"):
        router.resolve("m", "canary", None)
    with pytest.raises(ModelNotFound, match="model 'x' is not loaded"):
        router.resolve("x", "stable", None)
    assert router.version_of("m", "candidate") == "2" and router.version_of("m", "") == ""


@pytest.mark.parametrize(("state", "needle"), [
    (DeploymentState(routes=(Route("v7", 7, 1),)), "route 'v7' would name version 7, which is "
     "not loaded (loaded versions: 1, 2, 3); (how to load m version 7)"),
    (DeploymentState(routes=(Route("stable", 1, 1),)), "route arm 'stable' must be 'v1'"),
    (DeploymentState(routes=(Route("v1", 1, 1), Route("v1", 1, 2))), "appears in two routes"),
    (DeploymentState(routes=(Route("v1", 1, 0),)), "weight must be > 0"),
    (DeploymentState(shadows=(ShadowTarget(2, 0),)), "sample must be in (0, 1]"),
    (DeploymentState(aliases=(("9", 1),)), "is not a valid alias"),
])
async def test_change_refuses_invalid_states_and_changes_nothing(state, needle):
    router = make_router()
    with pytest.raises((InvalidInput, ModelNotFound)) as info:
        await router.change("m", "set", state, caller="t")
    assert needle in info.value.message
    assert router.state("m") == DeploymentState() and router.history("m") == ()


async def test_a_version_not_loaded_is_named_with_what_the_change_tried():
    """The alias or route that names the missing version is often the verb's own doing (switch
    points 'stable'), so the error says what was tried, then what names which version, then
    the repository's advice on loading it."""
    router = make_router()
    await router.set_alias("m", "candidate", 2, caller="t")
    await router.set_alias("m", "old", 3, caller="t")
    router._repo.models["m"].pop(3)  # a reload dropped version 3; alias 'old' still names it
    loaded = "which is not loaded (loaded versions: 1, 2); (how to load m version 3)"
    cases = [
        (lambda: router.switch("m", "candidate", caller="t"),
         "cannot switch all traffic to version 2 (alias 'candidate'): alias 'old'"),
        (lambda: router.set_alias("m", "new", 1, caller="t"),
         "cannot point alias 'new' at version 1: alias 'old'"),
        (lambda: router.set_routes("m", {"v1": 90, "candidate": 10}, caller="t"),
         "cannot route v1=90 candidate=10: alias 'old'"),
        (lambda: router.change("m", "shadow_stop", router.state("m"), caller="t"),
         "cannot stop a shadow: alias 'old'"),
    ]
    for call, tried in cases:
        with pytest.raises(ModelNotFound) as info:
            await call()
        assert info.value.message == f"model 'm': {tried} would name version 3, {loaded}"
    await router.set_alias("m", "old", None, caller="t")  # removing what names it is allowed
    with pytest.raises(ModelNotFound) as info:
        await router.rollback("m", caller="t")  # would bring 'old' back
    assert info.value.message == (
        f"model 'm': cannot roll back to the previous deployment: alias 'old' would name version "
        f"3, {loaded}")
    with pytest.raises(ModelNotFound) as info:
        await router.switch("m", "7", caller="t")
    assert info.value.message == (
        "model 'm': cannot switch all traffic to version 7: alias 'stable' would name version "
        "7, which is not loaded (loaded versions: 1, 2); (how to load m version 7)")


async def test_switch_set_alias_and_rollback(tmp_path):
    router = make_router(tmp_path)
    await router.set_alias("m", "stable", 1, caller="alice")
    await router.set_alias("m", "candidate", 2, caller="alice")
    await router.set_routes("m", {"v3": 1, 2: 1}, caller="alice")
    assert router.state("m").routes == (Route("v3", 3, 1.0), Route("v2", 2, 1.0))
    await router.set_routes("m", {"stable": 90, "candidate": 10}, caller="alice")
    canary = router.state("m")
    await router.set_alias("m", "candidate", 3, caller="alice")  # its route follows
    assert Route("candidate", 3, 10.0) in router.state("m").routes
    await router.rollback("m", caller="bob")
    assert router.state("m") == canary
    await router.switch("m", "candidate", caller="bob", reason="blue-green")
    assert router.state("m").routes == (Route("stable", 2, 1.0),)
    assert router.state("m").alias("stable") == 2
    assert {router.resolve("m", "", None)[0].version for _ in range(100)} == {2}
    await router.rollback("m", caller="bob")
    assert router.state("m") == canary
    actions = [r["action"] for r in DeploymentStore(tmp_path).read_audit()]
    assert actions == ["set_alias", "set_alias", "set_routes", "set_routes", "set_alias",
                       "rollback", "switch", "rollback"]
    # A new router over the same directory serves and can roll back the same way.
    again = make_router(tmp_path)
    await again.open()
    await again.model_loaded("m")
    assert again.state("m") == canary and again.resolve("m", "stable", None)[0].version == 1
    await again.rollback("m", caller="carol")  # rollbacks walk back down the history
    assert again.state("m").routes == (Route("v3", 3, 1.0), Route("v2", 2, 1.0))


async def test_rollback_without_history_is_refused():
    with pytest.raises(InvalidInput, match="no earlier deployment state"):
        await make_router().rollback("m", caller="t")


async def test_persisted_state_wins_until_the_yaml_changes(tmp_path):
    declared = {"text": "aliases: {stable: 1}\nroutes: {stable: 1}\n"}

    def read(name: str):
        text = declared["text"]
        return (DeploymentState.from_json(parse_deployment(text)),
                hashlib.sha256(text.encode()).hexdigest())

    router = make_router(tmp_path / "state", read)
    await router.open()
    await router.model_loaded("m")
    assert router.resolve("m", "", None) == (router._repo.get("m", "1"), "stable")
    await router.switch("m", 2, caller="admin")  # an admin change after the yaml applied

    restarted = make_router(tmp_path / "state", read)
    await restarted.open()
    await restarted.model_loaded("m")  # yaml unchanged: the persisted (admin) state wins
    assert restarted.state("m").alias("stable") == 2

    declared["text"] = "aliases: {stable: 1}\nroutez: {}\n"
    with pytest.raises(ModelLoadError, match="routez"):
        await restarted.model_loaded("m")  # a broken yaml: the persisted state keeps serving
    assert restarted.resolve("m", "", None)[0].version == 2
    declared["text"] = "aliases: {stable: 7}\n"
    with pytest.raises(ModelNotFound, match="version 7"):
        await restarted.model_loaded("m")
    assert restarted.resolve("m", "", None)[0].version == 2

    declared["text"] = "aliases: {stable: 3}\nroutes: {stable: 1}\n"
    await restarted.model_loaded("m")  # yaml edited: it is applied again, as a change
    assert restarted.state("m").alias("stable") == 3
    last = DeploymentStore(tmp_path / "state").read_audit()[-1]
    assert last["action"] == "apply_deployment_yaml" and last["caller"] == "deployment.yaml"
    assert last["before"]["aliases"] == {"stable": 2}


class SlowAuditStore(DeploymentStore):
    """A store whose audit write hangs until released: a slow disk, which no test can make
    happen on demand."""

    def __init__(self, root) -> None:
        super().__init__(root)
        self.writing = threading.Event()
        self.release = threading.Event()

    def audit(self, record: dict) -> None:
        self.writing.set()
        self.release.wait(30)
        super().audit(record)


async def test_a_change_is_routed_by_from_the_instant_it_can_be_read(tmp_path):
    store = SlowAuditStore(tmp_path)
    router = Router(FakeRepository({"m": [1, 2, 3]}), store, rng=random.Random(7))
    await router.open()
    new = DeploymentState(routes=(Route("v2", 2, 1.0),))
    change = asyncio.create_task(router.change("m", "set", new, caller="t"))
    try:
        assert await asyncio.to_thread(store.writing.wait, 30)
        # persisted, audit still being written: what a reader sees is what requests get
        assert router.state("m") == new
        assert router.resolve("m", "", None) == (router._repo.get("m", "2"), "v2")
    finally:
        store.release.set()
        await change
    assert [r["action"] for r in store.read_audit()] == ["set"]


def test_arm_stats_epochs_restart():
    now = [0.0]
    stats = ArmStats(2, clock=lambda: now[0])
    for i in range(100):
        stats.record(0.001 * (i + 1), ok=i % 10 != 0)
    epoch = stats.epoch()
    assert (epoch.requests, epoch.errors, epoch.error_rate) == (100, 10, 0.1)
    assert epoch.p50_s is not None and 0.049 < epoch.p50_s < 0.052
    assert epoch.p99_s is not None and 0.098 < epoch.p99_s <= 0.1
    now[0] = 5.0
    stats.start_epoch()
    assert stats.epoch().requests == 0 and stats.epoch().p50_s is None
    assert stats.requests == 100 and stats.errors == 10


async def test_arms_count_by_the_version_that_answered():
    """A request admitted on v1 can finish after ``stable`` moved to v2: each request counts
    for the version that answered it, and neither version's counts restart for the other's."""
    router = make_router()
    for version, ok in ((1, True), (1, False), (2, True), (1, True), (2, True), (2, True)):
        router.record("m", "stable", 0.001, ok, version=version)
    router.record("m", "candidate", 0.001, True, version=2)
    counts = {key: (s.version, s.requests, s.errors) for key, s in router.arm_stats("m").items()}
    assert counts == {("stable", 1): (1, 3, 1), ("stable", 2): (2, 3, 0),
                      ("candidate", 2): (2, 1, 0)}
    listed = sorted((model, arm, s.version, s.requests) for model, arm, s
                    in router.all_arm_stats())
    assert listed == [("m", "candidate", 2, 1), ("m", "stable", 1, 3), ("m", "stable", 2, 3)]


async def test_arm_counts_of_a_version_no_longer_loaded_go_when_the_model_reloads():
    router = make_router()
    for version in (1, 2):
        router.record("m", "stable", 0.001, True, version=version)
    del router._repo.models["m"][1]  # the reload dropped version 1
    await router.model_loaded("m")
    assert list(router.arm_stats("m")) == [("stable", 2)]
    assert [(arm, s.version) for _, arm, s in router.all_arm_stats()] == [("stable", 2)]


async def test_a_version_that_takes_all_traffic_is_no_longer_shadowed():
    """Switch, routes or an alias that send every request to a shadowed version end that shadow
    (nothing is left to compare it with); rollback brings it back, and a shadow of a version
    that shares the traffic with another keeps comparing the other's requests."""
    router = make_router()
    both = (ShadowTarget(2, 1.0), ShadowTarget(3, 0.5))
    await router.change("m", "shadow_start", DeploymentState(
        aliases=(("stable", 1),), routes=(Route("stable", 1, 1.0),), shadows=both), caller="t")
    await router.set_routes("m", {"stable": 90, 2: 10}, caller="t")
    assert router.state("m").shadows == both
    await router.switch("m", 2, caller="t")
    assert router.state("m").shadows == (ShadowTarget(3, 0.5),)
    await router.rollback("m", caller="t")
    assert router.state("m").shadows == both
    await router.set_routes("m", {"v2": 1}, caller="t")
    assert router.state("m").shadows == (ShadowTarget(3, 0.5),)
    await router.rollback("m", caller="t")
    await router.set_routes("m", {"stable": 1}, caller="t")
    await router.set_alias("m", "stable", 3, caller="t")  # its route follows: all traffic to 3
    assert router.state("m").shadows == (ShadowTarget(2, 1.0),)


async def test_a_promoted_shadows_comparisons_are_dropped_here_and_in_other_workers(tmp_path):
    """The mirror forgets the comparisons of a shadow that became the served version, whether
    this process promoted it or adopted another worker's promotion; a shadow stopped without
    a promotion keeps its final report."""
    mirrors = [ShadowMirror(lambda name, version: None) for _ in range(2)]
    here, other = (Router(FakeRepository({"m": [1, 2, 3]}), DeploymentStore(tmp_path),
                          shadow=mirror) for mirror in mirrors)
    for router in (here, other):
        await router.open()
    state = DeploymentState(routes=(Route("v1", 1, 1.0),),
                            shadows=(ShadowTarget(2, 1.0), ShadowTarget(3, 1.0)))
    await here.change("m", "shadow_start", state, caller="t")
    other.adopt("m", DeploymentStore(tmp_path).load_all()["m"])
    for mirror in mirrors:  # what mirrored requests leave behind
        mirror._pairing("m", 1, 2).mirrored = mirror._pairing("m", 1, 3).mirrored = 5
    stopped = dataclasses.replace(state, shadows=(ShadowTarget(2, 1.0),))
    await here.change("m", "shadow_stop", stopped, caller="t")  # 3 stops, unpromoted
    await here.switch("m", 2, caller="t")
    other.adopt("m", DeploymentStore(tmp_path).load_all()["m"])
    for router, mirror in zip((here, other), mirrors, strict=True):
        assert router.state("m").shadows == ()
        assert [(r.live_version, r.shadow_version, r.mirrored)
                for r in mirror.report("m")] == [(1, 3, 5)]
