"""Capture driven by the fleet repository through the real agent, the device-side ``modelfleet data`` commands,
``plan`` showing a capture policy change for review, and a Deployment that points capture (and so the device's
upload token) at another server."""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from reconciler.agent.config import load_agent_config
from reconciler.agent.loop import Agent
from reconciler.capture.batch import open_batch
from reconciler.core.errors import UserError
from reconciler.fleet.manifests import load_files
from reconciler.fleet.plan import make_plan, render_text
from reconciler.fleet.schemas import validator
from tests._agent_fixtures import ENDPOINT, REPO_ROOT, World, infer
from tests._cli import run_cli
from tests._servers import Pki, private_file
from tests.capture._capture import Campaign, Recorder, assert_no_key_material, wait_until

TOKEN = "device-upload-t0ken-3c2b1a"


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    w = World(tmp_path / "world").start()
    w.publish("1.0.0")
    yield w
    w.stop()


def _capture(campaign: Campaign, **over: Any) -> dict[str, Any]:
    return {"capture": campaign.section(**{"batch": {"records": 3}, **over})}


@pytest.mark.parametrize("sealer", ["process", "thread"])
def test_policy_from_git_captures_reports_and_is_erased_on_request(world: World, tmp_path: Path,
                                                                     sealer: str) -> None:
    campaign = Campaign()
    world.commit_fleet("1.0.0", deployment=_capture(campaign))
    # (the agent config's capture.sealer: records sealed by a process of their own, or by the agent's writer)
    cfg_path = world.agent_config(tmp_path / "dev", extra={"capture": {"sealer": sealer}})
    agent = Agent(load_agent_config(cfg_path))
    agent.boot()
    try:
        assert agent.reconcile_once().converged
        for _ in range(7):
            infer(agent.c.url)
        svc = agent.c.capture
        wait_until(lambda: svc.counts["sealed"] == 2 and svc.counts["captured"] == 7, 20, "two sealed batches")
        # (the first may be on its way to the dead destination a moment longer: it then waits in the spool)
        wait_until(lambda: len(svc.spool.list()) == 2, 20, "both batches in the spool")
        doc = agent.status_document()
        assert not list(validator("DeviceStatus").iter_errors(doc))
        cap = doc["status"]["capture"]
        assert cap["endpoints"] == [ENDPOINT] and cap["pendingBatches"] == 2 and cap["capturedRecords"] == 7
        assert cap["sealer"] == sealer
        # what copies records into the sealer's rings (the C module, built by make test's install)
        assert cap.get("ringWriter") == ("c" if sealer == "process" else None)
        assert (svc._sealer is not None) == (sealer == "process")  # (thread: no second process)
        batches = sorted((agent.config.state_dir / "capture" / "batches").glob("*.mfcap"))
        meta = open_batch(batches[0].read_bytes(), campaign.private).meta
        assert (meta["device"], meta["endpoint"], meta["modelVersion"]) == ("dev-1", ENDPOINT, "1.0.0")

        assert_no_key_material(agent.config.state_dir, campaign)  # git cache, store, journal, capture: nothing
        r = run_cli("data", "status", "-c", str(cfg_path))
        assert r.code == 0, r.text
        assert f"{ENDPOINT}: 2 batch(es), 6 record(s)" in r.out and "campaign test-campaign" in r.out
        r = run_cli("data", "export", "-c", str(cfg_path), "--out", str(tmp_path / "usb"))
        assert r.code == 0 and "2 batch(es)" in r.out
        assert sorted(p.name for p in (tmp_path / "usb").iterdir()) == [p.name for p in batches]
        r = run_cli("data", "purge", "-c", str(cfg_path), "--endpoint", ENDPOINT, "--before", "2999-01-01")
        assert r.code == 0, r.text
        assert "purged 2 batch(es)" in r.out and all(p.name.removesuffix(".mfcap") in r.out for p in batches)
        assert not list(batches[0].parent.glob("*.mfcap"))
        r = run_cli("data", "purge", "-c", str(cfg_path), "--before", "yesterday")
        assert r.code == 1 and r.err.startswith("error: --before 'yesterday'") and "Traceback" not in r.text

        # Retiring the campaign in Git (capture off) deletes what is left of it on the device.
        for _ in range(3):
            infer(agent.c.url)
        wait_until(lambda: svc.counts["sealed"] == 3, 20, "a third batch")
        world.commit_fleet("1.0.0", deployment={"capture": {"enabled": False}})
        assert agent.reconcile_once().converged
        assert not list(batches[0].parent.glob("*.mfcap"))
        events = svc.spool.audit.read()
        assert [e["reason"] for e in events if e["event"] == "purged"] == ["erasure-request"] * 2 + ["policy-removed"]
        cap = agent.status_document()["status"]["capture"]
        assert cap["endpoints"] == [] and cap["pendingBatches"] == 0 and cap["purgedBatches"] == 1
    finally:
        agent.close()


