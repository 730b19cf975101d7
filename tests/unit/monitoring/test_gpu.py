"""GPU metrics are optional: without NVML (no ``pynvml`` module, as here, or no driver) the
collector exports nothing and a scrape still succeeds; NVML is first touched at the first scrape,
never when the server is built. The readings themselves run in tests/gpu on a machine with a GPU.
"""

from __future__ import annotations

import importlib.util

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from sluice.server.monitoring.gpu import GpuCollector


def test_without_nvml_nothing_is_exported_and_the_scrape_succeeds():
    collector = GpuCollector(module="sluice_no_such_nvml_module")
    assert collector.available is None  # not tried when built
    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)
    assert b"sluice_gpu" not in generate_latest(registry)
    assert collector.available is False
    assert list(collector.collect()) == []  # tried once; stays off without another import


@pytest.mark.skipif(importlib.util.find_spec("pynvml") is not None,
                    reason="pynvml is installed here: the GPU tests cover it")
def test_the_default_module_is_pynvml_and_its_absence_is_no_error():
    collector = GpuCollector()
    assert list(collector.collect()) == []
    assert collector.available is False
