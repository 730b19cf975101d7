"""Live quality fed Finished records the way the hub hands them over, checked against numbers
worked out by hand and against scikit-learn."""

from __future__ import annotations

import math

import numpy as np
import pyarrow.parquet as pq
import pytest

from sluice.server.config.model import ModelConfig
from sluice.server.errors import ModelNotFound
from sluice.server.monitoring.feedback_log import FeedbackLog
from sluice.server.monitoring.hub import Finished, MonitorHub
from sluice.server.monitoring.quality import Label, QualityMonitor
from sluice.server.types import TensorSpec
from tests.support.fake_clock import FakeClock

CLASSIFIER = ModelConfig(name="clf", max_batch_size=8, outputs=(
    TensorSpec("label", "INT64", (1,)), TensorSpec("probabilities", "FP32", (3,))))
REGRESSOR = ModelConfig(name="reg", max_batch_size=8, outputs=(TensorSpec("y", "FP32", (1,)),))


def answer(rid: str, labels: list[int], probabilities: list[list[float]] | None = None, *,
           version: int = 1, arm: str = "", model: str = "clf") -> Finished:
    outputs = {"label": np.array(labels, np.int64)}
    if probabilities is None:  # one-hot at 0.8 on the predicted class
        probabilities = [[0.8 if c == k else 0.1 for c in range(3)] for k in labels]
    outputs["probabilities"] = np.array(probabilities, np.float32)
    return Finished(id=rid, time=0.0, model=model, version=version, arm=arm, caller="",
                    outputs=outputs, inputs={}, latency_s=0.001)


def monitor(*, clock=None, **settings) -> tuple[QualityMonitor, MonitorHub]:
    hub = MonitorHub()
    quality = QualityMonitor(hub, clock=clock or FakeClock(), **settings)
    quality.model_loaded("clf", {1: CLASSIFIER, 2: CLASSIFIER})
    quality.model_loaded("reg", {1: REGRESSOR})
    return quality, hub


def window(quality: QualityMonitor, model: str = "clf", version: int = 1, arm: str = ""):
    [found] = [w for w in quality.report(model)["windows"]
               if (w["version"], w["arm"]) == (version, arm)]
    return found


def test_accuracy_precision_recall_f1_and_confusion_are_the_hand_computed_ones():
    quality, hub = monitor()
    assert hub.wants("clf") and hub.wants("reg")
    # 8 requests of one row: predicted / true
    predicted = [0, 0, 1, 1, 2, 2, 2, 0]
    truth = [0, 1, 1, 1, 2, 0, 2, 0]
    quality.on_finished([answer(f"r{i}", [p]) for i, p in enumerate(predicted)])
    result = quality.feedback("clf", [Label(f"r{i}", None, t) for i, t in enumerate(truth)])
    assert (result.received, result.joined, result.unknown, result.invalid) == (8, 8, 0, 0)
    w = window(quality)
    # Class 0: predicted 3 times (r0, r1, r7), right twice; labelled 3 times (r0, r5, r7).
    # Class 1: predicted twice, right twice; labelled 3 times. Class 2: predicted 3, right 2,
    # labelled 2.
    precision = [2 / 3, 2 / 2, 2 / 3]
    recall = [2 / 3, 2 / 3, 2 / 2]
    f1 = [2 * p * r / (p + r) for p, r in zip(precision, recall, strict=True)]
    m = w["metrics"]
    assert m["accuracy"] == 6 / 8
    assert m["precision_macro"] == pytest.approx(sum(precision) / 3, abs=1e-15)
    assert m["recall_macro"] == pytest.approx(sum(recall) / 3, abs=1e-15)
    assert m["f1_macro"] == pytest.approx(sum(f1) / 3, abs=1e-15)
    assert [c["f1"] for c in w["classes"]] == pytest.approx(f1, abs=1e-15)
    assert [c["support"] for c in w["classes"]] == [3, 3, 2]
    assert dict(w["confusion"]) == {(0, 0): 2, (1, 0): 1, (1, 1): 2, (2, 2): 2, (0, 2): 1}
    assert (w["predicted_rows"], w["labelled_rows"], m["labelled_share"]) == (8, 8, 1.0)
    metrics = pytest.importorskip("sklearn.metrics")
    assert m["f1_macro"] == pytest.approx(metrics.f1_score(truth, predicted, average="macro"))
    assert m["precision_macro"] == pytest.approx(
        metrics.precision_score(truth, predicted, average="macro"))
    assert m["recall_macro"] == pytest.approx(
        metrics.recall_score(truth, predicted, average="macro"))


