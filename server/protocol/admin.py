"""``sluice.admin.v1.Admin``: thin RPC methods over the router, the shadow mirror and the canary
controller.

Each method reads the request, calls the core, and answers with the model's deployment after
the change. The caller's identity for the audit log is gRPC metadata ``x-sluice-caller`` when
present, else the peer address. Errors go through :func:`sluice.server.protocol.status.fail`:
INVALID_ARGUMENT / NOT_FOUND naming the model, version, alias or field, FAILED_PRECONDITION when
a change conflicts with a running canary.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import grpc

from sluice.proto import admin_pb2 as pb
from sluice.proto import admin_pb2_grpc as pb_grpc
from sluice.server.errors import InvalidInput, ModelNotFound, Unimplemented
from sluice.server.monitoring.prediction_log import PredictionLog
from sluice.server.monitoring.quality import QualityMonitor  # feedback + quality
from sluice.server.protocol.admin_drift import DriftAdmin
from sluice.server.protocol.admin_logging import PredictionLoggingRpcs
from sluice.server.protocol.admin_quality import QualityAdmin  # feedback + quality
from sluice.server.protocol.auth import PRINCIPAL  # authz
from sluice.server.protocol.status import fail
from sluice.server.rollout.canary import CanaryController
from sluice.server.rollout.canary_plan import DEFAULT_STEPS, CanaryConflict, CanaryGates, is_running
from sluice.server.rollout.deployment import DeploymentState, ShadowTarget
from sluice.server.rollout.router import Router
from sluice.server.rollout.shadow import ShadowMirror
from sluice.server.rollout.state_sync import DeploymentFollower

#: Metadata key naming the caller in the audit log.
CALLER_KEY = "x-sluice-caller"
#: Aliases the canary controller owns while a canary runs.
_CANARY_ALIASES = ("stable", "candidate")


def caller_of(context: grpc.aio.ServicerContext) -> str:
    """``x-sluice-caller`` from the request metadata, else the peer address. With ``--tokens``
    the authenticated principal comes first: ``alice``, or ``alice (as <x-sluice-caller>)``."""
    principal = PRINCIPAL.get()  # authz: set by the auth interceptor
    for key, value in context.invocation_metadata() or ():
        if key == CALLER_KEY and value:
            claim = value if isinstance(value, str) else value.decode("utf-8", "replace")
            return claim if principal is None else f"{principal} (as {claim})"
    return principal or str(context.peer() or "unknown")


class AdminServicer(PredictionLoggingRpcs, QualityAdmin, DriftAdmin, pb_grpc.AdminServicer):
    """Deployment administration over one :class:`Router`."""

    def __init__(
        self, router: Router, shadow: ShadowMirror | None = None,
        canary: CanaryController | None = None, follower: DeploymentFollower | None = None,
        prediction_log: PredictionLog | None = None,
    ) -> None:
        """``follower`` (under ``--workers``): brought up to date with the other workers'
        changes before a change is judged, so it is not refused as computed from a stale view."""
        self._prediction_log = prediction_log
        self._router = router
        self._given_shadow = shadow
        self._canary = canary
        self._follower = follower

    @property
    def _shadow(self) -> ShadowMirror | None:
        """The mirror given, else the router's (the composition root may attach it later)."""
        return self._given_shadow or getattr(self._router, "shadow", None)

    # -- plumbing -----------------------------------------------------------------------------

    async def _answer(
        self, context: grpc.aio.ServicerContext, model: str,
        change: Callable[[str], Awaitable[Any]] | None = None, *, guarded: bool = True,
    ) -> pb.Deployment:
        """Run ``change(caller)`` (if any; under the canary guard unless ``guarded`` is False,
        for the controller's own methods, which take it) and answer with the deployment."""
        try:
            self._check_model(model)
            if change is not None and self._follower is not None:
                await self._follower.check()
            if change is not None:
                # Serialized with the canary's own changes, so a check such as "no canary
                # runs" still holds when the change lands.
                async with self._guard(model) if guarded else contextlib.nullcontext():
                    await change(caller_of(context))
            return self._deployment(model)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            fail(context, exc)
            return pb.Deployment()

    def _check_model(self, model: str) -> None:
        """InvalidInput without a name; ModelNotFound for a model that has no deployment and is
        not loaded (a model with a deployment stays inspectable while it reloads)."""
        if not model:
            raise InvalidInput("model: a model name is required")
        if self._router.state(model).empty:
            self._router.resolve(model, "", None)

    def _no_canary(self, model: str, what: str) -> None:
        state = self._router.state(model)
        if is_running(state):
            raise CanaryConflict(
                f"model '{model}' runs a canary of version {state.canary['candidate']}; "  # type: ignore[index]
                f"abort it before changing {what}"
            )

    def _guard(self, model: str) -> contextlib.AbstractAsyncContextManager[Any]:
        return self._canary.guard(model) if self._canary is not None else contextlib.nullcontext()

    def _controller(self) -> CanaryController:
        if self._canary is None:
            raise Unimplemented("canary rollouts are not enabled on this server")
        return self._canary

    def _deployment(self, model: str) -> pb.Deployment:
        state = self._router.state(model)
        message = pb.Deployment(
            model=model,
            aliases=[pb.Alias(name=a, version=v) for a, v in state.aliases],
            routes=[pb.Route(arm=r.arm, version=r.version, weight=r.weight) for r in state.routes],
            shadows=[pb.ShadowTarget(version=s.version, sample=s.sample) for s in state.shadows],
        )
        record = self._canary.status(model) if self._canary is not None else state.canary
        if record and "state" in record:
            message.canary.CopyFrom(_canary_message(record))
        rows = self._router.arm_stats(model)
        for arm, version in sorted(rows, key=lambda key: (key[0], key[1] or 0)):
            stats = rows[(arm, version)]
            row = pb.ArmStatus(arm=arm, version=version or 0, requests=stats.requests,
                               errors=stats.errors)
            quantiles = stats.latency.quantiles((50, 99))
            if quantiles:
                row.p50_s, row.p99_s = quantiles[50], quantiles[99]
            message.arms.append(row)
        return message

    # -- deployments --------------------------------------------------------------------------

    async def GetDeployment(self, request, context):
        return await self._answer(context, request.model)

    async def SetRoutes(self, request, context):
        async def change(caller: str) -> None:
            self._no_canary(request.model, "its routes")
            weights: dict[str | int, float] = {}
            for i, route in enumerate(request.routes):
                if not route.arm:
                    raise InvalidInput(f"routes[{i}].arm: a version number or alias is required")
                if route.arm in weights:
                    raise InvalidInput(f"routes[{i}].arm: '{route.arm}' is listed twice")
                weights[route.arm] = route.weight
            await self._router.set_routes(
                request.model, weights, caller=caller, reason=request.reason
            )

        return await self._answer(context, request.model, change)

    async def SetAlias(self, request, context):
        async def change(caller: str) -> None:
            if not request.alias:
                raise InvalidInput("alias: a name is required")
            if request.alias in _CANARY_ALIASES:
                self._no_canary(request.model, f"alias '{request.alias}'")
            if not request.clear and request.version < 1:
                raise InvalidInput(
                    f"version: must be a version number >= 1 to point alias '{request.alias}' "
                    "at (or set clear to remove the alias)"
                )
            version = None if request.clear else request.version
            await self._router.set_alias(
                request.model, request.alias, version, caller=caller, reason=request.reason
            )

        return await self._answer(context, request.model, change)

    async def Switch(self, request, context):
        async def change(caller: str) -> None:
            if not request.target:
                raise InvalidInput("target: a version number or alias is required")
            self._no_canary(request.model, "its routes")
            await self._router.switch(
                request.model, request.target, caller=caller, reason=request.reason
            )

        return await self._answer(context, request.model, change)

    async def Rollback(self, request, context):
        async def change(caller: str) -> None:
            await self._router.rollback(request.model, caller=caller, reason=request.reason)
            if self._canary is not None:  # the restored state may hold a running canary step
                self._canary.sync(request.model)

        return await self._answer(context, request.model, change)

    # -- shadow -------------------------------------------------------------------------------

    async def StartShadow(self, request, context):
        async def change(caller: str) -> None:
            if request.version < 1:
                raise InvalidInput("version: the shadow version (>= 1) is required")
            sample = request.sample if request.HasField("sample") else 1.0
            if not 0.0 < sample <= 1.0:
                raise InvalidInput(f"sample: must be a fraction in (0, 1], got {sample}")
            state = self._router.state(request.model)
            shadows = tuple(s for s in state.shadows if s.version != request.version)
            new = dataclasses.replace(
                state, shadows=(*shadows, ShadowTarget(request.version, sample))
            )
            await self._router.change(
                request.model, "shadow_start", new, caller=caller,
                reason=request.reason or f"shadow version {request.version} at {sample:g}",
                tried=f"start a shadow of version {request.version}",
            )
            if self._shadow is not None:  # a new shadow run starts a fresh comparison
                self._shadow.reset(request.model, request.version)

        return await self._answer(context, request.model, change)

    async def StopShadow(self, request, context):
        async def change(caller: str) -> None:
            state = self._router.state(request.model)
            new = _without_shadow(request.model, state, request.version)
            await self._router.change(
                request.model, "shadow_stop", new, caller=caller, reason=request.reason
            )

        return await self._answer(context, request.model, change)

    async def ShadowReport(self, request, context):
        try:
            self._check_model(request.model)
            reports = self._shadow.report(request.model) if self._shadow is not None else []
            return pb.ShadowReportResponse(reports=[_comparison(r) for r in reports])
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            fail(context, exc)
            return pb.ShadowReportResponse()

    # -- canary -------------------------------------------------------------------------------

    async def StartCanary(self, request, context):
        async def change(caller: str) -> None:
            if request.candidate_version < 1:
                raise InvalidInput("candidate_version: the candidate version (>= 1) is required")
            given = {
                name: getattr(request.gates, name)
                for name in ("max_error_rate", "max_p99_ratio", "min_agreement", "min_requests",
                             "min_accuracy", "max_accuracy_drop", "min_labels")
                if request.gates.HasField(name)
            }
            await self._controller().start(
                request.model, request.candidate_version,
                steps=tuple(request.steps) or DEFAULT_STEPS,
                interval_s=request.interval_s if request.HasField("interval_s") else 60.0,
                gates=CanaryGates(**given), caller=caller, reason=request.reason,
            )

        return await self._answer(context, request.model, change, guarded=False)

    async def AbortCanary(self, request, context):
        async def change(caller: str) -> None:
            await self._controller().abort(
                request.model, caller=caller, reason=request.reason or "aborted by " + caller
            )

        return await self._answer(context, request.model, change, guarded=False)


