"""The train step's command: substitution, and the ways a command fails (real child processes)."""

from __future__ import annotations

import sys

import numpy as np
import pytest

from sluice.server.retrain.spec import TrainSpec
from sluice.server.retrain.trainer import TrainingFailed, command_line, run_trainer


def test_placeholders_are_substituted_in_every_argument(tmp_path):
    spec = TrainSpec(command=("{python}", "t.py", "--in={data}", "{output}", "{model}"),
                     python="/opt/venv/bin/python")
    argv = command_line(spec, python=None, data=tmp_path / "d.npz", output=tmp_path / "m.onnx",
                        model="digits")
    assert argv == ["/opt/venv/bin/python", "t.py", f"--in={tmp_path}/d.npz",
                    f"{tmp_path}/m.onnx", "digits"]
    assert command_line(spec, python="/other", data=tmp_path, output=tmp_path,
                        model="m")[0] == "/other"  # the command line's --python wins
    assert command_line(TrainSpec(command=("{python}",)), python=None, data=tmp_path,
                        output=tmp_path, model="m") == [sys.executable]


def _run(tmp_path, *command: str, timeout_s: float = 60.0):
    x, y = np.ones((3, 2), np.float32), np.array([0, 1, 0])
    return run_trainer(TrainSpec(command=command, timeout_s=timeout_s), model="m",
                       model_dir=tmp_path, work=tmp_path, x=x, y=y,
                       model_filename="model.onnx")


def test_the_command_gets_the_rows_and_its_file_comes_back(tmp_path):
    script = ("import sys, numpy as np; d = np.load(sys.argv[1]); "
              "open(sys.argv[2], 'w').write(str(d['X'].shape) + str(d['y'].tolist())); "
              "print('fitted')")
    trained = _run(tmp_path, "{python}", "-c", script, "{data}", "{output}")
    assert trained.model_file.read_text() == "(3, 2)[0, 1, 0]"
    assert trained.tail == "fitted"


def test_a_command_past_its_timeout_is_stopped(tmp_path):
    with pytest.raises(TrainingFailed, match=r"ran past train.timeout_s 0.5s and was stopped"):
        _run(tmp_path, "{python}", "-c", "import time; time.sleep(30)", timeout_s=0.5)


def test_a_command_that_does_not_exist_is_named(tmp_path):
    with pytest.raises(TrainingFailed, match="command not found: 'no-such-trainer'"):
        _run(tmp_path, "no-such-trainer")
