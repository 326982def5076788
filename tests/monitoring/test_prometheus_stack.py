"""The monitoring stack, for real: Debian's Prometheus server scrapes a running `modelfleet agent run` (a real Git
repository, TUF over HTTP, a generated model with a drift baseline, real inference traffic) through the scrape
jobs of deploy/prometheus/, with the alert rules of deploy/prometheus/ loaded; the tests ask its HTTP API.

One Prometheus and one agent for the module (1 s scrape and rule evaluation); every wait polls with a deadline.
"""

from __future__ import annotations

import json
import re
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from reconciler.core import conditions as C
from tests._agent_fixtures import IN_DIM, AgentProcess, World, condition, read_status, wait_for
from tests._drift_fixtures import DRIFT, commit_with_baseline, publish_baseline, send
from tests._prometheus import PrometheusServer, PromQLError, promtool

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
DASHBOARDS = sorted((DEPLOY / "grafana").glob("*.dashboard.json"))
RULE_FILES = sorted((DEPLOY / "prometheus").glob("*.rules.yml"))
DEVICE = "dev-1"
SCRAPE_DEADLINE = 90.0


@dataclass
class Stack:
    prom: PrometheusServer
    agent_url: str
    jobs: list[str]


def scrape_jobs(agent_address: str, targets_dir: Path) -> list[dict[str, Any]]:
    """deploy/prometheus's file_sd and K3s jobs, aimed at the test's agent. The file_sd job reads a target file
    in the documented format; the K3s job's pod discovery (not in Debian's build) becomes static targets with
    the labels Kubernetes discovery gives a pod: the agent's pod, and another app's pod its rules must drop."""
    config = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    (file_job,) = [j for j in config["scrape_configs"] if "file_sd_configs" in j]
    file_job["file_sd_configs"] = [{"files": [str(targets_dir / "*.yml")], "refresh_interval": "1s"}]
    (targets_dir / "devices.yml").write_text(yaml.safe_dump([
        {"targets": [agent_address], "labels": {"device": DEVICE, "site": "lab"}}]))
    (k3s_job,) = yaml.safe_load((DEPLOY / "prometheus" / "k3s-scrape-job.yml").read_text())["scrape_configs"]
    pod = {"__meta_kubernetes_namespace": "modelfleet", "__meta_kubernetes_pod_name": "modelfleet-agent-x7k2p",
           "__meta_kubernetes_pod_node_name": DEVICE, "__meta_kubernetes_pod_container_port_name": "http",
           "__meta_kubernetes_pod_node_label_topology_kubernetes_io_zone": "lab",
           "__meta_kubernetes_pod_label_app_kubernetes_io_name": "modelfleet-agent"}
    other = pod | {"__meta_kubernetes_pod_label_app_kubernetes_io_name": "something-else",
                   "__meta_kubernetes_pod_name": "something-else-0"}
    del k3s_job["kubernetes_sd_configs"]
    k3s_job["static_configs"] = [{"targets": [agent_address], "labels": pod},
                                 {"targets": [agent_address], "labels": other}]
    return [file_job, k3s_job]


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    tmp = tmp_path_factory.mktemp("monitoring")
    world = World(tmp / "world").start()
    agent: AgentProcess | None = None
    prom: PrometheusServer | None = None
    try:
        world.publish("1.0.0")
        publish_baseline(world, "1.0.0", tmp)
        commit_with_baseline(world, "1.0.0", DRIFT)
        agent = AgentProcess(world.agent_config(tmp / "dev", device_id=DEVICE, poll="1s"), tmp / "agent.log").start()
        url = agent.url(timeout=60)
        wait_for(lambda: (condition(read_status(tmp / "dev"), C.READY) or {}).get("status") == "True", 60,
                 what="the agent Ready")
        rng = np.random.default_rng(5)
        send(url, rng.normal(size=(300, IN_DIM)))  # in distribution: a drift verdict, no alert
        bad = urllib.request.Request(f"{url}/v2/models/detector/infer", data=b'{"inputs": []}',
                                     headers={"Content-Type": "application/json"})
        with pytest.raises(urllib.error.HTTPError, match="400"):
            urllib.request.urlopen(bad, timeout=10)  # one input rejection: a failures series with code 400
        targets_dir = tmp / "targets"
        targets_dir.mkdir()
        jobs = scrape_jobs(url.removeprefix("http://"), targets_dir)
        config = {"global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
                  "rule_files": [str(f) for f in RULE_FILES], "scrape_configs": jobs}
        prom = PrometheusServer(tmp / "prometheus", config).start()
        yield Stack(prom, url, [j["job_name"] for j in jobs])
    finally:
        if prom is not None:
            prom.stop()
        if agent is not None:
            agent.stop()
        world.stop()


