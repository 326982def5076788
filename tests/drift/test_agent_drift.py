"""Drift end to end on a device: `modelfleet baseline` → TUF target named by the model version → the agent
fetches it, the registry's monitor sees real KServe v2 requests, and the status document, conditions and
/metrics show the drift of a shifted stream."""

from __future__ import annotations

import json
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from reconciler.agent.loop import Agent
from reconciler.core import conditions as C
from reconciler.distribution import tufrepo
from reconciler.drift.settings import decode_counts, pin_reason
from reconciler.fleet.schemas import validator
from tests._agent_fixtures import ENDPOINT, IN_DIM, MODEL, World, which_version
from tests._drift_fixtures import DRIFT, commit_with_baseline, drift_world, publish_baseline, send


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    w = drift_world(tmp_path)
    yield w
    w.stop()



def endpoint_status(agent: Agent) -> dict[str, Any]:
    deadline = time.monotonic() + 10
    while agent.c.drift.drain() or time.monotonic() < deadline and any(
            m._queue for m in agent.c.drift._monitors.values()):
        pass  # let the worker catch up: the request path only enqueues
    agent.reconcile_once()
    doc = agent.status_document()
    assert not list(validator("DeviceStatus").iter_errors(doc))
    (ep,) = doc["status"]["endpoints"]
    return ep


def test_shifted_stream_shows_in_status_conditions_and_metrics(world: World, agent: Agent) -> None:
    assert agent.reconcile_once().converged
    rng = np.random.default_rng(11)
    ep = endpoint_status(agent)
    assert ep["drift"]["level"] == "Insufficient" and ep["operational"]["requests"] == 0
    send(agent.c.url, rng.normal(size=(300, IN_DIM)))
    ep = endpoint_status(agent)
    d = ep["drift"]
    assert d["level"] == "OK" and d["samples"] >= 150 and d["method"] == "psi", d
    assert agent.conditions.get(C.DRIFT_DETECTED).status == "False"
    assert agent.conditions.get(C.DEGRADED).status == "False"
    ops = ep["operational"]
    assert ops["requests"] == 30 and ops["monitored"] == 30 and ops["dropped"] == 0 and ops["nanOutputs"] == 0
    assert 0 < ops["latencyMs"]["p50"] <= ops["latencyMs"]["p99"]
    # every feature's window counts are in the status, over the baseline's bins
    assert set(d["bins"]) >= {f"input[{i}]" for i in range(IN_DIM)} | {"output:class"}
    assert sum(decode_counts(d["bins"]["input[0]"])) == d["samples"]

    shifted = rng.normal(size=(300, IN_DIM))
    shifted[:, 5] += 1.5
    send(agent.c.url, shifted)
    ep = endpoint_status(agent)
    d = ep["drift"]
    assert d["level"] == "Alert" and d["worst"][0]["feature"] == "input[5]" and d["score"] >= 0.25, d
    dd = agent.conditions.get(C.DRIFT_DETECTED)
    assert dd.status == "True" and dd.reason == "DriftAlert" and "input[5]" in dd.message
    text = urllib.request.urlopen(f"{agent.c.url}/metrics", timeout=5).read().decode()
    assert f'modelfleet_drift_level{{endpoint="{ENDPOINT}",version="1.0.0"}} 2.0' in text
    assert f'modelfleet_drift_feature_score{{endpoint="{ENDPOINT}",feature="input[5]",version="1.0.0"}}' in text
    assert sum(line.startswith("modelfleet_drift_feature_score{") for line in text.splitlines()) == 5  # top-k


