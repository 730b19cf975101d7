"""The command line's own grammar, no server needed: ``--version``, options in any case, and
arguments it cannot use named in one line with exit status 2."""

from __future__ import annotations

import pytest

from sluice.server import __version__
from sluice.server.cli import _parser, default_url
from sluice.server.cli import main as cli

NOWHERE = ["--url", "127.0.0.1:1"]  # nothing listens: these errors come before any call


def test_version(capsys):
    with pytest.raises(SystemExit) as info:
        cli(["--version"])
    assert info.value.code == 0
    assert capsys.readouterr().out == f"sluice {__version__}\n"


@pytest.mark.parametrize("level", ["debug", "Warning", "ERROR"])
def test_log_level_in_any_case(level):
    assert _parser().parse_args(["serve", "--log-level", level]).log_level == level.upper()


def test_an_unknown_log_level_is_refused(capsys):
    with pytest.raises(SystemExit) as info:
        _parser().parse_args(["serve", "--log-level", "loud"])
    assert info.value.code == 2
    assert "invalid choice: 'LOUD'" in capsys.readouterr().err


@pytest.mark.parametrize(("args", "message"), [
    (["routes", "stable=abc"], "routes 'stable=abc': WEIGHT must be a number, e.g. stable=90"),
    (["routes", "stable"], "expected ARM=WEIGHT, got 'stable'"),
    (["alias", "stable=two"],
     "alias 'stable=two': VERSION must be a version number, e.g. stable=2"),
])
def test_a_bad_deploy_argument_is_named(capsys, args, message):
    assert cli(["deploy", "m", *args, *NOWHERE]) == 2
    assert capsys.readouterr().err == f"sluice deploy: {message}\n"


@pytest.mark.parametrize(("command", "reads"), [
    (["deploy", "m", "status"], True), (["shadow", "report", "m"], True),
    (["repo", "index"], True),
    # loads and unloads change what is served, but no audit log records them
    (["repo", "load", "m"], False), (["repo", "unload", "m"], False),
])
def test_commands_nothing_audits_offer_no_audit_options(capsys, command, reads):
    with pytest.raises(SystemExit):
        cli([*command, "--help"])
    usage = capsys.readouterr().out
    assert "--url" in usage and ("--json" in usage) == reads
    assert "--reason" not in usage and "--caller" not in usage
    with pytest.raises(SystemExit) as info:
        _parser().parse_args([*command, "--reason", "why"])
    assert info.value.code == 2


def test_changing_commands_take_the_audit_options():
    args = _parser().parse_args(["deploy", "m", "switch", "2", "--reason", "go", "--caller", "x"])
    assert (args.reason, args.caller) == ("go", "x")


@pytest.mark.parametrize("argv", [
    ["--url", "h:1", "deploy", "m", "status"],
    ["deploy", "--url", "h:1", "m", "status"],
    ["deploy", "m", "status", "--url", "h:1"],
    ["--url", "h:1", "shadow", "report", "m"],
    ["shadow", "report", "m", "--url", "h:1"],
    ["--url", "h:1", "infer", "digits"],
    ["infer", "digits", "--url", "h:1"],
    ["stats", "--url", "h:1"],
    ["--url", "h:1", "stats"],
    ["repo", "index", "--url", "h:1"],
    ["repo", "--url", "h:1", "load", "m"],
    ["--url", "h:1", "repo", "unload", "m"],
    ["--url", "h:1", "batch", "m", "--input", "i.csv", "--output", "o.csv"],
    ["batch", "m", "--input", "i.csv", "--output", "o.csv", "--url", "h:1"],
])
def test_url_may_stand_anywhere(argv):
    assert _parser().parse_args(argv).url == "h:1"


def test_url_defaults_to_the_local_server():
    assert _parser().parse_args(["deploy", "m", "status"]).url == "127.0.0.1:8001"
    assert _parser().parse_args(["stats"]).url == "127.0.0.1:8001"


def test_sluice_url_replaces_the_default_and_url_still_wins():
    assert default_url({}) == default_url({"SLUICE_URL": ""}) == "127.0.0.1:8001"
    assert default_url({"SLUICE_URL": "h:2"}) == "h:2"
    assert _parser(default_url({"SLUICE_URL": "h:2"})).parse_args(["stats"]).url == "h:2"
    assert _parser("h:2").parse_args(["repo", "index", "--url", "h:1"]).url == "h:1"


JOB = ["batch", "m", "--input", "i.csv", "--output", "o.csv"]


@pytest.mark.parametrize(("argv", "environ", "target"), [
    (JOB, {}, None),  # no server named: in this process
    (JOB, {"SLUICE_URL": ""}, None),
    (JOB, {"SLUICE_URL": "h:2"}, "h:2"),  # as every client verb reads it
    (["--url", "h:1", *JOB], {"SLUICE_URL": "h:2"}, "h:1"),  # before the verb
    ([*JOB, "--url", "h:1"], {"SLUICE_URL": "h:2"}, "h:1"),
    (["--url", "127.0.0.1:8001", *JOB], {}, "127.0.0.1:8001"),  # the default, given
    ([*JOB, "--model-repository", "r"], {"SLUICE_URL": "h:2"}, None),  # a repository wins
])
def test_batch_runs_where_the_command_line_and_sluice_url_say(argv, environ, target):
    from sluice.server.cli_batch import batch_target

    args = _parser(default_url(environ)).parse_args(argv)
    assert batch_target(args, environ) == target


def test_batch_with_both_a_server_and_a_repository_is_a_usage_error(capsys):
    assert cli(["--url", "h:1", *JOB, "--model-repository", "r"]) == 2
    assert capsys.readouterr().err == ("sluice batch: give --url (a running server) or "
                                       "--model-repository (in this process), not both\n")
