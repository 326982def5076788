"""deploy/k3s: valid against the Kubernetes schemas, admitted under its namespace's Pod Security level, and wired
the way docs/install.md says.

kubernetes-validate checks every resource against the bundled OpenAPI schemas (strict: unknown fields are
errors) of the oldest K3s release we support and of the newest; the Pod Security Standards are evaluated on the
pods the resources create (tests/_pod_security.py) at the namespace's enforce, warn and audit levels; the
PodMonitor is checked against the PodMonitor CRD's fields; the rest checks that the pieces fit together (the
ConfigMap's config passes the agent's own validation, the probes hit the server's real routes, secrets only
arrive as files and never from the default kustomization, the image's user).
"""

from __future__ import annotations

import http.client
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from reconciler.agent.config import AgentConfig, parse_agent_config
from reconciler.serving.http.server import InferenceServer
from reconciler.serving.registry import ModelRegistry
from tests._pod_security import namespace_levels, pod_template, violations
from tests._serving_fixtures import PROBE_V1, spec
from tests.packaging.conftest import REPO_ROOT

K3S = REPO_ROOT / "deploy" / "k3s"
KUBERNETES_VERSIONS = ("1.28.0", kubernetes_validate.latest_version())
# The PodMonitor CRD's schema (monitoring.coreos.com/v1), the fields of its API reference that matter here.
PODMONITOR_SCHEMA = Path(__file__).with_name("podmonitor.schema.json")


def kustomization(directory: Path = K3S) -> dict[str, Any]:
    return yaml.safe_load((directory / "kustomization.yaml").read_text())


def resources(directory: Path = K3S) -> list[dict[str, Any]]:
    """What ``kubectl apply -k directory`` applies: its resources, a directory entry (a base) resolved."""
    out: list[dict[str, Any]] = []
    for name in kustomization(directory)["resources"]:
        path = (directory / name).resolve()
        out += resources(path) if path.is_dir() else list(yaml.safe_load_all(path.read_text()))
    return out


def resource(kind: str) -> dict[str, Any]:
    (found,) = [r for r in resources() if r["kind"] == kind]
    return found


def agent_container() -> dict[str, Any]:
    (agent,) = resource("DaemonSet")["spec"]["template"]["spec"]["containers"]
    return agent


def agent_config() -> AgentConfig:
    config_map = resource("ConfigMap")
    args = agent_container()["args"]
    path = Path(args[args.index("--config") + 1])
    assert config_map["metadata"]["name"] == volume_of(path)["configMap"]["name"]
    return parse_agent_config(config_map["data"][path.name], path, environ={"NODE_NAME": "k3s-edge-1"})


def volume_of(path: Path) -> dict[str, Any]:
    """The pod volume the agent container sees at ``path`` (its mount must be read-only unless it is state)."""
    mounts = [m for m in agent_container()["volumeMounts"] if path.is_relative_to(m["mountPath"])]
    assert mounts, f"{path} is on no volume of the agent container"
    mount = max(mounts, key=lambda m: len(m["mountPath"]))
    volumes = {v["name"]: v for v in resource("DaemonSet")["spec"]["template"]["spec"]["volumes"]}
    return {**volumes[mount["name"]], "readOnly": mount.get("readOnly", False)}


def test_kustomization_lists_every_manifest_once() -> None:
    for directory in (K3S, K3S / "examples", K3S / "monitoring"):
        listed = kustomization(directory)["resources"]
        assert sorted(listed) == sorted(set(listed))
        assert set(listed) - {"../"} == {p.name for p in directory.glob("*.yaml")} - {"kustomization.yaml"}
        namespace = kustomization(directory).get("namespace", "modelfleet")
        assert {r["metadata"].get("namespace", namespace) for r in resources(directory)
                if r["kind"] != "Namespace"} == {"modelfleet"}


def test_no_secret_in_the_default_kustomization() -> None:
    """A GitOps sync of deploy/k3s (Flux, Argo CD) must not deploy placeholder keys: the Secrets come from the
    operator's secret manager; only the examples overlay (the base plus placeholders) has them."""
    assert not [r for r in resources() if r["kind"] == "Secret"]
    example = resources(K3S / "examples")
    assert example[:len(resources())] == resources()
    assert {r["metadata"]["name"] for r in example if r["kind"] == "Secret"} == mounted_secrets()


def mounted_secrets() -> set[str]:
    return {v["secret"]["secretName"] for v in resource("DaemonSet")["spec"]["template"]["spec"]["volumes"]
            if "secret" in v}


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_every_resource_is_valid_for_kubernetes(version: str) -> None:
    for doc in resources(K3S / "examples"):
        kubernetes_validate.validate(doc, version, strict=True)  # raises ValidationError with the field path


