"""Arrow's one-time work is done when a model's prediction log turns on, not on the writer's
first row group: pyarrow's first array imports pandas (when installed, as in the test extras),
~380 modules holding the GIL for long stretches, which stalled serving soon after traffic began.

Run in fresh interpreters, since imports are process-wide: a row group written after a model with
logging on has loaded imports nothing more; without the warm-up (the control) it imports pandas.
"""

from __future__ import annotations

import json
import subprocess
import sys

_PROGRAM = r"""
import asyncio, json, sys, tempfile, threading, time
from pathlib import Path
import numpy as np
from sluice.server.config.model import ModelConfig
from sluice.server.monitoring.hub import Finished, MonitorHub
from sluice.server.monitoring.prediction_log import PredictionLog
from sluice.server.monitoring.prediction_settings import LoggingSettings
from sluice.server.monitoring.prediction_writer import PredictionWriter
from sluice.server.types import TensorSpec

warm = sys.argv[1] == "warm"
config = ModelConfig(name="m", max_batch_size=8, inputs=(TensorSpec("x", "FP32", (4,)),),
                     outputs=(TensorSpec("y", "FP32", (4,)),))
late = []
armed = False

def hook(event, args):
    if armed and event == "import":
        late.append(args[0])

sys.addaudithook(hook)
with tempfile.TemporaryDirectory() as root:
    model_dir = Path(root) / "m"
    model_dir.mkdir()
    (model_dir / "deployment.yaml").write_text("logging: {sample: 1.0}\n")
    writer = PredictionWriter(Path(root) / "log", tag="t")
    log = PredictionLog(MonitorHub(), writer, LoggingSettings(None), lambda m, v: config)
    if warm:
        asyncio.run(log.model_dir_loaded("m", model_dir))
    else:
        from sluice.server.config.prediction_logging import LoggingConfig
        log.model_loaded("m", LoggingConfig(sample=1.0))
    on = log.config("m")[0].on
    armed = True
    y = np.ones((1, 4), np.float32)
    log.on_finished([Finished(f"r{i}", time.time(), "m", 1, "", "", {"y": y}, {"x": y}, 1e-3)
                     for i in range(10)])
    writer.flush()
    armed = False
    print(json.dumps({"on": on, "written": writer.written["m"], "late": sorted(set(late))}))
"""


def _run(mode: str) -> dict:
    done = subprocess.run([sys.executable, "-c", _PROGRAM, mode], capture_output=True,
                          text=True, check=True, timeout=120)
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_a_model_loaded_with_logging_on_leaves_nothing_for_the_first_row_group_to_import():
    got = _run("warm")
    assert got["on"] and got["written"] == 10
    assert got["late"] == []


def test_control_without_the_warm_up_the_first_row_group_imports_pandas():
    got = _run("cold")
    assert got["on"] and got["written"] == 10
    assert "pandas" in got["late"]
