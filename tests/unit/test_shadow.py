"""ShadowMirror against real ModelVersions (real ONNX models loaded by a ModelRepository in this
process): hand-computed agreement, a candidate with a real run-time fault, bounded queues and
in-flight copies, shadow-level shedding, and a close() that leaves nothing behind."""

from __future__ import annotations

import asyncio
import json
import random
import threading
import time
from collections import Counter
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pytest

from sluice.server.backends.ort import OrtBackend
from sluice.server.config.pbtxt import read_model_config
from sluice.server.errors import Overloaded, SluiceError
from sluice.server.rollout.comparison import compare, mismatch
from sluice.server.rollout.shadow import ShadowMirror
from sluice.server.serving.admission import SHADOW_PRIORITY
from sluice.server.serving.model import ModelVersion
from sluice.server.serving.repository import ModelRepository
from sluice.server.types import InferRequest, InferResponse
from tests.support.shadow_models import (
    CANDIDATE_SCALE,
    CLASSES,
    FAULT_TABLE,
    SLOW_WIDTH,
    classifier_repo,
    slow_pair_repo,
)


class Target(NamedTuple):  # duck-types sluice.server.rollout.deployment.ShadowTarget
    version: int
    sample: float


async def load(root: Path, name: str) -> ModelRepository:
    repo = ModelRepository(root, read_config=read_model_config, make_backend=OrtBackend)
    await repo.load(name)
    return repo


def lookup_in(repo: ModelRepository):
    def lookup(name: str, version: int) -> ModelVersion | None:
        try:
            return repo.get(name, str(version))
        except SluiceError:
            return None
    return lookup


@pytest.fixture
async def clf(tmp_path):
    repo = await load(classifier_repo(tmp_path), "clf")
    yield repo
    await repo.close(5)


@pytest.fixture
async def make_mirror(clf):
    """Mirrors over the ``clf`` repository; closed (and checked to leave nothing) at teardown,
    before the repository closes."""
    made: list[ShadowMirror] = []

    def factory(repo: ModelRepository | None = None, **kw) -> ShadowMirror:
        # copies wait for the live version's idle time: on a busy machine the default 1 s
        # deadline can run out, which the tests of shedding ask for explicitly
        kw.setdefault("shadow_timeout_s", 30.0)
        mirror = ShadowMirror(lookup_in(repo or clf), **kw)
        made.append(mirror)
        return mirror

    yield factory
    for mirror in made:
        await mirror.close()


async def serve(mirror: ShadowMirror, live: ModelVersion, x: np.ndarray, targets,
                **params) -> InferResponse:
    """What the servicer does: begin, live infer, finish (in a finally)."""
    request = InferRequest("clf", str(live.version), {"IN_x": x}, parameters=params)
    token = mirror.begin(live.name, live, request, targets)
    start = time.monotonic()
    response, error = None, None
    try:
        response = await live.infer(request)
        return response
    except BaseException as exc:
        error = exc
        raise
    finally:
        mirror.finish(token, response, error, time.monotonic() - start)


async def test_agreement_and_diffs_match_numpy(clf, make_mirror):
    mirror = make_mirror(tolerance=0.3)
    live = clf.get("clf", "1")
    x = np.random.default_rng(5).uniform(0, 1, (96, CLASSES)).astype(np.float32)
    for chunk in np.split(x, 24):
        response = await serve(mirror, live, chunk, (Target(2, 1.0),))
        np.testing.assert_array_equal(response.outputs["OUT_x"], chunk)  # live, never shadow
        assert response.model_version == "1"
    await mirror.idle()

    shadow = x * CANDIDATE_SCALE  # float32, as onnxruntime computes it
    ours, theirs = x.argmax(axis=1), shadow.argmax(axis=1)
    diff = np.abs(shadow.astype(np.float64) - x.astype(np.float64))
    flips = Counter(f"{a}->{b}" for a, b in zip(ours, theirs, strict=True) if a != b)
    assert len(flips) > 0 and (ours == theirs).any()  # the candidate disagrees on some rows
    [report] = mirror.report("clf")
    assert (report.model, report.live_version, report.shadow_version) == ("clf", 1, 2)
    assert (report.mirrored, report.compared, report.shed, report.candidate_errors) == (
        24, 24, 0, 0)
    assert report.candidate_error_rate == 0.0
    assert report.agreement == (ours == theirs).sum() / 96 and report.label_rows == 96
    assert report.flips == dict(flips)
    assert report.max_abs_diff == diff.max()
    assert report.mean_abs_diff == pytest.approx(diff.mean(), rel=1e-12)
    assert report.within_tolerance == (diff.max(axis=1) <= 0.3).mean()
    assert report.tolerance == 0.3
    assert None not in (report.live_p50_s, report.live_p99_s, report.shadow_p50_s,
                        report.shadow_p99_s)
    assert json.loads(json.dumps(report.to_json()))["flips"] == dict(flips)

    mirror.reset("clf", shadow_version=3)
    assert mirror.report("clf")
    mirror.reset("clf")
    assert mirror.report("clf") == []


