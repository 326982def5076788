"""Capture driven by the fleet repository through the real agent, the device-side ``modelfleet data`` commands,
and ``plan`` showing a capture policy change for review."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from reconciler.agent.config import load_agent_config
from reconciler.agent.loop import Agent
from reconciler.capture.batch import open_batch
from reconciler.fleet.manifests import load_files
from reconciler.fleet.plan import make_plan, render_text
from reconciler.fleet.schemas import validator
from tests._agent_fixtures import ENDPOINT, REPO_ROOT, World, infer
from tests._cli import run_cli
from tests.capture._capture import Campaign, assert_no_key_material, wait_until


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    w = World(tmp_path / "world").start()
    w.publish("1.0.0")
    yield w
    w.stop()


def _capture(campaign: Campaign, **over: Any) -> dict[str, Any]:
    return {"capture": campaign.section(**{"batch": {"records": 3}, **over})}


def test_policy_from_git_captures_reports_and_is_erased_on_request(world: World, tmp_path: Path) -> None:
    campaign = Campaign()
    world.commit_fleet("1.0.0", deployment=_capture(campaign))
    cfg_path = world.agent_config(tmp_path / "dev")
    agent = Agent(load_agent_config(cfg_path))
    agent.boot()
    try:
        assert agent.reconcile_once().converged
        for _ in range(7):
            infer(agent.c.url)
        svc = agent.c.capture
        wait_until(lambda: svc.counts["sealed"] == 2 and svc.counts["captured"] == 7, 20, "two sealed batches")
        doc = agent.status_document()
        assert not list(validator("DeviceStatus").iter_errors(doc))
        cap = doc["status"]["capture"]
        assert cap["endpoints"] == [ENDPOINT] and cap["pendingBatches"] == 2 and cap["capturedRecords"] == 7
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
