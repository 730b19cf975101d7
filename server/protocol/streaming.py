"""ModelStreamInfer: requests of one stream answered as they finish, each by its own id (the
request's, else one the server made).

Reading stops while ``STREAM_WINDOW`` requests of the stream are unanswered. An error answers
its one request (``error_message`` "[CODE] text", the request's model, version and id) and the
stream stays open; so does a message that is not a valid ModelInferRequest ("[INVALID_ARGUMENT]
the request is not a valid inference.ModelInferRequest message ...", an id the server made).
Requests of a model the monitor hub watches are offered to it as they finish.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, Protocol

from sluice.proto import grpc_service_pb2 as pb
from sluice.server.monitoring.hub import MonitorHub
from sluice.server.protocol import handoff, shm_tensors
from sluice.server.protocol.refusals import Refusals
from sluice.server.protocol.request_parsing import Unparsable
from sluice.server.protocol.status import to_status
from sluice.server.types import InferRequest, InferResponse

#: In-flight requests per ModelStreamInfer stream before we stop reading from it.
STREAM_WINDOW = 256

class Answerer(Protocol):
    """What a stream needs of the servicer (``servicer.InferenceServicer``)."""

    hub: MonitorHub
    new_id: Callable[[], str]
    refusals: Refusals

    def answer_now(
        self, message: pb.ModelInferRequest, deadline: float | None,
        metadata_key: Callable[[], str | None] | None,
    ) -> tuple[InferRequest, Any, InferResponse | None]: ...

    def dispatch(self, request: InferRequest, route: Any) -> Awaitable[InferResponse]: ...


def _error_item(
    message: pb.ModelInferRequest, exc: Exception, request_id: str
) -> pb.ModelStreamInferResponse:
    code, text, _ = to_status(exc)
    return pb.ModelStreamInferResponse(
        error_message=f"[{code.name}] {text}",
        infer_response=pb.ModelInferResponse(
            model_name=message.model_name, model_version=message.model_version, id=request_id
        ),
    )


def _unparsable_item(text: str, request_id: str) -> pb.ModelStreamInferResponse:
    """The error item answering a stream message that did not parse (no model, no id of its
    own: the server makes one, as for a request sent without)."""
    return pb.ModelStreamInferResponse(
        error_message=f"[INVALID_ARGUMENT] {text}",
        infer_response=pb.ModelInferResponse(id=request_id),
    )


async def answer_stream(
    servicer: Answerer, request_iterator: AsyncIterator[pb.ModelInferRequest],
    stream_key: str | None,
) -> AsyncIterator[bytes | pb.ModelStreamInferResponse]:
    """The answers to ``request_iterator``'s requests, as they finish. ``stream_key``: the
    sticky key the stream's metadata carries (metadata cannot change within a stream). A
    request answered at once on the loop (:meth:`Answerer.answer_now`) needs no task."""
    done: asyncio.Queue[bytes | pb.ModelStreamInferResponse | None] = asyncio.Queue()
    window = asyncio.Semaphore(STREAM_WINDOW)
    tasks: set[asyncio.Task[None]] = set()
    hub = servicer.hub

    def metadata_key() -> str | None:
        return stream_key

    def error(
        message: pb.ModelInferRequest, request: InferRequest | None, route: Any,
        started: float | None, exc: Exception,
    ) -> pb.ModelStreamInferResponse:
        """The error item answering ``message``, its failure offered when ``started`` (the
        model is watched)."""
        if started is None:
            if request is None:  # failed on the loop: the request may have been decoded
                request = getattr(exc, "sluice_routed", (None,))[0]
            request_id = request.id if request is not None else message.id or servicer.new_id()
        else:
            record = handoff.failed(message, request, route, started, exc, servicer.new_id)
            hub.offer(record)
            request_id = record.id
        return _error_item(message, exc, request_id)

    async def answer(
        message: pb.ModelInferRequest, request: InferRequest, route: Any, started: float | None
    ) -> None:
        try:
            response = await servicer.dispatch(request, route)
            if started is not None:
                hub.offer(handoff.answered(request, route, response, started))
            item: bytes | pb.ModelStreamInferResponse = shm_tensors.encode_stream_response(
                request, response)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            item = error(message, request, route, started, exc)
        finally:
            window.release()
        done.put_nowait(item)

    async def read() -> None:
        try:
            async for message in request_iterator:
                if type(message) is Unparsable:  # the bytes did not parse (request_parsing)
                    refusal = message.error()
                    servicer.refusals.note(refusal)
                    done.put_nowait(_unparsable_item(refusal.message, servicer.new_id()))
                    continue
                await window.acquire()  # before routing: no await between routing and queueing
                started = time.perf_counter() if hub.wants(message.model_name) else None
                request = route = None
                try:
                    request, route, response = servicer.answer_now(message, None, metadata_key)
                    if response is None:
                        item = None
                    else:
                        if started is not None:
                            hub.offer(handoff.answered(request, route, response, started))
                        item = shm_tensors.encode_stream_response(request, response)
                except Exception as exc:
                    item = error(message, request, route, started, exc)
                if item is not None:
                    window.release()
                    done.put_nowait(item)
                    continue
                task = asyncio.create_task(answer(message, request, route, started))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
            if tasks:
                await asyncio.gather(*list(tasks), return_exceptions=True)
        finally:
            done.put_nowait(None)

    reader = asyncio.create_task(read())
    try:
        while (item := await done.get()) is not None:
            yield item
    finally:
        reader.cancel()
        for task in list(tasks):
            task.cancel()