def test_labels_are_per_request_or_per_row_and_the_last_one_wins():
    quality, _ = monitor()
    quality.on_finished([answer("a", [0, 1, 2]), answer("b", [1])])
    first = quality.feedback("clf", [Label("a", None, 0)])  # all three rows say 0: 1 right
    assert window(quality)["metrics"]["accuracy"] == 1 / 3
    assert first.replaced_rows == 0
    # row 1 corrected to 1, then row 2 to 1 and again (last write) to 2: all right
    second = quality.feedback("clf", [Label("a", 1, 1), Label("a", 2, 1), Label("a", 2, 2)])
    assert second.replaced_rows == 3 and second.joined == 3
    w = window(quality)
    assert (w["metrics"]["accuracy"], w["labelled_rows"], w["predicted_rows"]) == (1.0, 3, 4)
    assert w["metrics"]["labelled_share"] == 3 / 4


def test_unknown_ids_are_counted_and_bad_labels_refused_one_by_one():
    quality, _ = monitor()
    quality.on_finished([answer("a", [0, 1])])
    result = quality.feedback("clf", [
        Label("nobody", None, 1), Label("", None, 1), Label("a", 2, 1), Label("a", None, 1.5),
        Label("a", None, 7), Label("a", -1, 0), Label("a", None, math.nan), Label("a", 1, 1),
    ])
    assert (result.received, result.joined, result.unknown, result.invalid) == (8, 1, 1, 6)
    assert result.errors == [
        (1, "", "id: a request id is required"),
        (2, "a", "row 2: request 'a' had 2 row(s)"),
        (3, "a", "label: a class id (a whole number) is expected, got 1.5"),
        (4, "a", "label: class 7 is not in 0..2"),
        (5, "a", "row: must be >= 0, got -1"),
        (6, "a", "label: must be a finite number, got nan"),
    ]
    assert window(quality)["labelled_rows"] == 1
    counts = quality.report("clf")["counts"]
    assert (counts["joined"], counts["unknown"], counts["invalid"]) == (1, 1, 6)
    with pytest.raises(ModelNotFound, match="model 'nope' is not loaded"):
        quality.feedback("nope", [Label("a", None, 1)])


def test_the_window_keeps_the_last_rows_and_the_last_seconds():
    clock = FakeClock()
    quality, _ = monitor(clock=clock, window_rows=4, window_s=10.0)
    quality.on_finished([answer(f"r{i}", [1]) for i in range(6)])  # r0, r1 pushed out
    result = quality.feedback("clf", [Label(f"r{i}", None, 1) for i in range(6)])
    assert (result.joined, result.unknown) == (4, 2)
    assert (window(quality)["predicted_rows"], window(quality)["labelled_rows"]) == (4, 4)
    clock.advance(5.0)
    quality.on_finished([answer("late", [0])])  # r2 goes (row bound), its label with it
    clock.advance(6.0)  # r3..r5 are now 11 s old: gone; "late" (6 s) stays
    w = window(quality)
    assert (w["predicted_rows"], w["labelled_rows"]) == (1, 0)
    assert quality.feedback("clf", [Label("r5", None, 1)]).unknown == 1


def test_versions_and_arms_have_windows_of_their_own():
    quality, _ = monitor()
    quality.on_finished([answer("s1", [1], version=1, arm="stable"),
                         answer("c1", [2], version=2, arm="candidate"),
                         answer("c2", [1], version=2, arm="candidate")])
    quality.feedback("clf", [Label("s1", None, 1), Label("c1", None, 1), Label("c2", None, 1)])
    assert window(quality, version=1, arm="stable")["metrics"]["accuracy"] == 1.0
    assert window(quality, version=2, arm="candidate")["metrics"]["accuracy"] == 0.5
    assert quality.accuracy("clf", "candidate", 2) == (0.5, 2)
    assert quality.accuracy("clf", "stable", 2) == (None, 0)


