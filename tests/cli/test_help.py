"""Every command reads alike: an example and its exit codes in ``--help``, ``--repo`` for the fleet repository,
``--format`` with json and yaml where output is read by machines, ``--dry-run`` where a commit is written, and old
spellings still accepted with a one-line deprecation warning."""

from __future__ import annotations

import json
from pathlib import Path

import click
import pytest
import yaml

from tests._cli import run_cli
from tests.cli._tree import commands, leaves

ROOT = Path(__file__).resolve().parents[2]
TREE = commands()
# Commands whose output is a report a script reads: each takes --format with json and yaml.
MACHINE_READ = {"validate", "plan", "render", "explain", "fleet status", "fleet history", "fleet drift",
                "rollout status", "rollout watch", "agent status", "agent once", "data status", "repo list", "repo verify",
                "baseline", "optimize", "simulate", "check"}
# Commands that write a commit to the fleet repository, sign TUF metadata, or delete captured data.
WRITERS = {"rollout promote", "rollout abort", "rollout pause", "rollout resume", "rollout watch", "data purge",
           "repo add", "repo remove", "repo refresh"}
# Commands that name the fleet repository.
FLEET_REPO = {"validate", "render", "plan", "fleet status", "fleet history", "fleet drift", "rollout status",
              "rollout promote", "rollout abort", "rollout pause", "rollout resume", "rollout watch", "simulate",
              "optimize", "check"}


def test_the_tree_is_what_the_conventions_cover() -> None:
    paths = {p for p, _, _ in TREE}
    assert MACHINE_READ | WRITERS | FLEET_REPO <= paths
    assert len(paths) >= 50  # a lazily registered family that failed to load would shrink the tree


@pytest.mark.parametrize("path", [p for p, _, _ in TREE], ids=lambda p: p or "modelfleet")
def test_every_help_has_examples_and_every_command_its_exit_codes(path: str) -> None:
    r = run_cli(*path.split(), "--help")
    assert r.code == 0, r.text
    assert "Examples:" in r.out, f"`modelfleet {path} --help` has no Examples section (reconciler/cli/helptext.py)"
    examples = r.out.split("Examples:", 1)[1].split("Exit codes:", 1)[0]
    runnable = [line.strip() for line in examples.splitlines() if line.strip().startswith("modelfleet")]
    assert any(all(w in line.split() for w in path.split()) for line in runnable) and runnable, \
        f"no example of `modelfleet {path}` itself in:\n{examples}"
    cmd = dict((p, c) for p, c, _ in TREE)[path]
    if not isinstance(cmd, click.Group):
        codes = r.out.split("Exit codes:", 1)
        assert len(codes) == 2, f"`modelfleet {path} --help` does not document its exit codes"
        documented = {int(line.split()[0]) for line in codes[1].splitlines() if line.strip()[:1].isdigit()}
        assert {0, 1, 2} <= documented


@pytest.mark.parametrize("path", sorted(FLEET_REPO))
def test_the_fleet_repository_is_always_repo(path: str) -> None:
    cmd = dict((p, c) for p, c, _ in TREE)[path]
    opts = {o: p for p in cmd.params for o in p.opts if not getattr(p, "hidden", False)}
    assert "--repo" in opts, f"{path}: no --repo"
    assert opts["--repo"].envvar == "MODELFLEET_REPO" and "default: $MODELFLEET_REPO" in (opts["--repo"].help or "")
    assert not {"--fleet", "--fleet-repo", "--repository"} & set(opts), f"{path}: a second spelling is visible"


@pytest.mark.parametrize("path", sorted(MACHINE_READ))
def test_machine_read_output_offers_json_and_yaml(path: str) -> None:
    cmd = dict((p, c) for p, c, _ in TREE)[path]
    fmt = [p for p in cmd.params if "--format" in p.opts]
    assert fmt, f"{path}: no --format"
    assert {"json", "yaml"} <= set(fmt[0].type.choices), f"{path}: --format {fmt[0].type.choices}"
    assert not [p for p in cmd.params if "--json" in p.opts and not p.hidden], f"{path}: a visible --json"


