"""The agent's reconcile pass against real parts: git daemon, TUF repo over HTTP, onnxruntime, KServe v2 server."""

from __future__ import annotations

import datetime as dt
import json
import subprocess
import sys
import urllib.error
from pathlib import Path

import pytest

from reconciler.agent.config import load_agent_config
from reconciler.agent.journal import Journal
from reconciler.agent.loop import Agent
from reconciler.agent.schedule import next_delay, window_open
from reconciler.core import conditions as C
from reconciler.fleet.schemas import validator
from tests._agent_fixtures import ENDPOINT, REPO_ROOT, World, infer, which_version
from tests._git_fixtures import make_ssh_key, write_allowed_signers


def cond(a: Agent, ctype: str) -> C.Condition:
    c = a.conditions.get(ctype)
    assert c is not None, ctype
    return c


def test_converges_swaps_and_reports(world: World, agent: Agent) -> None:
    r = agent.reconcile_once()
    assert r.converged and which_version(agent.c.url, world) == "1.0.0"
    world.publish("1.1.0", bias=1.0)
    commit = world.commit_fleet("1.1.0")
    r = agent.reconcile_once()
    assert r.converged and r.commit == commit
    assert which_version(agent.c.url, world) == "1.1.0"
    doc = agent.status_document()
    assert not list(validator("DeviceStatus").iter_errors(doc))
    st = doc["status"]
    assert st["appliedCommit"] == commit
    (ep,) = st["endpoints"]
    assert (ep["state"], ep["version"], ep["previousVersion"]) == ("Serving", "1.1.0", "1.0.0")
    assert st["facts"]["hw.arch"] and cond(agent, C.READY).status == "True"
    # The journal on disk names the active and previous version (what a restart serves).
    j = Journal.load(agent.config.state_dir)
    assert j.endpoints[ENDPOINT].active.version == "1.1.0" and j.endpoints[ENDPOINT].previous.version == "1.0.0"
    # Local status file for `agent status`.
    assert json.loads(agent.config.status_file.read_text())["status"]["appliedCommit"] == commit


def test_failed_health_check_is_remembered_not_retried(world: World, agent: Agent) -> None:
    assert agent.reconcile_once().converged
    world.publish("2.0.0", bias=2.0, nan=True)
    bad = world.commit_fleet("2.0.0")
    r = agent.reconcile_once()
    assert not r.converged and r.failed_step == "apply" and "NonFiniteOutput" in r.message
    assert which_version(agent.c.url, world) == "1.0.0"
    (f,) = agent.journal.failures
    assert (f.commit, f.endpoint, f.version, f.count) == (bad, ENDPOINT, "2.0.0", 1)
    # Next polls: held back (no second load attempt), visible in status.
    for _ in range(2):
        r = agent.reconcile_once()
        assert "held back" in r.endpoints[0]["message"]
    assert agent.journal.failures[0].count == 1
    assert agent.status_document()["status"]["failures"][0]["retryAfter"] == f.retry_after
    # A changed desired state (a fixed build) is tried at once and clears the failure.
    world.publish("2.0.1", bias=2.0)
    world.commit_fleet("2.0.1")
    assert agent.reconcile_once().converged
    assert which_version(agent.c.url, world) == "2.0.1" and agent.journal.failures == []


def test_invalid_manifest_keeps_last_good(world: World, agent: Agent) -> None:
    good = world.upstream.head()
    assert agent.reconcile_once().converged
    files = world.fleet_files("1.0.0")
    files["deployments/det-all.yaml"] = files["deployments/det-all.yaml"].replace("serveAs: detector", "serveAs: Bad_Name")
    world.commit_raw(files, "broken")
    r = agent.reconcile_once()
    assert r.failed_step == "manifests" and not r.converged
    c = cond(agent, C.MANIFESTS_VALID)
    assert c.status == "False" and c.reason == "ValidationFailed" and "deployments/det-all.yaml:" in c.message
    assert which_version(agent.c.url, world) == "1.0.0" and agent.journal.applied_commit == good
    fixed = world.commit_fleet("1.0.0", message="fix")
    assert agent.reconcile_once().converged and agent.journal.applied_commit == fixed