def pods() -> list[tuple[str, dict[str, Any]]]:
    return [(r["metadata"]["name"], pod) for r in resources() if (pod := pod_template(r)) is not None]


def test_the_pods_are_admitted_under_the_namespaces_pod_security_level() -> None:
    """What the Pod Security admission controller decides for the namespace as shipped: every pod the manifests
    create passes the enforced level (a DaemonSet whose pods it refuses is accepted, then never gets a pod)."""
    levels = namespace_levels(resource("Namespace"))
    assert pods()
    for name, pod in pods():
        assert violations(pod, levels["enforce"]) == [], (name, levels["enforce"])


def test_the_stricter_levels_flag_only_the_documented_exceptions() -> None:
    """The namespace enforces privileged for the node agent's hostPath state, and warns at baseline and audits
    at restricted: the exceptions are exactly the ones namespace.yaml and docs/install.md name — the hostPath
    volume ``state`` and the root ``prepare`` init container with CAP_CHOWN/CAP_FOWNER — nothing else."""
    levels = namespace_levels(resource("Namespace"))
    assert levels == {"enforce": "privileged", "warn": "baseline", "audit": "restricted"}
    (( _, pod),) = pods()
    found = {v.check: v.detail for v in violations(pod, levels["warn"])}
    assert found == {"hostPathVolumes": "state"}
    found = {v.check: v.detail for v in violations(pod, levels["audit"])}
    assert found == {"restrictedVolumes": "state", "runAsNonRoot": "prepare", "runAsUser": "prepare",
                     "capabilities_restricted": "prepare"}


def podmonitor() -> dict[str, Any]:
    (monitor,) = resources(K3S / "monitoring")
    return monitor


def test_the_podmonitor_is_valid_and_scrapes_the_agent_pods_metrics() -> None:
    monitor = podmonitor()
    schema = json.loads(PODMONITOR_SCHEMA.read_text())
    jsonschema.validate(monitor, schema)
    bad = {**monitor, "spec": {**monitor["spec"], "podMetricEndpoints": monitor["spec"]["podMetricsEndpoints"]}}
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(bad, schema)  # a misspelt field is refused, as the API server refuses it
    spec_ = monitor["spec"]
    template = resource("DaemonSet")["spec"]["template"]
    assert spec_["selector"]["matchLabels"].items() <= template["metadata"]["labels"].items()
    assert spec_["namespaceSelector"]["matchNames"] == [kustomization()["namespace"]]
    (endpoint,) = spec_["podMetricsEndpoints"]
    ports = {p["name"]: p["containerPort"] for p in agent_container()["ports"]}
    assert ports[endpoint["port"]] == agent_config().serving_port and endpoint["path"] == "/metrics"
    # the same target and device label as the plain Prometheus job (deploy/prometheus/k3s-scrape-job.yml)
    (job,) = yaml.safe_load((REPO_ROOT / "deploy/prometheus/k3s-scrape-job.yml").read_text())["scrape_configs"]
    device = next(r for r in job["relabel_configs"] if r.get("target_label") == "device")
    (relabel,) = endpoint["relabelings"]
    assert (relabel["sourceLabels"], relabel["targetLabel"]) == (device["source_labels"], "device")


def test_the_device_id_is_the_node_name_from_the_downward_api() -> None:
    env = {e["name"]: e for e in agent_container()["env"]}
    config = agent_config()
    assert config.device_id == "k3s-edge-1"
    text = resource("ConfigMap")["data"]["agent.yaml"]
    var = yaml.safe_load(text)["spec"]["deviceIdEnv"]
    assert env[var]["valueFrom"] == {"fieldRef": {"fieldPath": "spec.nodeName"}}


def test_state_on_the_node_config_from_the_config_map_keys_and_trust_from_secrets() -> None:
    config = agent_config()
    state = volume_of(config.state_dir)
    assert state["hostPath"]["path"] == str(config.state_dir) and not state["readOnly"]
    secret_names = {r["metadata"]["name"] for r in resources(K3S / "examples") if r["kind"] == "Secret"}
    trust = [config.trusted_root, config.allowed_signers, config.source_credentials.known_hosts_file]
    for path in trust:
        assert path is not None
        vol = volume_of(path)
        assert vol["readOnly"] and vol["secret"]["secretName"] in secret_names, path
    key = config.source_credentials.ssh_key_file
    assert key is not None
    keys = volume_of(key)
    assert keys["readOnly"] and keys["emptyDir"]["medium"] == "Memory"
    # ... filled by the init container from the keys Secret, the only volume holding it
    pod = resource("DaemonSet")["spec"]["template"]["spec"]
    prepare, identity = pod["initContainers"]
    mounts = {m["name"]: m for m in prepare["volumeMounts"]}
    # the status key is made by the node itself (identity), never from a Secret: it mounts none
    assert not {m["name"] for m in identity["volumeMounts"]} & {v["name"] for v in pod["volumes"] if "secret" in v}
    source = next(v for v in pod["volumes"] if v["name"] in mounts and "secret" in v)
    assert source["secret"]["secretName"] in secret_names and source["secret"]["defaultMode"] == 0o400
    assert source["name"] not in {m["name"] for m in agent_container()["volumeMounts"]}


