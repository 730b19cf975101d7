"""loadtests.monitor_cost's summary: medians over rounds per (variant, checkout), and the extra
over the same checkout's ``off``; failed runs are left out."""

from __future__ import annotations

import pytest

from loadtests.monitor_cost import summarize


def run(n: int, checkout: str, variant: str, us: float) -> dict:
    return {"round": n, "checkout": checkout, "variant": variant, "us_per_request": us}


def test_medians_per_checkout_and_the_extra_over_its_own_off():
    runs = [
        run(1, "a", "off", 100), run(2, "a", "off", 120), run(3, "a", "off", 110),
        run(1, "a", "quality", 150), run(2, "a", "quality", 140), run(3, "a", "quality", 160),
        run(1, "b", "off", 90), run(2, "b", "off", 95),
        run(1, "b", "quality", 99), run(2, "b", "quality", 97),
        {"round": 3, "checkout": "b", "variant": "quality", "error": "Traceback ..."},
    ]
    off, quality, drift = summarize(runs, ["a", "b"], ["off", "quality", "drift"])
    assert off["a"]["us_per_request"] == 110 and off["b"]["us_per_request"] == 92.5
    assert quality["a"]["us_per_request"] == 150  # median of 150, 140, 160
    assert quality["a"]["extra_over_off_us"] == 40
    assert quality["b"]["extra_over_off_us"] == pytest.approx(98 - 92.5)
    assert quality["b"]["ratio_to_off"] == pytest.approx(98 / 92.5)
    assert drift["a"] == {"us_per_request": None, "extra_over_off_us": None,
                          "ratio_to_off": None}
