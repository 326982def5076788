"""deploy/k3s: valid against the Kubernetes schemas, and wired the way docs/install.md says.

kubernetes-validate checks every resource against the bundled OpenAPI schemas (strict: unknown fields are
errors) of the oldest K3s release we support and of the newest; the rest checks that the pieces fit together
(the ConfigMap's config passes the agent's own validation, the probes hit the server's real routes, secrets only
arrive as files, the image's user).
"""

from __future__ import annotations

import http.client
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from reconciler.agent.config import AgentConfig, parse_agent_config
from reconciler.serving.http.server import InferenceServer
from reconciler.serving.registry import ModelRegistry
from tests._serving_fixtures import PROBE_V1, spec
from tests.packaging.conftest import REPO_ROOT

K3S = REPO_ROOT / "deploy" / "k3s"
KUBERNETES_VERSIONS = ("1.28.0", kubernetes_validate.latest_version())


def kustomization() -> dict[str, Any]:
    return yaml.safe_load((K3S / "kustomization.yaml").read_text())


def resources() -> list[dict[str, Any]]:
    return [doc for name in kustomization()["resources"] for doc in yaml.safe_load_all((K3S / name).read_text())]


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
    listed = kustomization()["resources"]
    assert sorted(listed) == sorted(set(listed))
    assert set(listed) == {p.name for p in K3S.glob("*.yaml")} - {"kustomization.yaml"}
    assert {r["metadata"].get("namespace", kustomization()["namespace"]) for r in resources()
            if r["kind"] != "Namespace"} == {kustomization()["namespace"]}


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_every_resource_is_valid_for_kubernetes(version: str) -> None:
    for doc in resources():
        kubernetes_validate.validate(doc, version, strict=True)  # raises ValidationError with the field path


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
    secret_names = {r["metadata"]["name"] for r in resources() if r["kind"] == "Secret"}
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
    for secret in (r for r in resources() if r["kind"] == "Secret"):
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
