"""A running server (or a fleet behind one address) answering batch jobs over ModelStreamInfer.

A chunk goes out as requests of ``batch_rows`` rows on one stream, at most ``window`` of them
unanswered at a time (the next is sent when an answer comes back), so neither side holds more
than the window. A request the server sheds (UNAVAILABLE, e.g. a full queue) is sent again after
its pushback, up to ``retries`` rounds; any other failure rejects its rows with the server's
reason and the job goes on.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import numpy as np

from sluice.clients import AsyncClient
from sluice.clients.errors import Overloaded
from sluice.server.batch.job import Failure
from sluice.server.types import DATATYPE_DTYPES, TensorSpec


class RemotePredictor:
    """``model`` on the server ``client`` talks to; ``await connect()`` before use."""

    def __init__(self, client: AsyncClient, model: str, *, version: str = "",
                 batch_rows: int | None = None, window: int = 8, retries: int = 5) -> None:
        self.client, self.model, self.version = client, model, version
        self.batch_rows = batch_rows or 0
        self.window, self.retries = window, retries
        self.inputs: tuple[TensorSpec, ...] = ()
        self.outputs: tuple[TensorSpec, ...] = ()
        self.identity: dict[str, Any] = {}

    async def connect(self) -> None:
        """Read the model's tensors and batch size from the server."""
        meta = await self.client.model_metadata(self.model, self.version)
        config = await self.client.model_config(self.model, self.version)
        if config.max_batch_size == 0:
            raise ValueError(f"model '{self.model}' does not batch (max_batch_size 0)")

        def specs(items: list[dict[str, Any]]) -> tuple[TensorSpec, ...]:
            return tuple(TensorSpec(t["name"], t["datatype"], tuple(int(d) for d in
                                                                    t["shape"][1:]))
                         for t in items)

        self.inputs, self.outputs = specs(meta["inputs"]), specs(meta["outputs"])
        self.batch_rows = self.batch_rows or config.max_batch_size
        self.identity = {"model": self.model, "version": self.version or "latest",
                         "server": self.client.target}

    async def predict(self, inputs: dict[str, np.ndarray]
                      ) -> tuple[dict[str, np.ndarray], list[Failure]]:
        rows = next(iter(inputs.values())).shape[0]
        out = {s.name: np.zeros((rows, *s.dims), DATATYPE_DTYPES[s.datatype])
               for s in self.outputs}
        spans = [(a, min(a + self.batch_rows, rows)) for a in range(0, rows, self.batch_rows)]
        failures: list[Failure] = []
        for attempt in range(self.retries + 1):
            shed, wait_ms = [], 0
            async for span, result in self._stream(inputs, spans):
                if result.error is None:
                    assert result.outputs is not None
                    for name, value in out.items():
                        value[span[0]:span[1]] = result.outputs[name].reshape(
                            span[1] - span[0], *value.shape[1:])
                elif isinstance(result.error, Overloaded) and attempt < self.retries:
                    shed.append(span)
                    wait_ms = max(wait_ms, result.error.retry_after_ms or 100)
                else:
                    code = "shed" if isinstance(result.error, Overloaded) else "server"
                    failures.append((*span, code, result.error.details))
            if not shed:
                break
            spans = shed
            await asyncio.sleep(min(wait_ms, 5000) / 1000 * (attempt + 1))
        return out, failures

    async def _stream(self, inputs: dict[str, np.ndarray], spans: list[tuple[int, int]]
                      ) -> AsyncIterator[tuple[tuple[int, int], Any]]:
        free = asyncio.Semaphore(self.window)

        async def requests() -> AsyncIterator[dict[str, np.ndarray]]:
            for first, stop in spans:
                await free.acquire()  # the window: one out, one back
                yield {k: v[first:stop] for k, v in inputs.items()}

        stream = self.client.stream(self.model, requests(), version=self.version or None)
        async with contextlib.aclosing(stream) as results:
            async for result in results:
                free.release()
                yield spans[result.index], result
