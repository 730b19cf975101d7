"""A closed-loop KServe v2 REST load generator with JSON tensors, for servers perf_analyzer
cannot drive.

    python -m loadtests.rest_loadgen --target HOST:PORT [--model identity] [--concurrency 64]
        [--duration 5] [--warmup 1]

``perf_analyzer -i http`` needs Triton's model config endpoint and sends binary tensor data;
MLServer 1.7.1's REST has neither (it answers ``/v2/models/M/config`` 404 and reads JSON only).
This generator sends what every KServe v2 server reads: one pre-encoded JSON request of
``identity``'s ``INPUT0`` FP32 [1, 16], from ``--concurrency`` workers, each on its own
keep-alive HTTP/1.1 connection, sending again as soon as its answer is read. The first answer of
each server is checked (status 200; a JSON answer must echo the input), the
loop then reads whole bodies and counts status 200. Prints one JSON line: ``infer_s`` (answers
completed inside the window / window), ``p50_ms``, ``p99_ms``, ``errors``.

It is Python on the same machine as the server, so it costs the server CPU time as
perf_analyzer does, and more of it: compare servers measured by this generator with each other,
never with perf_analyzer's figures.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time

import numpy as np

_ROW = [float(i) / 4 for i in range(16)]


def request_body(model_input: str = "INPUT0") -> bytes:
    return json.dumps({"inputs": [{"name": model_input, "datatype": "FP32", "shape": [1, 16],
                                   "data": _ROW}]}).encode()


def check_answer(body: bytes, content_type: str) -> str | None:
    """Why the first answer is wrong, or None. A binary answer (the constant servicer's) is
    taken as it is; a JSON one must hold OUTPUT0 equal to the input."""
    if not content_type.startswith("application/json"):
        return None
    outputs = {o["name"]: o for o in json.loads(body).get("outputs", [])}
    data = outputs.get("OUTPUT0", {}).get("data")
    if data is None or [float(v) for v in np.ravel(data)] != _ROW:
        return f"OUTPUT0 is not the input: {body[:200]!r}"
    return None


class _Connection:
    """One keep-alive HTTP/1.1 connection sending one pre-built request again and again: the
    request bytes are made once, an answer is read by its Content-Length (every server here
    sends one). Far cheaper per call than a general client, so the server, not this
    generator, is what the figures show for longer."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                 request: bytes) -> None:
        self._reader, self._writer, self._request = reader, writer, request

    @classmethod
    async def open(cls, host: str, port: int, request: bytes) -> _Connection:
        reader, writer = await asyncio.open_connection(host, port)
        return cls(reader, writer, request)

    async def call(self) -> tuple[int, str, bytes]:
        """(status, content type, body) of one request."""
        self._writer.write(self._request)
        head = await self._reader.readuntil(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ", 2)[1])
        fields = {k.strip().lower(): v.strip() for k, _, v in
                  (line.partition(":") for line in lines[1:] if line)}
        if "content-length" not in fields:
            raise ConnectionError(f"answer without Content-Length: {head[:200]!r}")
        body = await self._reader.readexactly(int(fields["content-length"]))
        return status, fields.get("content-type", ""), body

    def close(self) -> None:
        self._writer.close()


async def measure(target: str, model: str, concurrency: int, duration_s: float,
                  warmup_s: float) -> dict[str, object]:
    host, _, port = target.rpartition(":")
    body = request_body()
    request = (f"POST /v2/models/{model}/infer HTTP/1.1\r\nHost: {target}\r\n"
               f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
               ).encode() + body
    connections = [await _Connection.open(host, int(port), request)
                   for _ in range(concurrency)]
    try:
        status, content_type, first = await connections[0].call()
        if status != 200:
            return {"error": f"status {status}: {first[:200]!r}"}
        wrong = check_answer(first, content_type)
        if wrong:
            return {"error": wrong}
        start = time.monotonic() + warmup_s
        stop = start + duration_s
        latencies: list[float] = []
        errors = 0

        async def worker(connection: _Connection) -> None:
            nonlocal errors
            while True:
                sent = time.monotonic()
                if sent >= stop:
                    return
                try:
                    ok = (await asyncio.wait_for(connection.call(), 30))[0] == 200
                except (OSError, TimeoutError, asyncio.IncompleteReadError):
                    errors += 1
                    return  # the connection is in an unknown state: this worker stops
                done = time.monotonic()
                if start <= done < stop:
                    if ok:
                        latencies.append(done - sent)
                    else:
                        errors += 1

        await asyncio.gather(*(worker(c) for c in connections))
    finally:
        for connection in connections:
            connection.close()
    if not latencies:
        return {"error": f"no answer inside the window ({errors} errors)"}
    ms = np.array(latencies) * 1000
    return {"infer_s": round(len(latencies) / duration_s, 1),
            "p50_ms": round(float(np.percentile(ms, 50)), 2),
            "p99_ms": round(float(np.percentile(ms, 99)), 2), "errors": errors}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--target", required=True, help="HOST:PORT of the REST server")
    parser.add_argument("--model", default="identity")
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--duration", type=float, default=5.0, help="measured seconds")
    parser.add_argument("--warmup", type=float, default=1.0, help="seconds before measuring")
    args = parser.parse_args(argv)
    result = asyncio.run(measure(args.target, args.model, args.concurrency, args.duration,
                                 args.warmup))
    print(json.dumps(result), flush=True)
    return 1 if "error" in result else 0


if __name__ == "__main__":
    sys.exit(main())