def test_secrets_never_in_the_environment_or_arguments() -> None:
    pod = resource("DaemonSet")["spec"]["template"]["spec"]
    for container in pod["containers"] + pod["initContainers"]:
        assert "envFrom" not in container
        for env in container.get("env", []):
            assert "secretKeyRef" not in env.get("valueFrom", {}), env
    for secret in (r for r in resources(K3S / "examples") if r["kind"] == "Secret"):
        values = list((secret.get("stringData") or {}).values())
        rendered = yaml.safe_dump(pod) + resource("ConfigMap")["data"]["agent.yaml"]
        assert not [v for v in values if v.strip() in rendered]


def test_non_root_read_only_with_resources_and_the_image_user() -> None:
    pod = resource("DaemonSet")["spec"]["template"]["spec"]
    agent = agent_container()
    sc = agent["securityContext"]
    assert (sc["runAsNonRoot"], sc["readOnlyRootFilesystem"], sc["allowPrivilegeEscalation"]) == (True, True, False)
    assert sc["capabilities"] == {"drop": ["ALL"]}
    dockerfile_user = next(line.split()[1] for line in (REPO_ROOT / "deploy/container/Dockerfile").read_text()
                           .splitlines() if line.startswith("USER "))
    assert dockerfile_user == f"{sc['runAsUser']}:{sc['runAsGroup']}"
    prepare, identity = pod["initContainers"]
    assert identity["securityContext"] == sc  # the key is made as the agent's user, like the agent
    assert "modelfleet agent keygen" in identity["command"][-1]
    assert prepare["securityContext"]["capabilities"] == {"drop": ["ALL"], "add": ["CHOWN", "FOWNER"]}
    assert f"chown {sc['runAsUser']}:{sc['runAsGroup']}" in prepare["command"][-1]
    assert pod["automountServiceAccountToken"] is False
    for container in pod["containers"] + pod["initContainers"]:
        assert set(container["resources"]) == {"requests", "limits"}
        assert {"cpu", "memory"} <= set(container["resources"]["requests"]) & set(container["resources"]["limits"])


@pytest.fixture
def server() -> Iterator[InferenceServer]:
    registry = ModelRegistry()
    assert registry.apply(spec(probe=PROBE_V1)).ok
    srv = InferenceServer(registry)
    srv.start()
    yield srv
    srv.stop()
    registry.close()


def test_probes_hit_the_servers_health_routes_on_the_configured_ports(server: InferenceServer) -> None:
    agent = agent_container()
    config = agent_config()
    ports = {p["name"]: p["containerPort"] for p in agent["ports"]}
    assert ports["http"] == config.serving_port and ports["metrics"] == config.metrics_port
    assert config.serving_host == "0.0.0.0"  # probes come from the kubelet, not from loopback
    paths = {}
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        get = agent[probe]["httpGet"]
        assert ports[get["port"]] == config.serving_port
        paths[probe] = get["path"]
    assert paths == {"startupProbe": "/v2/health/live", "livenessProbe": "/v2/health/live",
                     "readinessProbe": "/v2/health/ready"}
    for path in set(paths.values()):
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
        conn.request("GET", path)
        assert conn.getresponse().status == 200, path
        conn.close()


def test_prometheus_k3s_job_keeps_the_agent_pods_serving_port() -> None:
    """deploy/prometheus/k3s-scrape-job.yml's keep rules select these pods, and the port it keeps serves /metrics."""
    (job,) = yaml.safe_load((REPO_ROOT / "deploy/prometheus/k3s-scrape-job.yml").read_text())["scrape_configs"]
    template = resource("DaemonSet")["spec"]["template"]
    meta = {f"__meta_kubernetes_pod_label_{k.replace('.', '_').replace('/', '_').replace('-', '_')}": v
            for k, v in template["metadata"]["labels"].items()}
    kept_ports = []
    for port in agent_container()["ports"]:
        labels = {**meta, "__meta_kubernetes_pod_container_port_name": port["name"]}
        keeps = [r for r in job["relabel_configs"] if r.get("action") == "keep"]
        if all(re.fullmatch(r["regex"], ";".join(labels.get(s, "") for s in r["source_labels"])) for r in keeps):
            kept_ports.append(port["containerPort"])
    assert kept_ports == [agent_config().serving_port]  # /metrics is always on the inference server too