async def test_failing_candidate_counts_errors_and_callers_never_see_them(clf, make_mirror):
    mirror = make_mirror()
    live = clf.get("clf", "1")
    x = np.full((2, CLASSES), FAULT_TABLE + 42, np.float32)  # an index out of the fault's table
    for _ in range(10):
        response = await serve(mirror, live, x, (Target(3, 1.0), Target(2, 1.0)))
        np.testing.assert_array_equal(response.outputs["OUT_x"], x)
    await mirror.idle()
    faulty, scaled = (next(r for r in mirror.report("clf") if r.shadow_version == v)
                      for v in (3, 2))
    assert (faulty.mirrored, faulty.candidate_errors, faulty.compared) == (10, 10, 0)
    assert faulty.candidate_error_rate == 1.0 and faulty.agreement is None
    assert faulty.last_candidate_error  # the backend's own message
    assert (scaled.candidate_errors, scaled.compared) == (0, 10)

    # finish() never raises: not even on a live failure or a token it never issued.
    request = InferRequest("clf", "1", {"IN_x": x})
    token = mirror.begin("clf", live, request, (Target(3, 1.0),))
    mirror.finish(token, None, RuntimeError("live failed"), 0.01)
    mirror.finish(("not a token",), None, None, 0.0)  # type: ignore[arg-type]
    mirror.finish(None, None, None, 0.0)
    await mirror.idle()
    faulty = next(r for r in mirror.report("clf") if r.shadow_version == 3)
    assert (faulty.live_errors, faulty.candidate_errors) == (1, 10)  # live failed: not judged


async def test_full_queue_sheds_at_once_and_counts(clf, make_mirror):
    mirror = make_mirror(max_queue=4)
    live = clf.get("clf", "1")
    x = np.eye(1, CLASSES, dtype=np.float32)  # class 0 for both versions
    request = InferRequest("clf", "1", {"IN_x": x})
    # No await between the calls: the consumer cannot run, so only the bound decides.
    tokens = [mirror.begin("clf", live, request, (Target(2, 1.0),)) for _ in range(10)]
    assert sum(t is not None for t in tokens) == 4
    response = await live.infer(request)
    for token in tokens:
        mirror.finish(token, response, None, 0.001)
    await mirror.idle()
    [report] = mirror.report("clf")
    assert (report.mirrored, report.shed, report.compared, report.agreement) == (10, 6, 4, 1.0)


async def test_candidate_admission_sheds_copies_at_the_shadow_level(tmp_path, make_mirror):
    repo = await load(classifier_repo(tmp_path / "q", queue=1), "clf")
    try:
        mirror = make_mirror(repo, max_inflight=8)
        live, candidate = repo.get("clf", "1"), repo.get("clf", "2")
        request = InferRequest("clf", "1", {"IN_x": np.ones((1, CLASSES), np.float32)})
        tokens = [mirror.begin("clf", live, request, (Target(2, 1.0),)) for _ in range(8)]
        response = await live.infer(request)
        for token in tokens:
            mirror.finish(token, response, None, 0.001)
        await mirror.idle()
        [report] = mirror.report("clf")
        # All eight copies reach admission in one loop turn; the shadow level holds one.
        assert (report.shed, report.compared, report.candidate_errors) == (7, 1, 0)
        level = candidate.admission.policy.shadow_level
        assert set(candidate.stats.shed) == {("queue_full", level)}
        await mirror.close()
    finally:
        await repo.close(5)


async def test_expired_copies_are_shed_not_run(clf, make_mirror):
    mirror = make_mirror(shadow_timeout_s=0.0)
    live = clf.get("clf", "1")
    for _ in range(3):
        await serve(mirror, live, np.ones((1, CLASSES), np.float32), (Target(2, 1.0),))
    await mirror.idle()
    [report] = mirror.report("clf")
    assert (report.mirrored, report.shed, report.compared) == (3, 3, 0)
    assert clf.get("clf", "2").stats.success_count == 0