def test_mae_and_rmse_of_a_regressor_match_numpy():
    quality, _ = monitor()
    predicted = np.array([1.0, 2.5, -3.0, 4.0])
    truth = np.array([1.5, 2.0, -1.0, 4.0])
    quality.on_finished([Finished(id="x", time=0.0, model="reg", version=1, arm="", caller="",
                                  outputs={"y": predicted[:, None].astype(np.float32)},
                                  inputs={}, latency_s=0.0)])
    result = quality.feedback("reg", [Label("x", r, float(t)) for r, t in enumerate(truth)])
    assert result.joined == 4
    m = window(quality, "reg")["metrics"]
    assert m["mae"] == pytest.approx(np.abs(predicted - truth).mean(), rel=1e-12)
    assert m["rmse"] == pytest.approx(np.sqrt(((predicted - truth) ** 2).mean()), rel=1e-12)
    assert "accuracy" not in m


def test_the_estimate_is_the_mean_top_probability_and_stands_beside_the_measure():
    quality, _ = monitor()
    probs = [[0.9, 0.05, 0.05], [0.2, 0.7, 0.1], [0.3, 0.3, 0.4], [0.6, 0.3, 0.1]]
    quality.on_finished([answer("a", [0, 1, 2, 0], probs)])
    w = window(quality)
    assert w["metrics"]["estimated_accuracy"] == pytest.approx((0.9 + 0.7 + 0.4 + 0.6) / 4)
    assert "accuracy" not in w["metrics"]  # no label yet: the estimate alone
    # bins of width 0.1: 0.4 -> bin 4, 0.6 -> 6, 0.7 -> 7, 0.9 -> 9 (float32 rounding aside)
    assert sum(w["confidence_histogram"]) == 4
    quality.feedback("clf", [Label("a", 0, 0), Label("a", 1, 0)])  # rows 0 and 1: one right
    m = window(quality)["metrics"]
    assert m["accuracy"] == 0.5
    assert m["estimated_accuracy_labelled"] == pytest.approx((0.9 + 0.7) / 2)
    assert m["estimate_error"] == pytest.approx(0.8 - 0.5)


def test_logits_are_read_through_softmax():
    logits_model = ModelConfig(name="cnn", max_batch_size=8,
                               outputs=(TensorSpec("logits", "FP32", (3,)),))
    quality = QualityMonitor(None)
    quality.model_loaded("cnn", {1: logits_model})
    logits = np.array([[2.0, 0.0, -1.0], [0.0, 3.0, 1.0]], np.float32)
    quality.on_finished([Finished(id="z", time=0.0, model="cnn", version=1, arm="", caller="",
                                  outputs={"logits": logits}, inputs={}, latency_s=0.0)])
    soft = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    w = quality.report("cnn")["windows"][0]
    assert w["metrics"]["estimated_accuracy"] == pytest.approx(soft.max(axis=1).mean())
    quality.feedback("cnn", [Label("z", 0, 0), Label("z", 1, 2)])  # argmax 0 right, 1 wrong
    assert quality.report("cnn")["windows"][0]["metrics"]["accuracy"] == 0.5


def test_unreadable_answers_and_failures_are_skipped_and_counted():
    quality, _ = monitor()
    broken = answer("b", [0, 1])
    broken.outputs["probabilities"] = np.zeros((3, 3), np.float32)  # 3 rows vs 2 labels
    failed = answer("f", [0])
    failed.status = "UNAVAILABLE"
    quality.on_finished([broken, failed, answer("ok", [0])])
    assert window(quality)["predicted_rows"] == 1
    assert quality.report("clf")["counts"]["skipped_unreadable"] == 1


def test_feedback_goes_to_parquet_with_the_version_and_arm_it_joined(tmp_path):
    quality = QualityMonitor(None, feedback_log=FeedbackLog(tmp_path))
    quality.model_loaded("clf", {1: CLASSIFIER})
    quality.on_finished([answer("a", [1, 2], arm="stable")])
    result = quality.feedback("clf", [Label("a", None, 1), Label("gone", 0, 2)])
    assert (result.logged, result.log_error) == (2, "")
    [part] = (tmp_path / "feedback" / "model=clf").glob("date=*/part-*.parquet")
    table = pq.read_table(part).to_pydict()
    assert table["id"] == ["a", "gone"] and table["row"] == [None, 0]
    assert table["label"] == [1, 2] and table["value"] == [None, None]
    assert table["version"] == [1, None] and table["arm"] == ["stable", None]


