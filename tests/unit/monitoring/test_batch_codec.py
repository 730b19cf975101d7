"""The hub's hand-off to the monitor process: a drain as bytes and back, field by field."""

from __future__ import annotations

import pickle

import numpy as np
import pytest

from sluice.server.monitoring.batch_codec import decode, encode
from sluice.server.monitoring.hub import Finished


def _answer(i: int, rows: int, *, model: str = "digits", status: str = "OK") -> Finished:
    rng = np.random.default_rng(i)
    return Finished(
        id=f"r{i}", time=1.7e9 + i * 1e-3, model=model, version=1 + i % 2,
        arm="candidate" if i % 5 == 0 else "", caller=f"c{i % 3}",
        outputs={"label": np.arange(rows, dtype=np.int64) + i,
                 "probabilities": rng.random((rows, 10), dtype=np.float32)}
        if status == "OK" else {},
        inputs={"pixels": rng.random((rows, 64), dtype=np.float32)},
        latency_s=0.001 * i, status=status,
    )


def _same(got: list[Finished], want: list[Finished], *, inputs: bool) -> None:
    assert len(got) == len(want)
    for g, w in zip(got, want, strict=True):
        assert (g.id, g.time, g.model, g.version, g.arm, g.caller, g.latency_s, g.status) == (
            w.id, w.time, w.model, w.version, w.arm, w.caller, w.latency_s, w.status)
        assert g.outputs.keys() == w.outputs.keys()
        for name, array in w.outputs.items():
            assert g.outputs[name].dtype == array.dtype
            np.testing.assert_array_equal(g.outputs[name], array)
        want_inputs = w.inputs if inputs else {}
        assert g.inputs.keys() == want_inputs.keys()
        for name, array in want_inputs.items():
            np.testing.assert_array_equal(g.inputs[name], array)


def test_600_answers_of_1_to_3_rows_come_back_equal() -> None:
    records = [_answer(i, 1 + i % 3) for i in range(600)]
    _same(decode(encode(records)), records, inputs=False)


def test_inputs_travel_only_for_the_models_named() -> None:
    records = [_answer(i, 2, model="digits" if i % 2 else "other") for i in range(40)]
    got = decode(encode(records, inputs=lambda model: model == "digits"))
    for g, w in zip(got, records, strict=True):
        _same([g], [w], inputs=w.model == "digits")


def test_failures_ragged_shapes_bytes_and_0d_arrays_travel_as_they_are() -> None:
    records = [_answer(i, 2) for i in range(6)]
    records[1] = _answer(1, 2, status="UNAVAILABLE")
    records[2].outputs["label"] = records[2].outputs["label"].astype(np.int32)  # a second dtype
    records[3].outputs["probabilities"] = np.zeros((2, 4), np.float32)  # a second row shape
    records[4].outputs["text"] = np.array([b"a", "\u00e9".encode()], dtype=object)
    records[5].outputs["score"] = np.float32(0.5) * np.ones((), np.float32)
    _same(decode(encode(records)), records, inputs=False)


def test_two_models_interleaved_keep_their_order() -> None:
    records = [_answer(i, 1, model=("a", "b", "a", "a")[i % 4]) for i in range(50)]
    _same(decode(encode(records)), records, inputs=False)


def test_an_empty_drain() -> None:
    assert decode(encode([])) == []


@pytest.mark.parametrize("data, cause", [
    (b"not a pickle", "not an encoded batch"),
    (pickle.dumps({"version": 99}), "batch format version 99 is not 1"),
    (pickle.dumps([1, 2]), "batch format version None is not 1"),
])
def test_garbage_is_refused_naming_the_cause(data: bytes, cause: str) -> None:
    with pytest.raises(ValueError, match=cause):
        decode(data)


def test_row_counts_that_do_not_match_are_refused() -> None:
    columns = pickle.loads(encode([_answer(i, 2) for i in range(3)]))
    kind, joined, rows, who = columns["outputs"]["label"]
    columns["outputs"]["label"] = (kind, joined, rows + 1, who)
    with pytest.raises(ValueError, match="tensor 'label': row counts"):
        decode(pickle.dumps(columns, protocol=5))
