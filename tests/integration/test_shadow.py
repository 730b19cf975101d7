"""Shadow execution through a real server: callers see only the live version, the comparison
reports the agreement computed here by hand, a failing candidate never fails a caller, and under
overload shadow work is shed while every live request is answered."""

from __future__ import annotations

import json
import os
import threading
import urllib.request
from collections import Counter

import grpc
import numpy as np
import pytest

from sluice.proto import grpc_service_pb2 as pb
from sluice.proto import grpc_service_pb2_grpc as pb_grpc
from sluice.proto.tensors import decode_outputs, make_input
from sluice.server.rollout.router import DeploymentState, Route
from tests.support.shadow_deploy import deploy_shadow, with_mirror
from tests.support.shadow_models import (
    CANDIDATE_SCALE,
    CLASSES,
    FAULT_TABLE,
    SLOW_WIDTH,
    classifier_repo,
    slow_pair_repo,
)


def fire(address: str, model: str, batches: list[np.ndarray]) -> list:
    """Send every batch at once; each reply (decoded outputs, version, params) or RpcError."""
    with grpc.insecure_channel(address) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        futures = []
        for x in batches:
            tensor, raw = make_input("IN_x", x)
            futures.append(stub.ModelInfer.future(pb.ModelInferRequest(
                model_name=model, inputs=[tensor], raw_input_contents=[raw])))
        out = []
        for future in futures:
            try:
                reply = future.result()
                out.append((decode_outputs(reply), reply.model_version, reply.parameters))
            except grpc.RpcError as exc:
                out.append(exc)
        return out


@pytest.fixture
def clf_server(make_server, tmp_path):
    running = make_server(classifier_repo(tmp_path))
    yield running
    mirror = running.server.shadow
    if mirror is not None:
        running.call(mirror.close())


def test_callers_see_live_only_and_agreement_is_the_hand_computed_one(clf_server):
    mirror = with_mirror(clf_server, tolerance=0.3)
    deploy_shadow(clf_server, "clf", live=1, shadow=2)
    x = np.random.default_rng(11).uniform(0, 1, (120, CLASSES)).astype(np.float32)
    batches = np.split(x, 30)
    for reply, sent in zip(fire(clf_server.address, "clf", batches), batches, strict=True):
        assert not isinstance(reply, grpc.RpcError), reply
        outputs, version, _ = reply
        assert version == "1"
        np.testing.assert_array_equal(outputs["OUT_x"], sent)  # the live answer, never v2's
    clf_server.call(mirror.idle())

    shadow = x * CANDIDATE_SCALE
    ours, theirs = x.argmax(axis=1), shadow.argmax(axis=1)
    diff = np.abs(shadow.astype(np.float64) - x.astype(np.float64))
    [report] = mirror.report("clf")
    assert (report.live_version, report.shadow_version) == (1, 2)
    assert (report.mirrored, report.compared, report.shed, report.candidate_errors) == (
        30, 30, 0, 0)
    assert 0 < report.agreement < 1
    assert report.agreement == (ours == theirs).mean()
    assert report.flips == dict(Counter(
        f"{a}->{b}" for a, b in zip(ours, theirs, strict=True) if a != b))
    assert report.max_abs_diff == diff.max()
    assert report.within_tolerance == (diff.max(axis=1) <= 0.3).mean()
    json.dumps(report.to_json())
    # the candidate computed the copies on its background thread, at the lowest OS priority
    [thread] = [t for t in threading.enumerate() if t.name == "clf:2.shadow"]
    assert os.sched_getscheduler(thread.native_id) == os.SCHED_IDLE


def test_a_failing_candidate_never_fails_a_caller(clf_server):
    mirror = with_mirror(clf_server)
    deploy_shadow(clf_server, "clf", live=1, shadow=3)
    x = np.full((2, CLASSES), FAULT_TABLE + 1, np.float32)  # out of the faulty table: it fails
    replies = fire(clf_server.address, "clf", [x] * 20)
    assert all(not isinstance(r, grpc.RpcError) for r in replies), replies
    for outputs, version, _ in replies:
        assert version == "1"
        np.testing.assert_array_equal(outputs["OUT_x"], x)
    clf_server.call(mirror.idle())
    [report] = mirror.report("clf")
    assert (report.mirrored, report.candidate_errors, report.compared) == (20, 20, 0)
    assert report.candidate_error_rate == 1.0


@pytest.mark.slow
def test_under_overload_shadow_work_is_shed_before_any_live_request(make_server, tmp_path):
    """200 requests at once at a slow live version whose candidate is about ten times slower:
    every live request is answered (the live version sheds nothing) while the candidate's
    admission sheds shadow copies at the shadow level."""
    running = make_server(
        slow_pair_repo(tmp_path, live_rounds=1600, shadow_rounds=40000),
    )
    mirror = with_mirror(running, shadow_timeout_s=0.25)
    try:
        deploy_shadow(running, "slowpair", live=1, shadow=2)
        batches = [np.full((1, SLOW_WIDTH), i / 200, np.float32) for i in range(200)]
        replies = fire(running.address, "slowpair", batches)
        assert [r for r in replies if isinstance(r, grpc.RpcError)] == []
        running.call(mirror.idle())
        live = running.server.repository.get("slowpair", "1")
        candidate = running.server.repository.get("slowpair", "2")
        assert live.stats.shed == {} and live.stats.fail_count == 0
        [report] = mirror.report("slowpair")
        assert report.mirrored == 200 and report.shed > 0
        assert report.shed + report.compared == 200
        level = candidate.admission.policy.shadow_level
        # copies are shed waiting for the live version's idle time, or by the candidate's
        # admission; whatever the candidate shed was at the shadow level
        assert all(lvl == level for _, lvl in candidate.stats.shed)
    finally:
        running.call(mirror.close())


def test_comparison_and_canary_metrics_on_the_metrics_endpoint(make_server, tmp_path):
    running = make_server(classifier_repo(tmp_path), metrics_port=0)
    mirror = with_mirror(running)
    deploy_shadow(running, "clf", live=1, shadow=2)
    x = np.eye(CLASSES, dtype=np.float32)  # each row's argmax is its own index
    fire(running.address, "clf", [x] * 4)
    running.call(mirror.idle())
    [report] = mirror.report("clf")
    canary = {"id": "t", "state": "rolled_back", "stable": 1, "candidate": 2,
              "steps": [5.0, 50.0], "step": 1}
    state = DeploymentState(routes=(Route("v1", 1, 1.0),), canary=canary)
    running.call(running.server.router.change("clf", "test", state, caller="test"))
    url = f"http://127.0.0.1:{running.server.metrics.port}/metrics"
    text = urllib.request.urlopen(url, timeout=10).read().decode()
    pair = 'live_version="1",model="clf",shadow_version="2"'
    assert f"sluice_shadow_mirrored_total{{{pair}}} 4.0" in text
    assert f"sluice_shadow_compared_total{{{pair}}} 4.0" in text
    assert f"sluice_shadow_agreement{{{pair}}} {report.agreement!r}" in text
    assert ('sluice_shadow_latency_quantile_seconds{live_version="1",model="clf",'
            'quantile="0.99",shadow_version="2",side="shadow"}') in text
    versions = 'candidate_version="2",model="clf",stable_version="1"'
    assert f"sluice_canary_step_percent{{{versions}}} 50.0" in text
    assert f'sluice_canary_state{{{versions},state="rolled_back"}} 1.0' in text
    assert f'sluice_canary_state{{{versions},state="running"}} 0.0' in text
