"""Fixtures shared by the agent tests: a world (git daemon + TUF over HTTP) with 1.0.0 published and committed,
and an in-process agent booted on it. A test module that needs another world defines its own ``world``; the
``agent`` fixture then boots on that one."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from reconciler.agent.config import load_agent_config
from reconciler.agent.loop import Agent
from tests._agent_fixtures import World


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    w = World(tmp_path / "world").start()
    w.publish("1.0.0", bias=0.0)
    w.commit_fleet("1.0.0")
    yield w
    w.stop()


@pytest.fixture
def agent(world: World, tmp_path: Path) -> Iterator[Agent]:
    a = Agent(load_agent_config(world.agent_config(tmp_path / "dev")))
    a.boot()
    yield a
    a.close()
