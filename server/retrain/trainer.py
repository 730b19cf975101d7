"""The train step: the owner's command, run as a child process in the model's directory.

The rows go to the command as an ``.npz`` (``X``, ``y``) in a private work directory; the model
comes back as a file the command writes there (``{output}``). A command that exits non-zero, runs
past its timeout or writes nothing fails the step with its exit status and the last lines it
printed. The command's environment is ours; no shell is involved (each argument is passed as it
is, after substitution).
"""

from __future__ import annotations

import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from sluice.server.retrain.spec import TrainSpec

#: Lines of the command's output kept for the step's message and the log.
TAIL_LINES = 5


class TrainingFailed(RuntimeError):
    """The command failed; the message says how, with the tail of its output."""


@dataclass(frozen=True, slots=True)
class Trained:
    model_file: Path
    seconds: float
    #: The last lines the command printed (stdout and stderr together).
    tail: str


def command_line(spec: TrainSpec, *, python: str | None, data: Path, output: Path,
                 model: str) -> list[str]:
    """The command with ``{python}``, ``{data}``, ``{output}`` and ``{model}`` substituted;
    ``python`` (a command-line override) wins over ``train.python``, then sys.executable."""
    values = {"python": python or spec.python or sys.executable, "data": str(data),
              "output": str(output), "model": model}
    out = []
    for arg in spec.command:
        for key, value in values.items():
            arg = arg.replace("{" + key + "}", value)
        out.append(arg)
    return out


def run_trainer(spec: TrainSpec, *, model: str, model_dir: Path, work: Path, x: np.ndarray,
                y: np.ndarray, model_filename: str, python: str | None = None) -> Trained:
    """Write the rows, run the command, return the model file it wrote."""
    data = work / "train_rows.npz"
    np.savez(data, X=x, y=y)
    output = work / model_filename
    argv = command_line(spec, python=python, data=data, output=output, model=model)
    started = time.monotonic()
    try:
        done = subprocess.run(argv, cwd=model_dir, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True, errors="replace",
                              timeout=spec.timeout_s, check=False)
    except FileNotFoundError:
        raise TrainingFailed(f"command not found: {argv[0]!r}") from None
    except PermissionError:
        raise TrainingFailed(f"command not executable: {argv[0]!r}") from None
    except subprocess.TimeoutExpired as exc:
        tail = _tail(exc.output if isinstance(exc.output, str) else "")
        raise TrainingFailed(f"the command ran past train.timeout_s {spec.timeout_s:g}s and "
                             f"was stopped{_with(tail)}") from None
    seconds = time.monotonic() - started
    tail = _tail(done.stdout)
    if done.returncode != 0:
        raise TrainingFailed(f"the command exited with status {done.returncode}{_with(tail)}")
    if not output.is_file() or output.stat().st_size == 0:
        raise TrainingFailed(f"the command exited 0 but wrote no model ({{output}} = "
                             f"{model_filename}){_with(tail)}")
    return Trained(model_file=output, seconds=seconds, tail=tail)


def _tail(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return " | ".join(lines[-TAIL_LINES:])


def _with(tail: str) -> str:
    return f"; its last output: {tail}" if tail else "; it printed nothing"
