"""ModelStreamInfer: requests of one stream answered as they finish, each by its own id.

Reading stops while ``STREAM_WINDOW`` requests of the stream are unanswered. An error answers
its one request (``error_message`` "[CODE] text", the request's model, version and id) and the
stream stays open.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable

from proto import grpc_service_pb2 as pb
from server.protocol import wire
from server.protocol.status import to_status
from server.types import InferResponse

#: In-flight requests per ModelStreamInfer stream before we stop reading from it.
STREAM_WINDOW = 256

Infer = Callable[
    [pb.ModelInferRequest, float | None, Callable[[], str | None]], Awaitable[InferResponse]
]


async def answer_stream(
    infer: Infer, request_iterator: AsyncIterator[pb.ModelInferRequest], stream_key: str | None
) -> AsyncIterator[bytes | pb.ModelStreamInferResponse]:
    """The answers to ``request_iterator``'s requests, as they finish. ``stream_key``: the
    sticky key the stream's metadata carries (metadata cannot change within a stream)."""
    done: asyncio.Queue[bytes | pb.ModelStreamInferResponse | None] = asyncio.Queue()
    window = asyncio.Semaphore(STREAM_WINDOW)
    tasks: set[asyncio.Task[None]] = set()

    def metadata_key() -> str | None:
        return stream_key

    async def answer(message: pb.ModelInferRequest) -> None:
        try:
            response = await infer(message, None, metadata_key)
            item: bytes | pb.ModelStreamInferResponse = wire.encode_stream_response(response)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            code, text, _ = to_status(exc)
            item = pb.ModelStreamInferResponse(
                error_message=f"[{code.name}] {text}",
                infer_response=pb.ModelInferResponse(
                    model_name=message.model_name,
                    model_version=message.model_version,
                    id=message.id,
                ),
            )
        finally:
            window.release()
        done.put_nowait(item)

    async def read() -> None:
        try:
            async for message in request_iterator:
                await window.acquire()
                task = asyncio.create_task(answer(message))
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