def test_symlink_and_submodule_in_the_fleet_repo_are_errors_on_the_device(world: World, agent: Agent) -> None:
    good = world.upstream.head()
    assert agent.reconcile_once().converged
    (world.upstream.work / "deployments" / "extra.yaml").symlink_to("/etc/passwd")
    world.commit_raw({}, "a symlink where a manifest belongs")
    r = agent.reconcile_once()
    c = cond(agent, C.MANIFESTS_VALID)
    assert r.failed_step == "manifests" and (c.status, c.reason) == ("False", "ValidationFailed")
    assert "deployments/extra.yaml:1: a symbolic link (to '/etc/passwd')" in c.message
    assert which_version(agent.c.url, world) == "1.0.0" and agent.journal.applied_commit == good
    (world.upstream.work / "deployments" / "extra.yaml").unlink()
    world.upstream.commit({}, "symlink removed", push=False)
    git = ["git", "-C", str(world.upstream.work), "-c", "user.name=t", "-c", "user.email=t@example.com"]
    subprocess.run([*git, "update-index", "--add", "--cacheinfo", f"160000,{good},models/vendor"], check=True)
    subprocess.run([*git, "commit", "--quiet", "-m", "a submodule"], check=True)
    world.upstream.push()
    r = agent.reconcile_once()
    c = cond(agent, C.MANIFESTS_VALID)
    assert r.failed_step == "manifests" and f"models/vendor:1: a submodule (commit {good[:12]})" in c.message
    assert agent.status_document()["status"]["conditions"]  # reported in status, last good kept
    assert which_version(agent.c.url, world) == "1.0.0" and agent.journal.applied_commit == good
    # A README in models/ is a warning: applied, and named in the condition.
    subprocess.run([*git, "rm", "--cached", "--quiet", "models/vendor"], check=True)
    fixed = world.commit_raw({"models/README.md": "# models\n"}, "fix, with a README")
    assert agent.reconcile_once().converged and agent.journal.applied_commit == fixed
    c = cond(agent, C.MANIFESTS_VALID)
    assert c.status == "True" and "models/README.md:1: warning: not a manifest" in c.message


def test_missing_tuf_target_is_refused(world: World, agent: Agent) -> None:
    assert agent.reconcile_once().converged
    world.publish("3.0.0", bias=3.0, sign=False)
    world.commit_fleet("3.0.0")
    r = agent.reconcile_once()
    assert not r.converged
    c = cond(agent, C.ARTIFACTS_READY)
    assert c.status == "False" and c.reason == "TargetNotFound" and "TargetNotFound" in c.message
    assert r.endpoints[0]["state"] == "Failed" and which_version(agent.c.url, world) == "1.0.0"
    # Looked up again on every pass (no download), without rewriting the status each time…
    from reconciler.gitops.statuswriter import content_key

    for _ in range(2):  # the third failed pass in a row sets Stalled=True: a real change, reported once
        assert agent.reconcile_once().failed_step == "artifacts"
    assert cond(agent, C.STALLED).status == "True"
    before = content_key(agent.status_document())
    for _ in range(3):
        assert agent.reconcile_once().failed_step == "artifacts"
    assert content_key(agent.status_document()) == before and agent.journal.failures == []
    # …so publishing the target is picked up at once, without a new commit.
    world.publish("3.0.0", bias=3.0)
    assert agent.reconcile_once().converged and which_version(agent.c.url, world) == "3.0.0"