def test_plan_shows_a_capture_policy_change() -> None:
    root = REPO_ROOT / "fleet-repo-example"
    files = {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*.yaml")}
    base = load_files(files)
    dep_path = "deployments/vibration-anomaly.yaml"
    dep = yaml.safe_load(files[dep_path])
    dep["spec"]["capture"]["sampleRate"] = 0.05
    head = load_files({**files, dep_path: yaml.safe_dump(dep).encode()})
    assert base.ok and head.ok
    text = render_text(make_plan(base.fleet, head.fleet))
    changed = [line for line in text.splitlines() if line.strip().startswith("~ vibration")]
    assert changed, text
    assert "sample 0.01" in changed[0] and "sample 0.05" in changed[0]


def test_offline_boot_captures_under_the_journaled_policy(world: World, tmp_path: Path) -> None:
    campaign = Campaign()
    world.commit_fleet("1.0.0", deployment=_capture(campaign, batch={"records": 2}))
    cfg = load_agent_config(world.agent_config(tmp_path / "dev"))
    first = Agent(cfg)
    first.boot()
    try:
        assert first.reconcile_once().converged
    finally:
        first.close()
    world.stop()  # no Git, no TUF: the device boots offline from its journal
    again = Agent(cfg)
    again.boot()
    try:
        for _ in range(2):
            infer(again.c.url)
        wait_until(lambda: again.c.capture.counts["sealed"] == 1, 20, "a batch sealed before any pass")
    finally:
        again.close()


def test_a_deployment_pointing_capture_elsewhere_gets_no_token_and_serving_goes_on(
        world: World, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    campaign = Campaign()
    pki = Pki.make(tmp_path / "pki")
    with Recorder(pki) as genuine, Recorder(pki) as collector, Recorder() as plain:
        token_file = private_file(tmp_path / "secrets" / "upload-token", TOKEN)
        cfg_path = world.agent_config(tmp_path / "dev", extra={"capture": {
            "uploadTokenFile": str(token_file), "caFile": str(pki.ca), "allowedOrigins": [genuine.origin]}})
        agent = Agent(load_agent_config(cfg_path))
        agent.boot()
        caplog.set_level(logging.INFO)
        try:
            svc = agent.c.capture
            for n, url in enumerate((collector.url, plain.url), start=1):  # a merged PR / a lying Git server
                world.commit_fleet("1.0.0", deployment=_capture(campaign, batch={"records": 2},
                                                                 destination={"url": url}))
                assert agent.reconcile_once().converged
                for _ in range(2):
                    infer(agent.c.url)  # serving answers
                wait_until(lambda n=n: svc.counts["sealed"] == n, 20, f"sealed batch {n}")
                svc.retry_uploads()
                svc.upload_once()
                doc = agent.status_document()
                assert not list(validator("DeviceStatus").iter_errors(doc))
                problem = doc["status"]["capture"]["problems"][ENDPOINT]
                origin = url.removesuffix("/capture")
                assert problem.startswith("CaptureDestinationRefused: ") and origin in problem
                assert doc["status"]["capture"]["pendingBatches"] == n
            assert (collector.connections, plain.connections, genuine.connections) == (0, 0, 0)

            # Reverted to the genuine, pinned store: the waiting batches go there, with the token.
            world.commit_fleet("1.0.0", deployment=_capture(campaign, batch={"records": 2},
                                                             destination={"url": genuine.url}))
            assert agent.reconcile_once().converged
            wait_until(lambda: not svc.spool.list(), 20, "the waiting batches uploaded")
            assert len(genuine.stored) == 2 and set(genuine.authorizations()) == {f"Bearer {TOKEN}"}
            doc = agent.status_document()
            assert "problems" not in doc["status"]["capture"]
            assert "capture destination refused" in caplog.text  # logged, and the token is in no log line
            assert TOKEN not in json.dumps(doc) and TOKEN not in caplog.text
            assert collector.requests == [] and plain.requests == []
        finally:
            agent.close()


@pytest.mark.parametrize("setting", ["capture.uploadTokenFile", "serving.authTokenFile"])
def test_a_token_file_others_can_read_is_refused_at_start(tmp_path: Path, setting: str) -> None:
    token_file = private_file(tmp_path / "token", TOKEN)
    os.chmod(token_file, 0o644)
    section, key = setting.split(".")
    cfg_path = tmp_path / "agent.yaml"
    cfg_path.write_text(yaml.safe_dump({"apiVersion": "modelfleet/v1", "kind": "AgentConfig", "spec": {
        "deviceId": "dev-1", "stateDir": str(tmp_path / "state"), "source": {"url": "file:///nonexistent"},
        "tuf": {"trustedRoot": str(tmp_path / "root.json")}, "serving": {"host": "127.0.0.1", "port": 0},
        section: {key: str(token_file)}}}))
    agent = Agent(load_agent_config(cfg_path))
    try:
        with pytest.raises(UserError) as exc:
            agent.boot()
    finally:
        agent.close()
    assert str(exc.value) == (f"{setting}: CredentialsUnreadable: permissions 0644 for credential file {token_file} "
                              f"are too open (it must not be readable by group or others: chmod 600 {token_file})")
    r = run_cli("agent", "once", "-c", str(cfg_path))
    assert r.code == 1 and "CredentialsUnreadable: permissions 0644" in r.err and "Traceback" not in r.text
    assert TOKEN not in r.text
