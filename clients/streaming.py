"""Many requests over one ModelStreamInfer call, answered in whatever order they finish.

Two tasks, owned by the iterator and cancelled when it ends: a writer that encodes and sends
each request with id "0", "1", ... and a reader that receives the answers. Both hand results to
the iterator through one bounded queue, so a slow consumer slows the reader down (and gRPC flow
control then slows the server) instead of piling answers up in memory.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterable, AsyncIterator, Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import grpc
import numpy as np

from sluice.clients.errors import (
    ServerError,
    SluiceClientError,
    error_from_rpc,
    error_from_stream_message,
)
from sluice.clients.messages import StreamResult, decode_response
from sluice.proto import grpc_service_pb2 as pb

__all__ = ["run_stream"]

Inputs = Mapping[str, np.ndarray]
#: Answers buffered between the reader and a slow consumer.
_QUEUE_SIZE = 64
#: After the last answer, how long to let the server end the call with OK before cancelling it.
_CLOSE_GRACE_S = 1.0


@dataclass(slots=True)
class _SentAll:
    """Every request was sent (``count`` of them); also queued to wake the consumer."""

    count: int | None = None


class _Closed:
    """The server ended the stream."""


async def _each(requests: Iterable[Inputs] | AsyncIterable[Inputs]) -> AsyncIterator[Inputs]:
    if isinstance(requests, AsyncIterable):
        async for item in requests:
            yield item
    else:
        for item in requests:
            yield item


async def _write(
    call: Any,
    requests: Iterable[Inputs] | AsyncIterable[Inputs],
    build: Callable[[Inputs, str], pb.ModelInferRequest],
    queue: asyncio.Queue[Any],
    sent: _SentAll,
) -> None:
    count = 0
    try:
        async for inputs in _each(requests):
            index = count
            count += 1
            try:
                message = build(inputs, str(index))
            except SluiceClientError as exc:  # cannot be encoded: answer it here, send nothing
                await queue.put(StreamResult(index, None, exc))
                continue
            await call.write(message)
        await call.done_writing()
        # Recorded before any further await: the reader may see the server close the call
        # before this task gets to queue the news.
        sent.count = count
    except (grpc.RpcError, asyncio.InvalidStateError):
        return  # the call ended early; the reader reports why
    except Exception as exc:  # the caller's iterator failed: surface it to the consumer
        await queue.put(exc)
        return
    await queue.put(sent)


async def _read(call: Any, queue: asyncio.Queue[Any]) -> None:
    try:
        while (message := await call.read()) is not grpc.aio.EOF:
            await queue.put(message)
    except grpc.RpcError as exc:
        await queue.put(error_from_rpc(exc))
        return
    await queue.put(_Closed())


def _result(message: pb.ModelStreamInferResponse) -> tuple[str, StreamResult | None]:
    request_id = message.infer_response.id
    if not request_id.isdigit():
        return request_id, None
    index = int(request_id)
    if message.error_message:
        error = error_from_stream_message(message.error_message)
        return request_id, StreamResult(index, None, error)
    try:
        return request_id, StreamResult(index, decode_response(message.infer_response), None)
    except ServerError as exc:
        return request_id, StreamResult(index, None, exc)


async def run_stream(
    open_call: Callable[[], Any],
    requests: Iterable[Inputs] | AsyncIterable[Inputs],
    build: Callable[[Inputs, str], pb.ModelInferRequest],
) -> AsyncIterator[StreamResult]:
    """Open a ModelStreamInfer call with ``open_call`` on first iteration, send every request of
    ``requests`` on it (encoded by ``build(inputs, id)``) and yield one StreamResult per request
    as answers arrive; return once every request is answered.

    Raises the mapped SluiceClientError if the call itself fails, ServerError if the server
    answers an unknown or already answered id or closes the stream early, and whatever the
    caller's iterator raised. Closing the iterator early (break, aclose, cancellation) cancels
    the call; requests not yet sent are never sent.
    """
    call = open_call()
    queue: asyncio.Queue[Any] = asyncio.Queue(_QUEUE_SIZE)
    sent = _SentAll()
    writer = asyncio.create_task(
        _write(call, requests, build, queue, sent), name="sluice-stream-write"
    )
    reader = asyncio.create_task(_read(call, queue), name="sluice-stream-read")
    finished = False
    try:
        total: int | None = None
        answered: set[int] = set()
        while total is None or len(answered) < total:
            item = await queue.get()
            if isinstance(item, _SentAll):
                total = item.count
                continue
            if isinstance(item, _Closed):
                total = sent.count
                if total is not None and len(answered) == total:
                    break
                raise ServerError(
                    grpc.StatusCode.INTERNAL,
                    f"stream closed with {len(answered)} of "
                    f"{'?' if total is None else total} requests answered",
                )
            if isinstance(item, BaseException):
                raise item
            if isinstance(item, pb.ModelStreamInferResponse):
                request_id, result = _result(item)
                if (
                    result is None
                    or result.index in answered
                    or (total is not None and result.index >= total)
                ):
                    raise ServerError(
                        grpc.StatusCode.INTERNAL,
                        f"stream answered unknown or already answered id {request_id!r}",
                    )
                item = result
            answered.add(item.index)
            yield item
        finished = True
    finally:
        if finished:
            # Let the server end the call with OK rather than see it cancelled.
            await asyncio.wait({reader}, timeout=_CLOSE_GRACE_S)
        call.cancel()
        for task in (writer, reader):
            task.cancel()
        await asyncio.gather(writer, reader, return_exceptions=True)
