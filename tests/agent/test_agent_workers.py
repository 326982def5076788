"""The agent with ``serving.workers: 2``: it stays the control plane. Real Git, TUF, worker processes and clients:
swaps under load fail no request, drift monitoring sees every worker's requests, one /metrics shows the agent's
and the workers' series, and a dead worker is restarted, reported (``WorkersServing``) and never stale."""

from __future__ import annotations

import os
import signal
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from reconciler.agent.config import load_agent_config
from reconciler.agent.loop import Agent
from reconciler.core import conditions as C
from reconciler.fleet.schemas import validator
from reconciler.serving.workers.pool import WorkerPool
from tests._agent_fixtures import ENDPOINT, IN_DIM, World, infer, which_version
from tests._drift_fixtures import drift_world, send


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    w = drift_world(tmp_path)
    yield w
    w.stop()


@pytest.fixture
def agent(world: World, tmp_path: Path) -> Iterator[Agent]:
    a = Agent(load_agent_config(world.agent_config(tmp_path / "dev", extra={"serving": {"workers": 2}})))
    a.boot()
    yield a
    a.close()


def wait_for(cond: object, limit: float = 60.0) -> None:
    end = time.monotonic() + limit
    while not cond():  # type: ignore[operator]
        assert time.monotonic() < end, "condition not reached"
        time.sleep(0.05)


def status_endpoint(agent: Agent) -> dict:
    agent.c.drift.drain()
    agent.reconcile_once()
    doc = agent.status_document()
    assert not list(validator("DeviceStatus").iter_errors(doc))
    (ep,) = doc["status"]["endpoints"]
    return ep


def test_the_agent_drives_two_workers(world: World, agent: Agent) -> None:
    pool = agent.c.registry
    assert isinstance(pool, WorkerPool) and agent.c.server is pool
    assert agent.reconcile_once().converged and which_version(agent.c.url, world) == "1.0.0"
    assert len(pool.pids()) == 2 and all(m["vmrss"] > 0 for m in pool.memory())
    workers = agent.conditions.get(C.WORKERS_SERVING)
    assert workers is not None and (workers.status, workers.reason) == ("True", "WorkersUp")

    # drift and operational monitoring see the requests every worker served (forwarded to the agent)
    send(agent.c.url, np.random.default_rng(11).normal(size=(300, IN_DIM)))
    wait_for(lambda: agent.c.drift.get(ENDPOINT, "1.0.0").requests == 31)  # and which_version's one
    ep = status_endpoint(agent)
    assert ep["operational"]["requests"] == 31 and ep["operational"]["dropped"] == 0
    assert ep["drift"]["level"] == "OK" and ep["drift"]["samples"] >= 150

    # a swap under load: no failed request, and afterwards every worker answers with the new version
    failures: list[str] = []
    answered = [0]
    stop = threading.Event()

    def client() -> None:
        while not stop.is_set():
            try:
                infer(agent.c.url)
                answered[0] += 1
            except (urllib.error.URLError, OSError) as exc:
                failures.append(repr(exc))

    clients = [threading.Thread(target=client) for _ in range(4)]
    for t in clients:
        t.start()
    try:
        world.publish("1.1.0", bias=1.0)
        world.commit_fleet("1.1.0")
        assert agent.reconcile_once().converged
        time.sleep(0.3)
    finally:
        stop.set()
        for t in clients:
            t.join(10)
    assert failures == [] and answered[0] > 20
    assert {which_version(agent.c.url, world) for _ in range(10)} == {"1.1.0"}

    # one /metrics: the workers' request counters (summed) next to the agent's own drift series
    text = urllib.request.urlopen(f"{agent.c.url}/metrics", timeout=5).read().decode()
    assert f'modelfleet_inference_requests_total{{model="{ENDPOINT}",version="1.0.0"}}' in text
    assert "modelfleet_drift_level{" in text and "modelfleet_agent_" in text
    assert text.count("# TYPE modelfleet_inference_requests_total counter") == 1

    # a worker dies: restarted on 1.1.0 before it listens, reported on the next pass
    os.kill(pool.pids()[1], signal.SIGKILL)
    wait_for(lambda: pool.report()["restarts"] == 1 and pool.ready())
    assert {which_version(agent.c.url, world) for _ in range(10)} == {"1.1.0"}
    status_endpoint(agent)
    cond = agent.conditions.get(C.WORKERS_SERVING)
    assert cond is not None and (cond.status, cond.reason) == ("False", "WorkerRestarted")
    assert "exited with -9" in cond.message
    # a drift rollback (or any rollback) switches every worker back at once
    assert pool.rollback(ENDPOINT) and {which_version(agent.c.url, world) for _ in range(10)} == {"1.0.0"}


def test_serving_workers_in_the_agent_config(world: World, tmp_path: Path) -> None:
    from reconciler.core.errors import UserError

    assert load_agent_config(world.agent_config(tmp_path / "a")).serving_workers == 1
    cfg = load_agent_config(world.agent_config(tmp_path / "b", extra={"serving": {"workers": 3}}))
    assert cfg.serving_workers == 3
    path = world.agent_config(tmp_path / "c", extra={"serving": {"workers": 0}})
    with pytest.raises(UserError, match=r"agent\.yaml:\d+: spec\.serving\.workers: 0 is less than the minimum of 1"):
        load_agent_config(path)
