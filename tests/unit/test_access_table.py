"""Every method of every service the server registers has a scope in the default-deny table."""

from __future__ import annotations

from grpc_health.v1 import health_pb2
from grpc_reflection.v1alpha import reflection_pb2

from sluice.proto import admin_pb2, grpc_service_pb2
from sluice.server.auth.tokens import SCOPES
from sluice.server.protocol.access import EXEMPT, SCOPE_OF, audited

#: The services the server registers (app.py): ours from proto/, health and reflection.
DESCRIPTORS = (grpc_service_pb2, admin_pb2, health_pb2, reflection_pb2)


def _methods() -> list[str]:
    return [f"/{service.full_name}/{method.name}"
            for module in DESCRIPTORS
            for service in module.DESCRIPTOR.services_by_name.values()
            for method in service.methods]


def test_every_method_of_every_service_is_mapped():
    methods = _methods()
    assert len(methods) == 20 + 15 + 2 + 1  # inference, admin, health, reflection
    unmapped = [m for m in methods if m not in SCOPE_OF]
    assert unmapped == [], f"give these RPCs a scope in server/protocol/access.py: {unmapped}"


def test_the_table_names_only_real_methods_and_real_scopes():
    assert set(SCOPE_OF) <= set(_methods())
    assert set(SCOPE_OF.values()) <= {*SCOPES, EXEMPT}


def test_only_health_is_exempt():
    exempt = sorted(m for m, scope in SCOPE_OF.items() if scope == EXEMPT)
    assert exempt == ["/grpc.health.v1.Health/Check", "/grpc.health.v1.Health/Watch"]


def test_scopes_of_each_family():
    inference = "/inference.GRPCInferenceService/"
    assert SCOPE_OF[inference + "ModelInfer"] == SCOPE_OF[inference + "ModelStreamInfer"] == "infer"
    assert SCOPE_OF[inference + "ModelMetadata"] == "metadata"
    assert SCOPE_OF[inference + "ModelStatistics"] == "ops"
    assert SCOPE_OF[inference + "RepositoryModelLoad"] == "admin"
    assert SCOPE_OF["/sluice.admin.v1.Admin/SetRoutes"] == "admin"
    assert SCOPE_OF["/sluice.admin.v1.Admin/Feedback"] == "admin"
    assert SCOPE_OF["/sluice.admin.v1.Admin/SetPredictionLogging"] == "admin"
    assert SCOPE_OF["/sluice.admin.v1.Admin/Quality"] == "ops"


def test_every_admin_call_is_audited_and_no_inference_call_is():
    for method, scope in SCOPE_OF.items():
        assert audited(method) == (scope == "admin" or method.startswith("/sluice.admin.v1."))
    assert not audited("/inference.GRPCInferenceService/ModelInfer")
