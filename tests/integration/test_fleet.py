"""A fleet on one machine (issue 15 items 1-2): a real etcd and three ``sluice serve`` replicas
sharing ``--state-store etcd://...``, changed through the Admin service of any of them.

One fleet per module (starting a replica costs seconds); each test leaves ``digits`` on
stable version 2, as it found it. The replicas' lease is 2 s, so a dead canary driver is
replaced within about 2 s.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pytest
import tritonclient.grpc as tc

from sluice.clients.admin import AdminClient
from sluice.clients.errors import SluiceClientError
from tests.support.etcd import MISSING, find_binary, start_etcd
from tests.support.fleet import Replica

pytestmark = pytest.mark.skipif(find_binary() is None, reason=MISSING)

LEASE = '{store="etcd"}'


class Fleet:
    def __init__(self, directory: Path) -> None:
        self.etcd = start_etcd(directory / "etcd")
        self.url = self.etcd.state_store("fleet")
        # Started side by side: each loads its models on its own.
        self.replicas = [Replica(self.url) for _ in range(3)]
        for replica in self.replicas:
            replica.start()
        self.admins = [AdminClient(r.address) for r in self.replicas]
        self.infer = [tc.InferenceServerClient(r.address) for r in self.replicas]

    def alive(self) -> list[int]:
        return [i for i, r in enumerate(self.replicas) if r.proc.poll() is None]

    def close(self) -> None:
        for client in self.admins:
            client.close()
        for infer in self.infer:
            infer.close()
        for replica in self.replicas:
            replica.stop()
        self.etcd.stop()


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    running = Fleet(tmp_path_factory.mktemp("fleet"))
    try:
        running.admins[0].switch("digits", 2, reason="test baseline")
        yield running
    finally:
        running.close()


def wait_until(condition: Callable[[], bool], timeout_s: float, what: str) -> float:
    """Seconds until ``condition`` held (polled every 5 ms); AssertionError after ``timeout_s``."""
    started = time.monotonic()
    while not condition():
        if time.monotonic() - started > timeout_s:
            raise AssertionError(f"{what}: not after {timeout_s}s")
        time.sleep(0.005)
    return time.monotonic() - started


def routes(admin: AdminClient) -> list[tuple[str, int, float]]:
    return [(r["arm"], r["version"], r["weight"]) for r in admin.deployment("digits")["routes"]]


def test_a_change_through_any_replica_is_served_by_all_three_within_a_second(fleet):
    for via, version in ((1, 1), (2, 2), (0, 1), (0, 2)):
        fleet.admins[via].switch("digits", version, reason=f"via replica {via}")
        took = wait_until(_everywhere(fleet, "routes", [("stable", version, 1.0)]), 5,
                          f"switch to {version} via replica {via} on every replica")
        assert took < 1.0, f"applied on the last replica after {took:.3f}s"
        # What the replicas serve, not only what they report: a request naming no version.
        served = {r.infer_version(c) for r, c in zip(fleet.replicas, fleet.infer, strict=True)}
        assert served == {str(version)}
    # The audit log lives in etcd too: every change above, with its replica's caller.
    audit = _audit(fleet)
    assert [a["reason"] for a in audit[-4:]] == [f"via replica {i}" for i in (1, 2, 0, 0)]
    assert all(a["action"] == "switch" for a in audit[-4:])


def _audit(fleet: Fleet) -> list[dict]:
    import asyncio

    from sluice.server.fleet.etcd_store import EtcdDeploymentStore, EtcdLocation

    async def read() -> list[dict]:
        store = EtcdDeploymentStore(EtcdLocation.parse(fleet.url))
        try:
            return await store.read_audit()
        finally:
            await store.close()

    return asyncio.run(read())


def _everywhere(fleet: Fleet, field: str, want: object) -> Callable[[], bool]:
    """Whether every live replica reports ``want`` as digits' ``field`` (routes as tuples)."""
    def check() -> bool:
        for i in fleet.alive():
            got = (routes(fleet.admins[i]) if field == "routes"
                   else fleet.admins[i].deployment("digits")[field])
            if got != want:
                return False
        return True
    return check