def scraped(stack: Stack, times: int) -> None:
    """Wait until every job has scraped the agent at least ``times`` times (count_over_time of ``up``)."""
    expr = f'min(count_over_time(up{{device="{DEVICE}"}}[10m])) >= {times} and count(up{{device="{DEVICE}"}}) == 2'
    stack.prom.wait_for(lambda: stack.prom.query(expr), SCRAPE_DEADLINE, what=f"{times} scrapes of every job")


def test_the_agent_is_a_healthy_target_of_every_job_with_its_device_label(stack: Stack) -> None:
    scraped(stack, 1)
    targets = stack.prom.api("targets")
    active = {t["labels"]["job"]: t for t in targets["activeTargets"]}
    assert sorted(active) == sorted(stack.jobs)
    for job, t in active.items():
        assert t["health"] == "up" and t["lastError"] == "", (job, t)
        assert t["labels"]["device"] == DEVICE and t["labels"]["site"] == "lab", t["labels"]
        assert t["scrapeUrl"] == f"{stack.agent_url}/metrics"
    assert active["modelfleet-k3s"]["labels"]["pod"] == "modelfleet-agent-x7k2p"
    # the K3s job keeps the agent's pods only
    dropped = [t["discoveredLabels"] for t in targets["droppedTargets"]]
    assert [d["__meta_kubernetes_pod_name"] for d in dropped] == ["something-else-0"]


KEY_SERIES = {
    "converged": f'modelfleet_agent_converged{{device="{DEVICE}"}} == 1',
    "heartbeat within 30 s": f'time() - modelfleet_agent_heartbeat_timestamp_seconds{{device="{DEVICE}"}} < 30',
    "longest poll wait": f'modelfleet_agent_heartbeat_max_interval_seconds{{device="{DEVICE}"}} > 10.9 < 11.1',  # poll 1 s: 10x, +10 %
    "agent identity": f'modelfleet_agent_info{{device="{DEVICE}",device_id="{DEVICE}"}}',
    "model version": 'modelfleet_agent_endpoint_version_info{endpoint="detector",model="det",version="1.0.0",'
                     'runtime="onnxruntime"}',
    "inference requests": 'modelfleet_inference_requests_total{model="detector",version="1.0.0"} >= 31',
    "inference latency": 'modelfleet_inference_latency_seconds_count{model="detector"} >= 31',
    "input rejections": 'modelfleet_inference_failures_total{model="detector",code="400"} == 1',
    "rollbacks": 'modelfleet_agent_rollbacks_total{endpoint="detector"} == 0',
    "drift score": 'modelfleet_drift_score{endpoint="detector",version="1.0.0",method="psi"} >= 0',
    "drift verdict ok": 'modelfleet_drift_level{endpoint="detector"} == 0',
}


@pytest.mark.parametrize("what", sorted(KEY_SERIES))
def test_key_series_exist_in_prometheus(stack: Stack, what: str) -> None:
    expr = KEY_SERIES[what]

    def by_both_jobs() -> list[dict[str, Any]]:  # the two jobs scrape on their own clocks: wait for the later one
        got = stack.prom.query(expr)
        return got if {s["metric"]["job"] for s in got} >= set(stack.jobs) else []

    got = stack.prom.wait_for(by_both_jobs, SCRAPE_DEADLINE, what=f"{what} in every job: {expr}")
    assert {s["metric"]["job"] for s in got} == set(stack.jobs), got  # scraped by both jobs, relabelled alike