def test_removed_deployment_is_pruned(world: World, agent: Agent) -> None:
    assert agent.reconcile_once().converged
    world.commit_fleet("1.0.0", present=False)
    r = agent.reconcile_once()
    assert r.converged and r.endpoints[0]["state"] == "Removed"
    with pytest.raises(urllib.error.HTTPError) as ei:
        infer(agent.c.url)
    assert ei.value.code == 404
    assert ENDPOINT not in Journal.load(agent.config.state_dir).endpoints


def test_suspend_and_closed_window_hold_the_switch(world: World, agent: Agent) -> None:
    assert agent.reconcile_once().converged
    world.publish("1.1.0", bias=1.0)
    world.commit_fleet("1.1.0", deployment={"suspend": True})
    r = agent.reconcile_once()
    assert r.endpoints[0]["state"] == "Suspended" and which_version(agent.c.url, world) == "1.0.0"
    now = dt.datetime.now(dt.timezone.utc)
    closed = {"start": (now + dt.timedelta(hours=2)).strftime("%H:%M"),
              "end": (now + dt.timedelta(hours=3)).strftime("%H:%M")}
    world.commit_fleet("1.1.0", deployment={"update": {"maintenanceWindow": closed}})
    r = agent.reconcile_once()
    assert r.endpoints[0]["state"] == "Waiting" and not r.converged
    assert which_version(agent.c.url, world) == "1.0.0"
    # Downloads happen outside the window: the blob is already in the store.
    assert any(e.digest for e in [agent.c.tuf.fetch(["det/1.1.0/model.onnx"])["det/1.1.0/model.onnx"]])
    world.commit_fleet("1.1.0")
    assert agent.reconcile_once().converged and which_version(agent.c.url, world) == "1.1.0"


def test_unsigned_commit_is_refused(world: World, tmp_path: Path) -> None:
    key = make_ssh_key(tmp_path / "keys", "ops@example.com")
    allowed = write_allowed_signers(tmp_path / "allowed_signers", key)
    world.upstream.commit(world.fleet_files("1.0.0"), "signed", ssh_key=key)
    cfg = load_agent_config(world.agent_config(
        tmp_path / "dev", extra={"source": {"verify": {"mode": "head", "allowedSigners": str(allowed)}}}))
    a = Agent(cfg)
    a.boot()
    try:
        assert a.reconcile_once().converged
        world.publish("1.1.0", bias=1.0)
        world.commit_fleet("1.1.0", message="unsigned")
        r = a.reconcile_once()
        assert r.failed_step == "source" and not r.converged
        c = cond(a, C.SOURCE_VERIFIED)
        assert c.status == "False" and c.reason == "UnsignedCommit"
        assert which_version(a.c.url, world) == "1.0.0"
    finally:
        a.close()


