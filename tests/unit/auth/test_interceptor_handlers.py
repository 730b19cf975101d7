"""The auth interceptor resolves an allowed method's handler once, and never lets that cached
handler stand in for a check: every call is still authenticated and authorized."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any, NamedTuple

import grpc

from sluice.server.auth import tokens
from sluice.server.auth.verifier import TokenVerifier
from sluice.server.protocol.auth import PRINCIPAL, AuthInterceptor

_INFER = "/inference.GRPCInferenceService/ModelInfer"


class _Details(NamedTuple):
    method: str
    invocation_metadata: tuple[tuple[str, str], ...]


async def _model_infer(request: Any, context: Any) -> bytes:
    return b""


def test_an_allowed_method_is_resolved_once_and_every_call_is_still_checked(tmp_path: Path):
    path = tmp_path / "tokens.json"
    caller = tokens.create_token(path, "caller", ["infer"])
    watcher = tokens.create_token(path, "watcher", ["ops"])
    interceptor = AuthInterceptor(TokenVerifier(path))
    handler = grpc.unary_unary_rpc_method_handler(_model_infer)
    resolved: list[str] = []

    async def continuation(details: Any) -> grpc.RpcMethodHandler:
        resolved.append(details.method)
        return handler

    async def call(token: str) -> tuple[Any, str | None]:
        details = _Details(_INFER, (("authorization", f"Bearer {token}"),))
        found = await interceptor.intercept_service(continuation, details)
        return found, PRINCIPAL.get()

    async def main() -> list[tuple[Any, str | None]]:
        # each in its own context, as grpc.aio runs each call in a task of its own
        return [await asyncio.create_task(call(t)) for t in (caller, caller, watcher, caller)]

    first, second, refused, fourth = asyncio.run(main())
    assert first == (handler, "caller") and second == (handler, "caller")
    assert fourth == (handler, "caller")
    # a principal without the scope still gets the refusing handler, not the cached one
    assert refused[0] is not handler and refused[0].unary_unary is not _model_infer
    assert refused[1] is None
    assert interceptor.refused == {}  # counted when the refusing handler runs, not here
    # resolved once for the allowed calls, once more to shape the refusal
    assert resolved == [_INFER, _INFER]
