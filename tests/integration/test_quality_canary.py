"""The accuracy gates of a canary, judged on live quality a real server measured: digits version 1
(logistic regression, 351/360 right on its held-out split) against version 2 (the MLP, 355/360).

As in test_canary_gates.py, the controller is built the way the server builds its own, with a
fake clock whose ``sleep`` is one tick of traffic: the whole held-out split through the stable
arm and through the candidate arm (90 requests of 4 rows each), then, unless told not to, the
true labels back by request id. Every number in a verdict is known before it is judged.
"""

from __future__ import annotations

import asyncio

import pytest
import tritonclient.grpc as tc

from sluice.clients import AdminClient
from sluice.server.rollout.canary import CanaryController
from sluice.server.rollout.canary_plan import PROMOTED, ROLLED_BACK, CanaryGates
from tests.integration.test_quality import X, Y, digits_repo

RIGHT = {1: 351, 2: 355}  # rows of the split each version labels right


def tick(address: str, tick_no: int, send_labels: bool) -> None:
    with tc.InferenceServerClient(address) as client:
        ids = []
        for arm in ("stable", "candidate"):
            for start in range(0, len(X), 4):
                given = tc.InferInput("input", [4, 64], "FP32")
                given.set_data_from_numpy(X[start:start + 4])
                rid = f"{tick_no}-{arm}-{start}"
                client.infer("digits", [given], model_version=arm, request_id=rid)
                ids += [(rid, r, int(Y[start + r])) for r in range(4)]
    if send_labels:
        with AdminClient(address) as admin:
            assert admin.feedback("digits", ids)["joined"] == len(ids)


def run_canary(running, stable: int, candidate: int, gates: CanaryGates,
               send_labels: bool = True) -> dict:
    router = running.server.router
    running.call(router.set_alias("digits", "stable", stable, caller="test"))
    now = [0.0]
    ticks = [0]

    async def sleep(seconds: float) -> None:
        ticks[0] += 1
        await asyncio.to_thread(tick, running.address, ticks[0], send_labels)
        now[0] += seconds

    canary = CanaryController(router, clock=lambda: now[0], sleep=sleep, max_extensions=1,
                              quality=running.server.monitors.quality.accuracy)

    async def go() -> None:
        await canary.start("digits", candidate, steps=(50, 100), interval_s=1.0, gates=gates,
                           caller="test")
        await asyncio.gather(*canary._tasks)
        await canary.close()

    running.call(go(), timeout=300)
    return router.state("digits").canary


@pytest.fixture
def running(make_server, tmp_path):
    return make_server(digits_repo(tmp_path / "models"))


def test_an_accuracy_drop_against_stable_rolls_the_canary_back(running):
    record = run_canary(running, 2, 1, CanaryGates(max_p99_ratio=None, min_requests=5,
                                                   max_accuracy_drop=0.005))
    stable, candidate = RIGHT[2] / 360, RIGHT[1] / 360
    assert record["state"] == ROLLED_BACK
    assert record["reason"] == (
        f"gate accuracy_drop: stable {stable:.4f} - candidate {candidate:.4f} = "
        f"{stable - candidate:.4f} > 0.005 over 360 / 360 labelled rows")
    assert running.server.monitors.quality.accuracy("digits", "candidate", 1) == (candidate, 360)


def test_a_candidate_under_min_accuracy_rolls_back(running):
    record = run_canary(running, 2, 1, CanaryGates(max_p99_ratio=None, min_requests=5,
                                                   min_accuracy=0.98))
    assert record["state"] == ROLLED_BACK
    assert record["reason"] == (f"gate min_accuracy: candidate accuracy {RIGHT[1] / 360:.4f} "
                                "< 0.98 over 360 labelled rows")


def test_a_better_candidate_passes_both_gates_and_is_promoted(running):
    record = run_canary(running, 1, 2, CanaryGates(max_p99_ratio=None, min_requests=5,
                                                   min_accuracy=0.98, max_accuracy_drop=0.0))
    assert record["state"] == PROMOTED
    # two steps, each judged on the windows so far: the candidate saw the split twice
    quality = running.server.monitors.quality
    assert quality.accuracy("digits", "candidate", 2) == (RIGHT[2] / 360, 720)


def test_without_labels_the_step_waits_then_rolls_back_for_lack_of_them(running):
    record = run_canary(running, 2, 1, CanaryGates(max_p99_ratio=None, min_requests=5,
                                                   min_accuracy=0.5), send_labels=False)
    assert record["state"] == ROLLED_BACK
    assert record["reason"] == ("gate min_labels: candidate 0 < 20 labelled rows after 2 "
                                "intervals")
    assert running.server.monitors.quality.accuracy("digits", "candidate", 1) == (None, 0)