async def test_copy_is_lowest_priority_with_its_own_deadline(clf, make_mirror):
    seen: list[InferRequest] = []
    candidate = clf.get("clf", "2")

    class Spy:  # observes what reaches the real candidate, which still does the work
        version = 2

        async def infer(self, request: InferRequest) -> InferResponse:
            seen.append(request)
            return await candidate.infer(request)

    mirror = ShadowMirror(lambda name, v: Spy() if v == 2 else None, shadow_timeout_s=0.5)
    try:
        live = clf.get("clf", "1")
        before = time.monotonic()
        await serve(mirror, live, np.ones((2, CLASSES), np.float32), (Target(2, 1.0),),
                    timeout=5_000_000, sticky_key="k")  # 5 s (us): the live answer fits
        await mirror.idle()
    finally:
        await mirror.close()
    [copy] = seen
    assert copy.priority == SHADOW_PRIORITY and copy.model_version == "2"
    assert copy.parameters == {"sticky_key": "k"}  # the caller's timeout is not the copy's
    assert before + 0.5 <= copy.deadline <= time.monotonic() + 0.5
    assert mirror.report("clf")[0].compared == 1


async def test_sampling_and_skipped_targets(clf, make_mirror):
    mirror = make_mirror(rng=random.Random(7), max_queue=1000)
    live = clf.get("clf", "1")
    request = InferRequest("clf", "1", {"IN_x": np.ones((1, CLASSES), np.float32)})
    targets = (Target(2, 0.25), Target(1, 1.0), Target(9, 1.0))  # live itself; not loaded
    tokens = [mirror.begin("clf", live, request, targets) for _ in range(400)]
    draws = random.Random(7)
    expected = sum(draws.random() < 0.25 for _ in range(400))
    assert sum(t is not None for t in tokens) == expected
    for token in tokens:
        mirror.finish(token, None, Overloaded("live shed", reason="queue_full"), 0.0)
    await mirror.idle()
    [report] = mirror.report("clf")
    assert (report.shadow_version, report.mirrored, report.live_errors) == (2, expected, expected)
    assert report.compared == 0 and report.candidate_errors == 0
    assert mirror.begin("clf", live, request, ()) is None


@pytest.mark.slow
async def test_in_flight_copies_are_bounded_and_close_leaves_nothing(tmp_path):
    repo = await load(slow_pair_repo(tmp_path, shadow_rounds=8000), "slowpair")
    mirror = ShadowMirror(lookup_in(repo), max_inflight=2, max_queue=64)
    try:
        live, candidate = repo.get("slowpair", "1"), repo.get("slowpair", "2")
        request = InferRequest("slowpair", "1", {"IN_x": np.ones((1, SLOW_WIDTH), np.float32)})
        tokens = [mirror.begin("slowpair", live, request, (Target(2, 1.0),)) for _ in range(8)]
        response = await live.infer(request)
        for token in tokens:
            mirror.finish(token, response, None, 0.001)
        peak = 0
        while (report := mirror.report("slowpair")[0]).compared + report.shed < 3:
            stats = candidate.queue_stats()
            computing = stats["busy_instances"] + stats["background_requests"]
            peak = max(peak, stats["queued_requests"] + computing)
            await asyncio.sleep(0.002)
        assert 1 <= peak <= 2
        await mirror.close()  # copies still queued and running are cancelled
        ours = [t for t in asyncio.all_tasks() if t.get_name().startswith("shadow:")]
        assert ours == []
        assert not [t for t in threading.enumerate() if t.name == "sluice-shadow-compare"]
        assert mirror.begin("slowpair", live, request, (Target(2, 1.0),)) is None
    finally:
        await mirror.close()
        await repo.close(5)


@pytest.mark.slow
async def test_under_overload_shadow_is_shed_and_live_is_not(tmp_path):
    """A flood at a slow live model whose candidate is ten times slower: every live request is
    answered while the candidate sheds shadow copies (deadline or queue), never the reverse."""
    repo = await load(slow_pair_repo(tmp_path, live_rounds=1600, shadow_rounds=40000),
                      "slowpair")
    mirror = ShadowMirror(lookup_in(repo), max_queue=256, max_inflight=16, shadow_timeout_s=0.25)
    try:
        live, candidate = repo.get("slowpair", "1"), repo.get("slowpair", "2")

        async def one(i: int) -> InferResponse:
            x = np.full((1, SLOW_WIDTH), i / 200, np.float32)
            request = InferRequest("slowpair", "1", {"IN_x": x})
            token = mirror.begin("slowpair", live, request, (Target(2, 1.0),))
            start = time.monotonic()
            response = await live.infer(request)
            mirror.finish(token, response, None, time.monotonic() - start)
            return response

        results = await asyncio.gather(*(one(i) for i in range(200)), return_exceptions=True)
        assert not [r for r in results if isinstance(r, BaseException)]
        await mirror.idle()
        [report] = mirror.report("slowpair")
        assert live.stats.shed == {} and live.stats.fail_count == 0
        assert report.mirrored == 200 and report.shed > 0
        assert report.shed + report.compared == 200 and report.candidate_errors == 0
        shadow_level = candidate.admission.policy.shadow_level
        assert all(level == shadow_level for _, level in candidate.stats.shed)
    finally:
        await mirror.close()
        await repo.close(5)


