"""A drain kept as columns (:mod:`sluice.server.monitoring.drained`): records read back as they
were offered, views and groups pick the right ones, the codec encodes any of them straight from
the columns, and the hub keeps inputs only for the share someone asked for."""

from __future__ import annotations

import numpy as np
import pytest

from sluice.server.monitoring.batch_codec import decode, encode
from sluice.server.monitoring.drained import Drained
from sluice.server.monitoring.hub import MonitorHub
from tests.unit.monitoring.test_batch_codec import _answer, _same


def _mixed() -> list:
    """Two models interleaved, failures, and outputs that cannot join their buffer."""
    records = [_answer(i, 1 + i % 3, model=("a", "b", "a", "a")[i % 4]) for i in range(40)]
    records[1] = _answer(1, 2, model="b", status="UNAVAILABLE")
    records[2].outputs["label"] = records[2].outputs["label"].astype(np.int32)  # another dtype
    records[3].outputs["probabilities"] = np.zeros((2, 4), np.float32)  # another row shape
    records[4].outputs["text"] = np.array([b"a", "\u00e9".encode()], dtype=object)
    records[5].outputs["score"] = np.ones((), np.float32)  # 0-d
    records[6].outputs["probabilities"] = np.ones((3, 20), np.float32)[:, ::2]  # not one block
    return records


def test_records_read_back_as_they_were_offered() -> None:
    records = _mixed()
    drained = Drained.of(records)
    assert len(drained) == 40
    _same(list(drained), records, inputs=True)
    _same([drained[7], drained[-1]], [records[7], records[-1]], inputs=True)
    assert drained[4].outputs["text"] is records[4].outputs["text"]  # objects kept as they are
    with pytest.raises(IndexError, match="record 40 of 40"):
        drained[40]


def test_views_slices_and_groups_hold_the_right_records() -> None:
    records = _mixed()
    drained = Drained.of(records)
    odd = drained.view(range(1, 40, 2))
    _same(list(odd), records[1::2], inputs=True)
    _same(list(odd.view([0, 3])), [records[1], records[7]], inputs=True)
    _same(list(drained[10:14]), records[10:14], inputs=True)
    groups = drained.groups()
    assert set(groups) == {("a", 1), ("a", 2), ("b", 2)}  # "b" at odd i: version 2
    for (model, version), group in groups.items():
        _same(list(group), [r for r in records if (r.model, r.version) == (model, version)],
              inputs=True)
    by_arm = drained.groups(by_arm=True)
    assert sum(len(g) for g in by_arm.values()) == 40 and ("a", 1, "candidate") in by_arm
    assert drained.models() == {"a": 30, "b": 10}
    assert odd.models() == {"b": 10, "a": 10}
    single = Drained.of([_answer(i, 1, model="a") for i in range(0, 20, 2)])  # version 1 only
    assert single.groups() == {("a", 1): single}  # one run: the drain itself, no view


@pytest.mark.parametrize("indices", [None, list(range(0, 40, 3)), [5, 4, 6], []])
def test_the_codec_encodes_a_drain_or_a_view_as_it_encodes_the_records(indices) -> None:
    records = _mixed()
    drained = Drained.of(records)
    part = drained if indices is None else drained.view(indices)
    want = records if indices is None else [records[i] for i in indices]
    _same(decode(encode(part)), want, inputs=False)
    named = decode(encode(part, inputs=lambda model: model == "a"))
    for got, w in zip(named, want, strict=True):
        _same([got], [w], inputs=w.model == "a")


def test_a_drain_without_loose_outputs_travels_joined() -> None:
    import pickle

    records = [_answer(i, 1 + i % 3) for i in range(30)]
    columns = pickle.loads(encode(Drained.of(records)))
    kind, joined, rows, who = columns["outputs"]["probabilities"]
    assert kind == "joined" and who is None and rows.tolist() == [1 + i % 3 for i in range(30)]
    np.testing.assert_array_equal(joined, np.concatenate(
        [r.outputs["probabilities"] for r in records]))


def _offered(hub: MonitorHub, n: int) -> Drained:
    got: list[Drained] = []
    hub.subscribe("s", got.append)
    for i in range(n):
        hub.offer(_answer(i, 1, model="m"))
    hub.drain()
    hub._subscribers.clear()
    return got[0]


def test_the_hub_keeps_inputs_for_the_largest_share_asked_for() -> None:
    hub = MonitorHub()
    assert not _offered(hub, 50).with_inputs()  # nobody asked
    hub.want_inputs("drift", "m", 0.25)
    kept = len(_offered(hub, 4000).with_inputs())
    assert 860 <= kept <= 1140  # 1,000 expected; 5 standard deviations (27) either side
    hub.want_inputs("log", "m", 1.0)
    assert hub.inputs_rate("m") == 1.0
    drained = _offered(hub, 100)
    assert drained.with_inputs() == list(range(100))
    _same(list(drained), [_answer(i, 1, model="m") for i in range(100)], inputs=True)
    hub.want_inputs("log", "m", 0.0)
    assert hub.inputs_rate("m") == 0.25
    hub.want_inputs("drift", "m", 0.0)
    assert hub.inputs_rate("m") == 0.0 and not _offered(hub, 50).with_inputs()


def test_a_record_that_cannot_be_kept_is_counted_and_the_columns_stay_aligned() -> None:
    hub = MonitorHub()
    got: list[Drained] = []
    hub.subscribe("s", got.append)
    bad = _answer(1, 1, model="m")
    bad.time = "yesterday"  # type: ignore[assignment]  # never built so by the request path
    hub.offer(_answer(0, 1, model="m"))
    hub.offer(bad)
    hub.offer(_answer(2, 1, model="m"))
    assert hub.drain() == 2 and hub.dropped == {"m": 1}
    _same(list(got[0]), [_answer(0, 1, model="m"), _answer(2, 1, model="m")], inputs=False)
