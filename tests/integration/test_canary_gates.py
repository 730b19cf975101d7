"""Canary gates judged on a real server's evidence: the shadow agreement gate reads the comparison
the server's own mirror made of two real model versions.

The controller is built the way the server builds its own (``CanaryController(router)``: no
shadow handed in, so it reads ``router.shadow``), with a fake clock whose ``sleep`` sends real
gRPC requests and waits for the mirror to compare their copies, so a step's evidence is known
before the step is judged and nothing depends on wall-clock time.
"""

from __future__ import annotations

import asyncio

import grpc
import numpy as np

from sluice.proto import grpc_service_pb2 as pb
from sluice.proto import grpc_service_pb2_grpc as pb_grpc
from sluice.proto.tensors import decode_outputs, make_input
from sluice.server.rollout.canary import CanaryController
from sluice.server.rollout.canary_plan import CANARY_CALLER, PROMOTED, ROLLED_BACK, CanaryGates
from sluice.server.rollout.router import DeploymentState, Route, ShadowTarget
from tests.support.shadow_deploy import deploy_shadow, with_mirror
from tests.support.shadow_models import classifier_repo

#: Both versions label this row 0: the candidate doubles column 3 (0.3 -> 0.6 < 0.9).
AGREE = [0.9, 0.1, 0.2, 0.3]
#: Live labels it 0; the candidate doubles column 3 (0.4 -> 0.8 > 0.5) and labels it 3.
FLIP = [0.5, 0.1, 0.2, 0.4]


def send(address: str, version: str, batches: list[np.ndarray]) -> list[str]:
    """Infer each batch on model ``clf`` naming ``version`` (an alias); the versions that
    answered. Every request must succeed and return its own rows (v1 is the identity)."""
    with grpc.insecure_channel(address) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        answered = []
        for x in batches:
            tensor, raw = make_input("IN_x", x)
            reply = stub.ModelInfer(pb.ModelInferRequest(
                model_name="clf", model_version=version, inputs=[tensor],
                raw_input_contents=[raw]))
            if reply.model_version == "1":
                np.testing.assert_array_equal(decode_outputs(reply)["OUT_x"], x)
            answered.append(reply.model_version)
        return answered


def canary_over_shadow(running, rows: np.ndarray) -> list[list[str]]:
    """Live v1 with every request mirrored to v2, then a canary of v2 (steps 50, 100; one tick
    of 1 s each) whose ticks send ``rows`` (2 per request) through the stable arm; the versions
    that answered, per tick and arm. The mirror is closed at the end (its reports stay)."""
    router, mirror = running.server.router, with_mirror(running)
    # Live v1, every request mirrored to v2; the canary keeps the shadow running.
    deploy_shadow(running, "clf", live=1, shadow=2)
    compared_rows = np.split(rows, len(rows) // 2)
    now = [0.0]
    answered: list[list[str]] = []

    async def sleep(seconds: float) -> None:
        """One tick of the step: the known rows through the stable arm (served by v1, mirrored
        to v2), 5 requests through the candidate arm (v2, not mirrored to itself)."""
        answered.append(await asyncio.to_thread(send, running.address, "stable", compared_rows))
        answered.append(await asyncio.to_thread(
            send, running.address, "candidate", [np.array([AGREE], np.float32)] * 5))
        await mirror.idle()
        now[0] += seconds

    canary = CanaryController(router, clock=lambda: now[0], sleep=sleep)
    # Latencies are real here, so the p99 gate is off; min_requests 5: one tick is judged.
    gates = CanaryGates(min_agreement=0.95, max_p99_ratio=None, min_requests=5)

    async def run_canary() -> None:
        await canary.start("clf", 2, steps=(50, 100), interval_s=1.0, gates=gates,
                           caller="test")
        await asyncio.gather(*canary._tasks)  # the driver ends with the canary
        await canary.close()

    try:
        running.call(run_canary())
    finally:
        running.call(mirror.close())
    return answered


def test_low_shadow_agreement_rolls_the_canary_back_naming_the_gate(make_server, tmp_path):
    running = make_server(classifier_repo(tmp_path))
    router, mirror = running.server.router, running.server.shadow
    # 20 requests of 2 rows: 34 rows both versions label 0, 6 rows the candidate labels 3.
    rows = np.array([AGREE] * 40, np.float32)
    rows[[3, 9, 16, 22, 30, 37]] = FLIP
    answered = canary_over_shadow(running, rows)

    reason = "gate agreement: shadow agreement 0.8500 < 0.95 over 20 comparisons"
    state = router.state("clf")
    assert state.canary["state"] == ROLLED_BACK and state.canary["reason"] == reason
    # One tick (stable's requests, then candidate's), judged at its end: rolled back on the
    # agreement gate alone.
    assert answered == [["1"] * 20, ["2"] * 5]
    assert state == DeploymentState(
        aliases=(("candidate", 2), ("stable", 1)), routes=(Route("stable", 1, 100.0),),
        shadows=(ShadowTarget(2, 1.0),), canary=state.canary)
    audit = running.server.store.read_audit()
    assert [r["action"] for r in audit] == ["shadow_start", "canary_start", "canary_rollback"]
    last = audit[-1]
    assert (last["caller"], last["reason"]) == (CANARY_CALLER, reason)
    assert last["before"]["canary"]["step"] == 0
    assert last["after"] == state.to_json()
    # The figures in the reason are the mirror's, and they are the ones computed above.
    [report] = mirror.report("clf")
    assert (report.live_version, report.shadow_version) == (1, 2)
    assert (report.mirrored, report.compared, report.shed, report.candidate_errors) == (
        20, 20, 0, 0)
    assert (report.label_rows, report.agreement, report.flips) == (40, 34 / 40, {"0->3": 6})


def test_a_promoted_candidate_is_no_longer_shadowed_and_its_comparisons_go(make_server,
                                                                            tmp_path):
    """The shadow of v2 held up (every row agreed) and the canary promoted v2: v2 answers
    everything, so the state no longer shadows it and the mirror no longer reports it."""
    running = make_server(classifier_repo(tmp_path))
    router = running.server.router
    answered = canary_over_shadow(running, np.array([AGREE] * 8, np.float32))
    state = router.state("clf")
    assert state.canary["state"] == PROMOTED
    assert (state.routes, state.shadows) == ((Route("stable", 2, 100.0),), ())
    assert running.server.shadow.report("clf") == []
    # Tick 1 at 50 %, tick 2 at 100 %: "stable" is v1 until the promotion.
    assert answered == [["1"] * 4, ["2"] * 5] * 2
    counts = {key: s.requests for key, s in router.arm_stats("clf").items()}
    assert counts == {("stable", 1): 8, ("candidate", 2): 10}