def _without_shadow(model: str, state: DeploymentState, version: int) -> DeploymentState:
    if not state.shadows:
        raise ModelNotFound(f"model '{model}' has no shadow running")
    if version == 0:
        return dataclasses.replace(state, shadows=())
    kept = tuple(s for s in state.shadows if s.version != version)
    if len(kept) == len(state.shadows):
        running = sorted(s.version for s in state.shadows)
        raise ModelNotFound(f"model '{model}' has no shadow version {version} (shadows: {running})")
    return dataclasses.replace(state, shadows=kept)


def _canary_message(record: Mapping[str, Any]) -> pb.Canary:
    gates = CanaryGates.from_json(record.get("gates"))
    message = pb.Canary(
        state=str(record["state"]),
        stable_version=int(record["stable"]),
        candidate_version=int(record["candidate"]),
        steps=[float(p) for p in record["steps"]],
        step=int(record["step"]),
        percent=float(record["steps"][int(record["step"])]),
        interval_s=float(record["interval_s"]),
        reason=str(record.get("reason", "")),
        extensions=int(record.get("extensions", 0)),
    )
    message.gates.max_error_rate = gates.max_error_rate
    message.gates.min_requests = gates.min_requests
    if gates.max_p99_ratio is not None:
        message.gates.max_p99_ratio = gates.max_p99_ratio
    if gates.min_agreement is not None:
        message.gates.min_agreement = gates.min_agreement
    # feedback + quality: the accuracy gates
    for name in ("min_accuracy", "max_accuracy_drop"):
        if getattr(gates, name) is not None:
            setattr(message.gates, name, getattr(gates, name))
    message.gates.min_labels = gates.min_labels
    return message


