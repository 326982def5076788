"""``modelfleet rollout`` against a real Git repository: status, promote (gates, --force, --patch, --branch),
pause/resume, abort, signed commits, and ``plan`` on a promote commit."""

from __future__ import annotations

import datetime as dt
import json
import subprocess
import sys
from pathlib import Path

import yaml

from reconciler.fleet.desired import DeviceIdentity, desired_state
from reconciler.fleet.manifests import load_files
from reconciler.gitops.statuswriter import dump_status
from tests._git_fixtures import Upstream, env, git, make_ssh_key
from tests._identity import shared_device_key, signed_status_commit
from tests.rollout._fleet import FLEET, MODEL, deployment_yaml, status

N = 30


def modelfleet(*args: str, cwd: Path, **extra: str) -> subprocess.CompletedProcess[str]:
    """The CLI as an operator of a fleet whose commits are not signed runs it (tests of base verification pass
    MODELFLEET_INSECURE_SKIP_VERIFY="" and their anchors)."""
    extra = {"MODELFLEET_INSECURE_SKIP_VERIFY": "1", **extra}
    return subprocess.run([sys.executable, "-m", "reconciler.cli", *args], capture_output=True, text=True, cwd=cwd,
                          env=env(XDG_CACHE_HOME=str(cwd / ".cache"), **extra), timeout=120)


def fleet_files(step: int) -> dict[str, str]:
    files = {"fleet.yaml": FLEET.decode(), "models/tiny.yaml": MODEL.decode(),
             "deployments/tiny.yaml": "# the tiny model, staged\n" + deployment_yaml(step)}
    for i in range(N):
        files[f"devices/dev-{i:03d}.yaml"] = (f"apiVersion: modelfleet/v1\nkind: Device\nmetadata:\n  name: dev-{i:03d}\n"
                                              f"  labels: {{site: a, ring: {'canary' if i < 3 else 'stable'}}}\n"
                                              f"spec:\n  statusKeys: ['{shared_device_key(f'dev-{i:03d}')[1]}']\n")
    return files


def targets(up: Upstream) -> set[str]:
    files = {}
    for rel in git(up.work, "ls-files").split("\n"):
        files[rel] = (up.work / rel).read_bytes()
    fleet = load_files(files).fleet
    return {n for n, d in fleet.devices.items()
            if (ep := desired_state(fleet, DeviceIdentity(n, d.labels)).endpoints.get("tiny")) is not None
            and ep.version == "1.1.0"}


def push_statuses(up: Upstream, docs: dict[str, dict]) -> None:
    """Every device's status commit on its own status/<id> branch, in one push (as the agents would leave them)."""
    refspecs = []
    for dev, doc in docs.items():
        sha = signed_status_commit(up.work / ".git", dev, dump_status(doc))
        refspecs.append(f"+{sha}:refs/heads/status/{dev}")
    git(up.work, "push", "--quiet", "origin", *refspecs)


def report(up: Upstream, new: set[str], failed: set[str] = frozenset()) -> None:
    hb = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    docs = {}
    for i in range(N):
        dev = f"dev-{i:03d}"
        if dev in failed:
            docs[dev] = status(dev, "1.0.0", heartbeat=hb, desired="1.1.0", failed_version="1.1.0")
        else:
            docs[dev] = status(dev, "1.1.0" if dev in new else "1.0.0", heartbeat=hb)
    push_statuses(up, docs)


def pull(up: Upstream) -> None:
    git(up.work, "fetch", "--quiet", "origin", "main")
    git(up.work, "reset", "--quiet", "--hard", "origin/main")


