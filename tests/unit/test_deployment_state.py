"""Rendezvous hashing properties, deployment state JSON and deployment.yaml parsing: the pure
pieces routing is built from (no router, no repository)."""

from __future__ import annotations

import hashlib
import math

import pytest

from sluice.server.config.deployment_file import parse_deployment
from sluice.server.errors import ModelLoadError
from sluice.server.rollout.router import DeploymentState, Route, ShadowTarget, rendezvous_pick
from tests.support.deployment_states import full_state

KEYS = [f"user-{i}" for i in range(20_000)]


def assign(weights: dict[int, float]) -> list[int]:
    versions, values = tuple(weights), tuple(weights.values())
    return [versions[rendezvous_pick(k, versions, values)] for k in KEYS]


# -- weighted rendezvous hashing --------------------------------------------------------------


def test_rendezvous_follows_the_documented_formula():
    """Pinned by an independent implementation: the choice must not change across releases."""
    def pick(key: str, weights: dict[int, float]) -> int:
        def score(version: int) -> float:
            h = hashlib.blake2b(f"{version}\0".encode() + key.encode(), digest_size=8).digest()
            return weights[version] / -math.log((int.from_bytes(h, "big") + 0.5) / 2**64)
        return max(weights, key=score)

    weights = {1: 70.0, 2: 20.0, 5: 10.0}
    assert assign(weights)[:2000] == [pick(k, weights) for k in KEYS[:2000]]


def test_rendezvous_shares_follow_the_weights_and_keys_stick():
    first = assign({1: 90, 2: 10})
    assert abs(first.count(2) / len(KEYS) - 0.10) < 0.01
    assert assign({1: 90, 2: 10}) == first  # same key, same arm, every time


def test_moving_weights_moves_only_the_keys_that_must_move():
    before, after = assign({1: 90, 2: 10}), assign({1: 80, 2: 20})
    moved = [(a, b) for a, b in zip(before, after, strict=True) if a != b]
    assert {m for m in moved} == {(1, 2)}  # only stable -> candidate, never back
    assert abs(len(moved) / len(KEYS) - 0.10) < 0.01
    assert assign({1: 9, 2: 1}) == before  # scaling every weight moves nothing


def test_three_arms_keys_move_only_to_or_from_the_arm_that_changed():
    before = assign({1: 50, 2: 30, 3: 20})
    grown = assign({1: 50, 2: 30, 3: 40})
    assert {(a, b) for a, b in zip(before, grown, strict=True) if a != b} <= {(1, 3), (2, 3)}
    removed = assign({1: 50, 2: 30})
    assert all(a == b for a, b in zip(before, removed, strict=True) if a != 3)
    added = assign({1: 50, 2: 30, 3: 20, 4: 25})
    assert all(b == 4 for a, b in zip(before, added, strict=True) if a != b)


# -- deployment state -------------------------------------------------------------------------


def test_deployment_state_json_round_trip():
    for state in (DeploymentState(), full_state()):
        assert DeploymentState.from_json(state.to_json()) == state
    assert full_state().alias("stable") == 1 and full_state().alias("nope") is None


@pytest.mark.parametrize(("data", "needle"), [
    ({"routes": [{"arm": "a", "version": 1, "weight": 0}]}, "routes[0].weight"),
    ({"routes": [{"arm": "a", "version": 0, "weight": 1}]}, "routes[0].version"),
    ({"routes": [{"arm": "a", "weight": 1}]}, "routes[0].version: missing"),
    ({"shadows": [{"version": 2, "sample": 1.5}]}, "shadows[0].sample"),
    ({"aliases": {"7up": 1}}, "aliases.7up"),
    ({"aliases": {"v2": 1}}, "'v2' is reserved"),
    ({"bogus": 1}, "bogus"),
    ({"canary": [1]}, "canary"),
])
def test_deployment_state_from_json_names_the_bad_field(data, needle):
    with pytest.raises(ValueError) as info:
        DeploymentState.from_json(data)
    assert needle in str(info.value)


def test_deployment_yaml_parses_aliases_routes_shadows_and_passes_canary_through():
    state = DeploymentState.from_json(parse_deployment(
        "aliases: {stable: 1, candidate: 2}\nroutes: {stable: 90, candidate: 10, v3: 5}\n"
        "shadows: {candidate: 0.5}\ncanary: {steps: [5, 50], interval_s: 30}\n"
    ))
    assert state.aliases == (("candidate", 2), ("stable", 1))
    assert state.routes == (Route("stable", 1, 90), Route("candidate", 2, 10), Route("v3", 3, 5))
    assert state.shadows == (ShadowTarget(2, 0.5),)
    assert state.canary == {"steps": [5, 50], "interval_s": 30}
    assert DeploymentState.from_json(parse_deployment("")) == DeploymentState()


@pytest.mark.parametrize(("text", "needle"), [
    ("routs: {}", "unknown key 'routs'"),
    ("routes: {nope: 10}", "routes.nope: 'nope' is neither"),
    ("routes: {1: -1}", "routes.1: weight"),
    ("shadows: {2: 0}", "shadows.2: sample"),
    ("aliases: [1]", "aliases: must be a mapping"),
    ("routes: {1: [", "not valid YAML at line"),
    ("canary: {when: 2024-01-01}", "canary: not JSON-serializable"),
])
def test_deployment_yaml_errors_name_the_key_and_file(text, needle):
    with pytest.raises(ModelLoadError) as info:
        parse_deployment(text, "/repo/m/deployment.yaml")
    assert needle in info.value.message and "/repo/m/deployment.yaml" in info.value.message
