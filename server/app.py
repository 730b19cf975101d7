"""Composition root: builds the repository, backends, gRPC server and metrics endpoint.

The only module that names concrete backends. Lifecycle::

    async with serve(ServerConfig(model_repository=path, grpc_port=0)) as server:
        ... server.port ...

Start order: bind the ports, listen (health NOT_SERVING, ServerReady false), load the startup
models side by side (each serves once loaded), then SERVING. Shutdown order: health
NOT_SERVING, stop accepting RPCs, let in-flight requests finish within the grace period, drain
and close the batchers and backends, stop /metrics. With ``ServerConfig.tls`` gRPC and /metrics
speak TLS (mTLS with a client CA) and ``Server.reload`` swaps the certificates; without it only
loopback is served unless ``insecure``. The process around it (signals): ``process.py``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection, reflection_pb2_grpc

from sluice.proto import admin_pb2, grpc_service_pb2
from sluice.proto._pool import POOL
from sluice.server.access_control import AccessControl  # authz
from sluice.server.auth.tokens import TokenFileError  # authz
from sluice.server.backends.base import Backend
from sluice.server.backends.ensemble import EnsembleBackend
from sluice.server.backends.mlflow_backend import is_mlflow_model, load_mlflow_backend  # mlflow
from sluice.server.backends.numba_backend import load_numba_backend
from sluice.server.backends.ort import OrtBackend
from sluice.server.config.model import ModelConfig, check_model_name
from sluice.server.config.pbtxt import read_model_config
from sluice.server.config.settings import ServerConfig
from sluice.server.errors import ModelLoadError, SluiceError
from sluice.server.feedback_loop import FeedbackLoop
from sluice.server.fleet.etcd_store import StateStoreUnavailable  # fleet (issue 15)
from sluice.server.fleet.prom_gates import judge_with_prometheus  # fleet gates (issue 15)
from sluice.server.fleet.replica import FleetReplica  # fleet state in etcd (issue 15)
from sluice.server.metrics import (
    ArmCollector,
    CanaryCollector,
    LayoutCollector,
    Metrics,
    RefusalCollector,
    ShadowCollector,
    WarmupCollector,
)
from sluice.server.protocol.admin import add_admin_service
from sluice.server.protocol.request_parsing import GuardedServices  # hardened input
from sluice.server.protocol.rest.open import RestDoor, open_rest  # REST (issue 17 item 1)
from sluice.server.protocol.servicer import InferenceServicer
from sluice.server.protocol.tls import add_port
from sluice.server.protocol.wire import add_inference_service
from sluice.server.rollout.canary import CanaryController
from sluice.server.rollout.deploy_store import DeploymentStore
from sluice.server.rollout.router import Router
from sluice.server.rollout.shadow import ShadowMirror
from sluice.server.rollout.state_sync import DeploymentFollower
from sluice.server.serving.budget import InflightBudget
from sluice.server.serving.loading import load_in_order
from sluice.server.serving.repository import ModelRepository
from sluice.server.serving.staging import StagingArea
from sluice.server.startup import StartError, declared_state, port_free
from sluice.server.tls_reload import BindRefused, CertificateReloader, TlsError, open_transport

log = logging.getLogger(__name__)

#: The bundled example repository (the default for ``sluice serve``). It sits beside this
#: package both in a checkout (model_repository/ beside server/, also in an editable install) and
#: in an installed wheel (sluice/model_repository/, package data, beside sluice/server/).
BUNDLED_REPOSITORY = Path(__file__).resolve().parent.parent / "model_repository"
_SERVICE = grpc_service_pb2.DESCRIPTOR.services_by_name["GRPCInferenceService"].full_name
_ADMIN = admin_pb2.DESCRIPTOR.services_by_name["Admin"].full_name
_NUMBA = ("compiling Numba kernels on the first start, seconds each; reading them from Numba's "
          "cache after; then warming up")
#: What a model's load does, by backend (logged as it starts: a cold start is slow here).
_LOADING = {
    "onnxruntime": "creating ONNX Runtime sessions, then warming up",
    "numba": _NUMBA,
    "fil": _NUMBA,
    "ensemble": "linking its steps",
}


def make_backend(config: ModelConfig, version_dir: Path,
                 pipeline_step: Callable[[str, int], tuple[Backend, ModelConfig]] | None = None
                 ) -> Backend:
    """The backend named by ``config.backend`` for one version directory (blocking); also what
    ``sluice batch`` loads models with. ``pipeline_step``: how an ensemble finds its steps."""
    log.info("model '%s' version %s: loading (%s)", config.name, version_dir.name,
             _LOADING.get(config.backend, "starting its backend"))
    if is_mlflow_model(version_dir):  # mlflow: an MLmodel file decides, not config.backend
        return load_mlflow_backend(config, version_dir)
    if config.backend == "onnxruntime":
        return OrtBackend(config, version_dir)
    if config.backend in ("numba", "fil"):
        return load_numba_backend(config, version_dir)
    if config.backend == "ensemble" and pipeline_step is not None:
        return EnsembleBackend(config, version_dir, pipeline_step)
    raise ModelLoadError(f"model '{config.name}': backend '{config.backend}' is not supported"
                         + (" here" if config.backend == "ensemble" else ""))


class Server:
    """One Sluice server process's parts, started and stopped together."""

    def __init__(self, config: ServerConfig) -> None:
        self.config = config
        #: Input bytes of admitted, unanswered requests, all models together.
        self.inflight = InflightBudget(config.max_inflight_bytes)
        self.repository = ModelRepository(
            config.model_repository,
            read_config=read_model_config,
            make_backend=self._make_backend,
            default_max_batch_size=config.default_max_batch_size,
            default_max_queue_size=config.default_max_queue_size,
            latency_window_s=config.latency_window_s,
            inflight=self.inflight,
            staging=StagingArea(config.max_load_file_bytes),  # load-time overrides (issue 16)
        )
        self.metrics = Metrics(self.repository.loaded, inflight=self.inflight)
        #: Deployment state on disk: written on the first change, read at start; or in etcd
        #: for a fleet (issue 15: ``--state-store``).
        self.fleet = FleetReplica.open(config) if config.state_store else None
        self.store = (self.fleet.store if self.fleet is not None
                      else DeploymentStore(config.deployment_state_dir))
        self.router = Router(
            self.repository, self.store,
            declared=lambda name: declared_state(self.repository.root / name),
            window_s=config.latency_window_s,
        )
        #: Shadow copies of live requests, run at the lowest priority and compared off the
        #: request path; idle (no task, no thread) until a deployment asks for a shadow.
        self.router.shadow = ShadowMirror(
            self.repository.find, window_s=config.latency_window_s
        )
        #: The feedback loop (issue 13): the hub finished requests go through, and the
        #: monitors on it (prediction log, live quality, drift) and cost per prediction.
        self.monitors = FeedbackLoop(config, self.repository, self.metrics, self._describe)
        self.canary = CanaryController(self.router, quality=self.monitors.quality.accuracy)
        if config.metrics_source and self.fleet is None:  # fleet gates (issue 15): PromQL
            judge_with_prometheus(config.metrics_source, self.canary, self.metrics)
        #: Serves deployment changes other processes (``--workers``) persist to the state dir.
        self.follower = (
            self.fleet.follow(self.router, self.canary, self.metrics) if self.fleet is not None
            else DeploymentFollower(self.router, self.store))  # type: ignore[arg-type]
        self.metrics.register(ArmCollector(self.router.all_arm_stats))
        self.metrics.register(ShadowCollector(self.router.shadow.reports))
        self.metrics.register(CanaryCollector(self.router.models, self.router.state))
        self.health = health.aio.HealthServicer()
        self.servicer = InferenceServicer(
            self.repository, router=self.router, limits=config.request_limits,
            hub=self.monitors.hub, on_loaded=self.monitors.model_loaded,
        )
        self.servicer.cost = self.monitors.cost
        #: authz (issue 14 items 2-3): tokens, scopes, quotas, the access audit trail.
        self.access = AccessControl(config, self.metrics)
        self.metrics.register(RefusalCollector(self.servicer.refusals.snapshot))  # hardened input
        self.metrics.register(WarmupCollector(lambda: self.repository.warmup_failures))  # issue 16
        self.metrics.register(LayoutCollector(self.servicer.layouts.counts))  # request layouts
        self._grpc: grpc.aio.Server | None = None
        self.port = 0
        #: The certificates gRPC and /metrics serve (None: plaintext); set by start().
        self.tls: CertificateReloader | None = None
        self.final_counts = (0, 0)
        self.rest: RestDoor | None = None  # REST (issue 17 item 1): set by start()

    @property
    def shadow(self) -> ShadowMirror | None:
        """The mirror the router hands sampled live requests to."""
        return self.router.shadow

    def _make_backend(self, config: ModelConfig, version_dir: Path) -> Backend:
        """The backend named by ``config.backend`` (runs on a loader thread)."""
        return make_backend(config, version_dir, self._pipeline_step)

    def _describe(self, name: str, version: int) -> ModelConfig | None:
        """Config of a loaded version of ``name`` (0: the newest), else None (any thread)."""
        try:
            served = self.repository.find(name, version) if version else self.repository.get(name)
        except SluiceError:
            return None
        return served.config if served is not None else None

    def _pipeline_step(self, name: str, version: int) -> tuple[Backend, ModelConfig]:
        served = self.repository.get(name, str(version) if version > 0 else "")
        return served.backend, served.config

    def _needs(self, names: list[str]) -> dict[str, frozenset[str]]:
        """The models each of ``names`` names in its config (pipeline steps, fallback_model),
        which load before it. Blocking (reads the configs)."""
        needs: dict[str, frozenset[str]] = {}
        for name in names:
            try:
                check_model_name(name)  # before any path is built from it
                config, _ = read_model_config(self.repository.root / name, name)
            except (SluiceError, OSError):
                continue  # its own load reports why
            fallback = config.overload.fallback_model
            steps = [step.model_name for step in config.ensemble_steps]
            needs[name] = frozenset(steps + [fallback] if fallback else steps)
        return needs

    async def _load(self, name: str) -> None:
        """Load ``name``, then apply its deployment (one that fails is logged: the model
        serves without it)."""
        await self.repository.load(name)
        try:
            await self.router.model_loaded(name)
        except SluiceError as exc:
            log.error("model '%s': deployment not applied: %s", name, exc.message)
        await self.monitors.model_loaded(name)

    async def start(self, listening: Callable[[], None] | None = None) -> None:
        """Bind the ports and listen, load the startup models, then report SERVING; returns
        once every startup model has loaded or failed.

        gRPC answers before any model loads: ServerLive true, ServerReady false and health
        NOT_SERVING until the loads end, each startup model UNAVAILABLE "still loading" until
        its own load ends (models load side by side, each serving as soon as it is ready), so
        a cold start that compiles kernels reads as "starting", not as a refused port. A worker
        of ``--workers`` listens only once its models are loaded: its siblings share the port,
        and the kernel hands every listening worker its share of new connections.
        ``listening`` is called once gRPC listens (the command line prints the addresses then).

        Raises StartError, naming the flag to change, when the repository or a port is
        unusable: the ports are bound first, so that is reported before any load."""
        started = time.perf_counter()
        cfg = self.config
        if not cfg.model_repository.is_dir():
            raise StartError(f"model repository {cfg.model_repository} is not a directory "
                             "(--model-repository)", usage=True)
        hosts = [cfg.host, *([] if cfg.metrics_port is None else [cfg.metrics_host or cfg.host])]
        try:  # transport security (issue 14): TLS files read and checked before any bind
            self.tls = open_transport(cfg.tls, hosts, insecure=cfg.insecure)
        except (BindRefused, TlsError) as exc:
            raise StartError(str(exc), usage=True) from None
        if self.tls is not None:
            self.metrics.register(self.tls)
        options = [
            ("grpc.max_receive_message_length", cfg.max_message_bytes),
            ("grpc.max_send_message_length", cfg.max_message_bytes),
            # On only under --workers: without it a second server could bind a busy port.
            ("grpc.so_reuseport", 1 if cfg.reuse_port else 0),
        ]
        try:  # authz: the tokens file; no interceptor at all without one
            self.access.open()
        except (TokenFileError, OSError) as exc:
            raise StartError(f"--tokens {cfg.tokens_file}: {exc}", usage=True) from None
        self._grpc = grpc.aio.server(options=options, interceptors=self.access.interceptors())
        # Every service registers through these: admin calls are audited (authz), and a request
        # that does not parse is INVALID_ARGUMENT naming its type on every RPC, never UNKNOWN
        # (hardened input; outermost, so the audit never sees an unparsed request).
        registrar: Any = self.access.registrar(
            GuardedServices(self._grpc, self.servicer.refusals.note_status))
        add_inference_service(self.servicer, registrar)
        admin = add_admin_service(
            registrar, self.router, self.router.shadow, self.canary, self.follower,
            quality=self.monitors.quality, prediction_log=self.monitors.prediction_log,
        )
        admin.drift = self.monitors.drift  # DriftReport
        health_pb2_grpc.add_HealthServicer_to_server(self.health, registrar)
        reflection_pb2_grpc.add_ServerReflectionServicer_to_server(
            reflection.aio.ReflectionServicer((_SERVICE, _ADMIN, reflection.SERVICE_NAME), POOL),
            registrar,
        )
        busy = cfg.grpc_port and not cfg.reuse_port and not port_free(cfg.host, cfg.grpc_port)
        try:  # asked only when free: grpc would also log a line of its own about a busy one
            self.port = 0 if busy else add_port(self._grpc, f"{cfg.host}:{cfg.grpc_port}", self.tls)
        except RuntimeError:  # grpc's own words say only "set GRPC_VERBOSITY=debug"
            self.port = 0
        if self.port == 0:
            raise StartError(f"gRPC port {cfg.grpc_port} on {cfg.host} is in use or cannot be "
                             "bound; pick another with --grpc-port (0: any free port)")
        if cfg.metrics_port is not None:
            host = cfg.metrics_host or cfg.host
            try:
                # A worker's /metrics is its supervisor's private, plain loopback source.
                self.metrics.serve(host, cfg.metrics_port,
                                   self.tls if cfg.worker_id is None else None,
                                   self.access.metrics_check())
            except OSError as exc:
                raise StartError(f"metrics port {cfg.metrics_port} on {host} cannot be bound "
                                 f"({exc.strerror}); pick another with --metrics-port, or -1 "
                                 "to serve no /metrics") from None
        if cfg.http_port is not None:  # REST beside gRPC (issue 17 item 1)
            try:
                self.rest = await open_rest(cfg, self.servicer, self.tls, self.access.interceptor,
                                            self.access.audit)
            except OSError as exc:
                raise StartError(str(exc)) from None
        try:  # a corrupt state file is refused here, before any model loads
            await self.router.open()
        except StateStoreUnavailable as exc:  # fleet: etcd unreachable at start
            raise StartError(f"--state-store: {exc.message}") from None
        self.monitors.start()
        self.access.start()
        names = (
            list(cfg.startup_models) if cfg.model_control == "explicit"
            else self.repository.available_names()
        )
        self.repository.mark_loading(names)
        for service in ("", _SERVICE):
            await self.health.set(service, health_pb2.HealthCheckResponse.NOT_SERVING)
        if not cfg.reuse_port:
            await self._listen(listening, started)
        failed = await load_in_order(
            names, self._load, await asyncio.to_thread(self._needs, names)
        )
        for name, message in failed.items():  # one bad model keeps no other down
            log.error("model '%s' not loaded: %s", name, message)
        self.follower.start()  # its first poll catches up on changes made while models loaded
        if self.fleet is not None:  # fleet: the state applied whole, then the canary lock
            await self.fleet.start()
        await self.canary.resume_all(self.router.models())  # canaries persisted or declared
        if cfg.reuse_port:
            await self._listen(listening, started)
        self.servicer.set_ready(True)
        for service in ("", _SERVICE):
            await self.health.set(service, health_pb2.HealthCheckResponse.SERVING)
        log.info(
            "Sluice ready; models: %s (%.1fs after start)",
            ", ".join(f"{v.name}:{v.version}" for v in self.repository.loaded()) or "none",
            time.perf_counter() - started,
        )

    async def _listen(self, listening: Callable[[], None] | None, started: float) -> None:
        assert self._grpc is not None
        await self._grpc.start()
        # The addresses are printed once, by the command line (the supervisor reads them there).
        log.info("gRPC listening (%.1fs after start)", time.perf_counter() - started)
        if listening is not None:
            listening()

    async def reload(self) -> None:
        """SIGHUP: read the certificate files again (kept as they were if the new ones are bad)."""
        if self.tls is not None:
            await self.tls.reload()

    async def stop(self, grace_s: float | None = None) -> None:
        """Stop gracefully within ``grace_s``: report NOT_SERVING, answer new inference requests
        UNAVAILABLE (draining) while admitted ones finish, then close the listener, drain the
        batchers and free the models."""
        grace = self.config.shutdown_grace_s if grace_s is None else grace_s
        deadline = time.monotonic() + grace
        await self.health.enter_graceful_shutdown()
        if not await self.servicer.drain(grace):
            log.warning("%d requests still in flight after %.1fs", self.servicer.in_flight, grace)
        if self._grpc is not None:
            await self._grpc.stop(max(0.5, deadline - time.monotonic()))
        if self.rest is not None:  # REST (issue 17 item 1)
            await self.rest.stop()
        versions = self.repository.loaded()
        #: What the models did in this process's life: (answered, refused or failed).
        self.final_counts = (
            sum(v.stats.success_count for v in versions), sum(v.stats.fail_count for v in versions)
        )
        await self.follower.close()
        await self.canary.close()
        if self.fleet is not None:
            await self.fleet.close()  # hands the canary lock to another replica at once
        if self.router.shadow is not None:
            await self.router.shadow.close()  # before the candidates it feeds are closed
        await self.repository.close(max(0.0, deadline - time.monotonic()))
        self.servicer.shm.close()  # system shared memory: every client region unmapped
        await self.monitors.close()  # every request is answered: the last records go out
        self.metrics.close()
        await self.access.close()


@contextlib.asynccontextmanager
async def serve(
    config: ServerConfig, listening: Callable[[Server], None] | None = None
) -> AsyncIterator[Server]:
    """Start a server (``listening(server)`` is called once it listens, before its models
    load), yield it once they have loaded, stop it gracefully on exit."""
    server = Server(config)
    try:
        await server.start(None if listening is None else lambda: listening(server))
        yield server
    finally:
        await server.stop()