def test_promote_gates_patch_branch_force_pause_abort(tmp_path: Path) -> None:
    up = Upstream(tmp_path / "up")
    up.commit(fleet_files(0), "fleet with tiny 1.1.0 at the canary step")
    repo = str(up.bare)
    canaries = targets(up)
    assert len(canaries) == 3
    report(up, new=canaries)

    p = modelfleet("rollout", "status", "tiny", "--repo", repo, cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    assert "Phase: Ready" in p.stdout and "tiny 1.0.0 -> 1.1.0, step 0 of 3 (canary)" in p.stdout
    doc = json.loads(modelfleet("rollout", "status", "tiny", "--repo", repo, "--format", "json", cwd=tmp_path).stdout)
    assert doc["phase"] == "Ready" and doc["steps"][0]["healthy"] == 3 and doc["stepCommit"] == up.head()

    before = up.head()
    p = modelfleet("rollout", "promote", "tiny", "--repo", repo, "--patch", cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    assert "-    step: 0\n+    step: 1\n" in p.stdout and "Subject: [PATCH] rollout tiny: promote 1.1.0 to step 1" in p.stdout
    assert up.head() == before

    p = modelfleet("rollout", "promote", "tiny", "--repo", repo, cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    assert "promoted tiny 1.1.0 to step 1 (10%)" in p.stdout
    shown = git(up.bare, "show", "--format=%B", "main")
    assert "minHealthyPercent: 100 (threshold 95) pass" in shown
    assert git(up.bare, "diff", "--numstat", f"{before}", "main") == "1\t1\tdeployments/tiny.yaml"

    # plan on the promote commit: exactly the devices the 10 % step adds
    pull(up)
    step1 = targets(up)
    p = modelfleet("plan", "--repo", str(up.work), "--base", before, "--head", "HEAD", "--format", "json",
                   cwd=tmp_path)
    plan = json.loads(p.stdout)
    assert {c["device"] for c in plan["changes"] if not c["device"].startswith("class:")} == step1 - canaries
    assert all(c["old"].startswith("tiny 1.0.0") and c["new"].startswith("tiny 1.1.0")
               for c in plan["changes"] if not c["device"].startswith("class:"))

    # the new step's devices have not updated yet: refused, with the numbers
    p = modelfleet("rollout", "promote", "tiny", "--repo", repo, cwd=tmp_path)
    assert p.returncode == 3 and p.stderr.startswith("error: refusing to promote tiny: gates do not pass at step 1")
    assert "Traceback" not in p.stderr

    # pause blocks even a healthy step; resume clears it
    report(up, new=step1)
    assert modelfleet("rollout", "pause", "tiny", "--repo", repo, cwd=tmp_path).returncode == 0
    p = modelfleet("rollout", "promote", "tiny", "--repo", repo, cwd=tmp_path)
    assert p.returncode == 3 and "paused" in p.stderr
    assert "Phase: Paused" in modelfleet("rollout", "status", "tiny", "--repo", repo, cwd=tmp_path).stdout
    assert modelfleet("rollout", "resume", "tiny", "--repo", repo, cwd=tmp_path).returncode == 0

    # --force with a reason, signed with the operator's SSH key from their git configuration
    key = make_ssh_key(tmp_path / "keys", "ops@example.com")
    gitconfig = tmp_path / "gitconfig"
    gitconfig.write_text(f"[commit]\n\tgpgsign = true\n[gpg]\n\tformat = ssh\n[user]\n\tsigningkey = {key.path}\n")
    p = modelfleet("rollout", "promote", "tiny", "--repo", repo, "--force", "hotfix window", cwd=tmp_path,
                   GIT_CONFIG_GLOBAL=str(gitconfig))
    assert p.returncode == 0, p.stderr
    raw = git(up.bare, "cat-file", "commit", "main")
    assert "gpgsig -----BEGIN SSH SIGNATURE-----" in raw and "Forced by the operator: hotfix window" in raw

    # a failed device in the 50 % step: Failed, promote refused, abort to a PR branch, then to main
    pull(up)
    step2 = targets(up)
    bad = sorted(step2 - step1)[:3]
    report(up, new=step2 - set(bad), failed=set(bad))
    st = json.loads(modelfleet("rollout", "status", "tiny", "--repo", repo, "--format", "json", cwd=tmp_path).stdout)
    assert st["phase"] == "Failed" and st["step"] == 2 and st["steps"][2]["failed"] == 3
    p = modelfleet("rollout", "promote", "tiny", "--repo", repo, cwd=tmp_path)
    assert p.returncode == 3 and "maxFailedPercent" in p.stderr and "rollout abort tiny" in p.stderr
    head = up.head()
    p = modelfleet("rollout", "abort", "tiny", "--repo", repo, "--branch", "abort-tiny", cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    assert up.head() == head and git(up.bare, "rev-parse", "abort-tiny^") == head
    p = modelfleet("rollout", "abort", "tiny", "--repo", repo, "--reason", "probe mismatch", cwd=tmp_path)
    assert p.returncode == 0 and "every device back to 1.0.0" in p.stdout
    dep = yaml.safe_load(git(up.bare, "show", "main:deployments/tiny.yaml"))
    assert dep["spec"]["version"] == "1.0.0" and "rollout" not in dep["spec"]
    assert git(up.bare, "show", "main:deployments/tiny.yaml").startswith("# the tiny model, staged\n")
    st = json.loads(modelfleet("rollout", "status", "tiny", "--repo", repo, "--format", "json", cwd=tmp_path).stdout)
    assert st["phase"] == "Complete"
    p = modelfleet("rollout", "abort", "tiny", "--repo", repo, cwd=tmp_path)
    assert p.returncode == 1 and p.stderr == "error: deployment tiny is not in a rollout (it runs 1.0.0)\n"


def test_watch_promotes_to_completion_and_reports_errors(tmp_path: Path) -> None:
    up = Upstream(tmp_path / "up")
    up.commit(fleet_files(2), "tiny at 50 %")
    report(up, new={f"dev-{i:03d}" for i in range(N)})
    p = modelfleet("rollout", "watch", "tiny", "--repo", str(up.bare), "--interval", "0s", "--max-iterations", "5",
                   "--format", "json", cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    ticks = [json.loads(line) for line in p.stdout.splitlines()]
    assert [(t["step"], t["action"]) for t in ticks] == [(2, "promote"), (3, "promote"), (0, None)]
    assert ticks[-1]["phase"] == "Complete"
    assert "rollout:" not in git(up.bare, "show", "main:deployments/tiny.yaml")
    p = modelfleet("rollout", "status", "nope", "--repo", str(up.bare), cwd=tmp_path)
    assert p.returncode == 1 and p.stderr.startswith("error: no deployment 'nope'")
    p = modelfleet("rollout", "status", "tiny", "--repo", str(tmp_path / "missing"), cwd=tmp_path)
    assert p.returncode == 1 and "not found" in p.stderr


def test_gates_read_statuses_from_sharded_status_repositories(tmp_path: Path) -> None:
    """Devices that push their status to two status repositories (`status.url`): the gates count them only when
    `rollout status`/`promote` are given both with --status-repo."""
    up = Upstream(tmp_path / "up")
    up.commit(fleet_files(0), "fleet with tiny 1.1.0 at the canary step")
    canaries = targets(up)
    shards = [Upstream(tmp_path / f"shard{i}", name=f"status-{i}.git") for i in range(2)]
    for s in shards:
        s.commit({"README": "status shard\n"})
    hb = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    docs = {f"dev-{i:03d}": status(f"dev-{i:03d}", "1.1.0" if f"dev-{i:03d}" in canaries else "1.0.0", heartbeat=hb)
            for i in range(N)}
    for i, s in enumerate(shards):
        push_statuses(s, {dev: doc for dev, doc in docs.items() if int(dev[-3:]) % 2 == i})
    shard_args = ["--status-repo", str(shards[0].bare), "--status-repo", shards[1].file_url]

    doc = json.loads(modelfleet("rollout", "status", "tiny", "--repo", str(up.bare), *shard_args, "--format", "json",
                                cwd=tmp_path).stdout)
    assert doc["phase"] == "Ready" and doc["steps"][0]["healthy"] == 3, doc
    alone = json.loads(modelfleet("rollout", "status", "tiny", "--repo", str(up.bare), "--format", "json",
                                  cwd=tmp_path).stdout)
    assert alone["steps"][0]["healthy"] == 0 and alone["phase"] != "Ready"
    p = modelfleet("rollout", "promote", "tiny", "--repo", str(up.bare), *shard_args, cwd=tmp_path)
    assert p.returncode == 0 and "promoted tiny 1.1.0 to step 1" in p.stdout, p.stderr


def test_promote_from_a_clone_fast_forwards_it_or_says_how_to_update(tmp_path: Path) -> None:
    """The promote commit is pushed to the origin; the operator's clone (--repo PATH, or the clone the command runs
    in) used to stay behind, so their next `git push` was rejected. Now it is fast-forwarded when it has the branch
    checked out, clean and not ahead; otherwise it is left alone and the output says how to update it."""
    up = Upstream(tmp_path / "up")
    up.commit(fleet_files(0), "fleet with tiny 1.1.0 at the canary step")
    report(up, new=targets(up))
    clone = up.work

    p = modelfleet("rollout", "promote", "tiny", "--repo", str(clone), cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    head = git(up.bare, "rev-parse", "main")
    assert f"your clone {clone.relative_to(tmp_path)}: main fast-forwarded to {head[:12]}" in p.stdout, p.stdout
    assert git(clone, "rev-parse", "HEAD") == head and git(clone, "rev-parse", "origin/main") == head
    # the operator's next change pushes as it is
    (clone / "README.md").write_text("fleet\n")
    git(clone, "add", "README.md")
    git(clone, "commit", "--quiet", "-m", "readme")
    git(clone, "push", "--quiet", "origin", "main")

    # run inside the clone, no --repo: the same
    p = modelfleet("rollout", "pause", "tiny", cwd=clone)
    assert p.returncode == 0, p.stderr
    assert "your clone (the current directory): main fast-forwarded to" in p.stdout, p.stdout
    assert git(clone, "rev-parse", "HEAD") == git(up.bare, "rev-parse", "main")

    # uncommitted changes: pushed, the clone left alone, and how to update it
    before = git(clone, "rev-parse", "HEAD")
    (clone / "README.md").write_text("edited\n")
    p = modelfleet("rollout", "resume", "tiny", "--repo", str(clone), cwd=tmp_path)
    assert p.returncode == 0 and "resumed rollout of tiny" in p.stdout, p.stderr
    assert "is not updated (it has uncommitted changes): commit or stash them, then `git -C " in p.stdout, p.stdout
    assert "pull --ff-only origin main`" in p.stdout and git(clone, "rev-parse", "HEAD") == before
    git(clone, "checkout", "--quiet", "--", "README.md")

    # a commit of its own, not pushed: left alone, with the rebase that puts it on top
    git(clone, "commit", "--quiet", "--allow-empty", "-m", "local")
    p = modelfleet("rollout", "pause", "tiny", "--repo", str(clone), cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    assert "its main has 1 commit(s) that are not on origin" in p.stdout and "pull --rebase origin main" in p.stdout
    assert git(clone, "log", "-1", "--format=%s") == "local"

    # another branch checked out
    git(clone, "reset", "--quiet", "--hard", "origin/main")
    git(clone, "checkout", "--quiet", "-b", "feature")
    p = modelfleet("rollout", "resume", "tiny", "--repo", str(clone), cwd=tmp_path)
    assert p.returncode == 0 and "is not updated (on feature, not main): once main is checked out" in p.stdout
    # a bare repository or a URL is not a clone: nothing to update, nothing said
    p = modelfleet("rollout", "pause", "tiny", "--repo", str(up.bare), cwd=tmp_path)
    assert p.returncode == 0 and "your clone" not in p.stdout, p.stdout


def test_the_last_step_says_what_the_next_promote_does_and_completes(tmp_path: Path) -> None:
    """Promoting to the last step keeps the rollout (its gates guard the widest step and `abort` still works); the
    status used to say only "ready to promote" there. Now every Ready says what `promote` does next, the promote
    to the last step says a promote completes it, and that promote completes it in one commit."""
    up = Upstream(tmp_path / "up")
    up.commit(fleet_files(2), "tiny at 50 %")
    repo = str(up.bare)
    report(up, new={f"dev-{i:03d}" for i in range(N)})
    p = modelfleet("rollout", "status", "tiny", "--repo", repo, cwd=tmp_path)
    assert "Phase: Ready — all gates pass: `modelfleet rollout promote tiny` moves to step 3 (100%)" in p.stdout

    p = modelfleet("rollout", "promote", "tiny", "--repo", repo, cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    assert p.stdout.startswith("promoted tiny 1.1.0 to step 3 (100%), its last step: commit ")
    assert p.stdout.splitlines()[-1] == ("next: once step 3's gates pass (`modelfleet rollout status tiny`), "
                                         "`modelfleet rollout promote tiny` completes the rollout")
    p = modelfleet("rollout", "status", "tiny", "--repo", repo, cwd=tmp_path)
    assert ("Phase: Ready — all gates pass at the last step: `modelfleet rollout promote tiny` completes the rollout "
            "(1.1.0 on every selected device; the rollout block goes, and `abort` back to 1.0.0 with it)") in p.stdout

    p = modelfleet("rollout", "promote", "tiny", "--repo", repo, cwd=tmp_path)
    assert p.returncode == 0 and p.stdout.startswith("completed rollout of tiny 1.1.0 (every selected device runs "
                                                     "it; the rollout block is gone): commit "), p.stdout
    st = json.loads(modelfleet("rollout", "status", "tiny", "--repo", repo, "--format", "json", cwd=tmp_path).stdout)
    assert st["phase"] == "Complete" and st["inRollout"] is False and st["version"] == "1.1.0"


def test_abort_of_a_first_rollout_removes_the_deployment_in_one_commit(tmp_path: Path) -> None:
    """A first rollout (no rollout.from) could not be aborted ("suspend or delete it instead"): abort now removes
    the deployment in one commit, so every device stops serving it, and says how to bring it back. `watch` does
    not do that on its own: it says so and waits."""
    up = Upstream(tmp_path / "up")
    files = fleet_files(0)
    files["deployments/tiny.yaml"] = files["deployments/tiny.yaml"].replace('    from: "1.0.0"\n', "")
    up.commit(files, "tiny 1.1.0, a first rollout, at the canary step")
    repo = str(up.bare)
    canaries = targets(up)
    report(up, new=set(), failed=canaries)
    st = json.loads(modelfleet("rollout", "status", "tiny", "--repo", repo, "--format", "json", cwd=tmp_path).stdout)
    assert st["phase"] == "Failed" and st["from"] is None

    p = modelfleet("rollout", "promote", "tiny", "--repo", repo, cwd=tmp_path)
    assert p.returncode == 3 and "`modelfleet rollout abort tiny` removes deployment tiny (a first rollout" in p.stderr
    head = up.head()
    p = modelfleet("rollout", "watch", "tiny", "--repo", repo, "--once", cwd=tmp_path)
    assert p.returncode == 0 and "a first rollout (no rollout.from) is not aborted by watch" in p.stdout, p.stdout
    assert up.head() == head

    p = modelfleet("rollout", "abort", "tiny", "--repo", repo, "--reason", "canaries fail", cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    sha = git(up.bare, "rev-parse", "main")
    assert p.stdout.startswith("aborted tiny 1.1.0, a first rollout: deployment tiny removed, every device stops "
                               f"serving tiny: commit {sha[:12]} pushed to main"), p.stdout
    assert p.stdout.splitlines()[-1] == f"to bring it back: `git revert {sha[:12]}` (then push)"
    assert git(up.bare, "rev-parse", "main^") == head
    assert git(up.bare, "show", "--name-status", "--format=%s", "main").splitlines() == [
        "rollout tiny: abort 1.1.0, a first rollout: remove the deployment", "", "D\tdeployments/tiny.yaml"]
    pull(up)
    assert all("tiny" not in desired_state(load_files({r: (up.work / r).read_bytes() for r in
                                                       git(up.work, "ls-files").split("\n")}).fleet,
                                           DeviceIdentity(d, {"site": "a", "ring": "canary"})).endpoints
               for d in canaries)
    p = modelfleet("rollout", "status", "tiny", "--repo", repo, cwd=tmp_path)
    assert p.returncode == 1 and p.stderr.startswith("error: no deployment 'tiny'")
    # and the revert brings it back, at the step it was
    git(up.work, "revert", "--no-edit", sha)
    git(up.work, "push", "--quiet", "origin", "main")
    st = json.loads(modelfleet("rollout", "status", "tiny", "--repo", repo, "--format", "json", cwd=tmp_path).stdout)
    assert st["inRollout"] is True and st["step"] == 0 and st["version"] == "1.1.0"
