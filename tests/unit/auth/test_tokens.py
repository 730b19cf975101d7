"""The tokens file and the verifier: salted hashes only, the KDF once per token, the cache."""

from __future__ import annotations

import hashlib
import json
import os
import stat
from pathlib import Path

import pytest

from sluice.server.auth import tokens
from sluice.server.auth.tokens import TokenFileError
from sluice.server.auth.verifier import TokenVerifier


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "tokens.json"


def test_create_writes_a_salted_scrypt_hash_and_never_the_token(path: Path):
    token = tokens.create_token(path, "alice", ["infer", "metadata"])
    other = tokens.create_token(path, "bob", ["infer"])
    token_id, secret = tokens.split_token(token)
    text = path.read_text()
    assert token not in text and secret not in text and other.split("_")[2] not in text
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    entries = {e["name"]: e for e in json.loads(text)["tokens"]}
    alice = entries["alice"]
    assert alice["id"] == token_id and alice["scopes"] == ["infer", "metadata"]
    # the stored hash is scrypt(secret, salt) with the stored parameters, recomputed here
    kdf = alice["kdf"]
    expected = hashlib.scrypt(secret.encode(), salt=bytes.fromhex(kdf["salt"]), n=kdf["n"],
                              r=kdf["r"], p=kdf["p"], dklen=32)
    assert alice["hash"] == expected.hex() and (kdf["n"], kdf["r"], kdf["p"]) == (2**14, 8, 1)
    assert alice["kdf"]["salt"] != entries["bob"]["kdf"]["salt"]  # a salt per token


def test_a_token_verifies_once_then_answers_from_the_cache(path: Path):
    token = tokens.create_token(path, "alice", ["infer"], tokens.make_quota(5, 10))
    verifier = TokenVerifier(path)
    digest = verifier.digest(token)
    assert verifier.cached(digest) is None and verifier.needs_kdf(token, digest)
    principal = verifier.verify(token)
    assert principal is not None and principal.name == "alice"
    assert principal.scopes == frozenset({"infer"}) and principal.bucket is not None
    assert verifier.kdf_runs == 1
    for _ in range(3):
        assert verifier.verify(token) is principal
    assert verifier.cached(digest) is principal and verifier.kdf_runs == 1
    assert not verifier.needs_kdf(token, digest)


def test_bad_tokens_are_refused_and_cost_at_most_one_kdf(path: Path):
    token = tokens.create_token(path, "alice", ["infer"])
    verifier = TokenVerifier(path)
    token_id, secret = tokens.split_token(token)
    for malformed in ("", "alice", token + "0", token.upper(), "sluice_" + "0" * 12 + "_" + secret):
        assert verifier.verify(malformed) is None  # malformed, or an id the file lacks
    assert verifier.kdf_runs == 0
    wrong = f"sluice_{token_id}_{'0' * 64}"
    assert verifier.verify(wrong) is None and verifier.verify(wrong) is None
    assert verifier.kdf_runs == 1  # the wrong secret is remembered as refused
    assert verifier.verify(token) is not None


def test_the_caches_are_bounded(path: Path):
    token = tokens.create_token(path, "alice", ["infer"])
    token_id = tokens.split_token(token)[0]
    verifier = TokenVerifier(path, cache_entries=2)
    wrong = [f"sluice_{token_id}_{k:064x}" for k in range(3)]
    for bad in wrong:
        assert verifier.verify(bad) is None
    assert verifier.kdf_runs == 3
    assert verifier.verify(wrong[2]) is None and verifier.kdf_runs == 3  # still remembered
    assert verifier.verify(wrong[0]) is None and verifier.kdf_runs == 4  # the oldest was dropped


def test_revoking_takes_effect_on_reload(path: Path):
    alice = tokens.create_token(path, "alice", ["infer"])
    bob = tokens.create_token(path, "bob", ["ops"])
    verifier = TokenVerifier(path)
    assert verifier.verify(alice) is not None and verifier.verify(bob) is not None
    assert not verifier.reload_if_changed()
    tokens.revoke(path, "alice")
    assert verifier.reload_if_changed()
    assert verifier.verify(alice) is None
    assert verifier.verify(bob).name == "bob"
    with pytest.raises(TokenFileError, match="no token or certificate named 'alice'"):
        tokens.revoke(path, "alice")


def test_quota_buckets_survive_a_reload_that_keeps_the_quota(path: Path):
    alice = tokens.create_token(path, "alice", ["infer"], tokens.make_quota(1, 2))
    verifier = TokenVerifier(path, clock=lambda: 100.0)
    bucket = verifier.verify(alice).bucket
    assert bucket.take(100.0) and bucket.take(100.0) and not bucket.take(100.0)
    tokens.create_token(path, "bob", ["infer"])
    assert verifier.reload_if_changed()
    assert verifier.verify(alice).bucket is bucket  # still empty: a reload is no refill


def test_certificate_subjects_map_to_scopes(path: Path):
    tokens.map_certificate(path, "batch-client", ["infer", "metadata"])
    verifier = TokenVerifier(path)
    principal = verifier.certificate("batch-client")
    assert principal.name == "cert:batch-client"
    assert principal.scopes == frozenset({"infer", "metadata"})
    assert verifier.certificate("someone-else") is None and verifier.has_certificates


@pytest.mark.parametrize(("change", "message"), [
    (lambda p: tokens.create_token(p, "alice", ["root"]), "unknown scope 'root'"),
    (lambda p: tokens.create_token(p, "alice", []), "at least one scope"),
    (lambda p: tokens.create_token(p, "../x", ["infer"]), "token name '../x' must be"),
    (lambda p: tokens.create_token(p, "a", ["infer"], tokens.make_quota(0, 1)), "rate_per_s > 0"),
    (lambda p: tokens.create_token(p, "a", ["infer"], tokens.make_quota(1, 0)), "burst"),
])
def test_bad_changes_are_refused_naming_what_is_wrong(path: Path, change, message):
    with pytest.raises(TokenFileError, match=message):
        change(path)
    assert not path.exists()


def test_a_damaged_file_is_refused_naming_the_entry_and_never_a_hash(path: Path):
    tokens.create_token(path, "alice", ["infer"])
    raw = json.loads(path.read_text())
    raw["tokens"][0]["scopes"] = ["infer", "sudo"]
    path.write_text(json.dumps(raw))
    with pytest.raises(TokenFileError) as refused:
        TokenVerifier(path)
    assert "tokens[0]" in str(refused.value) and "sudo" in str(refused.value)
    assert raw["tokens"][0]["hash"] not in str(refused.value)
    path.write_text("{not json")
    with pytest.raises(TokenFileError, match="not JSON"):
        tokens.read(path)
    path.write_text(json.dumps({"format": "other"}))
    with pytest.raises(TokenFileError, match="format"):
        tokens.read(path)