def test_offline_boot_serves_last_good_and_corrupt_blob_is_refetched(world: World, tmp_path: Path) -> None:
    cfg = load_agent_config(world.agent_config(tmp_path / "dev"))
    a = Agent(cfg)
    a.boot()
    assert a.reconcile_once().converged
    world.publish("1.1.0", bias=1.0)
    world.commit_fleet("1.1.0")
    assert a.reconcile_once().converged
    digest = a.journal.endpoints[ENDPOINT].active.digest
    a.close()
    world.stop()  # no Git, no TUF
    blob = a.c.store.path_for(digest)
    blob.chmod(0o644)
    data = bytearray(blob.read_bytes())
    data[len(data) // 2] ^= 0x01  # one bit flipped on disk
    blob.write_bytes(bytes(data))

    b = Agent(cfg)
    b.boot()
    try:
        # Served before any network: the corrupt 1.1.0 was quarantined, the previous 1.0.0 verified and loaded.
        assert which_version(b.c.url, world) == "1.0.0"
        assert list((cfg.store_dir / "quarantine").iterdir())
        r = b.reconcile_once()
        assert r.failed_step == "source" and cond(b, C.SOURCE_AVAILABLE).status == "False"
        assert which_version(b.c.url, world) == "1.0.0"
        world.start()  # recovery without a restart: re-downloads the blob and switches
        assert b.reconcile_once().converged
        assert which_version(b.c.url, world) == "1.1.0" and b.c.store.verify(digest)
    finally:
        b.close()


def test_next_delay_backoff_and_jitter() -> None:
    assert next_delay(10, 0, 0.5) == 10
    assert 9 <= next_delay(10, 0, 0.0) <= 11 and 9 <= next_delay(10, 0, 0.999) <= 11
    assert next_delay(10, 1, 0.5) == 20 and next_delay(10, 3, 0.5) == 80
    assert next_delay(10, 50, 0.5) == 100  # bounded: 10x the interval…
    assert next_delay(60, 50, 0.5) == 300  # …and 5 min
    assert next_delay(600, 5, 0.5) == 600  # never shorter than the interval


def test_maintenance_window() -> None:
    mon_10 = dt.datetime(2026, 11, 23, 10, 0, tzinfo=dt.timezone.utc)  # a Monday
    assert window_open(None, mon_10)
    assert window_open({"start": "09:00", "end": "11:00"}, mon_10)
    assert not window_open({"start": "11:00", "end": "12:00"}, mon_10)
    assert not window_open({"start": "09:00", "end": "11:00", "days": ["tue"]}, mon_10)
    # Spanning midnight: Sunday 23:00 → Monday 02:00 belongs to Sunday.
    mon_01 = mon_10.replace(hour=1)
    assert window_open({"start": "23:00", "end": "02:00", "days": ["sun"]}, mon_01)
    assert not window_open({"start": "23:00", "end": "02:00", "days": ["mon"]}, mon_01)
    assert window_open({"start": "10:00", "end": "11:00", "timezone": "Europe/Berlin"}, mon_10.replace(hour=9))


def test_cli_once_status_and_reconcile(world: World, tmp_path: Path) -> None:
    cfgp = world.agent_config(tmp_path / "dev")

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "reconciler.cli", "agent", *args, "--config", str(cfgp)],
                              capture_output=True, text=True, timeout=120, cwd=REPO_ROOT)

    r = run("once")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "detector" in r.stdout and "converged" in r.stdout
    s = run("status")
    assert s.returncode == 0 and "Serving" in s.stdout and "agent not running" in s.stdout
    js = json.loads(run("status", "--json").stdout)
    assert js["status"]["endpoints"][0]["version"] == "1.0.0"
    rc = run("reconcile")
    assert rc.returncode == 1 and rc.stderr.startswith("error: no agent running")
    world.publish("9.0.0", bias=9.0, nan=True)
    world.commit_fleet("9.0.0")
    r = run("once")
    assert r.returncode == 1 and "NOT converged" in r.stdout and "Traceback" not in r.stderr


def test_metrics_on_the_inference_server(world: World, agent: Agent) -> None:
    import urllib.request

    assert agent.reconcile_once().converged
    agent.reconcile_once()
    text = urllib.request.urlopen(f"{agent.c.url}/metrics", timeout=5).read().decode()
    for name in ("modelfleet_agent_passes_total", "modelfleet_agent_step_runs_total",
                 "modelfleet_agent_pass_duration_seconds_bucket", "modelfleet_agent_last_success_timestamp_seconds",
                 "modelfleet_agent_applied_commit_info", "modelfleet_agent_downloaded_bytes_total",
                 "modelfleet_agent_polls_total", "modelfleet_agent_status_pushes_total"):
        assert name in text, name
    assert f'modelfleet_agent_applied_commit_info{{commit="{agent.journal.applied_commit}"}} 1.0' in text
    assert ('modelfleet_agent_endpoint_version_info{endpoint="detector",model="det",precision="fp32",'
            'runtime="onnxruntime",variant="cpu",version="1.0.0"} 1.0') in text
    assert 'modelfleet_agent_polls_total{result="unchanged"}' in text
