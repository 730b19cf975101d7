"""A served model version: validation, deadline, batcher and admission in one place.

``ModelVersion.infer`` checks a request against the model's config (each error names the input),
reshapes as the config says, queues it on the version's batcher, and returns only the outputs the
caller asked for. Model execution happens on the batcher's thread per instance, so the event
loop never computes.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping

from sluice.server.backends.base import Backend
from sluice.server.config.model import DynamicBatching, ModelConfig
from sluice.server.errors import InvalidInput, Overloaded
from sluice.server.serving import classification
from sluice.server.serving.admission import FALLBACK_REASONS, Admission, AdmissionPolicy
from sluice.server.serving.batcher import DynamicBatcher
from sluice.server.serving.budget import InflightBudget
from sluice.server.serving.cpu_meter import CpuMeter
from sluice.server.serving.instances import Arrays
from sluice.server.serving.sequences import SequenceScheduler, Step
from sluice.server.serving.stats import ModelStats
from sluice.server.types import DATATYPE_DTYPES, InferRequest, InferResponse, datatype_of

#: Response parameter naming the "model:version" that answered, on models with a fallback.
ANSWERED_BY = "sluice_answered_by"
#: Input signatures each version remembers as checked before it starts again (bounds memory).
_PASSED_LIMIT = 1024


class ModelVersion:
    """One loaded version of one model, ready to serve once :meth:`start` ran."""

    def __init__(
        self,
        config: ModelConfig,
        version: int,
        backend: Backend,
        *,
        max_queue_size: int,
        stats: ModelStats,
        inflight: InflightBudget | None = None,
        fallback: Callable[[], ModelVersion | None] | None = None,
        clock: Callable[[], float] = time.monotonic,
        labels: Mapping[str, tuple[str, ...]] | None = None,
    ) -> None:
        """``max_queue_size`` bounds each priority level whose queue policy sets no bound;
        ``inflight`` is the server's shared in-flight bytes budget; ``fallback`` returns the
        version that takes overload traffic (None when it is not loaded now); ``labels``: the
        class labels of outputs with a label_filename (the classification extension)."""
        self.config = config
        self.labels = labels or {}
        self.version = version
        self.backend = backend
        self.stats = stats
        self._clock = clock
        batching = config.dynamic_batching
        sequences = config.sequence_batching
        if sequences is not None:  # sequence batching batches across sequences (issue 16 item 5)
            batching = DynamicBatching(sequences.preferred_batch_sizes,
                                       sequences.max_queue_delay_us)
        label = f"{config.name}:{version}"
        policy = AdmissionPolicy.from_config(config, max_queue_size)
        #: CPU seconds of this version's batches, per instance (read by the cost accountant).
        self.cpu = CpuMeter(backend.instance_count)
        background = getattr(backend, "run_background", None)
        self._batcher = DynamicBatcher(
            label,
            self.cpu.timed(backend.run),
            instances=backend.instance_count,
            # Without dynamic_batching each request runs alone (still one per free instance).
            max_batch_size=config.max_batch_size if batching is not None else 0,
            preferred_batch_sizes=batching.preferred_batch_sizes if batching else (),
            max_queue_delay_s=batching.max_queue_delay_us / 1e6 if batching else 0.0,
            max_queue_size=policy.queue_bound,
            levels=policy.shadow_level,
            codel=policy.codel(),
            clock=clock,
            observer=stats.on_batch,
            # Shadow-only batches: the backend's single-threaded path, which the batcher runs
            # on a thread at the lowest OS priority (SCHED_IDLE), so live batches keep the cores.
            background_run=None if background is None else self.cpu.timed_background(background),
            # Fast CPU models skip the hand-off to an instance thread when every one is idle.
            inline=getattr(backend, "inline_safe", False),
        )
        self.admission = Admission(label, policy, self._batcher, budget=inflight)
        #: The sequences of a stateful model (None: requests are independent).
        self.sequences = None if sequences is None else SequenceScheduler(
            config, backend.instance_count, clock
        )
        self._fallback = fallback
        self._label = label
        self._version_str = str(version)  # the response field, built once
        self._inputs = {spec.name: spec for spec in config.inputs}
        self._required = [spec.name for spec in config.inputs if not spec.optional]
        self._dtypes = {spec.name: DATATYPE_DTYPES[spec.datatype] for spec in config.inputs}
        self._output_names = tuple(spec.name for spec in config.outputs)
        self._reshape_in = {s.name: s.reshape for s in config.inputs if s.reshape is not None}
        self._reshape_out = {s.name: s.dims for s in config.outputs if s.reshape is not None}
        self._batched = config.max_batch_size > 0
        #: Input signatures (see InferRequest.signature) that passed the checks -> their rows
        #: and input bytes.
        self._passed: dict[tuple[tuple[str, str, tuple[int, ...]], ...], tuple[int, int]] = {}

    @property
    def name(self) -> str:
        return self.config.name

    def start(self) -> None:
        self._batcher.start()

    @property
    def idle(self) -> asyncio.Event:
        """Set while this version has nothing queued or computing."""
        return self._batcher.idle

    def queue_stats(self) -> dict[str, float]:
        return self._batcher.stats()

    async def infer(self, request: InferRequest, *, as_fallback: bool = False) -> InferResponse:
        """Answer one request, or raise a SluiceError that names what was wrong.

        A request this version sheds for overload goes to the model's fallback, when one is
        configured and loaded (``as_fallback``: this version is answering for another one).
        """
        start = self._clock()
        level = 0
        step: Step | None = None
        try:
            inputs, rows, nbytes = self._checked_inputs(request)
            wanted = self._check_outputs(request.requested_outputs, request.classification)
            if self.sequences is not None:  # its place in its sequence, before any await
                step = self.sequences.begin(request, rows)
            outputs = self._inline(
                inputs, rows, nbytes, request.deadline, start
            ) if step is None and _default_rules(request) else None
            if outputs is None:
                if step is not None:  # its turn, then its control and state inputs
                    inputs = await step.ready(inputs)
                    start = self._clock()  # its queue time starts now
                admission = self.admission
                level = admission.level(request.priority)
                deadline, expire = admission.deadlines(
                    level, request.deadline, request.parameters.get("timeout"), start
                )
                inputs = self.backend.prepare(inputs)
                estimate = admission.admit(rows, nbytes, level, deadline, start)
                try:
                    outputs = await self._batcher.submit(
                        inputs, rows, deadline, level=level, nbytes=nbytes, expire=expire
                    )
                finally:
                    admission.release(nbytes)
                end = self._clock()
                admission.observe(level, estimate, end - start, end)
            else:
                end = self._clock()
            if step is not None:
                step.done(outputs)
        except Overloaded as exc:
            took = self._clock() - start
            self.stats.on_request(took, ok=False)
            self.stats.on_shed(exc.reason, level, took)
            target = self._fallback_for(exc, level, as_fallback)
            if target is None:
                raise
            shed = exc
        except BaseException:
            self.stats.on_request(self._clock() - start, ok=False)
            raise
        else:
            return self._answer(request, outputs, wanted, end - start, as_fallback)
        finally:
            if step is not None:
                step.close()
        # Degraded mode: the fallback answers, under its own admission. If it cannot take the
        # request either, the caller hears about the primary's overload, not the fallback's.
        try:
            response = await target.infer(request, as_fallback=True)
        except (Overloaded, InvalidInput):
            raise shed from None
        self.stats.fallback_count += 1  # answered instead: a refusal by the fallback is not
        response.model_name = self.config.name
        response.model_version = self._version_str
        return response

    def infer_now(self, request: InferRequest) -> InferResponse | None:
        """The answer, computed right now on the event loop, when :meth:`infer` would compute
        it inline (:meth:`_inline`); None: await :meth:`infer`. Raises what :meth:`infer` would
        for a bad request or a failing run. Saves the coroutine, and a stream its task."""
        if not _default_rules(request) or self.sequences is not None:
            return None
        start = self._clock()
        try:
            inputs, rows, nbytes = self._checked_inputs(request)
            wanted = self._check_outputs(request.requested_outputs, request.classification)
            outputs = self._inline(inputs, rows, nbytes, request.deadline, start)
        except BaseException:
            self.stats.on_request(self._clock() - start, ok=False)
            raise
        if outputs is None:
            return None
        return self._answer(request, outputs, wanted, self._clock() - start, False)

    def _answer(
        self, request: InferRequest, outputs: Arrays, wanted: tuple[str, ...], seconds: float,
        as_fallback: bool,
    ) -> InferResponse:
        """Count the request answered after ``seconds`` and build its response."""
        if self._reshape_out:
            outputs = dict(outputs)
            for name, dims in self._reshape_out.items():
                value = outputs[name]
                outputs[name] = value.reshape((value.shape[0], *dims) if self._batched else dims)
        if request.classification:  # Triton's classification extension (issue 16 item 3)
            outputs = dict(outputs)
            for name, k in request.classification.items():
                outputs[name] = classification.top_k(
                    outputs[name], k, batched=self._batched, labels=self.labels.get(name, ()))
        self.stats.on_request(seconds, ok=True)  # the instant admission learnt from
        return InferResponse(
            model_name=self.config.name,
            model_version=self._version_str,
            outputs={name: outputs[name] for name in wanted},
            id=request.id,
            parameters={ANSWERED_BY: self._label}
            if as_fallback or self._fallback is not None else {},
        )

    def _fallback_for(
        self, exc: Overloaded, level: int, as_fallback: bool
    ) -> ModelVersion | None:
        if as_fallback or self._fallback is None or exc.reason not in FALLBACK_REASONS:
            return None
        if level == self.admission.policy.shadow_level:
            return None  # shadow copies are never worth a second model's time
        target = self._fallback()
        return target if target is not self else None

    async def close(self) -> None:
        """Drain queued requests, then free the instance threads and the backend."""
        if self.sequences is not None:
            self.sequences.close()
        await self._batcher.close()
        self.backend.close()

    def abort(self, reason: str) -> None:
        """Fail queued requests at once (after a shutdown grace period ran out)."""
        self._batcher.abort(reason)

    # -- internals ----------------------------------------------------------------------------

    def _inline(
        self, inputs: Arrays, rows: int, nbytes: int, deadline: float | None, now: float
    ) -> Arrays | None:
        """The outputs, computed right here, for a request at the default level with no queue
        timeout of its own (no ``priority`` or ``timeout`` parameter) arriving while this
        version is idle, when its one-request batches are measured cheaper than the hand-off to
        a thread and admission has nothing to say (:meth:`Admission.clear_inline`); None: queue
        it the usual way. Nothing is queued or held in the in-flight budget: no other request
        runs on the loop before it is answered."""
        compute_s = self._batcher.inline_estimate_s()
        if compute_s is None or not self.admission.clear_inline(
            rows, nbytes, deadline, now, compute_s
        ):
            return None
        return self._batcher.try_inline(self.backend.prepare(inputs), rows, now)

    def _checked_inputs(self, request: InferRequest) -> tuple[Arrays, int, int]:
        """The request's inputs (reshaped where the config says), its rows and its input bytes,
        or InvalidInput. A request whose decoder ``signature`` passed before skips the checks
        (same names, datatypes and shapes: same outcome, same size)."""
        signature = request.signature
        known = self._passed.get(signature) if signature is not None else None
        if known is None:
            known = self._check_inputs(request.inputs), _nbytes(request.inputs)
            if signature is not None:
                if len(self._passed) >= _PASSED_LIMIT:
                    self._passed.clear()
                self._passed[signature] = known
        rows, nbytes = known
        inputs = request.inputs
        if self._reshape_in:
            inputs = dict(inputs)
            for key, dims in self._reshape_in.items():
                if key in inputs:
                    value = inputs[key]
                    inputs[key] = value.reshape((value.shape[0], *dims) if self._batched else dims)
        return inputs, rows, nbytes

    def _check_inputs(self, inputs: Arrays) -> int:
        name = self.config.name
        rows = 0
        for key, value in inputs.items():
            spec = self._inputs.get(key)
            if spec is None:
                raise InvalidInput(
                    f"unexpected input '{key}' for model '{name}' "
                    f"(it takes {sorted(self._inputs)})"
                )
            if value.dtype != self._dtypes[key]:
                raise InvalidInput(
                    f"input '{key}': expected {spec.datatype}, got {datatype_of(value)}"
                )
            shape = value.shape
            dims = spec.dims
            if self._batched:
                if len(shape) != len(dims) + 1 or not _dims_match(shape[1:], dims):
                    raise InvalidInput(
                        f"input '{key}': expected shape {[-1, *dims]}, got {list(shape)}"
                    )
                if rows and shape[0] != rows:
                    raise InvalidInput(
                        f"input '{key}': batch size {shape[0]} differs from the other inputs' "
                        f"{rows}"
                    )
                rows = shape[0]
            elif len(shape) != len(dims) or not _dims_match(shape, dims):
                raise InvalidInput(f"input '{key}': expected shape {list(dims)}, got {list(shape)}")
        for key in self._required:
            if key not in inputs:
                raise InvalidInput(f"missing input '{key}' for model '{name}'")
        if self._batched:
            if rows < 1:
                raise InvalidInput(f"model '{name}': batch size must be at least 1")
            if rows > self.config.max_batch_size:
                raise InvalidInput(
                    f"model '{name}': batch size {rows} exceeds max_batch_size "
                    f"{self.config.max_batch_size}"
                )
        return rows or 1

    def _check_outputs(
        self, requested: tuple[str, ...] | None, classes: dict[str, int] | None = None
    ) -> tuple[str, ...]:
        for key in classes or ():
            spec = self.config.output(key)
            if spec is not None:
                classification.check_classifiable(key, spec.datatype)
        if not requested:
            return self._output_names
        for key in requested:
            if key not in self._output_names:
                raise InvalidInput(
                    f"unknown output '{key}' requested from model '{self.config.name}' "
                    f"(it has {list(self._output_names)})"
                )
        return requested


def _default_rules(request: InferRequest) -> bool:
    """No ``priority`` or ``timeout`` parameter: the default level's queue rules apply."""
    parameters = request.parameters
    return not parameters or not (request.priority or "timeout" in parameters)


def _nbytes(inputs: Arrays) -> int:
    """Input bytes of a request (BYTES tensors: their elements' lengths)."""
    total = 0
    for value in inputs.values():
        if value.dtype.kind == "O":
            total += sum(len(x) for x in value.ravel())
        else:
            total += value.nbytes
    return total


def _dims_match(shape: tuple[int, ...], dims: tuple[int, ...]) -> bool:
    return all(d == -1 or d == s for s, d in zip(shape, dims, strict=True))
