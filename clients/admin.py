"""Blocking client for Sluice's admin service (``sluice.admin.v1.Admin``): deployments, shadows,
canaries.

    with AdminClient("127.0.0.1:8001", caller="alice") as admin:
        admin.set_routes("resnet", {"1": 90, "2": 10}, reason="A/B test")
        admin.start_canary("resnet", 2, steps=(5, 25, 50, 100), interval_s=60)

Every mutating method returns the model's deployment after the change, as a plain dict (see
:func:`message_dict`; int64 fields stay ints, unset optional fields are None). Failures raise a
:class:`~sluice.clients.errors.SluiceClientError` subclass: ``InvalidInput`` / ``ModelNotFound``
naming the field, model, version or alias; ``ServerError`` (FAILED_PRECONDITION) when the change
conflicts with a running canary. ``caller`` is sent as metadata ``x-sluice-caller`` and recorded
in the server's audit log (without it the server records the peer address).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import grpc
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message

from sluice.clients.auth import with_token
from sluice.clients.errors import error_from_rpc
from sluice.clients.messages import channel_options as make_channel_options
from sluice.clients.quality import QualityCalls, quality_text  # feedback + quality
from sluice.clients.tls import open_channel
from sluice.proto import admin_pb2 as pb
from sluice.proto import admin_pb2_grpc as pb_grpc

__all__ = ["CALLER_KEY", "AdminClient", "deployment_text", "message_dict", "quality_text",
           "report_text"]

#: Metadata key naming the caller for the audit log.
CALLER_KEY = "x-sluice-caller"


def message_dict(message: Message) -> dict[str, Any]:
    """A protobuf message as a dict keyed by field name: every field present, unset optional
    fields as None, repeated fields as lists, maps as dicts, int64 as int (unlike json_format)."""
    out: dict[str, Any] = {}
    for field in message.DESCRIPTOR.fields:
        value = getattr(message, field.name)
        if field.message_type is not None and field.message_type.GetOptions().map_entry:
            value_field = field.message_type.fields_by_name["value"]
            out[field.name] = {
                k: message_dict(v) if value_field.message_type else v for k, v in value.items()
            }
        elif field.is_repeated:
            out[field.name] = [
                message_dict(v) if field.type == FieldDescriptor.TYPE_MESSAGE else v
                for v in value
            ]
        elif field.has_presence and not message.HasField(field.name):
            out[field.name] = None
        elif field.type == FieldDescriptor.TYPE_MESSAGE:
            out[field.name] = message_dict(value)
        else:
            out[field.name] = value
    return out


class AdminClient(QualityCalls):
    """Admin calls to one server; thread-safe like :class:`~clients.Client`. Feedback and live
    quality: :class:`~sluice.clients.quality.QualityCalls`. ``credentials``: TLS
    (:func:`~sluice.clients.tls.tls_credentials`); None: plaintext."""

    def __init__(
        self,
        target: str = "127.0.0.1:8001",
        *,
        caller: str | None = None,
        timeout: float | None = 30.0,
        channel_options: Sequence[tuple[str, Any]] | None = None,
        credentials: grpc.ChannelCredentials | None = None,
        token: str | None = None,
    ) -> None:
        """``token``: bearer token for a server with ``--tokens`` (None: ``$SLUICE_TOKEN``)."""
        self.target = target
        self.timeout = timeout
        self._metadata = ((CALLER_KEY, caller),) if caller else ()
        self._channel = with_token(  # authz: the bearer token on every call
            open_channel(target, make_channel_options(channel_options), credentials), token)
        self._stub = pb_grpc.AdminStub(self._channel)

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> AdminClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _call(self, method: str, request: Message) -> Any:
        try:
            return getattr(self._stub, method)(
                request, timeout=self.timeout, metadata=self._metadata
            )
        except grpc.RpcError as exc:
            raise error_from_rpc(exc) from exc

    def _deployment(self, method: str, request: Message) -> dict[str, Any]:
        return message_dict(self._call(method, request))

    # -- deployments --------------------------------------------------------------------------

    def deployment(self, model: str) -> dict[str, Any]:
        """The model's aliases, routes, shadows, canary and counters per arm and version."""
        return self._deployment("GetDeployment", pb.GetDeploymentRequest(model=model))

    def set_routes(
        self, model: str, weights: Mapping[str | int, float], *, reason: str = ""
    ) -> dict[str, Any]:
        """Weighted routes: ``{arm: weight}``, arm a version number or an alias name."""
        routes = [pb.WeightedArm(arm=str(arm), weight=float(w)) for arm, w in weights.items()]
        return self._deployment(
            "SetRoutes", pb.SetRoutesRequest(model=model, routes=routes, reason=reason)
        )

    def set_alias(
        self, model: str, alias: str, version: int | None, *, reason: str = ""
    ) -> dict[str, Any]:
        """Point ``alias`` at ``version``; None removes the alias."""
        request = pb.SetAliasRequest(
            model=model, alias=alias, version=version or 0, clear=version is None, reason=reason
        )
        return self._deployment("SetAlias", request)

    def switch(self, model: str, target: str | int, *, reason: str = "") -> dict[str, Any]:
        """Blue-green: all traffic to ``target`` (a version number or an alias) at once."""
        return self._deployment(
            "Switch", pb.SwitchRequest(model=model, target=str(target), reason=reason)
        )

    def rollback(self, model: str, *, reason: str = "") -> dict[str, Any]:
        """Back to the deployment before the last change."""
        return self._deployment("Rollback", pb.RollbackRequest(model=model, reason=reason))

    # -- shadow -------------------------------------------------------------------------------

    def start_shadow(
        self, model: str, version: int, *, sample: float | None = None, reason: str = ""
    ) -> dict[str, Any]:
        """Mirror ``sample`` (default 1.0) of live requests to ``version``."""
        request = pb.StartShadowRequest(model=model, version=version, reason=reason)
        if sample is not None:
            request.sample = sample
        return self._deployment("StartShadow", request)

    def stop_shadow(
        self, model: str, version: int | None = None, *, reason: str = ""
    ) -> dict[str, Any]:
        """Stop mirroring to ``version`` (None: to every shadow)."""
        return self._deployment(
            "StopShadow", pb.StopShadowRequest(model=model, version=version or 0, reason=reason)
        )

    def shadow_report(self, model: str) -> list[dict[str, Any]]:
        """One comparison per (live version, shadow version); fields as ShadowComparison."""
        reply = self._call("ShadowReport", pb.ShadowReportRequest(model=model))
        return [message_dict(report) for report in reply.reports]

    # -- canary -------------------------------------------------------------------------------

    def start_canary(
        self,
        model: str,
        candidate: int,
        *,
        steps: Iterable[float] = (),
        interval_s: float | None = None,
        max_error_rate: float | None = None,
        max_p99_ratio: float | None = None,
        min_agreement: float | None = None,
        min_requests: int | None = None,
        reason: str = "",
        min_accuracy: float | None = None,
        max_accuracy_drop: float | None = None,
        min_labels: int | None = None,
    ) -> dict[str, Any]:
        """Start a canary of version ``candidate``; unset values take the server's defaults."""
        gates = pb.CanaryGates()
        for name, value in (
            ("max_error_rate", max_error_rate), ("max_p99_ratio", max_p99_ratio),
            ("min_agreement", min_agreement), ("min_requests", min_requests),
            ("min_accuracy", min_accuracy), ("max_accuracy_drop", max_accuracy_drop),
            ("min_labels", min_labels),
        ):
            if value is not None:
                setattr(gates, name, value)
        request = pb.StartCanaryRequest(
            model=model, candidate_version=candidate, steps=list(steps), gates=gates,
            reason=reason,
        )
        if interval_s is not None:
            request.interval_s = interval_s
        return self._deployment("StartCanary", request)

    def abort_canary(self, model: str, *, reason: str = "") -> dict[str, Any]:
        """Stop the running canary; all traffic back to the stable version."""
        return self._deployment("AbortCanary", pb.AbortCanaryRequest(model=model, reason=reason))

    # -- drift (issue 13 item 6) --------------------------------------------------------------

    def drift_report(self, model: str) -> list[dict[str, Any]]:
        """One report per served version with a reference profile; fields as DriftVersion
        (text: :func:`sluice.clients.drift.drift_text`)."""
        reply = self._call("DriftReport", pb.DriftReportRequest(model=model))
        return [message_dict(version) for version in reply.versions]
    # -- prediction log -----------------------------------------------------------------------

    def prediction_logging(self, model: str) -> dict[str, Any]:
        """The model's prediction-log settings (sample, inputs, exclude, source) and counts."""
        return self._deployment(
            "GetPredictionLogging", pb.GetPredictionLoggingRequest(model=model)
        )

    def set_prediction_logging(
        self, model: str, *, sample: float | None = None, inputs: bool | None = None,
        exclude: Iterable[str] | None = None, reason: str = "",
    ) -> dict[str, Any]:
        """Change the model's prediction-log settings (None keeps a value; ``exclude=()``
        clears the list); returns them as they are after the change."""
        request = pb.SetPredictionLoggingRequest(model=model, reason=reason)
        if sample is not None:
            request.sample = sample
        if inputs is not None:
            request.inputs = inputs
        if exclude is not None:
            request.exclude.CopyFrom(pb.InputNames(names=list(exclude)))
        return self._deployment("SetPredictionLogging", request)


