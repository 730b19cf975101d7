"""The monitor hub: every offered record reaches each subscriber once, in order, or is counted."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from sluice.server.monitoring.hub import DRAIN_BUCKETS, Finished, MonitorHub
from sluice.server.monitoring.prediction_metrics import HubCollector
from tests.support.threads import burn_cpu


def _record(i: int, model: str = "m") -> Finished:
    return Finished(
        id=str(i), time=0.0, model=model, version=1, arm="", caller="",
        outputs={"y": np.array([i])}, inputs={}, latency_s=0.001,
    )


def test_subscribers_get_every_record_once_in_order() -> None:
    hub = MonitorHub()
    seen_a: list[str] = []
    seen_b: list[str] = []
    hub.subscribe("a", lambda batch: seen_a.extend(r.id for r in batch))
    hub.subscribe("b", lambda batch: seen_b.extend(r.id for r in batch))
    for i in range(5):
        hub.offer(_record(i))
    assert hub.drain() == 5
    hub.offer(_record(5))
    assert hub.drain() == 1
    assert hub.drain() == 0
    assert seen_a == seen_b == [str(i) for i in range(6)]
    assert hub.delivered == 6


def test_a_full_queue_drops_and_counts_per_model() -> None:
    hub = MonitorHub(capacity=3)
    for i in range(5):
        hub.offer(_record(i, model="a" if i % 2 else "b"))
    assert sum(hub.dropped.values()) == 2
    assert hub.dropped == {"b": 1, "a": 1}  # records 3 (a) and 4 (b)
    assert hub.drain() == 3


def test_a_failing_subscriber_loses_its_batch_only() -> None:
    hub = MonitorHub()
    good: list[str] = []
    calls = 0

    def flaky(batch: list[Finished]) -> None:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise ValueError("disk full")

    hub.subscribe("flaky", flaky)
    hub.subscribe("good", lambda batch: good.extend(r.id for r in batch))
    hub.offer(_record(1))
    hub.drain()
    hub.offer(_record(2))
    hub.drain()
    assert good == ["1", "2"]
    assert hub.failures == {"flaky": 1}
    assert calls == 2


def test_the_thread_delivers_and_close_hands_over_the_rest() -> None:
    hub = MonitorHub(interval_s=0.01)
    got = threading.Event()
    seen: list[str] = []

    def sub(batch: list[Finished]) -> None:
        seen.extend(r.id for r in batch)
        got.set()

    hub.subscribe("s", sub)
    hub.start()
    hub.offer(_record(1))
    assert got.wait(10)
    hub.close()
    hub.offer(_record(2))  # after close: still queued, handed over by the next drain
    hub.drain()
    assert seen == ["1", "2"]


def test_watch_counts_interested_subscribers() -> None:
    hub = MonitorHub()
    assert not hub.wants("m")
    hub.watch("m")
    hub.watch("m")
    hub.unwatch("m")
    assert hub.wants("m")
    hub.unwatch("m")
    assert not hub.wants("m")


def test_grouped_keeps_arrival_order_within_each_model_version_and_arm() -> None:
    from sluice.server.monitoring.hub import grouped

    rng = np.random.default_rng(5)
    records = [Finished(id=str(i), time=0.0, model=f"m{m}", version=int(v), arm=f"a{a}",
                        caller="", outputs={}, inputs={}, latency_s=0.0)
               for i, (m, v, a) in enumerate(rng.integers(0, 2, size=(60, 3)))]
    for by_arm in (False, True):
        expected: dict[tuple, list[str]] = {}
        for r in records:
            key = (r.model, r.version, r.arm) if by_arm else (r.model, r.version)
            expected.setdefault(key, []).append(r.id)
        got = grouped(records, by_arm=by_arm)
        assert {k: [r.id for r in g] for k, g in got.items()} == expected
        assert list(got) == list(expected)  # groups in order of first arrival
    one = [_record(i) for i in range(4)]
    assert grouped(one) == {("m", 1): one} and grouped(one)[("m", 1)] is one
    assert grouped([]) == {}


def test_each_monitors_time_and_each_drains_length_are_counted() -> None:
    hub = MonitorHub()
    hub.subscribe("busy", lambda batch: burn_cpu(0.03))
    hub.subscribe("waits", lambda batch: time.sleep(0.03))
    hub.offer(_record(1))
    hub.drain()
    hub.drain()  # nothing queued: no subscriber called, no drain counted
    assert hub.cpu_seconds["busy"] >= 0.03
    assert hub.seconds["busy"] >= hub.cpu_seconds["busy"] * 0.99
    assert hub.seconds["waits"] >= 0.03 > hub.cpu_seconds["waits"]
    # one drain of >= 60 ms: counted once, past the 0.05 bound
    assert sum(hub.drains.counts) == 1
    assert sum(hub.drains.counts[:DRAIN_BUCKETS.index(0.05) + 1]) == 0
    assert hub.drains.total >= 0.06


def test_the_monitors_time_reaches_metrics() -> None:
    hub = MonitorHub()
    hub.subscribe("busy", lambda batch: burn_cpu(0.003))
    for i in range(3):
        hub.offer(_record(i))
        hub.drain()
    registry = CollectorRegistry(auto_describe=False)
    registry.register(HubCollector(hub))
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for f in text_string_to_metric_families(generate_latest(registry).decode())
               for s in f.samples}
    assert samples["sluice_monitor_cpu_seconds_total", (("monitor", "busy"),)] >= 0.009
    assert samples["sluice_monitor_seconds_total", (("monitor", "busy"),)] >= 0.009
    assert samples["sluice_monitor_drain_seconds_count", ()] == 3
    assert samples["sluice_monitor_drain_seconds_bucket", (("le", "0.001"),)] == 0
    assert samples["sluice_monitor_drain_seconds_bucket", (("le", "+Inf"),)] == 3
    assert samples["sluice_monitor_drain_seconds_sum", ()] == pytest.approx(hub.drains.total)
