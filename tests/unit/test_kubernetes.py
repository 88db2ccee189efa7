"""configs/kubernetes/, checked offline: every manifest against the Kubernetes API schemas, and
against the router itself (its port, its routes, its variables, its shutdown timing)."""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from tests.support.deploy_contract import (
    CONTRACT_CMD,
    gunicorn_default,
    referenced_variables,
    variables_the_router_reads,
)
from tests.support.processes import ROOT

MANIFESTS = ROOT / "configs" / "kubernetes"
# Files kept out of the default kustomization on purpose: an example with placeholders that
# would overwrite the real Secret, and a resource whose CRD a cluster may not have.
OPTIONAL = {"secret.example.yaml", "servicemonitor.yaml"}
# The oldest release the manifests claim (the preStop `sleep` action is on by default from 1.30)
# and the newest whose schemas kubernetes-validate bundles.
KUBERNETES_VERSIONS = ("1.30.0", kubernetes_validate.utils.latest_version())


def load(name: str) -> dict[str, Any]:
    [document] = [d for d in yaml.safe_load_all((MANIFESTS / name).read_text()) if d]
    return document


def manifest_files() -> list[str]:
    return sorted(path.name for path in MANIFESTS.glob("*.yaml") if path.name != "kustomization.yaml")


def core_manifests() -> list[str]:
    return [name for name in manifest_files() if load(name)["apiVersion"] != "monitoring.coreos.com/v1"]


def container() -> dict[str, Any]:
    [router] = load("deployment.yaml")["spec"]["template"]["spec"]["containers"]
    return router


def pod_spec() -> dict[str, Any]:
    return load("deployment.yaml")["spec"]["template"]["spec"]


def env_values() -> dict[str, str]:
    return {item["name"]: item["value"] for item in container().get("env", [])}


def configmap_file(name: str) -> str:
    return load("configmap.yaml")["data"][name]


def secret_values() -> dict[str, str]:
    return load("secret.example.yaml")["stringData"]


def container_port(name_or_number: str | int) -> int:
    """The containerPort a probe or Service refers to, by name or number."""
    ports = {port["name"]: port["containerPort"] for port in container()["ports"]}
    if isinstance(name_or_number, int):
        assert name_or_number in ports.values()
        return name_or_number
    return ports[name_or_number]


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
@pytest.mark.parametrize("name", core_manifests())
def test_manifest_validates_strictly_against_the_kubernetes_schemas(name: str, version: str):
    for document in yaml.safe_load_all((MANIFESTS / name).read_text()):
        kubernetes_validate.validate(document, version, strict=True)


def test_strict_validation_rejects_a_misspelled_field():
    deployment = load("deployment.yaml")
    deployment["spec"]["template"]["spec"]["containers"][0]["readinesProbe"] = {"httpGet": {"path": "/health"}}
    with pytest.raises(jsonschema.ValidationError):
        kubernetes_validate.validate(deployment, KUBERNETES_VERSIONS[-1], strict=True)


def test_service_monitor_scrapes_the_services_named_port_at_metrics():
    # Its CRD is not part of the Kubernetes schemas: checked against the Service it selects.
    monitor, service = load("servicemonitor.yaml"), load("service.yaml")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1" and monitor["kind"] == "ServiceMonitor"
    assert monitor["metadata"]["name"]
    labels = monitor["spec"]["selector"]["matchLabels"]
    assert labels.items() <= service["metadata"]["labels"].items()
    service_ports = {port["name"] for port in service["spec"]["ports"]}
    for endpoint in monitor["spec"]["endpoints"]:
        assert endpoint["port"] in service_ports
        assert endpoint["path"] == "/metrics"


def test_kustomization_lists_every_manifest_but_the_optional_ones():
    kustomization = yaml.safe_load((MANIFESTS / "kustomization.yaml").read_text())
    assert kustomization["kind"] == "Kustomization"
    assert sorted(kustomization["resources"]) == sorted(set(manifest_files()) - OPTIONAL)


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl is not installed: kustomize rendering not checked")
def test_kustomize_renders_resources_that_validate():
    rendered = subprocess.run(
        ["kubectl", "kustomize", str(MANIFESTS)], capture_output=True, text=True, timeout=60, check=True
    ).stdout
    documents = [d for d in yaml.safe_load_all(rendered) if d]
    assert {d["kind"] for d in documents} == {
        "ConfigMap",
        "Deployment",
        "Service",
        "PodDisruptionBudget",
        "HorizontalPodAutoscaler",
    }
    for document in documents:
        kubernetes_validate.validate(document, KUBERNETES_VERSIONS[-1], strict=True)


