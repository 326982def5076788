"""The gateway's systemd unit and K3s manifests: valid, and wired the way docs/gateway.md says."""

from __future__ import annotations

import configparser
import subprocess
import sys
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from reconciler.gateway.config import load_gateway_config, parse_gateway_config
from reconciler.gateway.nginx import nginx_config

ROOT = Path(__file__).resolve().parents[2]
UNIT = ROOT / "systemd" / "modelfleet-gateway.service"
K3S = ROOT / "deploy" / "k3s-gateway"


def test_unit_verifies_and_runs_the_gateway_hardened(tmp_path: Path) -> None:
    exe = Path(sys.executable).parent / "modelfleet"
    unit = tmp_path / "modelfleet-gateway.service"
    unit.write_text(UNIT.read_text().replace("/usr/bin/modelfleet", str(exe)))
    r = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and r.stderr.strip() == "", r.stderr
    cp = configparser.ConfigParser(strict=False, interpolation=None)
    cp.optionxform = str  # type: ignore[assignment,method-assign]
    cp.read_string(UNIT.read_text())
    svc = cp["Service"]
    assert "gateway run --config /etc/modelfleet/gateway.yaml" in svc["ExecStart"]
    assert svc["StateDirectory"] == "modelfleet-gateway" and svc["ProtectSystem"] == "strict"
    assert svc["CapabilityBoundingSet"] == "" and svc["KillMode"] == "mixed"


def test_sample_configs_are_valid_and_render_an_nginx_config(tmp_path: Path) -> None:
    cfg = load_gateway_config(ROOT / "systemd" / "gateway.yaml")
    assert cfg.data_dir == Path("/var/lib/modelfleet-gateway") and len(cfg.upstream_status_urls) == 2
    from dataclasses import replace

    text = nginx_config(replace(cfg, tuf_credentials=type(cfg.tuf_credentials)()), run_dir=tmp_path,
                        backend="/usr/lib/git-core/git-http-backend")
    assert "listen 0.0.0.0:8780;" in text and "proxy_cache tuf;" in text
    assert "location ~ ^/git/fleet\\.git/git-receive-pack$ { return 403; }" in text
    (k3s_cfg,) = [d for d in resources() if d["kind"] == "ConfigMap"]
    parse_gateway_config(k3s_cfg["data"]["gateway.yaml"], Path("/etc/modelfleet/config/gateway.yaml"))
    nginx = subprocess.run(["nginx", "-t", "-p", str(tmp_path), "-c", str(write(tmp_path, cfg))],
                           capture_output=True, text=True)
    assert nginx.returncode == 0, nginx.stderr


def write(tmp: Path, cfg: Any) -> Path:
    """The rendered config with its paths under ``tmp`` (nginx -t opens them)."""
    from dataclasses import replace

    local = replace(cfg, data_dir=tmp / "data", listen="127.0.0.1:0", tuf_credentials=type(cfg.tuf_credentials)(),
                    tuf_url="http://127.0.0.1:9/tuf")  # nginx resolves the upstream name when it loads
    for d in ("data/cache", "tmp"):
        (tmp / d).mkdir(parents=True, exist_ok=True)
    path = tmp / "nginx.conf"
    path.write_text(nginx_config(local, run_dir=tmp, backend="/usr/lib/git-core/git-http-backend")
                    .replace("listen 127.0.0.1:0;", "listen 127.0.0.1:18780;"))
    return path


def resources() -> list[dict[str, Any]]:
    kust = yaml.safe_load((K3S / "kustomization.yaml").read_text())
    return [doc for name in kust["resources"] for doc in yaml.safe_load_all((K3S / name).read_text())]


@pytest.mark.parametrize("version", ("1.28.0", kubernetes_validate.latest_version()))
def test_k3s_manifests_are_valid(version: str) -> None:
    for doc in resources():
        kubernetes_validate.validate(doc, version, strict=True)


def test_k3s_secrets_only_as_files_and_one_gateway_per_site() -> None:
    (dep,) = [d for d in resources() if d["kind"] == "Deployment"]
    spec = dep["spec"]
    assert spec["replicas"] == 1 and spec["strategy"]["type"] == "Recreate"
    (gw,) = spec["template"]["spec"]["containers"]
    assert gw["securityContext"]["runAsNonRoot"] and gw["securityContext"]["readOnlyRootFilesystem"]
    assert "env" not in gw and all("token" not in a for a in gw["args"])
    mounts = {m["mountPath"]: m for m in gw["volumeMounts"]}
    assert mounts["/run/modelfleet/keys"]["readOnly"] and mounts["/etc/modelfleet/config"]["readOnly"]
