"""Helpers of the REST tests (tests/integration/rest/): a value of every datatype Sluice serves,
the body cap the module's server runs with, one raw HTTP request, and a binary-data request
built by hand."""

from __future__ import annotations

import json
import urllib.error
import urllib.request

import numpy as np

#: Every datatype Sluice serves, with values that test its edges.
VALUES = {
    "BOOL": np.array([[True, False, True]]),
    "UINT8": np.array([[0, 7, 255]], np.uint8),
    "UINT16": np.array([[0, 7, 65535]], np.uint16),
    "UINT32": np.array([[0, 7, 2**32 - 1]], np.uint32),
    "UINT64": np.array([[0, 7, 2**64 - 1]], np.uint64),
    "INT8": np.array([[-128, 0, 127]], np.int8),
    "INT16": np.array([[-(2**15), 0, 2**15 - 1]], np.int16),
    "INT32": np.array([[-(2**31), 0, 2**31 - 1]], np.int32),
    "INT64": np.array([[-(2**63), 0, 2**63 - 1]], np.int64),
    "FP16": np.array([[-1.5, 0.0, 65504.0]], np.float16),
    "FP32": np.array([[-1.25, 0.0, 3.0e38]], np.float32),
    "FP64": np.array([[-1.25, 1e-300, 1e300]], np.float64),
    "BYTES": np.array([[b"", b"caf\xc3\xa9", b"x" * 40]], dtype=object),
}
MAX_BODY = 1 << 20


def call(url: str, path: str, body: bytes | None = None, headers: dict | None = None,
         method: str | None = None) -> tuple[int, dict[str, str], bytes]:
    """(status, headers, body) of one raw HTTP request."""
    request = urllib.request.Request(f"http://{url}{path}", data=body, headers=headers or {},
                                     method=method)
    try:
        with urllib.request.urlopen(request, timeout=30) as answer:
            return answer.status, dict(answer.headers), answer.read()
    except urllib.error.HTTPError as error:
        return error.code, dict(error.headers), error.read()


def binary_body(tensors: list[tuple[str, str, list[int], bytes]], outputs: list[str],
                extra: bytes = b"", announce: dict[str, int] | None = None) -> tuple[bytes, dict]:
    """A request with every input as binary data, built by hand from the extension's text."""
    header = json.dumps({
        "inputs": [{"name": n, "datatype": d, "shape": s,
                    "parameters": {"binary_data_size": (announce or {}).get(n, len(raw))}}
                   for n, d, s, raw in tensors],
        "outputs": [{"name": o, "parameters": {"binary_data": True}} for o in outputs],
    }).encode()
    body = header + b"".join(raw for *_, raw in tensors) + extra
    return body, {"Inference-Header-Content-Length": str(len(header)),
                  "Content-Type": "application/octet-stream"}
