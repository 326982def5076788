"""``--format json`` and ``--format yaml`` print the same document; human formats stay as they were."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import yaml

from tests._cli import run_cli

ROOT = Path(__file__).resolve().parents[2]
FLEET = str(ROOT / "fleet-repo-example")


def both(*args: str) -> tuple[object, object]:
    j, y = run_cli(*args, "--format", "json"), run_cli(*args, "--format", "yaml")
    assert j.code == y.code and j.err == y.err == "", j.err + y.err
    return json.loads(j.out), yaml.safe_load(y.out)


def test_validate_render_and_explain() -> None:
    j, y = both("validate", "--repo", FLEET)
    assert j == y and j["valid"] is True and j["diagnostics"] == []
    j, y = both("render", "--repo", FLEET, "--device", "cam-berlin-03")
    assert j == y and j["device"] == "cam-berlin-03"
    assert yaml.safe_load(run_cli("render", "--repo", FLEET, "--device", "cam-berlin-03").out) == j


def test_plan_yaml_and_the_detailed_exit_code(tmp_path: Path) -> None:
    def git(*args: str) -> None:
        subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@example.com", *args], cwd=tmp_path,
                       check=True, capture_output=True)

    repo = tmp_path
    subprocess.run(["cp", "-r", f"{FLEET}/.", str(repo)], check=True)
    git("init", "--quiet", "--initial-branch=main")
    git("add", "-A")
    git("commit", "--quiet", "-m", "base")
    unchanged = run_cli("plan", "--repo", str(repo), "--base", "HEAD", "--format", "yaml", "--detailed-exitcode")
    assert unchanged.code == 0, unchanged.err
    removed = sorted((repo / "deployments").glob("*.yaml"))[0]
    removed.unlink()
    git("add", "-A")
    git("commit", "--quiet", "-m", f"remove {removed.name}")
    j = run_cli("plan", "--repo", str(repo), "--base", "HEAD~1", "--format", "json", "--detailed-exitcode")
    y = run_cli("plan", "--repo", str(repo), "--base", "HEAD~1", "--format", "yaml", "--detailed-exitcode")
    assert j.code == y.code == 2  # changes
    assert json.loads(j.out) == yaml.safe_load(y.out)
    table = run_cli("plan", "--repo", str(repo), "--base", "HEAD~1")
    assert table.code == 0 and "remove" in table.out.lower()


def test_a_url_is_cloned_for_validate_render_and_plan(tmp_path: Path) -> None:
    work, bare = tmp_path / "work", tmp_path / "fleet.git"
    subprocess.run(["cp", "-r", FLEET, str(work)], check=True)
    for args in (["init", "--quiet", "--initial-branch=main"], ["add", "-A"], ["commit", "--quiet", "-m", "base"]):
        subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@example.com", *args], cwd=work, check=True)
    subprocess.run(["git", "clone", "--quiet", "--bare", str(work), str(bare)], check=True)
    url = bare.as_uri()
    r = run_cli("validate", "--repo", url, "--format", "json")
    assert r.code == 0, r.err
    assert json.loads(r.out) == json.loads(run_cli("validate", "--repo", FLEET, "--format", "json").out)
    r = run_cli("render", "--repo", url, "--device", "cam-berlin-03", "--format", "json")
    assert r.code == 0 and json.loads(r.out)["device"] == "cam-berlin-03", r.err
    r = run_cli("plan", "--repo", url, "--base", "main", "--detailed-exitcode")
    assert r.code == 0 and r.out.startswith("No changes."), r.err
    r = run_cli("validate", "--repo", (tmp_path / "nothing.git").as_uri())
    assert r.code == 1 and r.err.startswith(f"error: cannot clone {(tmp_path / 'nothing.git').as_uri()}: ")
    r = run_cli("plan", "--repo", "https://user:s3cret@git.example.com/fleet.git", "--base", "main")
    assert r.code == 2 and "s3cret" not in r.err and "credentials in the URL" in r.err


def test_rollout_status_and_watch_in_yaml(tmp_path: Path) -> None:
    from tests._git_fixtures import Upstream
    from tests.cli.test_dry_run import modelfleet
    from tests.rollout.test_cli import fleet_files, report, targets

    up = Upstream(tmp_path / "up")
    up.commit(fleet_files(0), "fleet")
    report(up, new=targets(up))
    repo = str(up.bare)
    j = modelfleet("rollout", "status", "tiny", "--repo", repo, "--format", "json", cwd=tmp_path)
    y = modelfleet("rollout", "status", "tiny", "--repo", repo, "--format", "yaml", cwd=tmp_path)
    assert j.returncode == y.returncode == 0, j.stderr + y.stderr
    doc_j, doc_y = json.loads(j.stdout), yaml.safe_load(y.stdout)

    # two reads a few seconds apart: times and ages differ, the document does not
    assert set(doc_j) == set(doc_y) and doc_j["phase"] == doc_y["phase"] == "Ready"
    assert doc_j["steps"] == doc_y["steps"] and [d["device"] for d in doc_j["devices"]] == [
        d["device"] for d in doc_y["devices"]]
    w = modelfleet("rollout", "watch", "tiny", "--repo", repo, "--once", "--format", "yaml", cwd=tmp_path)
    assert w.returncode == 0, w.stderr
    ticks = list(yaml.safe_load_all(w.stdout))
    assert len(ticks) == 1 and ticks[0]["action"] == "promote"
    assert ticks[0]["commit"] == subprocess.run(["git", "rev-parse", "main"], cwd=up.bare, capture_output=True,
                                                text=True, check=True).stdout.strip()
    h = modelfleet("fleet", "history", "dev-000", "--repo", repo, "--format", "yaml", cwd=tmp_path)
    hj = modelfleet("fleet", "history", "dev-000", "--repo", repo, "--format", "json", cwd=tmp_path)
    assert h.returncode == 0 and yaml.safe_load(h.stdout) == json.loads(hj.stdout)