# -- comparison semantics (pure numpy) ----------------------------------------------------------


def test_integer_and_bytes_labels_compare_per_row():
    live = {"label": np.array([1, 2, 3, 4]), "name": np.array([b"a", b"b"], dtype=object)}
    shadow = {"label": np.array([1, 5, 3, 5]), "name": np.array([b"a", b"c"], dtype=object)}
    delta = compare(live, shadow, 0.1)
    assert (delta.label_rows, delta.agree) == (4, 2)  # the first label output only
    assert delta.flips == {"2->5": 1, "4->5": 1} and delta.rows == 0
    words = compare({"w": np.array([b"cat", b"dog"], dtype=object)},
                    {"w": np.array([b"cat", b"cow"], dtype=object)}, 0.1)
    assert words.flips == {"dog->cow": 1}
    rows = compare({"t": np.array([[1, 2], [3, 4]])}, {"t": np.array([[1, 2], [3, 5]])}, 0.1)
    assert (rows.label_rows, rows.agree, rows.flips) == (2, 1, {})


def test_single_score_outputs_give_diffs_but_no_labels():
    live = {"score": np.array([[0.5], [0.25], [np.nan]], np.float32)}
    shadow = {"score": np.array([[0.5], [0.75], [np.nan]], np.float32)}
    delta = compare(live, shadow, 0.1)
    assert delta.label_rows == 0 and (delta.rows, delta.within) == (3, 2)
    assert (delta.abs_max, delta.abs_sum, delta.elements) == (0.5, 0.5, 3)
    nan = compare({"s": np.array([[1.0, np.nan]])}, {"s": np.array([[1.0, 2.0]])}, 0.1)
    assert nan.abs_max == np.inf and nan.within == 0


def test_rows_within_tolerance_take_the_worst_output():
    live = {"a": np.zeros((2, 3), np.float32), "b": np.zeros((2, 1), np.float32)}
    shadow = {"a": np.array([[0, 0, 0], [0, 0.05, 0]], np.float32),
              "b": np.array([[0.5], [0]], np.float32)}
    delta = compare(live, shadow, 0.1)
    assert (delta.rows, delta.within) == (2, 1)  # row 0 is out through "b"


def test_mismatched_outputs_are_named():
    a = {"y": np.zeros((2, 3), np.float32)}
    assert mismatch(a, {"y": np.zeros((2, 3), np.float16)}) is None
    assert "shape" in mismatch(a, {"y": np.zeros((2, 4), np.float32)})
    assert "dtype" in mismatch(a, {"y": np.zeros((2, 3), np.int64)})
    assert "no output 'y'" in mismatch(a, {})


async def test_copies_wait_for_the_live_version_to_be_idle(clf, make_mirror):
    mirror = make_mirror(shadow_timeout_s=30.0)
    live, candidate = clf.get("clf", "1"), clf.get("clf", "2")
    x = np.ones((2, CLASSES), np.float32)
    response = await serve(mirror, live, x, (Target(2, 1.0),))
    await mirror.idle()
    ran = candidate.stats.success_count
    assert ran == 1
    live.idle.clear()  # as while a live request is queued or computing
    request = InferRequest("clf", "1", {"IN_x": x})
    token = mirror.begin(live.name, live, request, (Target(2, 1.0),))
    mirror.finish(token, response, None, 0.001)  # the same input: the same live answer
    for _ in range(50):
        await asyncio.sleep(0.002)
    assert candidate.stats.success_count == ran  # the copy waits for live's idle time
    live.idle.set()
    await mirror.idle()
    assert candidate.stats.success_count == ran + 1
    [report] = mirror.report("clf")
    assert (report.mirrored, report.compared, report.shed) == (2, 2, 0)