def _race(fleet: Fleet, round_: int) -> dict[int, object]:
    """Replicas 0 and 1 point alias 'pick' at versions 1 and 2 at the same instant; each one's
    answer (the deployment) or error."""
    barrier = threading.Barrier(2)
    results: dict[int, object] = {}

    def change(i: int, version: int) -> None:
        barrier.wait()
        try:
            results[i] = fleet.admins[i].set_alias("digits", "pick", version,
                                                   reason=f"round {round_}")
        except SluiceClientError as exc:
            results[i] = exc

    threads = [threading.Thread(target=change, args=(i, v)) for i, v in ((0, 1), (1, 2))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    return results


def test_concurrent_conflicting_changes_one_wins_the_other_is_refused(fleet):
    conflicts = 0
    for round_ in range(8):
        results = _race(fleet, round_)
        won = [i for i, r in results.items() if isinstance(r, dict)]
        refused = [r for r in results.values() if isinstance(r, SluiceClientError)]
        assert won, f"round {round_}: both refused: {refused}"
        for exc in refused:
            assert exc.code == grpc.StatusCode.FAILED_PRECONDITION, exc
            assert "changed by another replica" in exc.details, exc.details
        # Whoever won last, every replica converges on what etcd holds.
        final = fleet.admins[won[-1]].deployment("digits")["aliases"]
        wait_until(_everywhere(fleet, "aliases", final), 5, "the aliases converge")
        if refused:
            conflicts += 1
            break
    assert conflicts, "no round of two simultaneous changes conflicted"
    fleet.admins[0].set_alias("digits", "pick", None, reason="cleanup")


def test_etcd_down_serving_goes_on_admin_fails_clearly_and_the_fleet_converges_after(fleet):
    stop = threading.Event()
    answered = [0, 0, 0]
    failures: list[str] = []

    def serve(i: int) -> None:
        while not stop.is_set():
            try:
                assert fleet.replicas[i].infer_version(fleet.infer[i]) == "2"
                answered[i] += 1
            except Exception as exc:  # every failure is the test's failure
                failures.append(f"replica {i}: {exc!r}")

    callers = [threading.Thread(target=serve, args=(i,)) for i in range(3)]
    for t in callers:
        t.start()
    try:
        fleet.etcd.stop()
        for replica in fleet.replicas:
            wait_until(lambda r=replica: r.metric(f"sluice_state_store_up{LEASE}") == 0.0, 5,
                       "sluice_state_store_up 0")
        started = time.monotonic()
        with pytest.raises(SluiceClientError) as refused:
            fleet.admins[1].switch("digits", 1, reason="during the outage")
        assert refused.value.code == grpc.StatusCode.UNAVAILABLE
        assert f"deployment state store etcd {fleet.etcd.endpoint}" in refused.value.details
        assert "/" not in refused.value.details.split("prefix")[0].replace(
            fleet.etcd.endpoint, "")  # no path before the prefix's name
        assert time.monotonic() - started < 5  # at once, not after retrying for long
        fleet.etcd.start()
        for replica in fleet.replicas:
            wait_until(lambda r=replica: r.metric(f"sluice_state_store_up{LEASE}") == 1.0, 10,
                       "sluice_state_store_up 1 after etcd is back")
    finally:
        stop.set()
        for t in callers:
            t.join(30)
    assert not failures, failures[:5]
    assert all(n > 0 for n in answered), answered
    fleet.admins[2].switch("digits", 1, reason="after the outage")
    wait_until(_everywhere(fleet, "routes", [("stable", 1, 1.0)]), 5,
               "the change after the outage on every replica")
    revisions = {r.metric(f"sluice_state_store_revision{LEASE}") for r in fleet.replicas}
    assert len(revisions) == 1, revisions
    fleet.admins[0].switch("digits", 2, reason="test baseline")


def _leaders(fleet: Fleet) -> list[int]:
    return [i for i in fleet.alive()
            if fleet.replicas[i].metric(f"sluice_canary_leader{LEASE}") == 1.0]


def _canary(fleet: Fleet) -> dict:
    return fleet.admins[fleet.alive()[0]].deployment("digits")["canary"] or {}


def test_the_leader_killed_mid_canary_another_resumes_it_at_the_same_step(fleet):
    wait_until(lambda: len(_leaders(fleet)) == 1, 10, "one canary driver")
    (leader,) = _leaders(fleet)
    other = next(i for i in fleet.alive() if i != leader)
    stop = threading.Event()
    failures: list[str] = []

    def traffic() -> None:  # the gates need candidate requests on whoever drives
        while not stop.is_set():
            for i in (0, 1, 2):
                try:
                    if i != leader or not killing.is_set():
                        fleet.replicas[i].infer_version(fleet.infer[i])
                except Exception as exc:
                    if i != leader or not killing.is_set():
                        failures.append(f"replica {i}: {exc!r}")

    killing = threading.Event()

    caller = threading.Thread(target=traffic)
    caller.start()
    try:
        # Started through a replica that does not drive: the driver picks it up from etcd.
        fleet.admins[other].start_canary("digits", 1, steps=[10, 50, 100], interval_s=1.0,
                                         min_requests=5, max_p99_ratio=100.0,
                                         reason="fleet canary")
        wait_until(lambda: _canary(fleet).get("step") == 1, 15, "the canary at step 1 (50%)")
        killing.set()
        fleet.replicas[leader].kill()
        killed = time.monotonic()
        wait_until(lambda: len(_leaders(fleet)) == 1, 10, "a new canary driver")
        assert time.monotonic() - killed < 2 + 2.5  # the lease (2 s), plus a keep-alive's slack
        wait_until(lambda: _canary(fleet).get("state") != "running", 20, "the canary finished")
    finally:
        stop.set()
        caller.join(30)
    assert not failures, failures[:5]
    finished = _canary(fleet)
    assert finished["state"] == "promoted", finished["reason"]
    canary = [a for a in _audit(fleet) if a["action"].startswith("canary_")]
    since = max(i for i, a in enumerate(canary) if a["action"] == "canary_start")
    steps = [(a["action"], _step(a["before"]), _step(a["after"])) for a in canary[since + 1:]]
    # The driver that took over moved the canary on from step 1, where the dead one left it
    # (never back to step 0, never a rollback), then promoted it. (The dead driver's own audit
    # record of step 1 may be missing: it was killed between saving the step and auditing it.)
    assert steps[-2:] == [("canary_step", 1, 2), ("canary_promote", 2, 2)], steps
    assert steps[:-2] in ([], [("canary_step", 0, 1)]), steps
    fleet.admins[fleet.alive()[0]].switch("digits", 2, reason="test baseline")


def _step(state: dict) -> int | None:
    return (state.get("canary") or {}).get("step")


def test_a_replica_started_later_adopts_the_fleet_state_before_it_reports_ready(fleet):
    fleet.admins[fleet.alive()[0]].switch("digits", 1, reason="before the late replica")
    late = Replica(fleet.url).wait_listening()
    try:
        with tc.InferenceServerClient(late.address) as client:
            wait_until(client.is_server_ready, 60, "the late replica ready")
            # The first moment it says ready, it serves the fleet's state.
            assert late.infer_version(client) == "1"
        with AdminClient(late.address) as admin:
            assert routes(admin) == [("stable", 1, 1.0)]
    finally:
        late.stop()
    fleet.admins[fleet.alive()[0]].switch("digits", 2, reason="test baseline")
