"""`modelfleet check` end to end on a real fleet (git daemon + TUF over HTTP on 127.0.0.1): a device that has
reported with its own signed status, the operator's real git signing set-up, and the ways a healthy fleet breaks
that the check exists for — a timestamp nobody re-signed, a secret file left readable by others, a device without
its status key, a device clock ten minutes off its TUF server's (a real server whose Date header says so)."""

from __future__ import annotations

import datetime as dt
import email.utils
import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from reconciler.distribution import tufrepo
from tests._agent_fixtures import World
from tests._cli import CliResult, run_cli
from tests._git_fixtures import make_ssh_key, write_allowed_signers


@dataclass
class Fleet:
    world: World
    config: Path  # the device's agent config
    tmp: Path

    def operator(self, *args: str) -> CliResult:
        return run_cli("check", "--repo", self.world.git_url, "--cache-dir", str(self.tmp / "ops-cache"), *args)

    def device(self, *args: str, config: Path | None = None) -> CliResult:
        return run_cli("check", "--agent-config", str(config or self.config), *args)


@pytest.fixture
def fleet(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Fleet]:
    """A fleet whose one device converged and pushed a signed status its manifest lists the key of; the operator
    signs commits with an SSH key and trusts it in an allowed-signers file."""
    w = World(tmp_path / "world").start()
    try:
        w.publish("1.0.0")
        w.commit_fleet("1.0.0")
        dev = tmp_path / "dev"
        w.commit_raw(w.provision_identity(dev), "inventory: dev-1 with its status key")
        cfg = w.agent_config(dev, status=True)
        once = run_cli("agent", "once", "--config", str(cfg))
        assert once.code == 0, once.text
        ops = make_ssh_key(tmp_path / "ops", "ops@example.com")
        signers = write_allowed_signers(tmp_path / "ops" / "allowed_signers", ops)
        gitconfig = tmp_path / "ops" / "gitconfig"
        gitconfig.write_text(f"[user]\n\tsigningkey = {ops.path}.pub\n[gpg]\n\tformat = ssh\n[commit]\n\tgpgsign = "
                             f"true\n[gpg \"ssh\"]\n\tallowedSignersFile = {signers}\n")
        monkeypatch.setenv("GIT_CONFIG_GLOBAL", str(gitconfig))
        monkeypatch.setenv("GIT_CONFIG_NOSYSTEM", "1")
        monkeypatch.delenv("MODELFLEET_ALLOWED_SIGNERS", raising=False)
        monkeypatch.chdir(tmp_path)  # not a clone: only the global git config applies
        yield Fleet(w, cfg, tmp_path)
    finally:
        w.stop()


def statuses(result: CliResult) -> dict[str, str]:
    return {c["name"]: c["status"] for c in json.loads(result.out)["checks"]}


def test_a_healthy_fleet_passes_both_sides_even_strict(fleet: Fleet) -> None:
    r = fleet.operator("--strict")
    assert r.code == 0, r.text
    lines = r.out.splitlines()
    assert lines[0].split() == ["CHECK", "STATUS", "MESSAGE"]
    assert lines[-1] == "operator side: 11 checks, 11 ok, 0 warnings, 0 errors"
    assert "fleet repository  ok" in r.out and "main at " in r.out
    assert "1 device reported within 3h" in r.out  # the World's heartbeatInterval is 1h
    assert "1 status signed by its device's listed key" in r.out
    assert "(the Fleet's spec.tuf.metadataUrl, timestamp.json: HTTP 200): 4 roles" in r.out
    assert "allowed_signers (gpg.ssh.allowedSignersFile): 1 signer" in r.out
    assert r.err == ""

    d = fleet.device("--strict", "--format", "json")
    assert d.code == 0, d.text
    doc = json.loads(d.out)
    assert doc["side"] == "device" and doc["passed"] is True and doc["summary"] == {"ok": 11, "warning": 0, "error": 0}
    assert set(statuses(d).values()) == {"ok"}
    by = {c["name"]: c["message"] for c in doc["checks"]}
    key = fleet.tmp / "dev" / "state" / "identity" / "status_ed25519"
    assert by["status key"].startswith(f"{key} (SHA256:")
    assert by["tuf server"].endswith("/metadata/timestamp.json answers (HTTP 200)")
    assert by["clock vs TUF server"].startswith("within ")  # the StaticServer's Date header, this machine's clock
    assert "the largest model the fleet names (det 1.0.0 cpu)" in by["disk space"]