def test_deployment_runs_the_contract_command_on_the_port_the_router_binds():
    router = container()
    assert router.get("command", []) + router.get("args", []) == CONTRACT_CMD
    port = int(env_values().get("PORT", gunicorn_default("PORT")))
    assert container_port("http") == port
    service = load("service.yaml")
    for service_port in service["spec"]["ports"]:
        assert container_port(service_port["targetPort"]) == port


def test_every_selector_matches_the_pods_labels():
    deployment = load("deployment.yaml")
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    selectors = [
        deployment["spec"]["selector"]["matchLabels"],
        load("service.yaml")["spec"]["selector"],
        load("poddisruptionbudget.yaml")["spec"]["selector"]["matchLabels"],
    ]
    for selector in selectors:
        assert selector.items() <= pod_labels.items()
    target = load("horizontalpodautoscaler.yaml")["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", deployment["metadata"]["name"])


def test_probes_ask_a_path_the_real_app_answers(make_app: Callable[..., Any]):
    client = make_app().test_client()
    router = container()
    for probe in (router["readinessProbe"], router["livenessProbe"]):
        container_port(probe["httpGet"]["port"])
        response = client.get(probe["httpGet"]["path"])
        assert response.status_code == 200, probe


def test_grace_period_outlasts_the_prestop_pause_plus_gunicorns_graceful_timeout():
    pause = container()["lifecycle"]["preStop"]["sleep"]["seconds"]
    assert pause >= 5  # long enough for endpoint removal to reach every proxy
    graceful = int(env_values().get("GRACEFUL_TIMEOUT", gunicorn_default("GRACEFUL_TIMEOUT")))
    # The kubelet counts the preStop pause inside the grace period; SIGKILL comes at its end.
    assert pod_spec()["terminationGracePeriodSeconds"] > pause + graceful


def test_pod_runs_non_root_on_a_read_only_root_with_memory_volumes_for_what_it_writes():
    pod, router = pod_spec(), container()
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] != 0
    assert router["securityContext"]["readOnlyRootFilesystem"] is True
    assert router["securityContext"]["allowPrivilegeEscalation"] is False
    empty_dirs = {volume["name"] for volume in pod["volumes"] if "emptyDir" in volume}
    writable = [mount["mountPath"] for mount in router["volumeMounts"] if mount["name"] in empty_dirs]
    assert "/tmp" in writable  # gunicorn's worker heartbeat files
    metrics_dir = env_values()["PROMETHEUS_MULTIPROC_DIR"]
    assert any(Path(metrics_dir).is_relative_to(path) for path in writable)


def test_configs_come_from_the_configmap_and_keys_from_the_secret_only():
    pod, router = pod_spec(), container()
    [configs] = [mount for mount in router["volumeMounts"] if mount["mountPath"] == "/app/configs"]
    [volume] = [volume for volume in pod["volumes"] if volume["name"] == configs["name"]]
    assert volume["configMap"]["name"] == load("configmap.yaml")["metadata"]["name"]
    [source] = router["envFrom"]
    assert source["secretRef"]["name"] == load("secret.example.yaml")["metadata"]["name"]
    # No key in the ConfigMap: credentials.json only names variables.
    for entry in json.loads(configmap_file("credentials.json")):
        assert referenced_variables(entry["value"]) and entry["value"].startswith("${"), entry


def test_every_variable_set_is_one_the_router_reads():
    reads = variables_the_router_reads()
    for name in env_values():
        assert name in reads, f"the router reads no variable {name}"
    referenced = referenced_variables(configmap_file("credentials.json"))
    for name in secret_values():
        assert name in reads | referenced, f"the router reads no variable {name}"
    # ...and every variable credentials.json names is there, or start-up stops.
    assert referenced <= set(secret_values())


def test_secret_example_holds_placeholders_never_a_key():
    secret = load("secret.example.yaml")
    assert "data" not in secret  # base64 would hide what is in it
    for name, value in secret["stringData"].items():
        assert value.startswith("replace-with-"), f"{name} must be a placeholder"


def test_configmap_configs_load_in_the_real_app_with_the_secrets_variables(
    make_app: Callable[..., Any], monkeypatch: pytest.MonkeyPatch
):
    for name, value in secret_values().items():
        monkeypatch.setenv(name, value)
    app = make_app(
        models=json.loads(configmap_file("models.json")),
        credentials=json.loads(configmap_file("credentials.json")),
    )
    served = {model["id"] for model in app.test_client().get("/v1/models").get_json()["data"]}
    assert served == {entry["model"] for entry in json.loads(configmap_file("models.json"))}
