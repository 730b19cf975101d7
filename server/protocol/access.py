"""Which scope each RPC needs: the default-deny table the auth interceptor enforces.

Every method of every service the server registers is named here, with the one scope a caller
must hold, or :data:`EXEMPT` (the standard health service, which Kubernetes probes call without
credentials). A method missing from the table is refused to everyone (PERMISSION_DENIED), so a
new RPC stays closed until someone decides its scope; tests/unit/test_access_table.py fails on
any method of the descriptors that is unmapped.

Scopes: ``infer`` runs models; ``metadata`` reads what is served (health of the server and
models, metadata, configs, the repository index, reflection); ``ops`` reads statistics and
reports (statistics, deployments, shadow, quality, drift, logging settings, /metrics);
``admin`` changes things (repository load/unload, deployments, canaries, shadows, feedback,
prediction-log settings, shared memory, trace and log settings).
"""

from __future__ import annotations

#: Marks a method open without credentials.
EXEMPT = ""

_INFERENCE = "/inference.GRPCInferenceService/"
_ADMIN = "/sluice.admin.v1.Admin/"

SCOPE_OF: dict[str, str] = {
    **{_INFERENCE + m: "infer" for m in ("ModelInfer", "ModelStreamInfer")},
    **{_INFERENCE + m: "metadata" for m in (
        "ServerLive", "ServerReady", "ModelReady", "ServerMetadata", "ModelMetadata",
        "ModelConfig", "RepositoryIndex", "SystemSharedMemoryStatus", "CudaSharedMemoryStatus",
    )},
    _INFERENCE + "ModelStatistics": "ops",
    **{_INFERENCE + m: "admin" for m in (
        "RepositoryModelLoad", "RepositoryModelUnload", "SystemSharedMemoryRegister",
        "SystemSharedMemoryUnregister", "CudaSharedMemoryRegister",
        "CudaSharedMemoryUnregister", "TraceSetting", "LogSettings",
    )},
    **{_ADMIN + m: "ops" for m in (
        "GetDeployment", "ShadowReport", "Quality", "DriftReport", "GetPredictionLogging",
    )},
    **{_ADMIN + m: "admin" for m in (
        "SetRoutes", "SetAlias", "Switch", "Rollback", "StartShadow", "StopShadow",
        "StartCanary", "AbortCanary", "Feedback", "SetPredictionLogging",
    )},
    "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo": "metadata",
    "/grpc.health.v1.Health/Check": EXEMPT,
    "/grpc.health.v1.Health/Watch": EXEMPT,
}


def audited(method: str) -> bool:
    """Whether a call of ``method`` gets an audit line even when it is allowed: every admin
    call, and every call of the admin service (its reads show who looked at deployments)."""
    return SCOPE_OF.get(method) == "admin" or method.startswith(_ADMIN)