def test_rejections_and_unusable_baseline_are_reported(world: World, agent: Agent, tmp_path: Path) -> None:
    assert agent.reconcile_once().converged
    ep = endpoint_status(agent)
    bad = json.dumps({"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 3], "data": [1, 2, 3]}]})
    req = urllib.request.Request(f"{agent.c.url}/v2/models/{ENDPOINT}/infer", data=bad.encode())
    with pytest.raises(urllib.error.HTTPError):
        urllib.request.urlopen(req, timeout=5)
    ep = endpoint_status(agent)
    assert ep["operational"]["rejections"] == 0  # the default interval (5m) holds the published numbers
    commit_with_baseline(world, "1.0.0", DRIFT | {"reportInterval": "1ms"})  # numbers refreshed every pass
    ep = endpoint_status(agent)
    assert ep["operational"]["rejections"] == 1
    # a new version whose baseline is not a baseline: served, drift reported Unavailable with the reason
    world.publish("1.1.0", bias=1.0)
    junk = world.root / "build" / "1.1.0" / "baseline.json"
    junk.write_text('{"kind": "Something"}')
    tufrepo.add_targets(world.tuf_dir, [world.keys], [junk], f"{MODEL}/1.1.0")
    commit_with_baseline(world, "1.1.0", DRIFT)
    assert agent.reconcile_once().converged
    ep = endpoint_status(agent)
    assert ep["version"] == "1.1.0"
    assert ep["drift"]["level"] == "Unavailable" and "not a DriftBaseline" in ep["drift"]["message"]


def test_rollback_action_returns_to_the_previous_version_and_holds_the_drifting_one(
        world: World, agent: Agent, tmp_path: Path) -> None:
    assert agent.reconcile_once().converged  # 1.0.0 serves first: it becomes the previous version
    world.publish("1.1.0", bias=1.0)
    publish_baseline(world, "1.1.0", tmp_path)
    commit_with_baseline(world, "1.1.0", DRIFT | {"action": "rollback"})
    assert agent.reconcile_once().converged
    assert endpoint_status(agent)["version"] == "1.1.0"
    shifted = np.random.default_rng(5).normal(size=(300, IN_DIM))
    shifted[:, 1] -= 2.0
    send(agent.c.url, shifted)
    endpoint_status(agent)  # this pass sees the Alert and rolls back
    ep = endpoint_status(agent)
    assert (ep["version"], ep["previousVersion"], ep["state"]) == ("1.0.0", "1.1.0", "Failed")
    assert "held back" in ep["message"] or ep["message"].startswith("DriftAlert"), ep["message"]
    assert which_version(agent.c.url, world) == "1.0.0"
    failures = agent.status_document()["status"]["failures"]
    assert failures and failures[0]["version"] == "1.1.0" and failures[0]["reason"].startswith("DriftAlert")
    r = agent.reconcile_once()
    assert not r.converged and which_version(agent.c.url, world) == "1.0.0"  # held back, not re-applied


def test_pin_action_holds_a_new_version_until_the_drift_clears(world: World, agent: Agent, tmp_path: Path) -> None:
    commit_with_baseline(world, "1.0.0", DRIFT | {"action": "pin"})
    assert agent.reconcile_once().converged
    rng = np.random.default_rng(7)
    shifted = rng.normal(size=(300, IN_DIM))
    shifted[:, 2] += 2.0
    send(agent.c.url, shifted)
    assert endpoint_status(agent)["drift"]["level"] == "Alert"
    world.publish("1.1.0", bias=1.0)
    publish_baseline(world, "1.1.0", tmp_path)
    commit_with_baseline(world, "1.1.0", DRIFT | {"action": "pin"})
    for _ in range(2):  # held on every pass while the verdict stays Alert
        r = agent.reconcile_once()
        (ep,) = r.endpoints
        assert not r.converged and which_version(agent.c.url, world) == "1.0.0"
        assert (ep["version"], ep["desiredVersion"], ep["state"]) == ("1.0.0", "1.1.0", "Waiting")
        assert ep["message"].startswith("DriftPinned: 1.0.0 is pinned") and "input[2]" in ep["message"], ep
    assert not agent.status_document()["status"]["failures"]  # held, not failed: nothing in the failure memory
    send(agent.c.url, rng.normal(size=(300, IN_DIM)))  # the window refills with in-distribution data
    assert endpoint_status(agent)["drift"]["level"] == "OK"
    assert agent.reconcile_once().converged and which_version(agent.c.url, world) == "1.1.0"


def test_pin_reason_decides_from_the_verdict_and_the_action_in_git() -> None:
    alert = {"name": ENDPOINT, "version": "1.0.0", "drift": {
        "level": "Alert", "method": "psi", "score": 0.9, "alert": 0.25, "action": "pin",
        "worst": [{"feature": "input[2]", "score": 0.9}]}}
    why = pin_reason(alert, "pin")
    assert why is not None and why.startswith("DriftPinned: 1.0.0 is pinned, psi 0.9 >= 0.25 (worst input[2]=0.9)")
    assert pin_reason(alert, "alert") is None and pin_reason(alert, "rollback") is None  # action changed in Git
    assert pin_reason(alert, None) is None
    for level in ("OK", "Warning", "Insufficient", "Unavailable"):  # the verdict cleared (or there is none)
        assert pin_reason({**alert, "drift": {**alert["drift"], "level": level}}, "pin") is None
    assert pin_reason({"name": ENDPOINT, "version": "1.0.0"}, "pin") is None
    assert pin_reason(None, "pin") is None
