"""One ``--repo`` rule for every command that reads the devices' status branches or pushes a commit
(``options.shared_repo``): a URL or a bare repository means itself, a clone's path means its ``origin``, and no
``--repo`` means ``$MODELFLEET_REPO``, else the current directory, by the same rule. Each command is run with the
clone and must see what it sees with the bare repository the devices push to (``fleet drift``: in
tests/drift/test_report.py, which has devices that report drift)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from reconciler.cli.options import shared_repo
from reconciler.core.errors import UserError
from tests._cli import run_cli
from tests._git_fixtures import Upstream, git
from tests.rollout._fleet import status
from tests.rollout.test_cli import N, fleet_files, push_statuses, report, targets


def _fleet(root: Path) -> Upstream:
    """The fleet at the canary step, the canaries reporting the new version: `rollout promote` may advance it."""
    up = Upstream(root)
    up.commit(fleet_files(0), "fleet with tiny 1.1.0 at the canary step")
    report(up, new=targets(up))
    return up


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Upstream:
    return _fleet(tmp_path_factory.mktemp("reporule"))


def cli(*args: str, tmp: Path) -> dict | list:
    r = run_cli(*args, "--cache-dir", str(tmp / "cache"), "--format", "json")
    assert r.code == 0, r.text
    return json.loads(r.out)


# -- the rule ---------------------------------------------------------------------------------------------------


def test_the_rule(fleet: Upstream, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    bare, clone = str(fleet.bare), str(fleet.work)
    assert shared_repo(clone) == bare
    assert shared_repo(str(fleet.work / "devices")) == bare  # a directory inside the clone
    assert shared_repo(bare) == bare
    assert shared_repo(fleet.file_url) == fleet.file_url
    assert shared_repo("ssh://git@git.example.com/fleet.git") == "ssh://git@git.example.com/fleet.git"
    assert shared_repo("git@git.example.com:fleet.git") == "git@git.example.com:fleet.git"
    monkeypatch.chdir(fleet.work)
    assert shared_repo(None) == bare
    # an origin given as a relative path is relative to the clone, not to where the command runs
    rel = tmp_path / "rel"
    git(tmp_path, "clone", "--quiet", bare, str(rel))
    git(rel, "remote", "set-url", "origin", os.path.relpath(bare, rel))
    monkeypatch.chdir(tmp_path.parent.parent)
    assert shared_repo(str(rel)) == bare
    assert git(rel / "devices", "ls-remote", "origin", "main")  # where git itself finds it
    # a mirror (bare, with an origin of its own) is itself; so is a repository without origin
    mirror = tmp_path / "mirror.git"
    git(tmp_path, "clone", "--quiet", "--mirror", bare, str(mirror))
    assert shared_repo(str(mirror)) == str(mirror)
    alone = tmp_path / "alone"
    git(tmp_path, "init", "--quiet", str(alone))
    assert shared_repo(str(alone)) == str(alone)
    with pytest.raises(UserError, match="not found"):
        shared_repo(str(tmp_path / "absent"))
    (tmp_path / "plain").mkdir()
    monkeypatch.chdir(tmp_path / "plain")
    with pytest.raises(UserError, match="the current directory is not in a Git repository"):
        shared_repo(None)
    with pytest.raises(UserError, match="--repo .* is not in a Git repository"):
        shared_repo(str(tmp_path / "plain"))


# -- every command that reads status branches -------------------------------------------------------------------


def test_fleet_status(fleet: Upstream, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    want = cli("fleet", "status", "--repo", str(fleet.bare), tmp=tmp_path)
    assert want["totals"]["devices"] == N
    for how in ("--repo", "env", "cwd"):
        if how == "--repo":
            got = cli("fleet", "status", "--repo", str(fleet.work), tmp=tmp_path)
        else:
            with monkeypatch.context() as m:
                if how == "env":
                    m.setenv("MODELFLEET_REPO", str(fleet.work))
                else:
                    m.chdir(fleet.work / "devices")
                got = cli("fleet", "status", tmp=tmp_path)
        assert got["totals"] == want["totals"], how
        assert [d["device"] for d in got["devices"]] == [d["device"] for d in want["devices"]], how


def test_fleet_history(fleet: Upstream, tmp_path: Path) -> None:
    want = cli("fleet", "history", "dev-001", "--repo", str(fleet.bare), tmp=tmp_path)
    assert cli("fleet", "history", "dev-001", "--repo", str(fleet.work), tmp=tmp_path) == want


def test_status_repo(fleet: Upstream, tmp_path: Path) -> None:
    """Devices pushing their status to a status repository of its own: `--status-repo` takes a clone of it too."""
    st = Upstream(tmp_path / "st", name="status.git")
    st.commit({"README": "status repository\n"})
    push_statuses(st, {"dev-001": status("dev-001", "1.1.0", heartbeat="2026-01-01T00:00:00Z")})
    alone = tmp_path / "alone"
    git(tmp_path, "init", "--quiet", "--bare", str(alone))  # a fleet repository without status branches
    git(fleet.bare, "push", "--quiet", str(alone), "main")
    for repo in (st.bare, st.work):
        got = cli("fleet", "status", "--repo", str(alone), "--status-repo", str(repo), tmp=tmp_path)
        assert [d["device"] for d in got["devices"]] == ["dev-001"], repo


def test_rollout_status(fleet: Upstream, tmp_path: Path) -> None:
    want = cli("rollout", "status", "tiny", "--repo", str(fleet.bare), tmp=tmp_path)
    assert want["phase"] == "Ready"
    got = cli("rollout", "status", "tiny", "--repo", str(fleet.work), tmp=tmp_path)
    assert (got["phase"], got["steps"]) == (want["phase"], want["steps"])


def test_rollout_promote_dry_run(fleet: Upstream, tmp_path: Path) -> None:
    r = run_cli("rollout", "promote", "tiny", "--repo", str(fleet.work), "--cache-dir", str(tmp_path), "--dry-run",
                "--insecure-skip-verify")
    assert r.code == 0, r.text
    assert "would commit (promoted tiny 1.1.0 to step 1" in r.err and f"to main of {fleet.bare}" in r.err


def test_rollout_watch_dry_run(fleet: Upstream, tmp_path: Path) -> None:
    r = run_cli("rollout", "watch", "tiny", "--repo", str(fleet.work), "--cache-dir", str(tmp_path), "--dry-run",
                "--insecure-skip-verify")
    assert r.code == 0, r.text
    assert f"would promote with this commit to main of {fleet.bare}" in r.err


# -- every command that pushes ----------------------------------------------------------------------------------


@pytest.mark.parametrize("command", ["promote", "pause", "abort"])
def test_rollout_writes_go_to_the_origin(command: str, tmp_path: Path) -> None:
    up = _fleet(tmp_path / "up")
    before = git(up.bare, "rev-parse", "main")
    commands = [[command], ["resume"]] if command == "pause" else [[command]]
    for args in commands:
        r = run_cli("rollout", *args, "tiny", "--repo", str(up.work), "--cache-dir", str(tmp_path / "cache"),
                    "--insecure-skip-verify")
        assert r.code == 0, r.text
        assert f"pushed to main of {up.bare}" in r.out, r.out
        assert "main fast-forwarded to" in r.out, r.out
    assert len(git(up.bare, "rev-list", f"{before}..main").split()) == len(commands)
    # the clone comes along (docs/rollouts.md): the operator's next push is not rejected
    assert git(up.work, "rev-parse", "main") == git(up.bare, "rev-parse", "main")


def test_simulate(fleet: Upstream, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The simulated devices poll and push where real ones would: the clone's origin."""
    from reconciler.simulate.fleet import Simulation

    seen = []

    def create(settings, work_dir):  # type: ignore[no-untyped-def]
        seen.append(settings.source_url)
        raise ValueError("stop here")

    monkeypatch.setattr(Simulation, "create", staticmethod(create))
    root = tmp_path / "root.json"
    root.write_text("{}")
    r = run_cli("simulate", "--devices", "1", "--repo", str(fleet.work), "--trusted-root", str(root))
    assert r.code == 1 and r.err == "error: stop here\n", r.text
    assert seen == [str(fleet.bare)]
