"""Sequence batching with implicit state: the requests of one sequence in order, each fed its
control inputs and the state its predecessor left (issue 16 item 5).

A model with ``sequence_batching`` serves sequences named by the request parameters
``sequence_id`` (an integer or a string), ``sequence_start`` and ``sequence_end``. For every
request the server adds the model's control inputs (START and END as the request says, READY
true, CORRID the sequence id) and its state inputs: zeros (of the state's starting shape) on a
START, otherwise the state outputs the previous request of the sequence computed. The client
never sends nor sees them.

How requests flow: :meth:`SequenceScheduler.begin` takes a request's place in its sequence at
once, on the event loop and before any await (so requests keep the order they arrived in, on a
stream as well as over separate calls); :meth:`Step.ready` waits for the sequence's previous
request to be answered (and, for a new sequence, for a slot), then returns the inputs to queue
on the version's batcher like any other request. One request per sequence is therefore ever
queued or computing, and batches are made across sequences by the dynamic batcher: Triton's
``oldest`` strategy. ``direct`` also batches this way; the difference left is the number of
sequences served at once (the slots: ``max_batch_size`` x instances for direct,
``max_candidate_sequences`` for oldest); further sequences wait in a backlog, in the order they
started, until one ends or is released. A model whose state lives in the server keeps no state
of its own per batch row, so which row a sequence takes in a batch does not matter.

Promises:
- a request of a sequence computes only after the previous one was answered, and with the state
  that one left (a request that failed leaves the state as it was);
- a sequence is released after its END request, or once nothing of it has been in flight for
  ``max_sequence_idle_microseconds``; a later request without START is INVALID_ARGUMENT naming
  the sequence (and saying it was released for idling when it was);
- a START for a sequence that has requests unanswered is FAILED_PRECONDITION naming it; a START
  for an idle unfinished sequence restarts it (Triton ends the old one early);
- nothing here blocks: waiting for a turn or a slot is an await, and the state is the arrays the
  batcher split back (one row per sequence).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from sluice.server.config.model import ModelConfig
from sluice.server.config.sequence import corrid_tensor, flag_tensor
from sluice.server.errors import Code, InvalidInput, Overloaded, SluiceError
from sluice.server.types import DATATYPE_DTYPES, InferRequest

log = logging.getLogger(__name__)

SequenceId = int | str
Arrays = dict[str, np.ndarray]
#: Released-for-idling sequence ids remembered for the error message (bounds memory).
_EXPIRED_LIMIT = 4096


class SequenceConflict(SluiceError):
    """A START for a sequence whose earlier requests are still unanswered."""

    code = Code.FAILED_PRECONDITION


def sequence_params(parameters: Mapping[str, Any]) -> tuple[SequenceId, bool, bool] | None:
    """(sequence_id, sequence_start, sequence_end) of a request, or None when it names no
    sequence (no ``sequence_id``, or 0 or ""). Raises InvalidInput naming a parameter of the
    wrong type (Triton's frontend refuses those too, on every model)."""
    sid = parameters.get("sequence_id")
    if sid is not None and (isinstance(sid, bool) or not isinstance(sid, int | str)):
        raise InvalidInput(
            "parameter 'sequence_id' must be an integer (int64_param or uint64_param) or a "
            "string (string_param)"
        )
    if isinstance(sid, int) and sid < 0:
        raise InvalidInput(f"parameter 'sequence_id' must not be negative, got {sid}")
    flags = []
    for key in ("sequence_start", "sequence_end"):
        value = parameters.get(key, False)
        if not isinstance(value, bool):
            raise InvalidInput(f"parameter '{key}' must be a bool (bool_param)")
        flags.append(value)
    if sid is None or sid == 0 or sid == "":
        return None
    return sid, flags[0], flags[1]


class _Sequence:
    """One sequence in progress."""

    __slots__ = ("failed", "id", "last", "pending", "slot", "state", "tail", "waiter")

    def __init__(self, sid: SequenceId) -> None:
        self.id = sid
        #: State input name -> the array its next request is fed.
        self.state: Arrays = {}
        #: Settled once the newest request of the sequence was answered.
        self.tail: asyncio.Future[None] | None = None
        #: Requests begun and not yet answered.
        self.pending = 0
        #: Clock instant its last request was answered.
        self.last = 0.0
        #: Holds one of the model's sequence slots.
        self.slot = False
        #: Settled when a backlogged sequence gets its slot.
        self.waiter: asyncio.Future[None] | None = None
        #: Its START request failed: it has no state to continue from.
        self.failed = False


class Step:
    """One request's place in its sequence (made by :meth:`SequenceScheduler.begin`). Await
    :meth:`ready`, queue what it returns, call :meth:`done` with the request's outputs, and
    :meth:`close` always (in a ``finally``)."""

    __slots__ = ("_mine", "_ok", "_owner", "_prev", "_seq", "end", "start")

    def __init__(self, owner: SequenceScheduler, seq: _Sequence, start: bool, end: bool,
                 prev: asyncio.Future[None] | None, mine: asyncio.Future[None]) -> None:
        self._owner, self._seq, self._prev, self._mine = owner, seq, prev, mine
        self.start, self.end = start, end
        self._ok = False

    async def ready(self, inputs: Arrays) -> Arrays:
        """``inputs`` with the model's control and state inputs, once it is this request's
        turn (the previous request of its sequence answered, a slot held)."""
        seq = self._seq
        if self._prev is not None and not self._prev.done():
            await asyncio.shield(self._prev)
        if seq.waiter is not None and not seq.waiter.done():
            await asyncio.shield(seq.waiter)
        if seq.waiter is not None:
            seq.waiter.result()  # raises when the model closed while it waited
        if not self.start and seq.failed:
            raise InvalidInput(
                f"sequence {seq.id!r} of model '{self._owner.name}' has no state to continue "
                "from: its START request failed; start it again"
            )
        return self._owner.feed(inputs, seq, self.start, self.end)

    def done(self, outputs: Arrays) -> None:
        """Keep the state outputs of the answered request for the next one."""
        seq = self._seq
        for state in self._owner.states:
            value = outputs[state.output_name]
            seq.state[state.input_name] = np.array(value, copy=True)  # not a view of the batch
        seq.failed = False
        self._ok = True

    def close(self) -> None:
        """The request is answered (or failed): the next one of the sequence may go."""
        seq = self._seq
        seq.pending -= 1
        if not self._ok and self.start:
            seq.failed = True
        if not self._mine.done():
            self._mine.set_result(None)
        self._owner.closed(seq, self.end)


class SequenceScheduler:
    """The sequences of one model version. See the module docstring."""

    def __init__(self, config: ModelConfig, instances: int,
                 clock: Callable[[], float] = time.monotonic) -> None:
        settings = config.sequence_batching
        assert settings is not None
        self.name = config.name
        self.settings = settings
        self.states = settings.states
        self._clock = clock
        self._batched = config.max_batch_size > 0
        self._unit = (1, 1) if self._batched else (1,)
        self._idle_s = settings.max_sequence_idle_us / 1e6
        rows = max(config.max_batch_size, 1) * max(instances, 1)
        #: Sequences served at once; the others wait in the backlog.
        self.slots = settings.max_candidate_sequences or rows
        self._free = self.slots
        self._active: dict[SequenceId, _Sequence] = {}
        self._backlog: deque[_Sequence] = deque()
        self._expired: OrderedDict[SequenceId, None] = OrderedDict()
        self._timer: asyncio.TimerHandle | None = None
        self._closed = False
        self._corrid = next((c for c in settings.controls if c.kind == "CORRID"), None)
        self._zeros = {
            s.input_name: np.zeros(
                (1, *s.start_dims) if self._batched else s.start_dims,
                dtype=DATATYPE_DTYPES[s.datatype],
            ) for s in settings.states if s.datatype != "BYTES"
        }

    # -- the request path ---------------------------------------------------------------------

    def begin(self, request: InferRequest, rows: int) -> Step:
        """Take ``request``'s place in its sequence, now (no await). Raises InvalidInput for a
        request that names no sequence, sends more than one row, or continues a sequence that
        is not in progress; SequenceConflict for a START while the sequence has requests
        unanswered."""
        if self._closed:
            raise Overloaded(f"model '{self.name}' is shutting down", reason="draining")
        params = sequence_params(request.parameters) if request.parameters else None
        if params is None:
            raise InvalidInput(
                f"inference request to model '{self.name}' must specify a non-zero or "
                "non-empty correlation ID (parameter 'sequence_id': the model serves sequences)"
            )
        sid, start, end = params
        if rows != 1:
            raise InvalidInput(
                f"inference request to model '{self.name}' must specify batch-size 1 due to "
                f"requirements of sequence batcher (sequence {sid!r} sent {rows} rows)"
            )
        corrid = self._corrid
        if corrid is not None and corrid.datatype != "BYTES" and isinstance(sid, str):
            raise InvalidInput(
                f"sequence {sid!r}: model '{self.name}' takes its correlation ID as "
                f"{corrid.datatype} (control input '{corrid.input_name}'): send an integer "
                "sequence_id"
            )
        seq = self._active.get(sid)
        if not start:
            if seq is None:
                raise InvalidInput(self._not_in_progress(sid))
        elif seq is not None:
            if seq.pending:
                raise SequenceConflict(
                    f"sequence {sid!r} of model '{self.name}' already has {seq.pending} "
                    "request(s) unanswered: a new START for it must wait for their answers "
                    "(or the sequence must END first)"
                )
            log.warning("model '%s': sequence %r restarted before it ended; the old one is "
                        "ended early", self.name, sid)
        else:
            seq = self._open(sid)
        self._expired.pop(sid, None)
        mine = asyncio.get_running_loop().create_future()
        prev, seq.tail = seq.tail, mine
        seq.pending += 1
        if end:  # the id is free for a new START once its END is queued (as Triton)
            del self._active[sid]
        return Step(self, seq, start, end, prev, mine)

    def feed(self, inputs: Arrays, seq: _Sequence, start: bool, end: bool) -> Arrays:
        """``inputs`` plus the controls and the state of ``seq`` for one request."""
        full = dict(inputs)
        unit = self._unit
        for control in self.settings.controls:
            if control.kind == "CORRID":
                full[control.input_name] = corrid_tensor(control, seq.id, unit)
            else:
                value = start if control.kind == "START" else end if control.kind == "END" else True
                full[control.input_name] = flag_tensor(control, value, unit)
        for state in self.states:
            if start:
                full[state.input_name] = self._initial(state.input_name, state.start_dims)
            else:
                full[state.input_name] = seq.state[state.input_name]
        return full

    def closed(self, seq: _Sequence, end: bool) -> None:
        """Called by :meth:`Step.close`: release the sequence after its END (or its failed
        START), else start counting its idle time."""
        seq.last = self._clock()
        if seq.pending:
            return
        if end or seq.failed:
            self._drop(seq)
        elif self._active.get(seq.id) is seq:
            self._arm(self._idle_s)

    def close(self) -> None:
        """Stop: backlogged sequences are refused (UNAVAILABLE), the idle timer ends."""
        self._closed = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        while self._backlog:
            seq = self._backlog.popleft()
            if seq.waiter is not None and not seq.waiter.done():
                seq.waiter.set_exception(
                    Overloaded(f"model '{self.name}' is shutting down", reason="draining")
                )
                seq.waiter.exception()  # retrieved here too: nobody may be waiting any more

    def stats(self) -> dict[str, int]:
        """Sequences in progress, and how many of them wait for a slot."""
        return {"sequences": len(self._active), "backlogged_sequences": len(self._backlog)}

    # -- internals ----------------------------------------------------------------------------

    def _initial(self, name: str, dims: tuple[int, ...]) -> np.ndarray:
        zeros = self._zeros.get(name)
        if zeros is None:  # BYTES state: empty strings
            return np.full((1, *dims) if self._batched else dims, b"", dtype=object)
        return zeros

    def _not_in_progress(self, sid: SequenceId) -> str:
        triton = (
            f"inference request for sequence {sid} to model '{self.name}' must specify the "
            "START flag on the first request of the sequence"
        )
        if sid in self._expired:
            return (f"{triton} (sequence {sid!r} was released after "
                    f"{self.settings.max_sequence_idle_us} microseconds idle: "
                    "max_sequence_idle_microseconds)")
        return (f"{triton} (no sequence {sid!r} is in progress: never started, already ended, "
                "or started before the server or model restarted)")

    def _open(self, sid: SequenceId) -> _Sequence:
        seq = _Sequence(sid)
        self._active[sid] = seq
        if self._free > 0:
            self._free -= 1
            seq.slot = True
        else:
            seq.waiter = asyncio.get_running_loop().create_future()
            self._backlog.append(seq)
        return seq

    def _drop(self, seq: _Sequence) -> None:
        """Forget ``seq`` and give its slot to the oldest backlogged sequence."""
        if self._active.get(seq.id) is seq:
            del self._active[seq.id]
        if seq in self._backlog:
            self._backlog.remove(seq)
        if not seq.slot:
            return
        seq.slot = False
        while self._backlog:
            waiting = self._backlog.popleft()
            waiting.slot = True
            if waiting.waiter is not None and not waiting.waiter.done():
                waiting.waiter.set_result(None)
            if not waiting.pending:  # its first request left while it waited
                waiting.last = self._clock()
                self._arm(self._idle_s)
            return
        self._free += 1

    def _arm(self, delay_s: float) -> None:
        if self._timer is None and not self._closed:
            self._timer = asyncio.get_running_loop().call_later(delay_s, self._reap)

    def _reap(self) -> None:
        """Release the sequences idle for longer than max_sequence_idle_microseconds."""
        self._timer = None
        now = self._clock()
        soonest: float | None = None
        for seq in list(self._active.values()):
            if seq.pending or not seq.slot:
                continue
            left = seq.last + self._idle_s - now
            if left <= 0:
                self._drop(seq)
                self._expired[seq.id] = None
                if len(self._expired) > _EXPIRED_LIMIT:
                    self._expired.popitem(last=False)
                log.info("model '%s': sequence %r released after idling", self.name, seq.id)
            elif soonest is None or left < soonest:
                soonest = left
        if soonest is not None:
            self._arm(soonest)
