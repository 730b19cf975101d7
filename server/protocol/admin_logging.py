"""The Admin service's prediction-log RPCs (``GetPredictionLogging``, ``SetPredictionLogging``),
mixed into :class:`~sluice.server.protocol.admin.AdminServicer`."""

from __future__ import annotations

import asyncio
import logging

from sluice.proto import admin_pb2 as pb
from sluice.server.errors import InvalidInput, ModelNotFound, Unimplemented
from sluice.server.monitoring.prediction_log import PredictionLog
from sluice.server.protocol.status import fail

log = logging.getLogger(__name__)


class PredictionLoggingRpcs:
    """Needs ``self._prediction_log`` (None: the RPCs answer UNIMPLEMENTED)."""

    _prediction_log: PredictionLog | None

    def _logging_message(self, model: str) -> pb.PredictionLogging:
        assert self._prediction_log is not None
        config, source = self._prediction_log.config(model)
        writer = self._prediction_log.writer
        return pb.PredictionLogging(
            model=model, sample=config.sample, inputs=config.inputs, exclude=config.exclude,
            source=source, records=writer.written.get(model, 0),
            dropped={reason: n for (m, reason), n in dict(writer.dropped).items() if m == model},
        )

    def _logging_target(self, model: str) -> PredictionLog:
        """The log, once ``model`` is named and loaded (ModelNotFound otherwise)."""
        if self._prediction_log is None:
            raise Unimplemented("the prediction log is not enabled on this server")
        if not model:
            raise InvalidInput("model: a model name is required")
        if not self._prediction_log.loaded(model):
            raise ModelNotFound(f"model '{model}' is not loaded")
        return self._prediction_log

    async def GetPredictionLogging(self, request, context):
        try:
            self._logging_target(request.model)
            return self._logging_message(request.model)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            fail(context, exc)
            return pb.PredictionLogging()

    async def SetPredictionLogging(self, request, context):
        try:
            target = self._logging_target(request.model)
            target.set(
                request.model,
                sample=request.sample if request.HasField("sample") else None,
                inputs=request.inputs if request.HasField("inputs") else None,
                exclude=list(request.exclude.names) if request.HasField("exclude") else None,
            )
            log.info("model '%s': prediction log changed by %s%s", request.model,
                     _caller(context), f" ({request.reason})" if request.reason else "")
            if target.config(request.model)[0].on:
                await target.warm()
            return self._logging_message(request.model)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            fail(context, exc)
            return pb.PredictionLogging()


def _caller(context) -> str:
    from sluice.server.protocol.admin import caller_of  # here: admin.py imports this module

    return caller_of(context)
