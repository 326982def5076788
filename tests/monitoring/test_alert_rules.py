"""deploy/prometheus/ passes Debian's promtool: the scrape configuration, `check rules` on every rule file, and
`test rules` unit tests in which every alert both fires and stays quiet; every expression uses only metric
names the device exports."""

from __future__ import annotations

import re
from pathlib import Path

import yaml
from prometheus_client import REGISTRY

import reconciler.agent.loop
import reconciler.drift.metrics
import reconciler.serving.http.server
import reconciler.serving.workers.pool  # noqa: F401 - registers the inference and worker metrics
import reconciler.serving.workers.workerproc
from tests._prometheus import promtool

DEPLOY = Path(__file__).resolve().parents[2] / "deploy" / "prometheus"
RULE_FILES = sorted(DEPLOY.glob("*.rules.yml"))

del reconciler  # imported for their side effect only


def exported_names() -> set[str]:
    """Every sample name the registered metrics export (also those without children yet), plus Prometheus's own."""
    suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"), "gauge": ("",)}
    return {m.name + s for m in REGISTRY.collect() for s in suffixes.get(m.type, ("",))}


def metric_names(expr: str) -> set[str]:
    return set(re.findall(r"\bmodelfleet_[a-z_]+\b", expr))


def alert_rules() -> dict[str, dict[str, object]]:
    return {r["alert"]: r for f in RULE_FILES for g in yaml.safe_load(f.read_text())["groups"]
            for r in g["rules"] if "alert" in r}


def test_scrape_configuration_is_valid() -> None:
    r = promtool("check", "config", "prometheus.yml", cwd=DEPLOY)
    assert r.returncode == 0 and "SUCCESS: 2 rule files found" in r.stdout, r.stdout + r.stderr
    # the K3s job is for a Prometheus with Kubernetes discovery (Debian's is built without): same schema otherwise
    k3s = yaml.safe_load((DEPLOY / "k3s-scrape-job.yml").read_text())["scrape_configs"]
    assert [j["kubernetes_sd_configs"] for j in k3s] == [[{"role": "pod"}]]
    examples = yaml.safe_load((DEPLOY / "file_sd" / "modelfleet-devices.yml").read_text())
    assert examples and all(t["targets"] and t["labels"]["device"] for t in examples)


def test_every_rule_file_checks_and_every_alert_is_unit_tested_firing_and_quiet() -> None:
    r = promtool("check", "rules", *map(str, RULE_FILES))
    assert r.returncode == 0 and r.stdout.count("SUCCESS: 7 rules found") == 2, \
        r.stdout + r.stderr
    tests = sorted(DEPLOY.glob("*.rules.test.yml"))
    assert [t.name.replace(".test", "") for t in tests] == [f.name for f in RULE_FILES]
    r = promtool("test", "rules", *(t.name for t in tests), cwd=DEPLOY)
    assert r.returncode == 0 and r.stdout.count("SUCCESS") == len(tests), r.stdout + r.stderr
    fired: set[str] = set()
    quiet: set[str] = set()
    for t in tests:
        for case in yaml.safe_load(t.read_text())["tests"]:
            for check in case["alert_rule_test"]:
                (fired if check["exp_alerts"] else quiet).add(check["alertname"])
    names = set(alert_rules())
    assert {"ModelfleetNotConverged", "ModelfleetHeartbeatStale", "ModelfleetDriftAlert", "ModelfleetRollbackStorm",
            "ModelfleetInferenceErrors", "ModelfleetDeviceDown"} <= names
    assert fired == names and quiet == names, (names - fired, names - quiet)


def test_a_broken_unit_test_fails(tmp_path: Path) -> None:
    """The mechanism: promtool really compares (an alert expected where none fires fails)."""
    rules = DEPLOY / "modelfleet.rules.yml"
    (tmp_path / rules.name).write_text(rules.read_text())
    case = yaml.safe_load((DEPLOY / "modelfleet.rules.test.yml").read_text())
    case["tests"] = case["tests"][:1]
    case["tests"][0]["alert_rule_test"][0]["exp_alerts"] = [{"exp_labels": {"severity": "warning"}}]
    (tmp_path / "t.yml").write_text(yaml.safe_dump(case))
    r = promtool("test", "rules", "t.yml", cwd=tmp_path)
    assert r.returncode != 0 and "FAILED" in r.stdout + r.stderr


def test_rules_use_only_exported_metric_names() -> None:
    names = exported_names()
    for alert, rule in alert_rules().items():
        assert metric_names(str(rule["expr"])) <= names, alert
