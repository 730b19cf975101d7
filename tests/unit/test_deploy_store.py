"""DeploymentStore: atomic saves, a refused corrupt file keeps the last good state, audit log;
several processes (stores, routers and followers) over one state directory."""

from __future__ import annotations

import json
import os
import random
from concurrent.futures import ThreadPoolExecutor
from types import SimpleNamespace

import pytest

from sluice.server.errors import ModelNotFound
from sluice.server.rollout import deploy_store
from sluice.server.rollout.deploy_store import (
    DeploymentConflict,
    DeploymentStateError,
    DeploymentStore,
)
from sluice.server.rollout.deployment import DeploymentState, Route
from sluice.server.rollout.router import Router
from sluice.server.rollout.state_sync import DeploymentFollower

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


# -- several processes over one state directory (two stores in one process stand in for them) --


def test_saves_of_two_stores_keep_each_others_models(tmp_path):
    first, second = DeploymentStore(tmp_path), DeploymentStore(tmp_path)
    assert first.load() == {} and second.load() == {}  # both read before either wrote
    first.save("m", A)
    second.save("other", B)  # re-reads under the lock: "m" survives
    first.save("third", A)
    assert DeploymentStore(tmp_path).load() == {"m": A, "other": B, "third": A}
    assert json.loads(first.previous_path.read_text())["models"].keys() == {"m", "other"}


def test_concurrent_saves_and_audits_from_many_threads_and_stores_lose_nothing(tmp_path):
    stores = [DeploymentStore(tmp_path) for _ in range(4)]

    def work(i: int) -> None:
        store = stores[i % len(stores)]
        store.save(f"model{i}", A if i % 2 else B)
        store.audit({"model": f"model{i}", "action": "set", "pad": "x" * 20_000})

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(work, range(32)))
    assert DeploymentStore(tmp_path).load() == {f"model{i}": A if i % 2 else B for i in range(32)}
    records = stores[0].read_audit()  # every line whole: none torn, none interleaved
    assert sorted(r["model"] for r in records) == sorted(f"model{i}" for i in range(32))
    assert len(stores[0].audit_path.read_text().splitlines()) == 32


def test_a_save_from_a_stale_state_is_refused_and_names_the_current_one(tmp_path):
    first, second = DeploymentStore(tmp_path), DeploymentStore(tmp_path)
    first.save("m", A, expect=DeploymentState())
    before = first.path.read_bytes()
    with pytest.raises(DeploymentConflict) as info:
        second.save("m", B, expect=DeploymentState())  # computed before "m" became A
    assert info.value.current is not None and info.value.current.state == A
    assert "another server process" in info.value.message
    assert first.path.read_bytes() == before
    second.save("m", B, history=(A,), expect=A)
    assert DeploymentStore(tmp_path).load() == {"m": B}


class OneModel:
    """A repository serving model "m" versions 1..3 (what Router asks of one)."""

    def get(self, name: str, version: str = "") -> SimpleNamespace:
        if name != "m" or version not in ("", "1", "2", "3"):
            raise ModelNotFound(f"model '{name}' has no version '{version}'")
        return SimpleNamespace(name=name, version=int(version or 3))

    def ready(self, name: str, version: str = "") -> bool:
        return name == "m" and version in ("", "1", "2", "3")


async def worker(state_dir) -> tuple[Router, DeploymentFollower]:
    """One worker's router and follower over ``state_dir``, opened and serving "m". The
    follower's task is not started: each test polls with ``check()`` where a poll is due."""
    store = DeploymentStore(state_dir)
    router = Router(OneModel(), store, rng=random.Random(1))  # type: ignore[arg-type]
    await router.open()
    await router.model_loaded("m")
    return router, DeploymentFollower(router, store)


def served(router: Router) -> int:
    return router.resolve("m", "", None)[0].version


async def test_a_router_serves_another_processes_change_at_its_next_poll(tmp_path):
    (a, follow_a), (b, follow_b) = await worker(tmp_path), await worker(tmp_path)
    assert served(a) == served(b) == 3
    await a.switch("m", 2, caller="alice")
    assert served(a) == 2 and served(b) == 3  # b has not polled yet
    assert await follow_b.check()
    assert served(b) == 2
    assert b.state("m") == a.state("m") and b.history("m") == a.history("m")
    # b changes next, from the state it follows now; a follows back at its poll
    await b.set_routes("m", {"1": 50, "stable": 50}, caller="bob")
    assert a.state("m") != b.state("m")
    assert await follow_a.check()
    assert a.state("m") == b.state("m")
    assert {a.resolve("m", "", None)[1] for _ in range(200)} == {"v1", "stable"}
    await a.rollback("m", caller="alice")
    assert await follow_b.check()
    assert b.state("m").routes == (Route("stable", 2, 1.0),)
    # each change audited once, by the process that made it
    assert [(r["action"], r["caller"]) for r in DeploymentStore(tmp_path).read_audit()] == [
        ("switch", "alice"), ("set_routes", "bob"), ("rollback", "alice")]


async def test_a_change_from_a_stale_view_is_refused_and_the_retry_works(tmp_path):
    (a, follow_a), (b, _) = await worker(tmp_path), await worker(tmp_path)
    await a.switch("m", 1, caller="alice")
    assert served(b) == 3  # b never polls: its view stays stale
    with pytest.raises(DeploymentConflict):
        await b.switch("m", 2, caller="bob")
    assert served(b) == 1 and b.state("m") == a.state("m")  # adopted what a wrote
    await b.switch("m", 2, caller="bob")
    assert served(a) == 1
    assert await follow_a.check()
    assert served(a) == 2
    assert [r["caller"] for r in DeploymentStore(tmp_path).read_audit()] == ["alice", "bob"]


def replace(path, text: str) -> None:
    """Write ``path`` whole at once, as a process (even a broken one) saving it would."""
    path.with_suffix(".new").write_text(text)
    os.replace(path.with_suffix(".new"), path)


async def test_a_corrupt_file_from_another_process_is_set_aside_and_followers_keep_serving(
    tmp_path, caplog
):
    (a, follow_a), (b, follow_b) = await worker(tmp_path), await worker(tmp_path)
    await a.switch("m", 1, caller="alice")
    await a.switch("m", 2, caller="alice")
    assert await follow_b.check()
    assert served(b) == 2
    replace(tmp_path / "deployments.json", "{torn")
    # the last good copy (before the last save) comes back, once, for every worker
    assert await follow_a.check()
    assert await follow_b.check()
    assert served(a) == served(b) == 1
    assert len(list(tmp_path.glob("deployments.json.corrupt-*"))) == 1
    assert caplog.text.count("not valid JSON") == 1
    # with no usable copy left, both keep serving what they serve and say why, once
    replace(tmp_path / "deployments.previous.json", "bad")
    replace(tmp_path / "deployments.json", "{torn")
    for _ in range(3):  # polls of the same broken file: read again, not reported again
        assert not await follow_a.check()
        assert not await follow_b.check()
        assert served(a) == served(b) == 1
        assert caplog.text.count("deployment state not followed") == 2
    assert len(list(tmp_path.glob("deployments.json.corrupt-*"))) == 1
