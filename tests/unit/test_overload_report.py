"""The overload benchmark's CPU model: the fit recovers known costs, and the bound is the
goodput the cores allow (checked by hand), on synthetic phases."""

from __future__ import annotations

import pytest

from loadtests.overload_report import cpu_model


def phase(sent_s: float, ok_s: float, *, rpc_ms: float, compute_ms: float, gen_ms: float,
          duration_s: float = 2.0) -> dict:
    return {
        "duration_s": duration_s, "due": int(sent_s * duration_s), "generator_drops": 0,
        "ok": int(ok_s * duration_s),
        "server_cores": (sent_s * rpc_ms + ok_s * compute_ms) / 1e3,
        "generator_cores": sent_s * gen_ms / 1e3,
    }


def test_the_fit_recovers_the_costs_and_bounds_each_phase():
    costs = {"rpc_ms": 0.6, "compute_ms": 6.0, "gen_ms": 0.4}
    phases = {
        "0.5x": phase(150, 150, **costs),
        "1x": phase(300, 280, **costs),
        "3x": phase(900, 170, **costs),
        "5x": phase(1500, 90, **costs),
    }
    model = cpu_model(phases, capacity=300.0, cores=2)
    assert model["rpc_ms"] == pytest.approx(0.6, rel=1e-6)
    assert model["compute_ms"] == pytest.approx(6.0, rel=1e-6)
    assert model["generator_ms"] == pytest.approx(0.4, rel=1e-6)
    # 3x: 2 cores - 900/s * 1.0 ms leaves 1.1 cores, 6 ms each -> 183.3/s of C = 300.
    assert phases["3x"]["cpu_bound_of_capacity"] == pytest.approx(1.1 / 0.006 / 300)
    # 5x: 2 - 1.5 = 0.5 cores -> 83.3/s.
    assert phases["5x"]["cpu_bound_of_capacity"] == pytest.approx(0.5 / 0.006 / 300)
    # 0.5x: the cores allow more than is offered; the bound is the offered rate.
    assert phases["0.5x"]["cpu_bound_of_capacity"] == pytest.approx(0.5)
    # 1x: the cores would allow (2 - 0.3) / 0.006 = 283/s; the model's capacity is 300.
    assert phases["1x"]["cpu_bound_of_capacity"] == pytest.approx(1.7 / 0.006 / 300)
    # With a C measured below what the cores allow, the bound stops at C.
    capped = {name: dict(st) for name, st in phases.items()}
    cpu_model(capped, capacity=150.0, cores=2)
    assert capped["1x"]["cpu_bound_of_capacity"] == pytest.approx(1.0)


def test_without_cpu_readings_there_is_no_bound():
    phases = {name: phase(100 * k, 100, rpc_ms=1, compute_ms=5, gen_ms=0.5)
              for k, name in enumerate(("1x", "2x", "3x"), 1)}
    for st in phases.values():
        st["server_cores"] = None
    model = cpu_model(phases, capacity=100.0, cores=2)
    assert model["compute_ms"] is None
    assert all(st["cpu_bound_of_capacity"] is None for st in phases.values())