def test_an_expired_timestamp_fails_the_operator_check(fleet: Fleet) -> None:
    # Nobody re-signed: the last refresh was two days ago and the timestamp lives one day.
    tufrepo.refresh(fleet.world.tuf_dir, [fleet.world.keys], now=dt.datetime.now(dt.timezone.utc) - dt.timedelta(days=2))
    r = fleet.operator()
    assert r.code == 1, r.text
    row = next(line for line in r.out.splitlines() if line.startswith("tuf timestamp"))
    assert row.split()[2] == "error" and "expired 1d0h ago" in row and "stop updating models" in row
    assert "modelfleet repo refresh" in r.out
    assert r.err.strip() == "error: 1 check failed: tuf timestamp"
    # The publisher's directory says the same, and JSON carries it for CI.
    j = fleet.operator("--tuf-repo", str(fleet.world.tuf_dir), "--format", "json")
    assert j.code == 1 and json.loads(j.out)["passed"] is False
    assert {k: v for k, v in statuses(j).items() if v != "ok"} == {"tuf timestamp": "error"}


def test_a_secret_file_readable_by_others_fails_the_device_check(fleet: Fleet) -> None:
    token = fleet.tmp / "dev" / "tuf-token"
    token.write_text("s3cret\n")
    token.chmod(0o644)
    text = fleet.config.read_text().replace("tuf:\n", f"tuf:\n    credentials:\n      bearerTokenFile: {token}\n", 1)
    cfg = fleet.tmp / "dev" / "agent-token.yaml"
    cfg.write_text(text)
    r = fleet.device(config=cfg)
    assert r.code == 1, r.text
    row = next(line for line in r.out.splitlines() if line.startswith("tuf.credentials.bearerTokenFile"))
    assert row.split()[1] == "error" and f"permissions 0644 for credential file {token} are too open" in row
    assert f"→ chmod 600 {token}" in r.out
    assert r.err.strip() == "error: 1 check failed: tuf.credentials.bearerTokenFile"
    token.chmod(0o600)
    assert fleet.device("--strict", config=cfg).code == 0


def test_a_device_without_a_status_key_warns_and_strict_fails(fleet: Fleet) -> None:
    key = fleet.tmp / "dev" / "state" / "identity" / "status_ed25519"
    key.rename(key.with_name("retired"))
    r = fleet.device()
    assert r.code == 0, r.text
    assert f"status key           warning  no status signing key at {key}: status will be unsigned" in r.out
    assert "→ run modelfleet agent keygen" in r.out
    strict = fleet.device("--strict")
    assert strict.code == 1 and strict.err.strip() == "error: 1 check failed (--strict: warnings fail too): status key"


def test_bad_config_and_usage(fleet: Fleet) -> None:
    bad = fleet.tmp / "bad.yaml"
    bad.write_text("apiVersion: modelfleet/v1\nkind: AgentConfig\nspec:\n  deviceId: dev-1\n  source: {url: [\n")
    r = fleet.device(config=bad)
    assert r.code == 1 and "Traceback" not in r.text
    assert r.out.splitlines()[1].startswith(f"config  error    {bad}:6: invalid YAML")
    both = run_cli("check", "--agent-config", str(fleet.config), "--repo", fleet.world.git_url)
    assert both.code == 2 and "--repo is an operator-side option" in both.err
    tuf = run_cli("check", "--tuf-repo", ".", "--tuf-url", "http://127.0.0.1:9/")
    assert tuf.code == 2 and "not both" in tuf.err


class _SkewedServer(BaseHTTPRequestHandler):
    """A TUF server whose clock is ten minutes ahead of this machine's (its Date header says so)."""

    def date_time_string(self, timestamp: float | None = None) -> str:
        return email.utils.formatdate(time.time() + 600, usegmt=True)

    def do_GET(self) -> None:  # noqa: N802
        self.send_response(200)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"{}")

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002
        return


def test_a_clock_ten_minutes_off_the_tuf_servers_fails_the_device_check(tmp_path: Path) -> None:
    srv = ThreadingHTTPServer(("127.0.0.1", 0), _SkewedServer)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    w = World(tmp_path / "world").start()
    try:
        w.commit_fleet("1.0.0", versions=["1.0.0"])
        url = f"http://127.0.0.1:{srv.server_address[1]}/metadata/"
        cfg = w.agent_config(tmp_path / "dev", extra={"tuf": {"metadataUrl": url}})
        r = run_cli("check", "--agent-config", str(cfg))
        assert r.code == 1, r.text
        row = next(line for line in r.out.splitlines() if line.startswith("clock vs TUF server"))
        assert row.split()[4] == "error" and "this device's clock is 10m0s behind the TUF server's" in row, row
        assert "enable NTP" in r.out and r.err.strip() == "error: 1 check failed: clock vs TUF server"
    finally:
        w.stop()
        srv.shutdown()
        srv.server_close()
