"""Shared pytest setup: deterministic git identity for every test that commits, and the venv's bin on PATH."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from reconciler.agent.config import load_agent_config
from reconciler.agent.loop import Agent
from reconciler.serving.runtimes.telemetry import disable_runtime_telemetry
from tests._agent_fixtures import World

REPO_ROOT = Path(__file__).resolve().parent.parent

# The suite itself must not leave the runtimes' telemetry ids in the developer's $HOME either. The tests that
# prove the agent and `serve` opt out on their own start their processes without this (test_no_home_writes.py).
disable_runtime_telemetry()


@pytest.fixture(autouse=True, scope="session")
def _git_identity() -> None:
    os.environ.setdefault("GIT_AUTHOR_NAME", "modelfleet tests")
    os.environ.setdefault("GIT_AUTHOR_EMAIL", "tests@modelfleet.invalid")
    os.environ.setdefault("GIT_COMMITTER_NAME", "modelfleet tests")
    os.environ.setdefault("GIT_COMMITTER_EMAIL", "tests@modelfleet.invalid")
    bindir = str(Path(sys.executable).parent)
    if bindir not in os.environ.get("PATH", "").split(os.pathsep):
        os.environ["PATH"] = bindir + os.pathsep + os.environ.get("PATH", "")


@pytest.fixture
def agent(world: World, tmp_path: Path) -> Iterator[Agent]:
    """An in-process agent booted on the module's ``world`` (tests/agent/conftest.py, or the module's own)."""
    a = Agent(load_agent_config(world.agent_config(tmp_path / "dev")))
    a.boot()
    yield a
    a.close()
