"""``modelfleet plan`` between two commits of a real Git repository: exact per-device changes and exit codes."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from tests._cli import run_cli

CORPUS = Path(__file__).resolve().parents[1] / "corpus"


def git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True, text=True).stdout.strip()


@pytest.fixture()
def repo(tmp_path: Path) -> Path:
    repo = tmp_path / "fleet"
    shutil.copytree(CORPUS / "base", repo)
    for i, site in [(2, "a"), (3, "b")]:
        (repo / "devices" / f"dev-{i}.yaml").write_text(
            f"apiVersion: modelfleet/v1\nkind: Device\nmetadata:\n  name: dev-{i}\n  labels: {{site: {site}}}\n")
    git(repo, "init", "-q", "-b", "main")
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", "base")
    return repo


def commit_change(repo: Path) -> None:
    dep = repo / "deployments" / "tiny.yaml"
    dep.write_text(dep.read_text().replace('version: "1.1.0"', 'version: "1.0.0"'))
    (repo / "deployments" / "tiny-b.yaml").write_text(
        "apiVersion: modelfleet/v1\nkind: Deployment\nmetadata: {name: tiny-b}\nspec:\n  model: tiny\n"
        "  version: \"1.1.0\"\n  serveAs: tiny\n  selector:\n    matchLabels: {site: b}\n")
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", "downgrade site a, add site b")


def test_no_change_exit_0(repo: Path) -> None:
    r = run_cli("plan", "--repo", str(repo), "--base", "HEAD", "--head", "HEAD", "--detailed-exitcode")
    assert r.code == 0, r.text
    assert "No changes" in r.out


def test_exact_per_device_changes(repo: Path) -> None:
    commit_change(repo)
    r = run_cli("plan", "--repo", str(repo), "--base", "HEAD~1", "--head", "HEAD", "--format", "json",
                "--detailed-exitcode")
    assert r.code == 2, r.text
    plan = json.loads(r.out)
    got = sorted((c["device"], c["endpoint"], c["action"], c["old"], c["new"]) for c in plan["changes"])
    assert got == [
        ("dev-1", "tiny", "update", "tiny 1.1.0 (onnx/onnxruntime)", "tiny 1.0.0 (onnx/onnxruntime)"),
        ("dev-2", "tiny", "update", "tiny 1.1.0 (onnx/onnxruntime)", "tiny 1.0.0 (onnx/onnxruntime)"),
        ("dev-3", "tiny", "add", None, "tiny 1.1.0 (onnx/onnxruntime)"),
    ]
    assert plan["counts"] == {"add": 1, "remove": 0, "update": 2, "issue": 0}
    assert plan["changedDevices"] == 3 and plan["devices"] == 3


def test_markdown_and_text(repo: Path) -> None:
    commit_change(repo)
    md = run_cli("plan", "--repo", str(repo), "--base", "HEAD~1", "--format", "markdown")
    assert md.code == 0
    assert "| ~ | `dev-1` | `tiny` | tiny 1.1.0 (onnx/onnxruntime) | tiny 1.0.0 (onnx/onnxruntime) |" in md.out
    assert "**1** to add, **2** to update, **0** to remove" in md.out
    txt = run_cli("plan", "--repo", str(repo), "--base", "HEAD~1")
    assert "Plan: 1 to add, 2 to update, 0 to remove, 0 issues on 3 of 3 devices." in txt.out


def test_removal_and_invalid_head(repo: Path) -> None:
    (repo / "deployments" / "tiny.yaml").unlink()
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", "remove")
    r = run_cli("plan", "--repo", str(repo), "--base", "HEAD~1", "--format", "json")
    changes = json.loads(r.out)["changes"]
    assert [(c["device"], c["action"]) for c in changes] == [("dev-1", "remove"), ("dev-2", "remove")]
    (repo / "deployments" / "bad.yaml").write_text("kind: Deployment\nspec: [\n")
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", "broken")
    bad = run_cli("plan", "--repo", str(repo), "--base", "HEAD~1", "--detailed-exitcode")
    assert bad.code == 1
    assert "deployments/bad.yaml:3:" in bad.err and "Traceback" not in bad.text
    unknown = run_cli("plan", "--repo", str(repo), "--base", "nope")
    assert unknown.code == 1 and "unknown revision 'nope'" in unknown.err


def test_device_class_from_selector_is_planned(repo: Path) -> None:
    # no inventory device has site=c: the plan still shows what a site=c device would get
    (repo / "deployments" / "tiny-c.yaml").write_text(
        "apiVersion: modelfleet/v1\nkind: Deployment\nmetadata: {name: tiny-c}\nspec:\n  model: tiny\n"
        "  version: \"1.0.0\"\n  serveAs: tiny\n  selector:\n    matchLabels: {site: c}\n")
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", "site c")
    r = run_cli("plan", "--repo", str(repo), "--base", "HEAD~1", "--format", "json")
    plan = json.loads(r.out)
    assert [(c["device"], c["action"]) for c in plan["changes"]] == [("class:site=c", "add")]


def test_render_and_validate_git_revision(repo: Path, tmp_path: Path) -> None:
    r = run_cli("render", "--device", "dev-3", "--labels", "site=a", str(repo))
    assert r.code == 0 and "version: 1.1.0" in r.out
    facts = tmp_path / "facts.yaml"
    facts.write_text("hw.arch: 12\n")
    bad = run_cli("render", "--device", "dev-3", "--facts", str(facts), str(repo))
    assert bad.code == 1 and f"{facts}:1:" in bad.err
    v = run_cli("validate", "--rev", "HEAD", str(repo))
    assert v.code == 0, v.text


def test_render_of_a_device_the_inventory_does_not_list_is_an_error(repo: Path) -> None:
    """A typo in --device used to print an empty desired state and exit 0: now exit 1, the near match, the
    inventory, and how to render a device that is not in it (by its labels, which still works)."""
    r = run_cli("render", "--device", "dev-22", str(repo))
    assert r.code == 1 and r.out == "", r.text
    assert r.err.startswith("error: no device 'dev-22' in ") and "did you mean 'dev-2'?" in r.err, r.err
    assert "dev-1, dev-2, dev-3" in r.err and "--labels KEY=VALUE" in r.err and "fleet status" in r.err, r.err
    assert len(r.err.strip().splitlines()) == 1
    r = run_cli("render", "--device", "dev-22", "--labels", "site=b", str(repo), "--format", "json")
    assert r.code == 0 and json.loads(r.out)["inventory"] is False, r.text
