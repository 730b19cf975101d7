"""The chunked quality window against a from-scratch reference: after any sequence of drains
(requests of 0..3 rows, ids reused), labels, and time passing, the window's figures are those
computed anew from the requests a one-request-at-a-time window would still hold and their latest
labels."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from sluice.server.config.model import ModelConfig
from sluice.server.monitoring.hub import Finished
from sluice.server.monitoring.quality import Label, QualityMonitor
from sluice.server.monitoring.quality_window import classification_metrics
from sluice.server.types import TensorSpec
from tests.support.fake_clock import FakeClock

CLASSES = 3
CONFIG = ModelConfig(name="clf", max_batch_size=8, outputs=(
    TensorSpec("label", "INT64", (1,)), TensorSpec("probabilities", "FP64", (CLASSES,))))


class Reference:
    """The window as the docstring of quality_window states it, one request at a time."""

    def __init__(self, rows: int, seconds: float) -> None:
        self.rows, self.seconds = rows, seconds
        #: [id, at, predicted, confidence, labels (None: none)] oldest first
        self.held: list[list] = []

    def evict(self, now: float) -> None:
        total = sum(len(r[2]) for r in self.held)
        while self.held:
            first = self.held[0]
            if first[1] < now - self.seconds or (
                    total - len(first[2]) >= self.rows and total > self.rows):
                total -= len(first[2])
                self.held.pop(0)
            else:
                break

    def add(self, rid: str, at: float, predicted: list[int], confidence: list[float]) -> None:
        self.held.append([rid, at, predicted, confidence, [None] * len(predicted)])
        self.evict(at)

    def label(self, rid: str, row: int | None, value: int) -> str:
        found = [r for r in self.held if r[0] == rid]
        if not found:
            return "unknown"
        request = found[-1]  # a reused id names its newest request
        if row is not None and row >= len(request[2]):
            return "invalid"
        for r in range(len(request[2])) if row is None else (row,):
            request[4][r] = value
        return "joined"

    def numbers(self) -> dict:
        predicted = [p for r in self.held for p in r[2]]
        confidence = [c for r in self.held for c in r[3]]
        pairs = [(lab, p) for r in self.held for p, lab in zip(r[2], r[4], strict=True)
                 if lab is not None]
        labelled_conf = [c for r in self.held for c, lab in zip(r[3], r[4], strict=True)
                         if lab is not None]
        hist = np.bincount(np.minimum((np.array(confidence) * 10).astype(int), 9),
                           minlength=10) if confidence else np.zeros(10, int)
        metrics = {}
        if predicted:
            metrics["labelled_share"] = len(pairs) / len(predicted)
            metrics["estimated_accuracy"] = float(np.mean(confidence))
        if pairs:
            metrics.update(classification_metrics(Counter(pairs))[1])
            metrics["estimated_accuracy_labelled"] = float(np.mean(labelled_conf))
            metrics["estimate_error"] = (metrics["estimated_accuracy_labelled"]
                                         - metrics["accuracy"])
        return {"predicted_rows": len(predicted), "labelled_rows": len(pairs),
                "confusion": sorted(Counter(pairs).items()),
                "confidence_histogram": hist.tolist(), "metrics": metrics}


def quality_on(model_dir: Path) -> Path:
    """``model_dir`` with a deployment.yaml that turns live quality on (the monitor's bounds)."""
    (model_dir / "deployment.yaml").write_text("quality: {}\n")
    return model_dir


def answer(rid: str, probabilities: np.ndarray) -> Finished:
    return Finished(id=rid, time=0.0, model="clf", version=1, arm="", caller="",
                    outputs={"label": probabilities.argmax(axis=1)[:, None],
                             "probabilities": probabilities}, inputs={}, latency_s=0.0)


@pytest.mark.parametrize("seed", range(4))
def test_the_window_after_random_drains_labels_and_time_is_the_reference(seed, tmp_path):
    rng = np.random.default_rng(seed)
    clock = FakeClock()
    rows, seconds = int(rng.integers(3, 30)), float(rng.integers(2, 8))
    quality = QualityMonitor(None, clock=clock, window_rows=rows, window_s=seconds)
    quality.model_loaded("clf", {1: CONFIG}, quality_on(tmp_path))
    reference = Reference(rows, seconds)
    ids = [f"r{i}" for i in range(40)]  # a small pool: ids come back
    for _step in range(120):
        action = rng.random()
        if action < 0.5:
            batch = []
            for _ in range(int(rng.integers(1, 9))):
                rid = str(rng.choice(ids))
                p = rng.dirichlet(np.ones(CLASSES), size=int(rng.integers(0, 4)))
                batch.append(answer(rid, p))
                reference.add(rid, clock.now, p.argmax(axis=1).tolist(),
                              p.max(axis=1).tolist() if len(p) else [])
            quality.on_finished(batch)
        elif action < 0.8:
            labels = [Label(str(rng.choice(ids)),
                            None if rng.random() < 0.5 else int(rng.integers(0, 3)),
                            int(rng.integers(0, CLASSES)))
                      for _ in range(int(rng.integers(1, 6)))]
            reference.evict(clock.now)
            outcomes = Counter(reference.label(lab.id, lab.row, int(lab.value))
                               for lab in labels)
            result = quality.feedback("clf", labels)
            assert (result.joined, result.unknown, result.invalid) == (
                outcomes["joined"], outcomes["unknown"], outcomes["invalid"])
        else:
            clock.advance(float(rng.random() * 3))
        reference.evict(clock.now)
        windows = quality.report("clf")["windows"]
        want = reference.numbers()
        if not windows:  # nothing answered yet
            assert want["predicted_rows"] == 0
            continue
        [got] = windows
        for key in ("predicted_rows", "labelled_rows", "confusion", "confidence_histogram"):
            assert got[key] == want[key], (key, _step)
        assert got["metrics"].keys() == want["metrics"].keys()
        for name, value in want["metrics"].items():
            assert got["metrics"][name] == pytest.approx(value, abs=1e-9), name


def test_scores_that_are_not_numbers_count_as_no_confidence_and_leave_with_their_rows(
        tmp_path):
    quality = QualityMonitor(None, clock=FakeClock(), window_rows=2, window_s=None)
    quality.model_loaded("clf", {1: CONFIG}, quality_on(tmp_path))
    nan = np.array([[np.nan, np.nan, np.nan]])
    quality.on_finished([answer("bad", nan), answer("a", np.array([[0.1, 0.8, 0.1]]))])
    [w] = quality.report("clf")["windows"]
    assert w["confidence_histogram"] == [1, 0, 0, 0, 0, 0, 0, 0, 1, 0]
    assert w["metrics"]["estimated_accuracy"] == pytest.approx(0.4)
    quality.on_finished([answer("b", np.array([[0.7, 0.2, 0.1]]))])  # "bad" leaves
    [w] = quality.report("clf")["windows"]
    assert w["metrics"]["estimated_accuracy"] == pytest.approx(0.75, abs=1e-12)
    assert w["confidence_histogram"] == [0, 0, 0, 0, 0, 0, 0, 1, 1, 0]
