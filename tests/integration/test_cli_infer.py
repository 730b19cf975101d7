"""``sluice infer`` as a newcomer types it: given inputs are sent exactly, random ones only when
none is given (and the output says so), and every mistake in ``--input`` is one line naming the
problem, exit status 2, no traceback; a server-side error is exit status 1."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from sluice.server.cli import main as cli


@pytest.fixture
def url(bundled_server) -> list[str]:
    return ["--url", bundled_server.address]


def test_given_inputs_are_sent_and_random_ones_are_announced(url, tmp_path: Path, capsys):
    b = np.arange(16, dtype=np.float32).reshape(1, 16)
    with (tmp_path / "B.NPY").open("wb") as f:  # the suffix in any case
        np.save(f, b)
    assert cli(["infer", "add_sub", *url, "--input", f"INPUT0={[[1.0] * 16]}",
                "--input", f"INPUT1={tmp_path / 'B.NPY'}"]) == 0
    out = capsys.readouterr().out
    assert "random" not in out and "answered by add_sub version 1\n" in out
    assert "OUTPUT0 float32 [1, 16]" in out and "[[ 1.  2.  3." in out.replace("\n", " ")
    assert cli(["infer", "digits", *url, "--batch", "3"]) == 0
    out = capsys.readouterr().out
    # digits serves versions 1 and 2 and has no deployment here: the highest answers
    assert out.startswith("(random inputs: input [3, 64])\nanswered by digits version 2\n")
    assert "probabilities float32 [3, 10]" in out


@pytest.mark.parametrize(("args", "message"), [
    (["digits", "--input", "pixels=[[1,2]]"],
     "model 'digits' has no input 'pixels'; its inputs: input"),
    (["add_sub", "--input", f"INPUT0={[[1.0] * 16]}"],
     "model 'add_sub' also needs 'INPUT1'; give every input (INPUT0, INPUT1), or none for random "
     "ones"),
    (["digits", "--input", "input"],
     "--input 'input': expected NAME=file.npy or NAME=<JSON array>, e.g. --input "
     "'INPUT0=[[1,2,3]]'"),
    (["digits", "--input", "input=missing.npy"], "--input input: no file 'missing.npy'"),
    (["digits", "--input", "input=[[1,2"],
     "--input input: neither a .npy file nor a JSON array (Expecting ',' delimiter at column 6)"),
    (["digits", "--input", 'input=[["a"]]'],
     "--input input: its values are not FP32 (got <U1 [1, 1])"),
    (["digits", "--input", "input=[1]", "--input", "input=[2]"], "--input 'input' is given twice"),
])
def test_a_mistake_in_an_input_is_one_line_and_exit_2(url, capsys, args, message):
    assert cli(["infer", args[0], *url, *args[1:]]) == 2
    captured = capsys.readouterr()
    assert captured.err == f"sluice infer: {message}\n" and captured.out == ""


def test_an_unknown_model_is_a_runtime_error(url, capsys):
    assert cli(["infer", "nope", *url]) == 1
    err = capsys.readouterr().err
    assert err.startswith("sluice infer: [NOT_FOUND]") and "nope" in err and err[-1] == "\n"
    assert err.count("\n") == 1
