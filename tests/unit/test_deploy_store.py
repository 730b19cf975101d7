"""DeploymentStore: atomic saves, a refused corrupt file keeps the last good state, audit log."""

from __future__ import annotations

import json
import os

import pytest

from server.core import deploy_store
from server.core.deploy_store import DeploymentStateError, DeploymentStore
from server.core.deployment import DeploymentState, Route

A = DeploymentState(aliases=(("stable", 1),), routes=(Route("stable", 1, 1.0),))
B = DeploymentState(aliases=(("stable", 2),), routes=(Route("stable", 2, 1.0),))


def test_nothing_is_written_until_the_first_save(tmp_path):
    store = DeploymentStore(tmp_path / "state")
    assert store.load() == {}
    assert not (tmp_path / "state").exists()


def test_save_and_load_round_trip_with_history_and_yaml_hash(tmp_path):
    store = DeploymentStore(tmp_path)
    store.save("m", A, yaml_sha256="abc")
    store.save("m", B, history=(A,), yaml_sha256="abc")
    store.save("other", A)
    entries = DeploymentStore(tmp_path).load_all()
    assert entries["m"].state == B and entries["m"].history == (A,)
    assert entries["m"].yaml_sha256 == "abc" and entries["other"].state == A
    assert not [p for p in os.listdir(tmp_path) if p.endswith(".tmp")]


def test_a_failed_write_leaves_the_old_file_whole(tmp_path, monkeypatch):
    store = DeploymentStore(tmp_path)
    store.save("m", A)
    before = store.path.read_bytes()

    def crash(*args):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(deploy_store.os, "replace", crash)
    with pytest.raises(OSError):
        store.save("m", B)
    monkeypatch.undo()
    assert store.path.read_bytes() == before
    assert not [p for p in os.listdir(tmp_path) if p.endswith(".tmp")]
    assert DeploymentStore(tmp_path).load() == {"m": A}
    store.save("m", B)  # the store still works, from the state on disk
    assert DeploymentStore(tmp_path).load() == {"m": B}


@pytest.mark.parametrize(("damage", "needle"), [
    (b'{"format": 1, "models": {"m": {"state": {"routes": [', "not valid JSON"),
    (b'{"format": 1, "models": {"m": {"state": {"routes": [{"arm": "v1", "version": 1, '
     b'"weight": -5}]}}}}', "models.m: state: routes[0].weight"),
    (b"\xff\xfe", "not UTF-8"),
    (b"[]", "not a format-1 deployment document"),
])
def test_a_corrupt_file_is_refused_and_the_last_good_state_kept(tmp_path, damage, needle,
                                                                caplog):
    store = DeploymentStore(tmp_path)
    store.save("m", A)
    store.save("m", B, history=(A,))
    store.path.write_bytes(damage)
    reopened = DeploymentStore(tmp_path)
    assert reopened.load() == {"m": A}  # the last good copy: before the last save
    assert reopened.problem is not None and needle in reopened.problem
    assert str(store.path) in caplog.text and needle in caplog.text
    aside = [p for p in os.listdir(tmp_path) if p.startswith("deployments.json.corrupt-")]
    assert len(aside) == 1 and (tmp_path / aside[0]).read_bytes() == damage  # kept, untouched
    assert DeploymentStore(tmp_path).load() == {"m": A}  # restored as current
    assert DeploymentStore(tmp_path).problem is None


def test_without_a_usable_last_good_copy_loading_fails_naming_both_files(tmp_path):
    store = DeploymentStore(tmp_path)
    store.save("m", A)
    store.path.write_text("{oops")
    store.previous_path.write_text("also bad")
    with pytest.raises(DeploymentStateError) as info:
        DeploymentStore(tmp_path).load()
    assert str(store.path) in info.value.message and str(store.previous_path) in info.value.message
    assert store.path.read_text() == "{oops"  # nothing overwritten


def test_audit_appends_one_json_line_per_record(tmp_path):
    store = DeploymentStore(tmp_path)
    store.audit({"caller": "alice", "model": "m", "action": "switch", "reason": "",
                 "before": A.to_json(), "after": B.to_json()})
    store.audit({"caller": None, "model": "m", "action": "rollback", "reason": "oops",
                 "before": B.to_json(), "after": A.to_json()})
    lines = store.audit_path.read_text().splitlines()
    assert len(lines) == 2
    first = json.loads(lines[0])
    assert first["time"].endswith("Z") and isinstance(first["unix"], float)
    assert first["after"]["aliases"] == {"stable": 2} and first["caller"] == "alice"
    assert [r["action"] for r in store.read_audit()] == ["switch", "rollback"]
