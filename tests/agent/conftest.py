"""The agent tests' world: git daemon + TUF over HTTP with 1.0.0 published and committed. A test module that
needs another world defines its own ``world``; the ``agent`` fixture (tests/conftest.py) boots on that one."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests._agent_fixtures import World


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    w = World(tmp_path / "world").start()
    w.publish("1.0.0", bias=0.0)
    w.commit_fleet("1.0.0")
    yield w
    w.stop()
