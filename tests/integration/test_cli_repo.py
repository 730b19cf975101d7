"""``sluice repo index | load | unload`` through a real server over a copy of the bundled
repository: the table lists what the repository holds (read from disk here, independently of
the server), load and unload really change what is served, and every mistake is one line with
exit status 1 (the server refuses) or 2 (a usage error, found before any call)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from sluice.clients import Client
from sluice.server.cli import main as cli
from tests.support.bundled_inputs import random_inputs


@pytest.fixture
def server(make_server, repo_copy: Path):
    # digits (both versions) and identity at start; every other model is in the repository only
    return make_server(repo_copy, model_control="explicit", startup_models=("digits", "identity"))


def on_disk(repo: Path) -> dict[str, list[str]]:
    """model -> its version directories, from the file system."""
    return {
        model.name: sorted(v.name for v in model.iterdir() if v.name.isdigit())
        for model in repo.iterdir() if (model / "config.pbtxt").is_file()
    }


def test_index_lists_every_model_with_its_versions_in_aligned_columns(server, repo_copy, capsys):
    assert cli(["repo", "index", "--url", server.address]) == 0
    header, *lines = capsys.readouterr().out.splitlines()
    assert header.split() == ["model", "version", "state", "reason"]
    rows = [line.split(maxsplit=3) for line in lines]
    expected = []
    for model, versions in sorted(on_disk(repo_copy).items()):
        if model in ("digits", "identity"):
            expected += [[model, v, "READY"] for v in versions]
        else:
            expected.append([model, "-", "UNAVAILABLE", "not loaded"])
    assert rows == expected
    assert ["digits", "2", "READY"] in rows  # the bundled candidate is served too
    # every cell starts where its column's header does
    for line, row in zip(lines, rows, strict=True):
        for cell, name in zip(row[1:], ("version", "state", "reason"), strict=False):
            assert line[header.index(name):].startswith(cell), (line, name)
            assert line[header.index(name) - 1] == " ", (line, name)


def test_index_json_and_ready_only(server, capsys):
    with Client(server.address) as client:
        everything = client.repository_index()
    assert cli(["repo", "index", "--json", "--url", server.address]) == 0
    assert json.loads(capsys.readouterr().out) == everything
    assert cli(["repo", "index", "--ready", "--url", server.address]) == 0
    _, *lines = capsys.readouterr().out.splitlines()
    assert [line.split() for line in lines] == [
        ["digits", "1", "READY"], ["digits", "2", "READY"], ["identity", "1", "READY"]]


def test_load_and_unload_change_what_is_served(server, capsys):
    url = ["--url", server.address]
    with Client(server.address, timeout=60.0) as client:
        assert not client.model_ready("add_sub")
        assert cli(["repo", "load", "add_sub", *url]) == 0
        assert capsys.readouterr().out == "model 'add_sub' loaded: version 1 ready\n"
        assert client.model_ready("add_sub")
        inputs = random_inputs("add_sub", 2, np.random.default_rng(3))
        out = client.infer("add_sub", inputs)
        np.testing.assert_array_equal(out["OUTPUT0"], inputs["INPUT0"] + inputs["INPUT1"])

        assert cli(["repo", "unload", "add_sub", *url]) == 0
        assert capsys.readouterr().out == "model 'add_sub' unloaded\n"
        assert not client.model_ready("add_sub")
        assert {"name": "add_sub", "version": "", "state": "UNAVAILABLE",
                "reason": "unloaded"} in client.repository_index()

        assert cli(["repo", "load", "digits", *url]) == 0  # a reload: every version again
        assert capsys.readouterr().out == "model 'digits' loaded: versions 1, 2 ready\n"


@pytest.mark.parametrize(("args", "status", "message"), [
    (["load", "nope"], 1, "sluice repo load: [NOT_FOUND] failed to load 'nope'; model 'nope' is "
     "not in the repository"),
    (["unload", "nope"], 1, "sluice repo unload: [NOT_FOUND] model 'nope' is not loaded"),
    (["load", "../digits"], 2, "sluice repo load: invalid model name '../digits': use letters, "
     "digits, '_', '-', '.'; no path separators and no '..'"),
])
def test_errors_are_one_line_with_their_exit_status(server, capsys, args, status, message):
    assert cli(["repo", *args, "--url", server.address]) == status
    captured = capsys.readouterr()
    assert captured.err == message + "\n" and captured.out == ""
