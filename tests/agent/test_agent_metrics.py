"""The agent's monitoring series (reconciler/agent/metrics.py) that the alert rules in deploy/prometheus/ read:
convergence, the loop's heartbeat, its identity, and rollbacks — on the inference server's /metrics."""

from __future__ import annotations

import time
import urllib.request

from prometheus_client.parser import text_string_to_metric_families

from reconciler import __version__
from reconciler.agent.loop import Agent
from reconciler.agent.schedule import longest_delay, next_delay
from tests._agent_fixtures import ENDPOINT, World


def scrape(agent: Agent) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = urllib.request.urlopen(f"{agent.c.url}/metrics", timeout=5).read().decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for fam in text_string_to_metric_families(text) for s in fam.samples}


def value(samples: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str) -> float | None:
    return samples.get((name, tuple(sorted(labels.items()))))


def test_converged_heartbeat_identity_and_rollbacks(world: World, agent: Agent) -> None:
    before = time.time()
    assert agent.reconcile_once().converged
    m = scrape(agent)
    assert value(m, "modelfleet_agent_converged") == 1.0
    assert before <= (value(m, "modelfleet_agent_heartbeat_timestamp_seconds") or 0) <= time.time()
    # poll 200 ms: backed off at most 10x, plus 10 % jitter
    assert value(m, "modelfleet_agent_heartbeat_max_interval_seconds") == 2.0 * 1.1
    assert value(m, "modelfleet_agent_info", device_id="dev-1", version=__version__) == 1.0
    # the rollback series exists at 0 before the first rollback, so increase() sees the first one
    rollbacks = value(m, "modelfleet_agent_rollbacks_total", endpoint=ENDPOINT)
    assert rollbacks is not None

    world.publish("2.0.0", bias=2.0, nan=True)  # fails its health check: rolled back, last good kept
    world.commit_fleet("2.0.0")
    first = agent.reconcile_once()
    assert not first.converged
    m = scrape(agent)
    assert value(m, "modelfleet_agent_converged") == 0.0
    assert value(m, "modelfleet_agent_rollbacks_total", endpoint=ENDPOINT) == rollbacks + 1
    beat = value(m, "modelfleet_agent_heartbeat_timestamp_seconds") or 0
    agent.reconcile_once()  # idle: the failure is held back, but the loop is alive
    m = scrape(agent)
    assert (value(m, "modelfleet_agent_heartbeat_timestamp_seconds") or 0) >= beat
    assert value(m, "modelfleet_agent_converged") == 0.0

    world.commit_fleet("1.0.0", present=False)  # the endpoint is pruned: its rollback series goes too
    assert agent.reconcile_once().converged
    m = scrape(agent)
    assert value(m, "modelfleet_agent_rollbacks_total", endpoint=ENDPOINT) is None
    assert value(m, "modelfleet_agent_converged") == 1.0


def test_longest_delay_bounds_every_wait_between_passes() -> None:
    for interval in (0.2, 10.0, 30.0, 3600.0):
        waits = [next_delay(interval, errors, rand) for errors in range(30) for rand in (0.0, 0.5, 0.999999)]
        assert max(waits) <= longest_delay(interval) <= max(waits) * 1.0001, interval
    assert longest_delay(30.0) == 330.0  # 10x, capped at 300 s, +10 %
    assert abs(longest_delay(3600.0) - 3960.0) < 1e-6  # never below the interval
