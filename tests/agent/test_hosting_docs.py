"""The agent-config snippets of docs/hosting.md load as agent configs, with the settings they show: a page that
drifts from the schema (a renamed key, a `proxy:` the loader refuses) fails here."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from reconciler.agent.config import parse_agent_config
from reconciler.core.proxy import DIRECT

PAGE = Path(__file__).resolve().parents[2] / "docs" / "hosting.md"


def _snippets() -> list[dict]:
    blocks = re.findall(r"```yaml\n(.*?)```", PAGE.read_text(), re.S)
    return [doc for b in blocks if isinstance(doc := yaml.safe_load(b), dict) and "spec" in doc]


def test_every_agent_config_snippet_loads(tmp_path: Path) -> None:
    snippets = _snippets()
    assert len(snippets) >= 5
    loaded = []
    for doc in snippets:
        spec = doc["spec"]
        spec.setdefault("deviceId", "dev-1")
        spec.setdefault("source", {"url": "https://git.example.com/ops/fleet.git"})
        spec.setdefault("tuf", {}).setdefault("trustedRoot", "/etc/modelfleet/root.json")
        text = yaml.safe_dump({"apiVersion": "modelfleet/v1", "kind": "AgentConfig", "spec": spec})
        loaded.append(parse_agent_config(text, tmp_path / "agent.yaml", environ={"CREDENTIALS_DIRECTORY": "/run/c"}))
    creds = [c for cfg in loaded for c in (cfg.source_credentials, cfg.status_credentials, cfg.tuf_credentials) if c]
    assert any(c.proxy == "http://egress.corp.example:3128" for c in creds)
    assert any(c.proxy == DIRECT for c in creds)
    assert any(c.extra_ca_file == Path("/etc/modelfleet/internal-ca.pem") for c in creds)
    assert any(c.client_cert_file == Path("/etc/modelfleet/tls/dev-1.pem")
               and c.client_key_file == Path("/run/c/dev-1.key") for c in creds)
