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



# -- state, order and batching -------------------------------------------------------------------


def test_interleaved_sequences_keep_their_own_state(client):
    """accumulate: OUTPUT = state + INPUT. Sums worked by hand."""
    a, b = 7001, "seven-thousand-two"
    assert infer(client, "accumulate", 1, a, start=True) == 1
    assert infer(client, "accumulate", 10, b, start=True) == 10
    assert infer(client, "accumulate", 2, a) == 3
    assert infer(client, "accumulate", 20, b) == 30
    assert infer(client, "accumulate", 3, a) == 6
    # a START on an idle, unfinished sequence restarts it from zeros (Triton ends the old one)
    assert infer(client, "accumulate", 5, a, start=True) == 5
    assert infer(client, "accumulate", 30, b, end=True) == 60
    assert infer(client, "accumulate", 4, a, end=True) == 9
    # after END the id is free again, and its state gone
    assert infer(client, "accumulate", 100, b, start=True, end=True) == 100


def test_concurrent_sequences_are_batched_together_each_in_order(server, client):
    """16 sequences at once over the aio client, each awaiting its previous answer: every
    answer is its own running sum, and the oldest strategy batched requests of different
    sequences together (batches of more than one request)."""
    steps = np.arange(1, 97, dtype=np.int32).reshape(16, 6) * np.array([[1], [-1]] * 8)

    async def one(client, row: int) -> list[int]:
        out = []
        for n, value in enumerate(steps[row]):
            data = np.full((1, 1), value, np.int32)
            tensor = tca.InferInput("INPUT", [1, 1], "INT32")
            tensor.set_data_from_numpy(data)
            result = await client.infer("busy_accumulate", [tensor], sequence_id=8000 + row,
                                        sequence_start=n == 0, sequence_end=n == 5)
            out.append(int(result.as_numpy("OUTPUT")[0, 0]))
        return out

    async def main():
        async with tca.InferenceServerClient(server.address) as aclient:
            return await asyncio.gather(*(one(aclient, row) for row in range(16)))

    before = _batches(client)
    got = np.array(asyncio.run(main()))
    np.testing.assert_array_equal(got, np.cumsum(steps, axis=1))
    after = _batches(client)
    grown = {size for size, count in after.items() if count > before.get(size, 0)}
    assert sum(after.values()) - sum(before.values()) < 96  # fewer batches than requests
    assert max(grown) > 1


def _batches(client) -> dict[int, int]:
    stats = client.get_inference_statistics("busy_accumulate", as_json=True)["model_stats"][0]
    return {int(b["batch_size"]): int(b["compute_infer"].get("count", 0))
            for b in stats.get("batch_stats", [])}


def test_a_stream_may_carry_a_restart_and_a_new_sequence_after_end(server):
    """On one stream, without waiting: START, step, END, then the same id STARTed again."""
    sends = [(5, True, False), (6, False, False), (7, False, True), (1, True, True)]
    answers: queue.Queue = queue.Queue()
    with tc.InferenceServerClient(server.address) as client:
        client.start_stream(callback=lambda result, error: answers.put(error or result))
        for n, (value, start, end) in enumerate(sends):
            client.async_stream_infer("accumulate", [int_input(value)], request_id=str(n),
                                      sequence_id=9000, sequence_start=start, sequence_end=end)
        got = [answers.get(timeout=30) for _ in sends]
        client.stop_stream()
    by_id = {int(r.get_response().id): int(r.as_numpy("OUTPUT")[0, 0]) for r in got}
    assert by_id == {0: 5, 1: 11, 2: 18, 3: 1}


# -- release, backlog and conflicts --------------------------------------------------------------


