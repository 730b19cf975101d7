"""Token buckets by hand-computed numbers, and the access audit trail's writer."""

from __future__ import annotations

import json
from pathlib import Path

from sluice.server.auth.audit import AuditTrail, read_audit
from sluice.server.auth.quota import TokenBucket
from sluice.server.auth.tokens import Quota


def test_a_bucket_allows_its_burst_then_refills_at_its_rate():
    bucket = TokenBucket(Quota(rate_per_s=2.0, burst=3), now=10.0)
    assert [bucket.take(10.0) for _ in range(4)] == [True, True, True, False]
    assert not bucket.take(10.4)  # 0.8 requests' worth back
    assert bucket.take(10.5)  # 1.0: one more
    assert not bucket.take(10.5)
    assert [bucket.take(20.0) for _ in range(4)] == [True, True, True, False]  # capped at burst
    assert bucket.describe() == "2 requests/s, burst 3"


def test_a_refused_take_takes_nothing():
    bucket = TokenBucket(Quota(rate_per_s=1.0, burst=1), now=0.0)
    assert bucket.take(0.0)
    assert not any(bucket.take(0.1 * k) for k in range(1, 10))  # 0.9 at t=0.9, none taken
    assert bucket.take(1.0)


def _line(trail: AuditTrail, k: int) -> None:
    trail.record(principal="alice", peer="ipv4:127.0.0.1:5", method="/m", model=f"m{k}",
                 version="2", outcome="ok", status="OK")


def test_the_trail_appends_one_json_line_per_record(tmp_path: Path):
    path = tmp_path / "state" / "access-audit.jsonl"
    trail = AuditTrail(path)
    trail.start()
    for k in range(50):
        _line(trail, k)
    trail.close()
    lines = read_audit(path)
    assert [line["model"] for line in lines] == [f"m{k}" for k in range(50)]
    assert set(lines[0]) == {"time", "unix", "principal", "peer", "method", "model", "version",
                             "outcome", "status"}
    assert lines[0]["time"].endswith("Z") and trail.written == 50 and trail.dropped == 0
    trail = AuditTrail(path)  # a second process's trail appends to the same file
    trail.start()
    _line(trail, 50)
    trail.close()
    assert len(path.read_text().splitlines()) == 51


def test_a_full_queue_drops_and_counts_instead_of_blocking(tmp_path: Path):
    path = tmp_path / "access-audit.jsonl"
    trail = AuditTrail(path, max_queued=3)  # the writer is not started: nothing drains
    for k in range(5):
        _line(trail, k)
    assert trail.dropped == 2
    trail.start()
    trail.close()
    assert [json.loads(t)["model"] for t in path.read_text().splitlines()] == ["m0", "m1", "m2"]


def test_long_fields_are_cut(tmp_path: Path):
    path = tmp_path / "a.jsonl"
    trail = AuditTrail(path)
    trail.start()
    trail.record(principal="", peer="p" * 5000, method="/m", model="x" * 5000, outcome="refused",
                 status="UNAUTHENTICATED")
    trail.close()
    (line,) = read_audit(path)
    assert len(line["model"]) == 256 and len(line["peer"]) == 256
