"""Cost per prediction: the CPU meter around ``run`` and the accountant's charges, with clocks
the test sets, checked against charges worked out by hand."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pytest

from sluice.server.monitoring.cost import CostAccountant, CostCollector
from sluice.server.serving.cpu_meter import CpuMeter


class Clocks:
    """A thread-CPU clock and a wall clock the test moves by hand."""

    def __init__(self) -> None:
        self.cpu = 0.0
        self.wall = 0.0


def meter(instances: int, clocks: Clocks) -> CpuMeter:
    return CpuMeter(instances, cpu_clock=lambda: clocks.cpu, wall_clock=lambda: clocks.wall)


def test_the_meter_adds_each_calls_thread_cpu_to_its_instance_even_when_run_raises():
    clocks = Clocks()
    cpu = meter(2, clocks)

    def run(instance, inputs):
        clocks.cpu += 0.25 * (instance + 1)
        clocks.wall += 0.5
        if "boom" in inputs:
            raise RuntimeError("model failed")
        return inputs

    timed = cpu.timed(run)
    x = {"x": np.zeros(1)}
    assert timed(0, x) is x
    timed(1, x)
    with pytest.raises(RuntimeError):
        timed(1, {"boom": np.zeros(1)})
    background = cpu.timed_background(lambda inputs: run(3, inputs))
    background(x)
    assert cpu.instance_cpu_s == [0.25, 1.0]  # 0.25; 0.5 + 0.5 (the raising call too)
    assert cpu.background_cpu_s == 1.0
    assert cpu.cpu_s == 2.25
    assert cpu.wall_s == 2.0


@dataclass
class FakeStats:
    inference_count: int = 0


@dataclass(eq=False)
class FakeVersion:
    """What the accountant reads of a ModelVersion: name, version, its meter, rows inferred."""

    name: str
    version: int
    cpu: CpuMeter
    stats: FakeStats = field(default_factory=FakeStats)


def test_shared_cpu_is_split_by_compute_wall_time_and_idle_cpu_is_charged_to_nobody():
    clocks = Clocks()
    a = FakeVersion("a", 1, meter(1, clocks))
    b = FakeVersion("b", 2, meter(1, clocks))
    process = [10.0]
    loaded = [a, b]
    accountant = CostAccountant(lambda: loaded, price_per_core_hour=0.09,
                                process_cpu=lambda: process[0])
    # Interval 1: a ran 0.3 s CPU in 1.0 s wall, b 0.1 s CPU in 3.0 s wall; the process used
    # 1.2 s. Shared = 1.2 - 0.4 = 0.8, split 1:3 -> a +0.2, b +0.6.
    a.cpu.instance_cpu_s[0], a.cpu.wall_s = 0.3, 1.0
    b.cpu.instance_cpu_s[0], b.cpu.wall_s = 0.1, 3.0
    a.stats.inference_count, b.stats.inference_count = 100, 400
    process[0] = 11.2
    first = {f.model: f for f in accountant.refresh()}
    assert first["a"].cpu_s == pytest.approx(0.5)
    assert first["b"].cpu_s == pytest.approx(0.7)
    assert first["a"].own_cpu_s == pytest.approx(0.3)
    assert first["a"].cpu_s_per_row == pytest.approx(0.005)
    assert first["b"].cpu_s_per_row == pytest.approx(0.00175)
    # 0.005 s/row * 1000 rows * 0.09 per core-hour / 3600 s = 0.000125
    assert first["a"].cost_per_1k == pytest.approx(0.000125)
    assert accountant.unattributed_s == 0.0
    # Interval 2: nothing computed, the process used 0.05 s: nobody is charged.
    process[0] = 11.25
    second = {f.model: f for f in accountant.refresh()}
    assert second["a"].cpu_s == pytest.approx(0.5)
    assert accountant.unattributed_s == pytest.approx(0.05)
    # Interval 3: only b computed (0.2 s own, 1 s wall); the process used 0.5 s: b gets all.
    b.cpu.instance_cpu_s[0], b.cpu.wall_s = 0.3, 4.0
    process[0] = 11.75
    third = {f.model: f for f in accountant.refresh()}
    assert third["a"].cpu_s == pytest.approx(0.5)
    assert third["b"].cpu_s == pytest.approx(1.2)
    # Every second the process spent is charged to a version or counted unattributed.
    assert third["a"].cpu_s + third["b"].cpu_s + accountant.unattributed_s == pytest.approx(1.75)


def test_own_cpu_above_the_process_share_is_never_charged_twice_nor_negative():
    clocks = Clocks()
    a = FakeVersion("a", 1, meter(2, clocks))
    process = [0.0]
    accountant = CostAccountant(lambda: [a], process_cpu=lambda: process[0])
    # Clock granularity can make the threads' sum exceed the process reading a little.
    a.cpu.instance_cpu_s[:] = [0.4, 0.2]
    a.cpu.wall_s = 0.7
    process[0] = 0.55
    (figures,) = accountant.refresh()
    assert figures.cpu_s == pytest.approx(0.6)
    assert figures.instance_cpu_s == (0.4, 0.2)
    assert figures.cpu_s_per_row is None and figures.cost_per_1k is None  # no rows yet


def test_a_version_loaded_again_starts_from_zero():
    clocks = Clocks()
    old = FakeVersion("a", 1, meter(1, clocks))
    loaded = [old]
    process = [0.0]
    accountant = CostAccountant(lambda: loaded, process_cpu=lambda: process[0])
    old.cpu.instance_cpu_s[0], old.cpu.wall_s, process[0] = 1.0, 1.0, 1.0
    assert accountant.refresh()[0].cpu_s == pytest.approx(1.0)
    new = FakeVersion("a", 1, meter(1, clocks))
    loaded[:] = [new]
    new.cpu.instance_cpu_s[0], new.cpu.wall_s, process[0] = 0.25, 0.5, 1.25
    assert accountant.refresh()[0].cpu_s == pytest.approx(0.25)


def test_the_collector_exports_counters_gauges_and_the_price():
    clocks = Clocks()
    a = FakeVersion("a", 3, meter(2, clocks))
    process = [0.0]
    accountant = CostAccountant(lambda: [a], price_per_core_hour=1.8,
                                process_cpu=lambda: process[0])
    a.cpu.instance_cpu_s[:] = [0.5, 0.25]
    a.cpu.background_cpu_s = 0.25
    a.cpu.wall_s = 1.0
    a.stats.inference_count = 500
    process[0] = 2.0
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for family in CostCollector(accountant).collect() for s in family.samples}
    key = (("model", "a"), ("version", "3"))
    assert samples[("sluice_model_cpu_seconds_total", key)] == pytest.approx(2.0)
    for instance, seconds in (("0", 0.5), ("1", 0.25), ("shadow", 0.25)):
        assert samples[("sluice_instance_cpu_seconds_total",
                        (("instance", instance), *key))] == seconds
    assert samples[("sluice_cpu_seconds_per_row", key)] == pytest.approx(0.004)
    # 0.004 s/row * 1000 * 1.8 / 3600 = 0.002
    assert samples[("sluice_cost_per_1k_predictions", key)] == pytest.approx(0.002)
    assert samples[("sluice_price_per_core_hour", ())] == 1.8
    assert samples[("sluice_unattributed_cpu_seconds_total", ())] == 0.0


def test_a_negative_price_is_refused():
    with pytest.raises(ValueError, match="price per core-hour must be >= 0, got -1"):
        CostAccountant(list, price_per_core_hour=-1)