# -- text for people (the CLI) ---------------------------------------------------------------


def _ms(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1000:.3f}"


def deployment_text(d: dict[str, Any]) -> str:
    """A deployment dict (as the methods return it) as readable lines."""
    total = sum(r["weight"] for r in d["routes"]) or 1.0
    lines = [
        f"model {d['model']}",
        "  aliases: " + (", ".join(f"{a['name']} -> {a['version']}" for a in d["aliases"])
                         or "none"),
        "  routes:  " + (", ".join(f"{r['arm']} (v{r['version']}) {100 * r['weight'] / total:g}%"
                                   for r in d["routes"]) or "newest ready version"),
        "  shadows: " + (", ".join(f"v{s['version']} at {100 * s['sample']:g}%"
                                   for s in d["shadows"]) or "none"),
    ]
    c = d["canary"]
    if c:
        lines.append(
            f"  canary:  {c['state']}: v{c['candidate_version']} over v{c['stable_version']}, "
            f"step {c['step'] + 1}/{len(c['steps'])} ({c['percent']:g}%), "
            f"every {c['interval_s']:g}s" + (f"; {c['reason']}" if c["reason"] else ""))
    if d["arms"]:  # a row per arm and version that answered it
        lines.append(f"  {'arm':<16}{'version':>8}{'requests':>10}{'errors':>8}{'p50 ms':>10}"
                     f"{'p99 ms':>10}")
        lines += [f"  {a['arm']:<16}{a.get('version') or '-':>8}{a['requests']:>10}"
                  f"{a['errors']:>8}{_ms(a['p50_s']):>10}{_ms(a['p99_s']):>10}"
                  for a in d["arms"]]
    return "\n".join(lines)


