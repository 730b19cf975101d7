"""GPU metrics through NVML on a machine with a GPU and ``nvidia-ml-py``: the collector's readings
against ``nvidia-smi``'s (an independent reader of the same driver). Skipped without either."""

from __future__ import annotations

import shutil
import subprocess

import pytest

pynvml = pytest.importorskip("pynvml", reason="nvidia-ml-py is not installed")
if shutil.which("nvidia-smi") is None:
    pytest.skip("nvidia-smi is missing: no NVIDIA driver here", allow_module_level=True)

from sluice.server.monitoring.gpu import GpuCollector  # noqa: E402


@pytest.mark.gpu
def test_memory_in_use_and_device_count_agree_with_nvidia_smi():
    out = subprocess.run(["nvidia-smi", "--query-gpu=index,memory.used,memory.total",
                          "--format=csv,noheader,nounits"], capture_output=True, text=True,
                         check=True, timeout=60).stdout
    smi = {int(i): int(used) / int(total)
           for i, used, total in (line.split(", ") for line in out.strip().splitlines())}
    samples = {(s.name, s.labels["gpu"]): s.value
               for family in GpuCollector().collect() for s in family.samples}
    assert {int(gpu) for name, gpu in samples if name == "sluice_gpu_memory_used_ratio"} == set(smi)
    for index, ratio in smi.items():
        # The two readings are a moment apart: another process may allocate in between.
        assert samples[("sluice_gpu_memory_used_ratio", str(index))] == pytest.approx(ratio,
                                                                                      abs=0.02)
        assert 0.0 <= samples[("sluice_gpu_utilization_ratio", str(index))] <= 1.0
        assert samples[("sluice_gpu_process_memory_bytes", str(index))] >= 0
