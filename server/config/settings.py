"""The server's own settings: how one ``sluice serve`` process runs (``ServerConfig``) and the
size caps every request is checked against before it is decoded (``RequestLimits``). Built by the
command line (``sluice.server.cli``) or by tests; frozen once built."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from sluice.server.config.tls import TlsFiles


@dataclass(frozen=True, slots=True)
class ServerConfig:
    """How one server process runs."""

    model_repository: Path
    host: str = "127.0.0.1"
    #: gRPC port; 0 picks a free one (the bound port is printed and on ``Server.port``).
    grpc_port: int = 8001
    #: Prometheus /metrics HTTP port; None disables it, 0 picks a free one.
    metrics_port: int | None = 8002
    #: "none": load the whole repository at start; "explicit": load only ``startup_models``
    #: and whatever RepositoryModelLoad asks for.
    model_control: str = "none"
    startup_models: tuple[str, ...] = ()
    #: Seconds to finish in-flight requests on shutdown.
    shutdown_grace_s: float = 10.0
    #: Width of the sliding window for p50/p95/p99.
    latency_window_s: float = 60.0
    #: Batch size a model gets when config.pbtxt does not set one and the model can batch.
    default_max_batch_size: int = 64
    #: Queue bound (in requests) for models whose config sets none.
    default_max_queue_size: int = 4096
    #: Largest gRPC message accepted or sent, in bytes.
    max_message_bytes: int = 256 * 1024 * 1024
    #: Bound on the input bytes of admitted requests not yet answered, all models together;
    #: None: no server-wide bound (each queue still has its own).
    max_inflight_bytes: int | None = 1024 * 1024 * 1024
    #: Most input tensors one request may carry (more: RESOURCE_EXHAUSTED).
    max_request_inputs: int = 64
    #: Most requested outputs one request may name (more: RESOURCE_EXHAUSTED).
    max_request_outputs: int = 64
    #: Most dimensions one input tensor may have (more: RESOURCE_EXHAUSTED).
    max_tensor_rank: int = 16
    # hardened input (issue 14 item 4); each over its cap: RESOURCE_EXHAUSTED naming it
    #: Most elements one input tensor may have, and the largest one dimension may be (checked
    #: on the shape, before anything is allocated); 2**25 is 128 MiB of FP32.
    max_tensor_elements: int = 1 << 25
    #: Largest single BYTES element, in bytes.
    max_element_bytes: int = 64 * 1024 * 1024
    #: Most entries in one parameters map (the request's, an input's, a requested output's).
    max_request_parameters: int = 64
    log_level: str = "INFO"
    #: Bind gRPC with SO_REUSEPORT so sibling worker processes share the port (``--workers``).
    reuse_port: bool = False
    #: Address for /metrics; None uses ``host`` (workers use loopback: the supervisor scrapes).
    metrics_host: str | None = None
    #: This process's slot under ``sluice serve --workers N`` (0..N-1); None when standalone.
    worker_id: int | None = None
    #: Directory of the persisted deployment state and its audit log (created on the first
    #: deployment change); None: ``<model_repository>/.sluice-state``.
    state_dir: Path | None = None
    # -- fleet state in etcd (issue 15 items 1-2) --
    #: ``etcd://host:port/prefix``: the fleet's deployment state, audit log and canary driver
    #: lock in etcd; None: the file store in ``state_dir``.
    state_store: str | None = None
    #: Seconds of the canary driver's etcd lease: a dead driver's canaries resume within it.
    leader_lease_s: int = 10
    #: Seconds an etcd call may take before the change fails UNAVAILABLE.
    state_store_timeout_s: float = 2.0
    #: Seconds between two publications of this replica's canary gate counters to etcd (the
    #: fleet's gates sum them).
    fleet_counters_interval_s: float = 1.0
    #: ``prometheus://host:port``: canary gates are PromQL over every replica; None: the
    #: replicas' counters through etcd with ``state_store``, else this process's own.
    metrics_source: str | None = None
    # -- feedback + quality (issue 13) --
    #: Predicted rows each (model, version, arm) live quality window keeps.
    quality_window_rows: int = 10_000
    #: Seconds a prediction stays in a live quality window; None: no time bound.
    quality_window_s: float | None = 3600.0
    # -- drift (issue 13 item 6) --
    #: Seconds between two computes of the drift windows.
    drift_interval_s: float = 10.0
    #: Features per model version on the per-feature drift gauges (most drifted first); None:
    #: all. The per-bin counters always cover every feature.
    drift_top_features: int | None = 20
    # cost per prediction (issue 13 item 7)
    #: Price of one CPU core-hour, in the operator's currency (``sluice_cost_per_1k_predictions``
    #: and ``sluice stats``); None: CPU seconds only.
    price_per_core_hour: float | None = None
    # -- prediction log (request ids, prediction log) --
    #: Root of the prediction log's Parquet files; None: ``<state dir>/predictions``.
    prediction_log_dir: Path | None = None
    #: A log file is closed (and a new one started) once it holds this many bytes ...
    prediction_log_max_file_bytes: int = 64 * 1024 * 1024
    #: ... or is this old.
    prediction_log_max_file_age_s: float = 60.0
    #: Sampled requests waiting for the writer before more are dropped (and counted).
    prediction_log_queue_records: int = 100_000
    # -- authz: tokens, scopes, quotas, the access audit (issue 14 items 2-3) --
    #: The tokens file (``--tokens``): hashed bearer tokens and certificate subjects with their
    #: scopes and quotas; None: no authentication, every call open as before.
    tokens_file: Path | None = None
    #: Seconds between two looks at the tokens file for changes (a revocation's delay).
    tokens_reload_s: float = 2.0
    #: Access audit lines waiting for the writer before more are dropped (and counted).
    audit_queue_records: int = 10_000
    #: A second credential for /metrics: the ``--workers`` supervisor's scrapes (workers only).
    metrics_scrape_secret: str | None = None
    # -- transport security (issue 14 item 1) --
    #: Certificate files for TLS on the gRPC port and /metrics (reloaded on SIGHUP); None:
    #: plaintext, which is refused on a non-loopback address unless ``insecure``.
    tls: TlsFiles | None = None
    #: Serve plaintext on a non-loopback address anyway (``--insecure``; a warning is logged).
    insecure: bool = False
    # load-time overrides (issue 16 item 2)
    #: Most bytes of model files (``file:<path>`` parameters) one RepositoryModelLoad may carry.
    max_load_file_bytes: int = 256 << 20
    # -- REST (issue 17 item 1) --
    #: KServe v2 REST port beside gRPC (``--http-port``, 8000 by default on the command line);
    #: None: no REST door; 0 picks a free one.
    http_port: int | None = None
    #: Whether a REST port that cannot be bound stops the start (an explicit ``--http-port``) or
    #: only logs a warning and serves gRPC alone (the command line's default 8000 taken).
    http_port_required: bool = True

    @property
    def deployment_state_dir(self) -> Path:
        """Where deployment state lives (``state_dir`` or its default)."""
        return self.state_dir if self.state_dir is not None else (
            self.model_repository / ".sluice-state"
        )

    @property
    def predictions_dir(self) -> Path:
        """Where the prediction log writes (``prediction_log_dir`` or its default)."""
        return self.prediction_log_dir if self.prediction_log_dir is not None else (
            self.deployment_state_dir / "predictions"
        )

    @property
    def request_limits(self) -> RequestLimits:
        """The per-request size caps checked before a request is decoded."""
        return RequestLimits(
            self.max_request_inputs, self.max_request_outputs, self.max_tensor_rank,
            self.max_tensor_elements, self.max_element_bytes, self.max_request_parameters,
        )


@dataclass(frozen=True, slots=True)
class RequestLimits:
    """Size caps of one request; a request over one is refused with RESOURCE_EXHAUSTED."""

    #: Most input tensors.
    max_inputs: int = 64
    #: Most requested outputs.
    max_outputs: int = 64
    #: Most dimensions of one input tensor.
    max_rank: int = 16
    #: Most elements of one input tensor, and the largest dimension (hardened input).
    max_elements: int = 1 << 25
    #: Largest BYTES element, in bytes.
    max_element_bytes: int = 64 * 1024 * 1024
    #: Most entries of one parameters map.
    max_parameters: int = 64