def test_promtool_check_metrics_is_clean_on_the_agents_metrics(stack: Stack) -> None:
    def full_set() -> str:  # (drift scores appear once the agent's first drift window closed: wait, as above)
        text = urllib.request.urlopen(f"{stack.agent_url}/metrics", timeout=10).read().decode()
        return text if "modelfleet_drift_score{" in text and "modelfleet_agent_converged " in text else ""

    text = stack.prom.wait_for(full_set, SCRAPE_DEADLINE, what="the agent's full set of metrics, with children")
    r = promtool("check", "metrics", stdin=text)
    assert r.returncode == 0 and r.stdout + r.stderr == "", r.stdout + r.stderr
    bad = "# TYPE modelfleet_load_milliseconds counter\nmodelfleet_load_milliseconds 2\n"  # the lint really lints
    r = promtool("check", "metrics", stdin=text + bad)
    assert r.returncode != 0 and 'use base unit "seconds"' in r.stdout + r.stderr, r.stdout + r.stderr


# --- dashboards ------------------------------------------------------------------------------------------------

def panels(dash: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for p in dash["panels"]:
        yield p
        yield from p.get("panels", [])  # collapsed rows


def variable_values(stack: Stack, dash: dict[str, Any]) -> dict[str, str]:
    """A value that exists for each of the dashboard's query variables, in order (later ones may use earlier)."""
    values: dict[str, str] = {}
    for var in dash["templating"]["list"]:
        if var["type"] != "query":
            continue
        m = re.fullmatch(r"label_values\((.+),\s*(\w+)\)", substitute(var["query"], values))
        assert m, f"{var['name']}: not a label_values(selector, label) query: {var['query']}"
        selector, label = m.groups()
        found = stack.prom.wait_for(lambda s=selector, lb=label: sorted(
            {x[lb] for x in stack.prom.api("series", **{"match[]": s}) if lb in x}), SCRAPE_DEADLINE,
            what=f"values of ${var['name']} ({var['query']})")
        values[var["name"]] = found[0]
    return values


def substitute(expr: str, values: dict[str, str]) -> str:
    """Grafana's variable interpolation for one selected value, and its interval variables."""
    for builtin, value in (("__rate_interval", "1m"), ("__interval", "5s"), ("__range", "10m")):
        expr = expr.replace(f"${{{builtin}}}", value).replace(f"${builtin}", value)
    for name, value in sorted(values.items(), key=lambda kv: -len(kv[0])):
        expr = expr.replace(f"${{{name}}}", value).replace(f"${name}", value)
    return expr


@pytest.mark.parametrize("path", DASHBOARDS, ids=[p.name for p in DASHBOARDS])
def test_every_dashboard_query_evaluates_and_every_panel_has_data(stack: Stack, path: Path) -> None:
    dash = json.loads(path.read_text())
    scraped(stack, 5)  # rates need a few samples
    values = variable_values(stack, dash)
    assert {v["name"] for v in dash["templating"]["list"] if v["type"] == "query"} == set(values)
    empty, queries = [], 0
    for panel in panels(dash):
        if panel["type"] == "row":
            continue
        results = []
        for target in panel["targets"]:
            expr = substitute(target["expr"], values)
            assert "$" not in expr, f"{path.name}: {panel['title']}: variable left in {expr}"
            try:
                results.append(stack.prom.query(expr))
            except PromQLError as exc:
                pytest.fail(f"{path.name}: panel {panel['title']!r}: {exc}")
            queries += 1
        if not any(results):
            empty.append(panel["title"])
    assert queries >= 10
    # a healthy device with traffic shows something in every panel
    assert not empty, f"{path.name}: panels without data: {empty}"


# --- rules in the server ----------------------------------------------------------------------------------------

def test_the_rules_load_evaluate_cleanly_and_a_healthy_device_raises_no_alert(stack: Stack) -> None:
    scraped(stack, 5)

    def evaluated() -> list[dict[str, Any]]:
        groups = stack.prom.api("rules")["groups"]
        ok = groups and not any(g["lastEvaluation"].startswith("0001-") for g in groups)  # Go's zero time
        return groups if ok else []

    groups = stack.prom.wait_for(evaluated, SCRAPE_DEADLINE, what="every rule group evaluated")
    by_file = {Path(g["file"]).name for g in groups}
    assert by_file == {f.name for f in RULE_FILES}
    rules = [r for g in groups for r in g["rules"]]
    assert len(rules) == 14
    for r in rules:
        assert r["health"] == "ok" and not r.get("lastError"), r
        stack.prom.query(r["query"])  # each expression on its own, against the scraped series
    assert stack.prom.api("alerts")["alerts"] == []