def test_idle_release_frees_the_slot_for_the_backlog_and_a_second_start_conflicts(server, client):
    """one_slot serves one sequence at a time. A holds the slot; B's START waits in the
    backlog; a second START for B while the first is unanswered is FAILED_PRECONDITION. Once A
    idles past max_sequence_idle_microseconds it is released, B gets the slot, and A's next
    request is refused naming A and the idle release."""
    assert infer(client, "one_slot", 5, "A", start=True) == 5
    answers: queue.Queue = queue.Queue()
    client.async_infer("one_slot", [int_input(7)], sequence_id="B", sequence_start=True,
                       callback=lambda result, error: answers.put(error or result))
    with pytest.raises(queue.Empty):
        answers.get(timeout=0.2)  # backlogged: A holds the only slot (for 1 s idle)
    status, message = refusal(lambda: infer(client, "one_slot", 1, "B", start=True))
    assert status == "StatusCode.FAILED_PRECONDITION"
    assert "sequence 'B'" in message and "1 request(s) unanswered" in message
    first_b = answers.get(timeout=30)  # A idles out, B takes the slot
    assert int(first_b.as_numpy("OUTPUT")[0, 0]) == 7
    status, message = refusal(lambda: infer(client, "one_slot", 1, "A"))
    assert status == "StatusCode.INVALID_ARGUMENT"
    assert "must specify the START flag" in message
    assert f"'A' was released after {IDLE_US} microseconds idle" in message
    assert infer(client, "one_slot", 1, "B", end=True) == 8  # B kept its state


def test_bad_sequence_requests_are_refused_precisely_and_the_server_keeps_serving(client):
    def status_of(model, *, rows=1, **kwargs):
        return refusal(lambda: client.infer(model, [int_input(1, rows)], **kwargs))

    status, message = status_of("accumulate")
    assert status == "StatusCode.INVALID_ARGUMENT"
    assert "must specify a non-zero or non-empty correlation ID" in message
    status, message = status_of("accumulate", sequence_id=404)
    assert status == "StatusCode.INVALID_ARGUMENT"
    assert "sequence 404 to model 'accumulate' must specify the START flag" in message
    assert "never started" in message
    status, message = status_of("accumulate", rows=2, sequence_id=405, sequence_start=True)
    assert status == "StatusCode.INVALID_ARGUMENT" and "batch-size 1" in message
    status, message = status_of("simple_dyna_sequence", sequence_id="x1", sequence_start=True)
    assert status == "StatusCode.INVALID_ARGUMENT"
    assert "UINT64 (control input 'CORRID')" in message and "'x1'" in message
    # none of these started a sequence, and a good one still works
    assert refusal(lambda: infer(client, "accumulate", 1, 405))[0] == "StatusCode.INVALID_ARGUMENT"
    assert infer(client, "accumulate", 3, 406, start=True, end=True) == 3


def test_config_and_metadata_show_the_clients_tensors_only(client):
    meta = client.get_model_metadata("simple_string_dyna_sequence", as_json=True)
    assert [t["name"] for t in meta["inputs"]] == ["INPUT"]
    assert [t["name"] for t in meta["outputs"]] == ["OUTPUT"]
    config = client.get_model_config("simple_string_dyna_sequence", as_json=True)["config"]
    sequence = config["sequence_batching"]
    assert sequence["state"] == [{"input_name": "ACC_IN", "output_name": "ACC_OUT",
                                  "data_type": "TYPE_INT32", "dims": ["1"]}]
    assert [c["name"] for c in sequence["control_input"]] == ["START", "END", "READY", "CORRID"]
    assert sequence["oldest"]["max_candidate_sequences"] == 64
    assert sequence["max_sequence_idle_microseconds"] == "1000000"  # Triton's default
    assert "dynamic_batching" not in config


def test_a_restart_mid_sequence_is_a_clear_error_not_a_wrong_sum(make_server, tmp_path):
    model, config = accumulate()
    write_model(tmp_path, "accumulate", model, config)
    first = make_server(tmp_path)
    with tc.InferenceServerClient(first.address) as client:
        assert infer(client, "accumulate", 5, 42, start=True) == 5
        assert infer(client, "accumulate", 6, 42) == 11
    first.stop()
    second = make_server(tmp_path)
    with tc.InferenceServerClient(second.address) as client:
        status, message = refusal(lambda: infer(client, "accumulate", 7, 42))
        assert status == "StatusCode.INVALID_ARGUMENT"
        assert "sequence 42 to model 'accumulate' must specify the START flag" in message
        assert "restarted" in message
        assert infer(client, "accumulate", 7, 42, start=True) == 7
