"""Prediction-log settings: the ``logging`` block of deployment.yaml, the admin store's precedence
and request ids. Every refusal names the key or input at fault."""

from __future__ import annotations

import pytest

from sluice.server.config.deployment_file import parse_deployment, read_deployment, read_logging
from sluice.server.config.prediction_logging import LoggingConfig, parse_logging
from sluice.server.errors import ModelLoadError
from sluice.server.monitoring.prediction_settings import ADMIN, OFF, YAML, LoggingSettings
from sluice.server.protocol.request_ids import id_maker


def test_the_block_parses_with_inputs_off_by_default():
    assert parse_logging({"sample": 0.25}) == LoggingConfig(0.25, False, ())
    assert parse_logging({"sample": 1, "inputs": True, "exclude": ["b", "a", "b"]}) == (
        LoggingConfig(1.0, True, ("a", "b")))
    assert parse_logging(None) == LoggingConfig() and not LoggingConfig().on


@pytest.mark.parametrize(("block", "needle"), [
    ({"sample": 1.5}, "logging.sample: must be a fraction in [0, 1], not 1.5"),
    ({"sample": -0.1}, "logging.sample: must be a fraction in [0, 1], not -0.1"),
    ({"sample": True}, "logging.sample"),
    ({"sample": float("nan")}, "logging.sample"),
    ({"sampel": 0.5}, "logging: unknown key 'sampel' (expected sample, inputs, exclude)"),
    ({"inputs": "yes"}, "logging.inputs: must be true or false, not 'yes'"),
    ({"exclude": "ssn"}, "logging.exclude: must be a list of input names, not 'ssn'"),
    ({"exclude": [""]}, "logging.exclude: '' is not an input name"),
    ([0.5], "logging: must be a mapping"),
])
def test_a_bad_block_is_refused_naming_the_key(block, needle):
    with pytest.raises(ValueError) as info:
        parse_logging(block)
    assert needle in str(info.value)


def test_deployment_yaml_checks_the_block_with_the_rest_of_the_file():
    with pytest.raises(ModelLoadError) as info:
        parse_deployment("routes: {1: 1}\nlogging: {sample: 2}\n", "deployment.yaml")
    assert "deployment.yaml: logging.sample: must be a fraction in [0, 1], not 2" in (
        info.value.message)
    declared = parse_deployment("routes: {1: 1}\nlogging: {sample: 0.5}\n")
    assert "logging" not in declared and declared["routes"][0]["version"] == 1


def test_a_file_with_only_logging_declares_no_deployment(tmp_path):
    (tmp_path / "deployment.yaml").write_text("logging: {sample: 0.5, exclude: [x]}\n")
    assert read_deployment(tmp_path) is None
    assert read_logging(tmp_path) == LoggingConfig(0.5, False, ("x",))
    (tmp_path / "deployment.yaml").write_text("aliases: {stable: 1}\n")
    assert read_deployment(tmp_path) is not None and read_logging(tmp_path) is None


def test_an_unknown_input_in_exclude_is_named():
    with pytest.raises(ValueError) as info:
        LoggingConfig(1.0, True, ("pixels",)).check_inputs("digits", ["input"])
    assert str(info.value) == ("logging.exclude: model 'digits' has no input 'pixels' "
                               "(its inputs: input)")


def test_admin_settings_win_until_the_yaml_block_changes(tmp_path):
    yaml_block = LoggingConfig(0.5)
    settings = LoggingSettings(tmp_path)
    assert settings.resolve("m", None) == (LoggingConfig(), OFF)
    assert settings.resolve("m", yaml_block) == (yaml_block, YAML)
    settings.set("m", LoggingConfig(0.1, True), yaml_block)
    # a restart reads them back, and they win while the yaml says what it said
    again = LoggingSettings(tmp_path)
    assert again.resolve("m", yaml_block) == (LoggingConfig(0.1, True), ADMIN)
    # the yaml's block changed: it is authoritative again, and stays so after a restart
    assert again.resolve("m", LoggingConfig(0.75)) == (LoggingConfig(0.75), YAML)
    assert LoggingSettings(tmp_path).resolve("m", yaml_block) == (yaml_block, YAML)


def test_request_ids_are_unique_within_and_across_processes():
    first, second = id_maker(), id_maker()
    ids = [first() for _ in range(10_000)] + [second() for _ in range(10_000)]
    assert len(set(ids)) == len(ids)
    prefix, counter = ids[0].split("-")
    assert len(prefix) == 16 and counter == "1" and ids[1] == f"{prefix}-2"
    assert id_maker("abc")() == "abc-1"
