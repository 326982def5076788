"""deploy/: the Prometheus alert rules pass `promtool check rules` and their unit tests (Debian's prometheus
package), and the Grafana dashboard queries valid PromQL over metric names the device really exports."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import yaml
from prometheus_client import REGISTRY

import reconciler.agent.metrics
import reconciler.drift.metrics
import reconciler.serving.server  # noqa: F401 - registers the inference metrics

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
RULES = DEPLOY / "prometheus" / "modelfleet-drift.rules.yml"
DASHBOARD = DEPLOY / "grafana" / "modelfleet-drift.dashboard.json"

del reconciler  # imported for their side effect only


def promtool(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    exe = shutil.which("promtool")
    assert exe, "promtool is not installed (.ci/run installs Debian's prometheus package)"
    return subprocess.run([exe, *args], capture_output=True, text=True, timeout=60, cwd=cwd)


def exported_names() -> set[str]:
    """Every sample name the registered metrics export (also those without children yet)."""
    suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"), "gauge": ("",)}
    return {m.name + s for m in REGISTRY.collect() for s in suffixes.get(m.type, ("",))}


def metric_names(expr: str) -> set[str]:
    return set(re.findall(r"\bmodelfleet_[a-z_]+\b", expr))


def test_alert_rules_check_and_unit_tests_pass() -> None:
    r = promtool("check", "rules", str(RULES))
    assert r.returncode == 0 and "SUCCESS: 7 rules found" in r.stdout, r.stdout + r.stderr
    r = promtool("test", "rules", "modelfleet-drift.rules.test.yml", cwd=RULES.parent)
    assert r.returncode == 0 and "SUCCESS" in r.stdout, r.stdout + r.stderr
    names = exported_names()
    for rule in yaml.safe_load(RULES.read_text())["groups"][0]["rules"]:
        assert metric_names(rule["expr"]) <= names, rule["alert"]


def test_dashboard_queries_are_valid_promql_over_exported_metrics(tmp_path: Path) -> None:
    dash = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for p in dash["panels"] for t in p["targets"]]
    assert len(exprs) >= 10
    names = exported_names()
    for e in exprs:
        assert metric_names(e) and metric_names(e) <= names, e
    # promtool parses PromQL: give it the queries as recording rules, template variables filled in
    rules = {"groups": [{"name": "dashboard", "rules": [
        {"record": f"dashboard:query{i}", "expr": e.replace("$instance", ".*").replace("$endpoint", ".*")}
        for i, e in enumerate(exprs)]}]}
    f = tmp_path / "dashboard-queries.yml"
    f.write_text(yaml.safe_dump(rules))
    r = promtool("check", "rules", str(f))
    assert r.returncode == 0, r.stdout + r.stderr
