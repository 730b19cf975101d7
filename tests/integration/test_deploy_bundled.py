"""Deployments on the bundled repository as a newcomer meets them: every command of the README's
Deployments section runs, in order, against a server over the repository as cloned; and a
change naming a version that is not loaded says what it tried and how to load that version,
which, followed, works."""

from __future__ import annotations

import shlex
from pathlib import Path

import numpy as np

from sluice.clients import Client
from sluice.server.app import BUNDLED_REPOSITORY
from sluice.server.cli import main as cli
from tests.support.readme import section_blocks

SERVE_ALL = "version_policy { all { } }"


def readme_deploy_commands() -> list[list[str]]:
    """The ``sluice ...`` lines of the first bash block of the README's Deployments section,
    continuation lines joined and comments dropped."""
    blocks = section_blocks("Deployments", "bash")
    assert blocks, "the Deployments section has no bash block"
    commands = []
    for line in blocks[0].text.replace("\\\n", " ").splitlines():
        words = shlex.split(line, comments=True)
        if words:
            assert words[0] == "sluice", line
            commands.append(words[1:])
    return commands


def test_every_readme_deployment_command_works_on_the_bundled_repository(make_server, capsys):
    commands = readme_deploy_commands()
    verbs = {(c[0], c[2] if c[0] == "deploy" else c[1]) for c in commands}
    assert {("deploy", "alias"), ("deploy", "routes"), ("deploy", "switch"),
            ("deploy", "shadow"), ("deploy", "canary"), ("shadow", "report")} <= verbs
    running = make_server(BUNDLED_REPOSITORY)
    for command in commands:
        status = cli([*command, "--url", running.address])
        captured = capsys.readouterr()
        assert status == 0, (command, captured.err)
    # the canary example ends aborted: stable (version 1) takes every request again
    with Client(running.address) as client:
        x = np.load(BUNDLED_REPOSITORY / "digits" / "test_split.npz")["X"][:4]
        served = {client.infer_request(client.build_request("digits", {"input": x}))
                  .model_version for _ in range(20)}
    assert served == {"1"}


def test_a_version_that_is_not_loaded_is_named_with_what_was_tried_and_how_to_load_it(
        make_server, repo_copy: Path, capsys):
    config = repo_copy / "digits" / "config.pbtxt"
    text = config.read_text()
    assert SERVE_ALL in text
    config.write_text(text.replace(SERVE_ALL, ""))  # Triton's default: the newest version only
    running = make_server(repo_copy)
    url = ["--url", running.address]

    def fails(*args: str) -> str:
        assert cli([*args, *url]) == 1
        err = capsys.readouterr().err
        assert err.count("\n") == 1
        return err

    # the caller typed "switch 1"; alias 'stable' is the switch's own doing
    assert fails("deploy", "digits", "switch", "1") == (
        "sluice deploy: [NOT_FOUND] model 'digits': cannot switch all traffic to version 1: "
        "alias 'stable' would name version 1, which is not loaded (loaded versions: 2); its "
        "version_policy (latest 1) does not select it: set version_policy { all { } } in "
        "digits/config.pbtxt, then load it with `sluice repo load digits` (RepositoryModelLoad)\n")
    assert ("cannot start a canary of version 1 over stable version 2: alias 'candidate' would "
            "name version 1, which is not loaded") in fails("deploy", "digits", "canary", "start",
                                                            "1")
    assert ("cannot switch all traffic to version 3: alias 'stable' would name version 3, which "
            "is not loaded (loaded versions: 2); the repository has no version directory "
            "digits/3: add it, set version_policy { all { } } in digits/config.pbtxt to serve "
            "it beside the others, then load it with `sluice repo load digits`"
            ) in fails("deploy", "digits", "switch", "3")

    # following the advice works
    config.write_text(text)
    assert cli(["repo", "load", "digits", *url]) == 0
    assert capsys.readouterr().out == "model 'digits' loaded: versions 1, 2 ready\n"
    assert cli(["deploy", "digits", "switch", "1", *url]) == 0
    with Client(running.address) as client:
        request = client.build_request("digits", {"input": np.zeros((1, 64), np.float32)})
        assert client.infer_request(request).model_version == "1"

    # a reload that drops version 1 again cannot restore the saved deployment, and says so
    config.write_text(text.replace(SERVE_ALL, ""))
    assert fails("repo", "load", "digits") == (
        "sluice repo load: [NOT_FOUND] failed to load 'digits'; "
        "model 'digits': cannot restore its saved deployment: "
        "alias 'stable' would name version 1, which is not loaded (loaded versions: 2); its "
        "version_policy (latest 1) does not select it: set version_policy { all { } } in "
        "digits/config.pbtxt, then load it with `sluice repo load digits` (RepositoryModelLoad)\n")