@pytest.mark.parametrize("path", sorted(WRITERS))
def test_every_writer_has_dry_run(path: str) -> None:
    cmd = dict((p, c) for p, c, _ in TREE)[path]
    assert any("--dry-run" in p.opts for p in cmd.params), f"{path}: no --dry-run"


def test_no_option_is_spelled_two_ways_in_one_command() -> None:
    for path, cmd, _ in leaves():
        seen: dict[str, str] = {}
        for p in cmd.params:
            for o in p.opts + p.secondary_opts:
                assert o not in seen, f"{path}: {o} twice"
                seen[o] = p.name or ""


def test_old_spellings_still_work_and_say_so(tmp_path: Path) -> None:
    fleet = str(ROOT / "fleet-repo-example")
    new = run_cli("validate", "--repo", fleet, "--format", "table")
    old = run_cli("validate", "--format", "text", fleet)
    assert old.code == new.code == 0 and old.out == new.out
    assert old.err.strip() == "warning: --format text is deprecated; use --format table" and new.err == ""
    positional = run_cli("validate", fleet, "--format", "json")
    assert positional.code == 0 and positional.err == "" and json.loads(positional.out)["valid"] is True
    both = run_cli("validate", fleet, "--repo", str(tmp_path))
    assert both.code == 2 and "give the fleet repository once" in both.err

    config = tmp_path / "agent.yaml"
    config.write_text(yaml.safe_dump({"apiVersion": "modelfleet/v1", "kind": "AgentConfig", "spec": {
        "deviceId": "dev-1", "stateDir": str(tmp_path / "state"), "source": {"url": "https://git.example.com/f.git"},
        "tuf": {"trustedRoot": str(tmp_path / "root.json")}}}))
    old = run_cli("data", "status", "--config", str(config), "--json")
    new = run_cli("data", "status", "--config", str(config), "--format", "json")
    assert old.code == new.code == 0 and json.loads(old.out) == json.loads(new.out)
    assert old.err.strip() == "warning: --json is deprecated; use --format json"
    clash = run_cli("data", "status", "--config", str(config), "--json", "--format", "yaml")
    assert clash.code == 2 and "not both" in clash.err


def test_the_fleet_repository_comes_from_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MODELFLEET_REPO", str(ROOT / "fleet-repo-example"))
    monkeypatch.chdir(tmp_path)  # not a fleet repository: the variable is what names it
    r = run_cli("validate", "--format", "json")
    assert r.code == 0 and json.loads(r.out)["files"] > 10
    monkeypatch.setenv("MODELFLEET_REPO", str(tmp_path / "missing"))
    r = run_cli("validate")
    assert r.code == 2 and r.err.strip() == f"error: {tmp_path / 'missing'}: no such directory"


def test_the_desired_state_branch_is_base_everywhere(tmp_path: Path) -> None:
    import shutil
    import subprocess

    repo = tmp_path / "fleet"
    shutil.copytree(ROOT / "fleet-repo-example", repo)
    for args in (["init", "--quiet", "--initial-branch=main"], ["add", "-A"], ["commit", "--quiet", "-m", "fleet"]):
        subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@example.com", *args], cwd=repo, check=True)
    base = run_cli("fleet", "status", "--repo", str(repo), "--base", "main", "--format", "json")
    old = run_cli("fleet", "status", "--repo", str(repo), "--branch", "main", "--format", "json")
    assert base.code == old.code == 0, base.err + old.err
    assert json.loads(old.out)["devices"] == json.loads(base.out)["devices"]
    assert old.err.strip() == "warning: --branch is deprecated; use --base" and base.err == ""
    for path in ("fleet status", "fleet history", "fleet drift", "rollout status", "rollout watch"):
        cmd = dict((p, c) for p, c, _ in TREE)[path]
        base_opt = next(p for p in cmd.params if "--base" in p.opts)
        assert base_opt.help == "Desired-state branch.", path
