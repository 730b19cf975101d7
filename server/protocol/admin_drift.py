"""``DriftReport``, the drift part of the admin service: a thin read of the drift monitor's last
figures (computed on its own schedule, never here)."""

from __future__ import annotations

import asyncio
from typing import Any

from sluice.proto import admin_pb2 as pb
from sluice.server.errors import InvalidInput, ModelNotFound
from sluice.server.monitoring.drift import DriftMonitor
from sluice.server.monitoring.drift_report import DriftReport, FeatureDrift
from sluice.server.protocol.status import fail

_RATES = ("psi", "ks", "missing_rate", "below_rate", "above_rate")


class DriftAdmin:
    """Mixed into ``AdminServicer``; the composition root sets :attr:`drift`."""

    drift: DriftMonitor | None = None

    async def DriftReport(self, request: Any, context: Any) -> pb.DriftReportResponse:
        try:
            if not request.model:
                raise InvalidInput("model: a model name is required")
            monitor = self.drift
            reports = monitor.report(request.model) if monitor is not None else []
            if not reports:
                raise ModelNotFound(
                    f"model '{request.model}' has no drift window: no served version of it "
                    "has a reference profile (write one with `sluice profile "
                    f"{request.model} --data FILE`, then load the model again), or its "
                    "deployment.yaml says drift: false")
            return pb.DriftReportResponse(versions=[drift_message(r) for r in reports])
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            fail(context, exc)
            return pb.DriftReportResponse()


def _feature(f: FeatureDrift) -> pb.DriftFeature:
    message = pb.DriftFeature(name=f.name, edges=list(f.edges), reference=list(f.reference),
                              live=list(f.live))
    for name in _RATES:
        value = getattr(f, name)
        if value is not None:
            setattr(message, name, value)
    return message


def drift_message(report: DriftReport) -> pb.DriftVersion:
    message = pb.DriftVersion(
        model=report.model, version=report.version, sample=report.sample,
        window_rows=report.window_rows, window_s=report.window_s, rows=report.rows,
        features=[_feature(f) for f in report.features],
        prediction_output=report.prediction_output, prediction_kind=report.prediction_kind,
        sampled_rows=report.sampled_rows, dropped_rows=report.dropped_rows,
        malformed=report.malformed,
    )
    if report.prediction is not None:
        message.prediction.CopyFrom(_feature(report.prediction))
    if report.prediction_drift is not None:
        message.prediction_drift = report.prediction_drift
    if report.max_psi is not None:
        message.max_psi = report.max_psi
    return message
