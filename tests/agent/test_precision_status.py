"""The declared precision travels from the Model manifest to the runtime, the status document and the metrics."""

from __future__ import annotations

import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from reconciler.agent.config import load_agent_config
from reconciler.agent.loop import Agent
from reconciler.fleet.schemas import validator
from tests._agent_fixtures import ENDPOINT, World, which_version
from tests._cli import run_cli


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    w = World(tmp_path / "world").start()
    w.publish("1.0.0", bias=0.0)
    yield w
    w.stop()


def _status_endpoint(agent: Agent) -> dict:  # type: ignore[type-arg]
    doc = agent.status_document()
    assert not list(validator("DeviceStatus").iter_errors(doc))
    (ep,) = doc["status"]["endpoints"]
    return ep


def test_declared_precision_reaches_runtime_status_and_metrics(world: World, tmp_path: Path) -> None:
    world.commit_fleet("1.0.0", variant={"precision": "bf16"})
    cfg = world.agent_config(tmp_path / "dev")
    agent = Agent(load_agent_config(cfg))
    agent.boot()
    try:
        assert agent.reconcile_once().converged
        assert which_version(agent.c.url, world) == "1.0.0"
        assert _status_endpoint(agent)["precision"] == "bf16"
        table = run_cli("agent", "status", "--config", str(cfg)).out.splitlines()
        header = next(line for line in table if line.startswith("ENDPOINT"))
        row = next(line for line in table if line.startswith(ENDPOINT))
        assert header.split()[6] == "PRECISION" and row.split()[6] == "bf16", table
        assert agent.c.registry.endpoints()[ENDPOINT].precision == "bf16"
        text = urllib.request.urlopen(f"{agent.c.url}/metrics", timeout=5).read().decode()
        assert 'modelfleet_agent_endpoint_version_info{endpoint="detector",model="det",precision="bf16"' in text
        # Same files, precision changed in Git: the model is loaded again at the new precision.
        world.commit_fleet("1.0.0", variant={"precision": "fp32"})
        assert agent.reconcile_once().converged
        assert agent.c.registry.endpoints()[ENDPOINT].precision == "fp32"
        assert _status_endpoint(agent)["precision"] == "fp32"
        text = urllib.request.urlopen(f"{agent.c.url}/metrics", timeout=5).read().decode()
        assert 'precision="bf16"' not in text and 'precision="fp32"' in text
    finally:
        agent.close()


def test_default_precision_is_fp32(world: World, tmp_path: Path) -> None:
    world.commit_fleet("1.0.0")
    agent = Agent(load_agent_config(world.agent_config(tmp_path / "dev")))
    agent.boot()
    try:
        assert agent.reconcile_once().converged
        assert _status_endpoint(agent)["precision"] == "fp32"
    finally:
        agent.close()
