"""deploy/k8s rendered by kubectl's own kustomize and checked offline: every core manifest
against the Kubernetes API schemas (kubernetes-validate, strict), the custom resources
(ServiceMonitor, PrometheusRule, InferenceService) against the fields their documentation
requires, and the parts that must agree with each other and with the rest of the repository
(selectors, ports, grace periods, the alert rules, the autoscaler's metrics).
tests/integration/test_k8s_probes.py checks the same ports against a real server."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support.k8s import K8S, ROOT, one, render

OVERLAYS = ("overlays/cpu", "overlays/gpu", "kserve")
KUBERNETES = "1.30.0"  # the oldest release these manifests promise to validate against
CUSTOM = {"ServiceMonitor", "PrometheusRule", "InferenceService"}


def server_defaults() -> Any:
    from sluice.server.cli import _parser

    return _parser().parse_args(["serve"])


@pytest.mark.parametrize("kustomization", OVERLAYS)
def test_every_core_manifest_is_valid_for_the_kubernetes_api(kustomization: str) -> None:
    import kubernetes_validate

    kinds = set()
    for document in render(kustomization):
        kinds.add(document["kind"])
        if document["kind"] in CUSTOM:
            continue
        kubernetes_validate.validate(document, KUBERNETES, strict=True)
    if kustomization.startswith("overlays"):
        assert kinds == {"Deployment", "Service", "HorizontalPodAutoscaler",
                         "PodDisruptionBudget", "ServiceMonitor", "PrometheusRule"}
    else:
        assert kinds == {"InferenceService"}


def test_the_validator_rejects_a_broken_deployment() -> None:
    import kubernetes_validate

    broken = yaml.safe_load(yaml.safe_dump(one("overlays/cpu", "Deployment")))
    broken["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["grpc"]["port"] = "8001"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, KUBERNETES, strict=True)


# -- custom resources: the fields their documentation requires ---------------------------------


def _require(document: dict[str, Any], *path: str) -> Any:
    node: Any = document
    for key in path:
        assert isinstance(node, dict) and key in node, f"{document['kind']}: no {'.'.join(path)}"
        node = node[key]
    return node


def test_the_service_monitor_scrapes_the_metrics_port_of_exactly_one_service() -> None:
    monitor = one("overlays/cpu", "ServiceMonitor")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    labels = _require(monitor, "spec", "selector", "matchLabels")
    [endpoint] = _require(monitor, "spec", "endpoints")
    selected = [s for s in render("overlays/cpu") if s["kind"] == "Service"
                and labels.items() <= s["metadata"].get("labels", {}).items()]
    assert [s["metadata"]["name"] for s in selected] == ["sluice"]
    ports = {p["name"]: p for p in selected[0]["spec"]["ports"]}
    assert endpoint["port"] in ports and endpoint["path"] == "/metrics"
    assert ports[endpoint["port"]]["port"] == server_defaults().metrics_port


def test_the_prometheus_rule_holds_the_repositorys_alert_rules(tmp_path: Path) -> None:
    rule = one("overlays/cpu", "PrometheusRule")
    assert rule["apiVersion"] == "monitoring.coreos.com/v1"
    groups = _require(rule, "spec", "groups")
    source = yaml.safe_load((ROOT / "deploy/prometheus/sluice-rules.yml").read_text())
    assert groups == source["groups"], "refresh base/prometheusrule.yaml (see its header)"
    for group in groups:
        assert group["name"] and group["rules"]
        for r in group["rules"]:
            assert r["expr"] and ("alert" in r) != ("record" in r)
            assert all(isinstance(v, str) for v in r.get("labels", {}).values())
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool is not installed (Debian's prometheus; .ci/run installs it)")
    rules = tmp_path / "rules.yml"
    rules.write_text(yaml.safe_dump({"groups": groups}))
    result = subprocess.run([promtool, "check", "rules", str(rules)], capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_inference_service_runs_sluice_as_a_grpc_custom_predictor() -> None:
    service = one("kserve", "InferenceService")
    assert service["apiVersion"] == "serving.kserve.io/v1beta1"
    predictor = _require(service, "spec", "predictor")
    [container] = predictor["containers"]
    assert container["name"] == "kserve-container" and container["image"] == "sluice:cpu"
    [port] = container["ports"]
    # KServe routes HTTP/2 cleartext (gRPC) to the port named h2c: the server's gRPC port.
    assert (port["name"], port["containerPort"]) == ("h2c", server_defaults().grpc_port)
    for probe in ("startupProbe", "readinessProbe"):
        assert container[probe]["grpc"]["port"] == port["containerPort"]
    core = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "predictor"},
            "spec": {k: v for k, v in predictor.items()
                     if k in ("containers", "terminationGracePeriodSeconds")}}
    import kubernetes_validate

    kubernetes_validate.validate(core, KUBERNETES, strict=True)  # the inlined PodSpec part
    annotations = service["metadata"]["annotations"]
    assert annotations["serving.kserve.io/deploymentMode"] == "RawDeployment"
    assert int(annotations["prometheus.kserve.io/port"]) == server_defaults().metrics_port


# -- what must agree -----------------------------------------------------------------------


@pytest.mark.parametrize("kustomization", ["overlays/cpu", "overlays/gpu"])
def test_the_deployment_probes_and_stops_the_way_the_server_serves_and_drains(
        kustomization: str) -> None:
    from sluice.server.cli import _parser

    pod = one(kustomization, "Deployment")["spec"]["template"]["spec"]
    [container] = pod["containers"]
    # The image's entry point with the container's args, parsed by the real command line.
    args = _parser().parse_args(["serve", "--host", "0.0.0.0", *container["args"]])
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"grpc": args.grpc_port, "metrics": args.metrics_port}
    assert (args.grpc_port, args.metrics_port) == (8001, 8002)
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert container[probe]["grpc"]["port"] == ports["grpc"], probe
        assert container[probe]["grpc"].get("service", "") == ""  # the whole server
    # Liveness must not kill a pod that drains: it outlasts the whole stop.
    live = container["livenessProbe"]
    pre_stop = int(container["lifecycle"]["preStop"]["exec"]["command"][1])
    grace = pod["terminationGracePeriodSeconds"]
    assert grace >= pre_stop + args.shutdown_grace + 5
    assert live["periodSeconds"] * live["failureThreshold"] > grace
    assert args.insecure  # kubelet's grpc probes speak plaintext
    gpu = container["resources"]["limits"].get("nvidia.com/gpu")
    assert (gpu == 1) == (kustomization == "overlays/gpu")
    assert one(kustomization, "Deployment")["spec"].get("replicas") is None  # the HPA's


def test_the_services_select_the_deployments_pods() -> None:
    deployment = one("overlays/cpu", "Deployment")
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    headless = one("overlays/cpu", "Service", "sluice-headless")
    assert headless["spec"]["clusterIP"] == "None"
    assert one("overlays/cpu", "Service", "sluice")["spec"]["type"] == "ClusterIP"
    for service in (headless, one("overlays/cpu", "Service", "sluice")):
        assert service["spec"]["selector"].items() <= pod_labels.items()
        assert {"port": 8001, "targetPort": "grpc"}.items() <= service["spec"]["ports"][0].items()
    pdb = one("overlays/cpu", "PodDisruptionBudget")
    assert pdb["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()


def test_the_autoscaler_scales_on_queue_metrics_the_adapter_serves_from_real_series() -> None:
    hpa = one("overlays/cpu", "HorizontalPodAutoscaler")
    assert hpa["apiVersion"] == "autoscaling/v2"
    target = hpa["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", "sluice")
    wanted = {m["pods"]["metric"]["name"] for m in hpa["spec"]["metrics"]}
    assert wanted == {"sluice_queue_delay_seconds", "sluice_queue_depth_requests"}
    adapter = yaml.safe_load((K8S / "prometheus-adapter" / "rules.yaml").read_text())
    served = {r["name"]["as"]: r for r in adapter["rules"]}
    assert wanted <= served.keys()
    # Each rule reads series the server exports (test_k8s_probes.py scrapes a real one for them).
    assert "sluice_queue_duration_seconds_count" in served["sluice_queue_delay_seconds"][
        "seriesQuery"]
    assert "sluice_queue_duration_seconds_sum" in served["sluice_queue_delay_seconds"][
        "metricsQuery"]
    assert served["sluice_queue_depth_requests"]["seriesQuery"].startswith(
        "sluice_queue_depth_requests{")
