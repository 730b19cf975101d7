"""``Feedback`` and ``Quality`` of ``sluice.admin.v1.Admin``: ground truth in, live quality out.

Thin methods over :class:`~sluice.server.monitoring.quality.QualityMonitor` (or its proxy,
:class:`~sluice.server.monitoring.quality_remote.RemoteQuality`), mixed into the Admin servicer.
Both run on a worker thread (feedback drains the monitor hub, joins, and writes Parquet; the
windows may live in the monitor process), never on the event loop. A label the monitor refuses
is answered in the reply, one entry per label; only a request without a model, or for a model
never loaded, fails as a whole.
"""

from __future__ import annotations

import asyncio
from typing import Any

from sluice.proto import admin_pb2 as pb
from sluice.server.errors import InvalidInput, Unimplemented
from sluice.server.monitoring.quality import Label, QualityMonitor
from sluice.server.protocol.status import fail


class QualityAdmin:
    """The Admin servicer's feedback and quality methods (``quality`` set by
    :func:`~sluice.server.protocol.admin.add_admin_service`)."""

    quality: QualityMonitor | None = None

    def _monitor(self, model: str) -> QualityMonitor:
        if not model:
            raise InvalidInput("model: a model name is required")
        if self.quality is None:
            raise Unimplemented("live quality is not enabled on this server")
        return self.quality

    async def Feedback(self, request, context):
        try:
            monitor = self._monitor(request.model)
            labels = [Label(x.id, x.row if x.HasField("row") else None, x.value)
                      for x in request.labels]
            result = await asyncio.to_thread(monitor.feedback, request.model, labels)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            fail(context, exc)
            return pb.FeedbackResponse()
        return pb.FeedbackResponse(
            received=result.received, joined=result.joined, replaced_rows=result.replaced_rows,
            unknown=result.unknown, invalid=result.invalid, logged=result.logged,
            log_error=result.log_error, note=result.note,
            errors=[pb.LabelError(index=i, id=rid, message=message)
                    for i, rid, message in result.errors],
        )

    async def Quality(self, request, context):
        try:
            report = await asyncio.to_thread(self._monitor(request.model).report, request.model)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            fail(context, exc)
            return pb.QualityResponse()
        return pb.QualityResponse(
            model=report["model"], windows=[_window(w) for w in report["windows"]],
            counts=report["counts"], notes=report["notes"],
        )


def _window(w: dict[str, Any]) -> pb.QualityWindow:
    message = pb.QualityWindow(
        version=w["version"], arm=w["arm"], kind=w["kind"], predicted_rows=w["predicted_rows"],
        labelled_rows=w["labelled_rows"], metrics=w["metrics"],
        classes=[pb.ClassQuality(label=c["class"], precision=c["precision"], recall=c["recall"],
                                 f1=c["f1"], support=c["support"]) for c in w["classes"]],
        confusion=[pb.ConfusionCell(label=label, predicted=predicted, rows=rows)
                   for (label, predicted), rows in w["confusion"]],
        confidence_histogram=w["confidence_histogram"], window_rows=w["window_rows"],
    )
    if w["window_s"] is not None:
        message.window_s = w["window_s"]
    return message
