"""GPU utilisation and memory on /metrics, through NVML (``nvidia-ml-py``), when there is one.

Optional twice over: without the ``pynvml`` module (``pip install nvidia-ml-py``) or without an
NVIDIA driver and device, the collector says so once in the log and exports nothing. NVML is
first touched at the first scrape, never at import or construction (importing ``sluice.server``
touches no GPU).

Exported per device index (``gpu``):
- ``sluice_gpu_utilization_ratio``: share of the last sample period a kernel ran (0..1);
- ``sluice_gpu_memory_used_ratio``: device memory in use, all processes, over the total;
- ``sluice_gpu_process_memory_bytes``: device memory this process holds (sums across
  ``--workers``, unlike the device-wide figures, which is why those are ratios, not bytes).
"""

from __future__ import annotations

import importlib
import logging
import os
import threading
from collections.abc import Iterable
from typing import Any

from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

log = logging.getLogger(__name__)


class GpuCollector(Collector):
    """NVML readings per device; nothing when NVML or a device is missing."""

    def __init__(self, module: str = "pynvml") -> None:
        self._module_name = module
        self._nvml: Any = None
        #: None: not tried yet; then whether NVML answered.
        self.available: bool | None = None
        self._lock = threading.Lock()

    def _open(self) -> Any:
        with self._lock:
            if self.available is None:
                try:
                    nvml = importlib.import_module(self._module_name)
                    nvml.nvmlInit()
                    self._nvml = nvml
                    self.available = True
                except Exception as exc:  # no module, no driver, no device: all "no GPU"
                    self.available = False
                    log.info("no GPU metrics: NVML unavailable (%s)", type(exc).__name__)
            return self._nvml if self.available else None

    def collect(self) -> Iterable[Metric]:
        nvml = self._open()
        if nvml is None:
            return
        util = GaugeMetricFamily("sluice_gpu_utilization_ratio",
                                 "Share of the last sample period a kernel ran on the GPU.",
                                 labels=["gpu"])
        used = GaugeMetricFamily("sluice_gpu_memory_used_ratio",
                                 "GPU memory in use by all processes over the device's total.",
                                 labels=["gpu"])
        mine = GaugeMetricFamily("sluice_gpu_process_memory_bytes",
                                 "GPU memory held by this process.", labels=["gpu"])
        pid = os.getpid()
        try:
            for index in range(nvml.nvmlDeviceGetCount()):
                handle = nvml.nvmlDeviceGetHandleByIndex(index)
                gpu = str(index)
                util.add_metric([gpu], nvml.nvmlDeviceGetUtilizationRates(handle).gpu / 100.0)
                memory = nvml.nvmlDeviceGetMemoryInfo(handle)
                if memory.total:
                    used.add_metric([gpu], memory.used / memory.total)
                held = sum(p.usedGpuMemory or 0
                           for p in nvml.nvmlDeviceGetComputeRunningProcesses(handle)
                           if p.pid == pid)
                mine.add_metric([gpu], held)
        except Exception as exc:  # a device that went away must not fail the scrape
            log.warning("GPU metrics incomplete: %s", type(exc).__name__)
        yield from (util, used, mine)