def report_text(reports: list[dict[str, Any]]) -> str:
    """Shadow reports (as :meth:`AdminClient.shadow_report` returns them) as a table."""
    if not reports:
        return "no shadow comparisons (start one with `sluice deploy MODEL shadow start V`)"

    def num(value: float | None, form: str = ".4f") -> str:
        return "-" if value is None else format(value, form)

    head = (f"{'live':>5}{'shadow':>7}{'mirrored':>9}{'compared':>9}{'shed':>6}{'errors':>7}"
            f"{'agree':>8}{'max|d|':>10}{'mean|d|':>10}{'in tol':>8}"
            f"{'live p50/p99 ms':>18}{'shadow p50/p99 ms':>20}")
    lines = [f"model {reports[0]['model']}", head]
    for r in reports:
        lines.append(
            f"{r['live_version']:>5}{r['shadow_version']:>7}{r['mirrored']:>9}{r['compared']:>9}"
            f"{r['shed']:>6}{r['candidate_errors']:>7}{num(r['agreement']):>8}"
            f"{num(r['max_abs_diff'], '.3g'):>10}{num(r['mean_abs_diff'], '.3g'):>10}"
            f"{num(r['within_tolerance']):>8}"
            f"{_ms(r['live_p50_s']) + '/' + _ms(r['live_p99_s']):>18}"
            f"{_ms(r['shadow_p50_s']) + '/' + _ms(r['shadow_p99_s']):>20}")
        if r["flips"]:
            flips = ", ".join(f"{k}: {v}" for k, v in sorted(r["flips"].items()))
            lines.append(f"      flips (tolerance {r['tolerance']:g}): {flips}")
    return "\n".join(lines)
