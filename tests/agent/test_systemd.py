"""The systemd unit is valid (systemd-analyze verify) and wires Type=notify, watchdog and hardening."""

from __future__ import annotations

import configparser
import subprocess
import sys
from pathlib import Path

from reconciler.agent.config import load_agent_config

ROOT = Path(__file__).resolve().parents[2]
UNIT = ROOT / "systemd" / "modelfleet-agent.service"


def _unit() -> configparser.ConfigParser:
    cp = configparser.ConfigParser(strict=False, interpolation=None)
    cp.optionxform = str  # type: ignore[assignment,method-assign]
    cp.read_string(UNIT.read_text())
    return cp


def test_unit_is_notify_with_watchdog_and_hardening() -> None:
    svc = _unit()["Service"]
    assert svc["Type"] == "notify"
    assert svc["WatchdogSec"] and svc["Restart"] == "always"
    assert svc["StateDirectory"] == "modelfleet"
    for key, value in {"ProtectSystem": "strict", "NoNewPrivileges": "yes", "PrivateTmp": "yes",
                       "CapabilityBoundingSet": ""}.items():
        assert svc[key] == value, key
    assert "agent run --config /etc/modelfleet/agent.yaml" in svc["ExecStart"]


def test_systemd_analyze_verify_is_clean(tmp_path: Path) -> None:
    # The unit names the packaged binary; point it at this checkout's so verify can check it exists.
    exe = Path(sys.executable).parent / "modelfleet"
    unit = tmp_path / "modelfleet-agent.service"
    unit.write_text(UNIT.read_text().replace("/usr/bin/modelfleet", str(exe)))
    r = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and r.stderr.strip() == "", r.stderr


def test_sample_config_is_valid() -> None:
    cfg = load_agent_config(ROOT / "systemd" / "agent.yaml")
    assert cfg.state_dir == Path("/var/lib/modelfleet") and cfg.verify_mode == "head"
