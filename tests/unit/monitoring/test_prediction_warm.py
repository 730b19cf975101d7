"""The prediction and feedback logs never import pandas or ``pyarrow.compute`` into the serving
process, and a model's first row group imports nothing the model's load did not (requests of one
row and of several, whose ids repeat per row).

pyarrow's ``pa.array`` imports pandas (when installed, as in the test extras): ~400 modules, which
held the GIL for long stretches on the writer's first row group, and a serving process with pandas
in it answers with a wider tail (:mod:`sluice.server.monitoring.arrow_arrays`). Run in fresh
interpreters, since imports are process-wide; the control shows pandas is there to be imported.
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

warm = sys.argv[1] != "cold"
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
    y = np.ones((2, 4), np.float32)  # several rows a request: ids repeated per row
    log.on_finished([Finished(f"s{i}", time.time(), "m", 1, "", "", {"y": y[:1 + i % 2]},
                              {"x": y[:1 + i % 2]}, 1e-3) for i in range(10)])
    writer.flush()
    armed = False
    from sluice.server.monitoring.feedback_log import FeedbackLog, LoggedLabel
    failed = FeedbackLog(Path(root)).write("m", [LoggedLabel("r1", None, 3.0, 1, ""),
                                                 LoggedLabel("zz", 2, 1.0, None, None)],
                                           classifier=True)
    if sys.argv[1] == "control":
        import pyarrow as pa
        pa.array([1, 2])
    print(json.dumps({"on": on, "written": writer.written["m"], "late": sorted(set(late)),
                      "compute": "pyarrow.compute" in sys.modules,
                      "failed": failed, "pandas": "pandas" in sys.modules}))
"""


def _run(mode: str) -> dict:
    done = subprocess.run([sys.executable, "-c", _PROGRAM, mode], capture_output=True,
                          text=True, check=True, timeout=120)
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_a_model_loaded_with_logging_on_leaves_nothing_for_the_first_row_group_to_import():
    got = _run("warm")
    assert got["on"] and got["written"] == 20 and got["failed"] == ""
    assert got["late"] == []
    assert not got["pandas"]
    assert not got["compute"]  # Array.take's import: ~60 ms of the GIL on a first drain


def test_without_the_warm_up_neither_log_imports_pandas():
    got = _run("cold")
    assert got["on"] and got["written"] == 20 and got["failed"] == ""
    assert not got["pandas"] and not got["compute"]


def test_control_pa_array_imports_pandas_here():
    got = _run("control")
    assert got["written"] == 20
    assert got["pandas"]