def _comparison(report: Any) -> pb.ShadowComparison:
    message = pb.ShadowComparison(
        model=report.model,
        live_version=report.live_version,
        shadow_version=report.shadow_version,
        mirrored=report.mirrored,
        compared=report.compared,
        shed=report.shed,
        candidate_errors=report.candidate_errors,
        tolerance=report.tolerance,
        flips=dict(report.flips),
        label_rows=report.label_rows,
        live_errors=report.live_errors,
        dropped=report.dropped,
    )
    for name in ("candidate_error_rate", "agreement", "max_abs_diff", "mean_abs_diff",
                 "within_tolerance", "live_p50_s", "live_p99_s", "shadow_p50_s",
                 "shadow_p99_s", "last_candidate_error"):
        value = getattr(report, name)
        if value is not None:
            setattr(message, name, value)
    return message


def add_admin_service(
    server: grpc.aio.Server, router: Router, shadow: ShadowMirror | None,
    canary: CanaryController | None, follower: DeploymentFollower | None = None,
    quality: QualityMonitor | None = None,
    prediction_log: PredictionLog | None = None,
) -> AdminServicer:
    """Register the Admin service on ``server``; returns the servicer."""
    servicer = AdminServicer(router, shadow, canary, follower, prediction_log)
    servicer.quality = quality  # feedback + quality
    pb_grpc.add_AdminServicer_to_server(servicer, server)
    return servicer