def test_class_ids_past_the_log_column_are_refused_not_an_internal_error(tmp_path):
    """Found by the fuzz test: 9.2e18 as a class id overflowed the int64 column."""
    quality = QualityMonitor(None, feedback_log=FeedbackLog(tmp_path))
    ids_only = ModelConfig(name="ids", max_batch_size=8,
                           outputs=(TensorSpec("label", "INT64", (1,)),))  # classes unknown
    quality.model_loaded("ids", {1: ids_only})
    result = quality.feedback("ids", [Label("a", None, 2.0 ** 63), Label("b", None, -3)])
    assert result.invalid == 2 and result.logged == 0
    assert [e[2] for e in result.errors] == [
        "label: a class id is from 0 to 2^63-1, got 9.22337e+18",
        "label: a class id is from 0 to 2^63-1, got -3",
    ]


def test_a_model_without_a_quality_spec_logs_whole_labels_as_ids_and_others_as_values(tmp_path):
    quality = QualityMonitor(None, feedback_log=FeedbackLog(tmp_path))
    plain = ModelConfig(name="plain", max_batch_size=8, outputs=(
        TensorSpec("a", "FP32", (16,)), TensorSpec("b", "FP32", (16,))))
    quality.model_loaded("plain", {1: plain})
    assert quality.feedback("plain", [Label("x", None, 3), Label("y", None, 4)]).logged == 2
    assert quality.feedback("plain", [Label("x", None, 0.5),
                                      Label("y", None, 9.3e18)]).logged == 2
    tables = [pq.read_table(p).to_pydict()
              for p in sorted((tmp_path / "feedback" / "model=plain").glob("date=*/part-*"))]
    columns = sorted(((t["label"], t["value"]) for t in tables), key=lambda c: c[0][0] is None)
    assert columns == [([3, 4], [None, None]), ([None, None], [0.5, 9.3e18])]


def test_a_log_that_cannot_be_written_is_reported_without_its_path(tmp_path):
    blocked = tmp_path / "file"
    blocked.write_text("not a directory")
    quality = QualityMonitor(None, feedback_log=FeedbackLog(blocked))
    quality.model_loaded("clf", {1: CLASSIFIER})
    quality.on_finished([answer("a", [1])])
    result = quality.feedback("clf", [Label("a", None, 1)])
    assert result.joined == 1 and result.logged == 0
    assert result.log_error.startswith("labels not written to the feedback log: ")
    assert str(tmp_path) not in result.log_error
    assert quality.report("clf")["counts"]["log_failed"] == 1


def test_a_drained_batch_scored_together_gives_what_one_by_one_gives():
    """The hub's batch is scored per (version, arm) at once (one concatenation, a few numpy
    calls); an answer that is not batched alike (here a 1-D output) falls back to one by one.
    The window's figures and the confidence histogram must not depend on the batching."""
    rng = np.random.default_rng(5)
    answers = []
    for i in range(12):
        rows = int(rng.integers(1, 4))
        p = rng.dirichlet(np.ones(3), size=rows)
        answers.append(answer(f"q{i}", list(p.argmax(1)), p.tolist(), arm="a" if i % 3 else ""))
    odd = answer("odd", [1], [[0.2, 0.7, 0.1]])
    odd.outputs = {k: v.reshape(-1) for k, v in odd.outputs.items()}  # not batched alike
    together, _ = monitor()
    together.on_finished([*answers, odd])
    alone, _ = monitor()
    for record in [*answers, odd]:
        alone.on_finished([record])
    for arm in ("", "a"):
        a, b = window(together, arm=arm), window(alone, arm=arm)
        assert a == b
    mine = {r["model"]: r["confidence"] for r in together.reports()}["clf"]
    theirs = {r["model"]: r["confidence"] for r in alone.reports()}["clf"]
    assert mine.keys() == theirs.keys() == {(1, ""), (1, "a")}
    for key, (hist, total) in mine.items():
        assert hist.tolist() == theirs[key][0].tolist() and total == pytest.approx(theirs[key][1])
    assert sum(int(hist.sum()) for hist, _ in mine.values()) == (
        sum(len(r.outputs["label"]) for r in [*answers, odd]))
