"""Sequence batching with implicit state (issue 16 item 5), through a real server.

Triton's own example clients are the reference: the tests below make the calls
simple_grpc_sequence_sync_infer_client.py, simple_grpc_sequence_stream_infer_client.py and
simple_grpc_aio_sequence_stream_infer_client.py make (with and without ``--dyna``) and check the
answers as they do, against the example models built as Triton defines them
(tests/support/sequence_models.py). The rest: interleaved sequences, batching across sequences,
idle release, the backlog, conflicting STARTs, a restart mid-sequence, and bad requests.
"""

from __future__ import annotations

import asyncio
import queue
import uuid

import numpy as np
import pytest
import tritonclient.grpc as tc
import tritonclient.grpc.aio as tca
from tritonclient.utils import InferenceServerException

from sluice.server.config.settings import ServerConfig
from tests.support.onnx_models import write_model
from tests.support.running import start_server
from tests.support.sequence_models import accumulate, write_sequence_repository

#: The example clients' values: each sequence sends [first] + VALUES, START on the first
#: request, END on the last.
VALUES = [11, 7, 5, 3, 2, 0, 1]
#: ``one_slot``: direct, one batch row, one instance: one sequence at a time; idle 1 s.
IDLE_US = 1_000_000


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    repo = write_sequence_repository(tmp_path_factory.mktemp("sequences"))
    model, config = accumulate("one_slot", strategy="direct { }", max_batch_size=1,
                               idle_us=IDLE_US)
    write_model(repo, "one_slot", model, config)
    running = start_server(ServerConfig(
        model_repository=repo, grpc_port=0, metrics_port=None,
        state_dir=tmp_path_factory.mktemp("sequences-state"),
    ))
    yield running
    running.stop()


@pytest.fixture
def client(server):
    with tc.InferenceServerClient(server.address) as client:
        yield client


def int_input(value: int, rows: int = 1, lib=tc) -> tc.InferInput:
    data = np.full((rows, 1), value, dtype=np.int32)
    tensor = lib.InferInput("INPUT", list(data.shape), "INT32")
    tensor.set_data_from_numpy(data)
    return tensor


def infer(client, model: str, value: int, sid, *, start=False, end=False) -> int:
    result = client.infer(model, [int_input(value)], sequence_id=sid, sequence_start=start,
                          sequence_end=end)
    return int(result.as_numpy("OUTPUT")[0, 0])


def refusal(call) -> tuple[str, str]:
    with pytest.raises(InferenceServerException) as info:
        call()
    return info.value.status(), info.value.message()


# -- Triton's example clients -------------------------------------------------------------------


def example_setup(dyna: bool, offset: int):
    """Models, sequence ids and input lists of the example clients (``--dyna``, ``--offset``)."""
    int_model = "simple_dyna_sequence" if dyna else "simple_sequence"
    string_model = "simple_string_dyna_sequence" if dyna else "simple_sequence"
    ids = (1000 + offset * 2, 1001 + offset * 2,
           str(1002 + offset) if dyna else str(uuid.uuid4()))
    sends = [
        (int_model, ids[0], [0, *VALUES]),
        (int_model, ids[1], [100, *(-v for v in VALUES)]),
        (string_model, ids[2], [20, *(-v for v in VALUES)]),
    ]
    return ids, sends


def check_example(dyna: bool, ids, seq0: list[int], seq1: list[int], text0: list[int]) -> None:
    """The example clients' own checks, for every answer of the three sequences."""
    assert len(seq0) == len(seq1) == len(text0) == len(VALUES) + 1
    for i in range(len(seq0)):
        want0 = 1 if i == 0 else VALUES[i - 1]
        want1 = 101 if i == 0 else -VALUES[i - 1]
        if i == 0:
            want_text = 20 if dyna else 21
        elif dyna:
            want_text = -VALUES[i - 1] + text0[i - 1]
        else:
            want_text = -VALUES[i - 1]
        if dyna and i != 0 and VALUES[i - 1] == 1:  # the dyna models add CORRID at the END
            want0 += ids[0]
            want1 += ids[1]
            want_text += int(ids[2])
        assert (seq0[i], seq1[i], text0[i]) == (want0, want1, want_text), i


@pytest.mark.parametrize("dyna", [False, True])
def test_sync_example_client(client, dyna):
    ids, sends = example_setup(dyna, offset=10 + dyna)
    results = []
    for model, sid, values in sends:  # one sequence after the other, one request at a time
        results.append([
            infer(client, model, v, sid, start=n == 0, end=n == len(values) - 1)
            for n, v in enumerate(values)
        ])
    check_example(dyna, ids, *results)


def stream_requests(sends, lib=tc):
    """The example's requests: ``lib`` is tritonclient.grpc or tritonclient.grpc.aio."""
    for model, sid, values in sends:
        for n, value in enumerate(values, 1):
            yield dict(model_name=model, inputs=[int_input(value, lib=lib)],
                       outputs=[lib.InferRequestedOutput("OUTPUT")], request_id=f"{sid}_{n}",
                       sequence_id=sid, sequence_start=n == 1, sequence_end=n == len(values))


def sort_stream_answers(ids, answers) -> list[list[int]]:
    """The example's sorting of stream answers by the sequence id in the request id; each
    sequence's answers in the order they came (the example relies on that order)."""
    by_id: dict[str, list[int]] = {str(i): [] for i in ids}
    for answer in answers:
        assert not isinstance(answer, InferenceServerException), answer
        by_id[answer.get_response().id.split("_")[0]].append(
            int(answer.as_numpy("OUTPUT")[0, 0])
        )
    return [by_id[str(i)] for i in ids]


@pytest.mark.parametrize("dyna", [False, True])
def test_stream_example_client(server, dyna):
    """All 24 requests go out on one stream before any answer is read."""
    ids, sends = example_setup(dyna, offset=20 + dyna)
    answers: queue.Queue = queue.Queue()
    with tc.InferenceServerClient(server.address) as client:
        client.start_stream(callback=lambda result, error: answers.put(error or result))
        for request in stream_requests(sends):
            client.async_stream_infer(**request)
        got = [answers.get(timeout=30) for _ in range(3 * (len(VALUES) + 1))]
        client.stop_stream()
    check_example(dyna, ids, *sort_stream_answers(ids, got))


@pytest.mark.parametrize("dyna", [False, True])
def test_aio_stream_example_client(server, dyna):
    ids, sends = example_setup(dyna, offset=30 + dyna)

    async def main():
        async with tca.InferenceServerClient(server.address) as client:
            async def requests():
                for request in stream_requests(sends, tca):
                    yield request
            got = []
            async for result, error in client.stream_infer(inputs_iterator=requests()):
                got.append(error or result)
                if len(got) == 3 * (len(VALUES) + 1):
                    break
            return got

    check_example(dyna, ids, *sort_stream_answers(ids, asyncio.run(main())))

