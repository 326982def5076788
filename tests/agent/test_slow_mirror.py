"""A TUF mirror that drips a byte at a time costs the agent one deadline per request, not days: the pass ends,
``ArtifactsReady`` says ``SlowRetrieval`` with the URL, bytes and time, the last good version keeps serving,
and the agent converges once the mirror is fast again. Real parts: git daemon, TUF over HTTP, onnxruntime."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from reconciler.agent.config import load_agent_config
from reconciler.agent.loop import Agent
from reconciler.core import conditions as C, reasons as R
from reconciler.distribution.httpserve import Drip
from reconciler.fleet.schemas import validator
from tests._agent_fixtures import World, which_version

TIMEOUT, MIN_RATE = 0.5, 65536  # deadlines of about half a second on loopback


@pytest.fixture
def agent(world: World, tmp_path: Path) -> Iterator[Agent]:
    cfg = world.agent_config(tmp_path / "dev", extra={"tuf": {"timeout": "500ms", "minBytesPerSecond": MIN_RATE}})
    a = Agent(load_agent_config(cfg))
    a.boot()
    yield a
    a.close()


def _slow_pass(agent: Agent) -> tuple[C.Condition, float]:
    t0 = time.monotonic()
    r = agent.reconcile_once()
    took = time.monotonic() - t0
    assert r.failed_step == "artifacts"
    c = agent.conditions.get(C.ARTIFACTS_READY)
    assert c is not None and c.status == "False"
    return c, took


def test_dripping_mirror_is_reported_and_last_good_keeps_serving(world: World, agent: Agent) -> None:
    assert agent.reconcile_once().converged and which_version(agent.c.url, world) == "1.0.0"
    world.publish("1.1.0", bias=1.0)
    world.commit_fleet("1.1.0")
    (model,) = (world.tuf_dir / "targets" / "det" / "1.1.0").glob("*model.onnx")
    # A target dripped after fast headers: cut at its deadline, the pass goes on to report.
    world.http.drip = Drip(model.name, every=0.01)
    c, took = _slow_pass(agent)
    assert c.reason == R.SLOW_RETRIEVAL and took < 10, (took, c.message)
    assert f"targets/det/1.1.0/{model.name} sent" in c.message and "cut at its deadline" in c.message, c.message
    assert which_version(agent.c.url, world) == "1.0.0"
    doc = agent.status_document()
    assert not list(validator("DeviceStatus").iter_errors(doc))
    (ep,) = doc["status"]["endpoints"]
    assert (ep["state"], ep["version"], ep["desiredVersion"]) == ("Failed", "1.0.0", "1.1.0")
    assert ep["message"].startswith("SlowRetrieval: ") and doc["status"]["failures"] == []  # retried, not held
    # Metadata dripped, status line and headers too: the refresh fails the same way.
    world.http.drip = Drip("timestamp.json", every=0.01, headers=True)
    c, took = _slow_pass(agent)
    assert c.reason == R.SLOW_RETRIEVAL and re.search(r"metadata/timestamp.json sent \d+ bytes", c.message), c.message
    assert took < 10 and which_version(agent.c.url, world) == "1.0.0"
    # The mirror recovers: the next pass converges (the target resumes from the bytes it kept).
    world.http.drip = None
    assert agent.reconcile_once().converged and which_version(agent.c.url, world) == "1.1.0"


def test_a_request_in_flight_feeds_the_watchdog_until_its_deadline(world: World, agent: Agent) -> None:
    assert agent.reconcile_once().converged
    agent._last_progress = time.monotonic() - 3600  # no step finished for an hour: the loop looks stuck
    assert not agent.alive()
    # A model download that may take an hour at the minimum rate: the watchdog trusts its deadline, so a slow
    # mirror ends in SlowRetrieval instead of systemd restarting the agent into the same download.
    fetcher = agent.c.tuf.fetcher
    d = fetcher.deadline(f"{world.http.url}/targets/big.onnx", MIN_RATE * 3600)
    try:
        assert agent.alive() and fetcher.busy_until() == pytest.approx(time.monotonic() + 3600 + TIMEOUT, abs=5)
    finally:
        d.finish()
    assert fetcher.busy_until() is None and not agent.alive()
