"""The access audit trail through a real server: one line per admin call and per refused call,
and never a token or tensor data anywhere the server writes."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as tc
from tritonclient.utils import InferenceServerException

from sluice.clients import AdminClient
from sluice.server.app import BUNDLED_REPOSITORY
from sluice.server.auth import tokens
from sluice.server.auth.audit import read_audit
from sluice.server.config.settings import ServerConfig
from tests.support.authz import Tokens
from tests.support.running import start_server

#: A value no model, config or log holds by chance, and its raw bytes.
MARKER_VALUE = np.float32(13371337.0)
MARKER_TEXT = "13371337"


def _marker_input() -> tc.InferInput:
    tensor = tc.InferInput("INPUT0", [1, 16], "FP32")
    tensor.set_data_from_numpy(np.full((1, 16), MARKER_VALUE, np.float32))
    return tensor


def _refused(call) -> str:
    with pytest.raises(InferenceServerException) as refused:
        call()
    return refused.value.status()


def test_admin_and_refused_calls_are_audited_and_nothing_keeps_a_token_or_a_tensor(
        tmp_path: Path, caplog: pytest.LogCaptureFixture):
    caplog.set_level(logging.DEBUG)
    made = Tokens(tmp_path / "tokens.json")
    marker = made.add("marker", ["infer", "admin", "ops", "metadata"])
    made.add("reader", ["infer"])
    token_id, secret = tokens.split_token(marker)
    forged = f"sluice_{token_id}_{secret[::-1]}"  # the marker's id with another secret
    state, predictions = tmp_path / "state", tmp_path / "predictions"
    running = start_server(ServerConfig(
        model_repository=BUNDLED_REPOSITORY, grpc_port=0, metrics_port=None, state_dir=state,
        prediction_log_dir=predictions, model_control="explicit", startup_models=("identity",),
        tokens_file=made.path))
    try:
        with tc.InferenceServerClient(running.address) as client:
            reply = client.infer("identity", [_marker_input()], headers=made.header("marker"))
            assert reply.as_numpy("OUTPUT0")[0, 0] == MARKER_VALUE  # it went through
            assert _refused(lambda: client.infer(
                "identity", [_marker_input()], headers={"authorization": f"Bearer {forged}"},
            )) == "StatusCode.UNAUTHENTICATED"
            assert _refused(lambda: client.infer("identity", [_marker_input()])) == \
                "StatusCode.UNAUTHENTICATED"
            client.load_model("identity", headers=made.header("marker"))
            assert _refused(lambda: client.load_model("no_such_model",
                                                      headers=made.header("marker"))) != ""
            assert _refused(lambda: client.unload_model("identity",
                                                        headers=made.header("reader"))) == \
                "StatusCode.PERMISSION_DENIED"
        with AdminClient(running.address, token=marker, caller="release-bot") as admin:
            admin.set_alias("identity", "stable", 1)
    finally:
        running.stop()

    lines = read_audit(state / "access-audit.jsonl")
    seen = [(line["principal"], line["method"].rsplit("/", 1)[1], line["model"], line["outcome"],
             line["status"]) for line in lines]
    assert seen == [
        ("", "ModelInfer", "identity", "refused", "UNAUTHENTICATED"),  # the forged token
        ("", "ModelInfer", "identity", "refused", "UNAUTHENTICATED"),  # no token
        ("marker", "RepositoryModelLoad", "identity", "ok", "OK"),
        ("marker", "RepositoryModelLoad", "no_such_model", "failed", seen[3][4]),
        ("reader", "RepositoryModelUnload", "identity", "refused", "PERMISSION_DENIED"),
        ("marker", "SetAlias", "identity", "ok", "OK"),
    ]
    assert seen[3][4] in ("NOT_FOUND", "INVALID_ARGUMENT", "UNAVAILABLE")
    assert all(line["peer"].startswith(("ipv4:127.0.0.1:", "ipv6:")) for line in lines)
    assert all(line["time"].endswith("Z") for line in lines)
    # the deployment audit names the authenticated principal, not only the claimed caller
    deployment = read_audit(state / "audit.jsonl")
    assert deployment[-1]["caller"] == "marker (as release-bot)"

    # Every file the server wrote, and every log record, searched for the markers.
    needles = [marker.encode(), secret.encode(), secret[:16].encode(), forged.encode(),
               MARKER_VALUE.tobytes(), MARKER_TEXT.encode()]
    written = [p for root in (state, predictions) if root.exists()
               for p in root.rglob("*") if p.is_file()]
    assert state / "access-audit.jsonl" in written and state / "audit.jsonl" in written
    for path in written:
        data = path.read_bytes()
        for needle in needles:
            assert needle not in data, f"{path.name} holds a marker"
    logged = "\n".join(f"{r.getMessage()} {r.exc_text or ''}" for r in caplog.records)
    assert logged  # the server did log (model loads at least)
    for needle in needles:
        assert needle.decode("latin-1") not in logged
    tokens_text = made.path.read_text()
    assert secret not in tokens_text and marker not in tokens_text


def test_without_tokens_admin_calls_are_still_audited_and_inference_is_not(tmp_path: Path):
    running = start_server(ServerConfig(
        model_repository=BUNDLED_REPOSITORY, grpc_port=0, metrics_port=None,
        state_dir=tmp_path / "state", model_control="explicit", startup_models=("identity",)))
    try:
        with tc.InferenceServerClient(running.address) as client:
            client.infer("identity", [_marker_input()])
            client.load_model("identity")
    finally:
        running.stop()
    (line,) = read_audit(tmp_path / "state" / "access-audit.jsonl")
    assert (line["principal"], line["method"], line["outcome"]) == (
        "anonymous", "/inference.GRPCInferenceService/RepositoryModelLoad", "ok")
