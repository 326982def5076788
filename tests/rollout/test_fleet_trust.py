"""Issue V: the operator's tools against a hostile device or Git server, over a real git daemon.

An attacker with push access to ``status/*`` forges branches and statuses; a compromised device writes hostile
documents; the Git server injects an unsigned commit. The gates, ``promote``, ``watch``, ``fleet status`` and
``fleet history`` must hold: forgeries never count, one bad branch fails alone, nothing reaches the terminal
unescaped, and nothing is committed on top of an unverified commit.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from reconciler.gitops.statuswriter import dump_status
from tests._git_fixtures import GitDaemon, Upstream, env, git, make_ssh_key, write_allowed_signers
from tests._identity import device_key, shared_device_key, signed_status_commit
from tests.rollout._fleet import status
from tests.rollout.test_cli import N, fleet_files, targets


def cli(*args: str, cwd: Path, **extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "reconciler.cli", *args], capture_output=True, text=True, cwd=cwd,
                          env=env(XDG_CACHE_HOME=str(cwd / ".cache"), **extra), timeout=120)


def now() -> str:
    return dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def push(up: Upstream, commits: dict[str, str]) -> None:
    git(up.work, "push", "--quiet", "--force", "origin", *(f"+{sha}:refs/heads/status/{dev}" for dev, sha in commits.items()))


def unsigned_commit(up: Upstream, device: str, data: bytes) -> str:
    blob = git(up.work, "hash-object", "-w", "--stdin", input=data)
    tree = git(up.work, "mktree", input=f"100644 blob {blob}\tstatus.yaml\n".encode())
    return git(up.work, "commit-tree", "-m", f"status: {device}", tree)


def genuine(up: Upstream, docs: dict[str, dict]) -> None:
    push(up, {dev: signed_status_commit(up.work / ".git", dev, dump_status(doc)) for dev, doc in docs.items()})


@pytest.fixture
def served(tmp_path: Path):
    """The 30-device fleet at the canary step, served by git daemon; the operator reads git://."""
    up = Upstream(tmp_path / "up")
    up.commit(fleet_files(0), "fleet with tiny 1.1.0 at the canary step")
    with GitDaemon(up.bare.parent) as daemon:
        git(up.bare, "config", "daemon.receivepack", "true")
        yield up, daemon.url("fleet.git")


def test_forged_branches_and_signatures_never_sway_the_gates(served, tmp_path: Path) -> None:
    up, url = served
    canaries = sorted(targets(up))
    hb = now()
    # Two of three canaries genuinely failed; the rest of the fleet is on the old version.
    docs = {f"dev-{i:03d}": status(f"dev-{i:03d}", "1.0.0", heartbeat=hb) for i in range(N)}
    for dev in canaries[:2]:
        docs[dev] = status(dev, "1.0.0", heartbeat=hb, desired="1.1.0", failed_version="1.1.0")
    docs[canaries[2]] = status(canaries[2], "1.1.0", heartbeat=hb)
    genuine(up, docs)
    skip = {"MODELFLEET_INSECURE_SKIP_VERIFY": "1"}
    before = json.loads(cli("rollout", "status", "tiny", "--repo", url, "--format", "json", cwd=tmp_path).stdout)
    refused = cli("rollout", "promote", "tiny", "--repo", url, cwd=tmp_path, **skip)
    assert before["phase"] == "Failed" and refused.returncode == 3

    # 60 branches of devices that do not exist, claiming the canary ring and serving the new version.
    forged = {}
    for i in range(60):
        dev = f"zz-fake-{i:02d}"
        doc = status(dev, "1.1.0", heartbeat=hb)
        doc["status"]["labels"] = {"ring": "canary", "site": "a"}
        forged[dev] = unsigned_commit(up, dev, dump_status(doc))
    push(up, forged)
    after = json.loads(cli("rollout", "status", "tiny", "--repo", url, "--format", "json", cwd=tmp_path).stdout)
    assert after["phase"] == before["phase"] == "Failed"
    assert after["steps"] == before["steps"]
    assert not any(d["device"].startswith("zz-fake") for d in after["devices"])
    again = cli("rollout", "promote", "tiny", "--repo", url, cwd=tmp_path, **skip)
    assert again.returncode == 3 and again.stderr == refused.stderr
    fleet = json.loads(cli("fleet", "status", "--repo", url, "--format", "json", cwd=tmp_path).stdout)
    fakes = [d for d in fleet["devices"] if d["device"].startswith("zz-fake")]
    assert len(fakes) == 60 and {(d["trust"], d["trust_reason"]) for d in fakes} == {("untrusted", "NotInInventory")}
    assert fleet["totals"]["untrusted"] == 60 and fleet["totals"]["ready"] + fleet["totals"]["notReady"] == N

    # Forged failures: every canary healthy, but the attacker rewrites two canaries' branches with failures —
    # one unsigned, one signed with another device's key. watch must promote, not abort.
    docs = {f"dev-{i:03d}": status(f"dev-{i:03d}", "1.1.0" if f"dev-{i:03d}" in canaries else "1.0.0",
                                   heartbeat=hb) for i in range(N)}
    genuine(up, docs)
    failing = {dev: status(dev, "1.0.0", heartbeat=now(), desired="1.1.0", failed_version="1.1.0")
               for dev in canaries[:2]}
    push(up, {canaries[0]: unsigned_commit(up, canaries[0], dump_status(failing[canaries[0]])),
              canaries[1]: signed_status_commit(up.work / ".git", canaries[1], dump_status(failing[canaries[1]]),
                                                key_path=shared_device_key("dev-029")[0])})
    fleet = json.loads(cli("fleet", "status", "--repo", url, "--format", "json", cwd=tmp_path).stdout)
    rows = {d["device"]: d for d in fleet["devices"]}
    assert rows[canaries[0]]["trust_reason"] == "UnsignedStatus"
    assert rows[canaries[1]]["trust_reason"] == "WrongDeviceKey" and "dev-029" in rows[canaries[1]]["trust_message"]
    w = cli("rollout", "watch", "tiny", "--repo", url, "--once", "--format", "json", cwd=tmp_path, **skip)
    assert w.returncode == 0, w.stderr
    tick = json.loads(w.stdout.splitlines()[0])
    assert tick["action"] == "promote", tick


def _peak_rss_mb(args: list[str], cwd: Path) -> tuple[subprocess.CompletedProcess[str], float]:
    """Run the CLI; its result and its own peak RSS (wait4 on that child alone)."""
    import tempfile

    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen([sys.executable, "-m", "reconciler.cli", *args], stdout=out, stderr=err, cwd=cwd,
                                env=env(XDG_CACHE_HOME=str(cwd / ".cache")))
        _, status_, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status_)
        out.seek(0)
        err.seek(0)
        return subprocess.CompletedProcess(args, proc.returncode, out.read(), err.read()), usage.ru_maxrss / 1024


BOMB = b"""apiVersion: modelfleet/v1
kind: DeviceStatus
metadata: {name: DEV}
a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]
b: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a]
c: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b]
d: &d [*c,*c,*c,*c,*c,*c,*c,*c,*c]
e: &e [*d,*d,*d,*d,*d,*d,*d,*d,*d]
f: &f [*e,*e,*e,*e,*e,*e,*e,*e,*e]
g: &g [*f,*f,*f,*f,*f,*f,*f,*f,*f]
status: {heartbeat: "2026-01-01T00:00:00Z", conditions: [], x: *g}
"""


def test_one_hostile_branch_fails_alone(served, tmp_path: Path) -> None:
    """A compromised device (its own key) writes an alias bomb, wrongly typed fields, and a 10 MB blob: each of
    those devices is unreadable with a reason, every other device renders, in bounded memory."""
    up, url = served
    hb = now()
    docs = {f"dev-{i:03d}": status(f"dev-{i:03d}", "1.0.0", heartbeat=hb) for i in range(N)}
    genuine(up, docs)
    base, base_rss = _peak_rss_mb(["fleet", "status", "--repo", url, "--format", "json"], tmp_path)
    assert base.returncode == 0, base.stderr
    typed = status("dev-001", "1.0.0", heartbeat=hb)
    typed["status"]["endpoints"][0]["deployment"] = ["x"]
    drift = status("dev-002", "1.0.0", heartbeat=hb)
    drift["status"]["endpoints"][0]["drift"] = {"level": "Warning", "score": "x"}
    hostile = {
        "dev-000": BOMB.replace(b"DEV", b"dev-000"),
        "dev-001": dump_status(typed),
        "dev-002": dump_status(drift),
        "dev-003": b"apiVersion: modelfleet/v1\nkind: DeviceStatus\n# " + b"x" * (10 << 20) + b"\n",
    }
    push(up, {dev: signed_status_commit(up.work / ".git", dev, data) for dev, data in hostile.items()})
    for fmt in ("json", "table"):
        p, rss = _peak_rss_mb(["fleet", "status", "--repo", url, "--format", fmt], tmp_path)
        assert p.returncode == 0 and "Traceback" not in p.stderr, p.stderr
        assert rss - base_rss < 100, (rss, base_rss)
    rows = {d["device"]: d for d in json.loads(
        cli("fleet", "status", "--repo", url, "--format", "json", cwd=tmp_path).stdout)["devices"]}
    assert len(rows) == N
    assert all(rows[d]["error"] for d in hostile), {d: rows[d]["error"] for d in hostile}
    assert "larger than" in rows["dev-003"]["error"]
    assert all(rows[f"dev-{i:03d}"]["ready"] == "True" for i in range(4, N))
    for args in (["rollout", "status", "tiny"], ["fleet", "drift"], ["fleet", "history", "dev-000"]):
        p = cli(*args, "--repo", url, cwd=tmp_path)
        assert p.returncode == 0 and "Traceback" not in p.stderr, (args, p.stderr)


CONTROLS = "".join(chr(c) for c in [*range(0x00, 0x20), 0x7f, *range(0x80, 0xa0)] if c not in (0x0a,))
EVIL = "\x1b]0;pwned\x07\x1b[1A\x1b[2K\x1b]8;;http://evil.example/\x07link\x1b]8;;\x07\x9b31m\u202e"


def test_control_characters_are_escaped_in_every_human_output(served, tmp_path: Path) -> None:
    up, url = served
    hb = now()
    docs = {f"dev-{i:03d}": status(f"dev-{i:03d}", "1.0.0", heartbeat=hb) for i in range(N)}
    bad = docs["dev-000"]["status"]
    bad["conditions"][0].update(status="False", reason="Broken" + EVIL, message="m" + CONTROLS)
    bad["endpoints"][0].update(name="tiny" + EVIL, version="1.0.0" + EVIL, state="Failed",
                               deployment="tiny", model="tiny" + CONTROLS, message="why" + EVIL)
    bad["appliedCommit"] = "a" + EVIL
    genuine(up, docs)
    # And a device whose heartbeat itself is hostile (the schema refuses it: the error quotes it).
    odd = status("dev-001", "1.0.0", heartbeat=hb)
    odd["status"]["heartbeat"] = "2026" + EVIL
    genuine(up, {"dev-001": odd})
    outputs = {}
    for fmt in ("table", "markdown"):
        outputs[f"status-{fmt}"] = cli("fleet", "status", "--repo", url, "--format", fmt, cwd=tmp_path)
        outputs[f"history-{fmt}"] = cli("fleet", "history", "dev-000", "--repo", url, "--format", fmt, cwd=tmp_path)
        outputs[f"rollout-{fmt}"] = cli("rollout", "status", "tiny", "--repo", url, "--format", fmt, cwd=tmp_path)
    outputs["history-odd"] = cli("fleet", "history", "dev-001", "--repo", url, cwd=tmp_path)
    for name, p in outputs.items():
        assert p.returncode == 0, (name, p.stderr)
        text = p.stdout + p.stderr
        leaked = sorted({hex(ord(c)) for c in text if (ord(c) < 0x20 and c != "\n") or 0x7f <= ord(c) < 0xa0
                         or c == "\u202e"})
        assert not leaked, (name, leaked)
    assert "\\x1b]0;pwned\\x07" in outputs["status-table"].stdout
    # JSON keeps the exact value.
    j = json.loads(cli("fleet", "status", "--repo", url, "--format", "json", cwd=tmp_path).stdout)
    row = next(d for d in j["devices"] if d["device"] == "dev-000")
    assert row["error"] is None, row["error"]
    assert row["endpoints"][0]["name"] == "tiny" + EVIL and row["reason"] == "Broken" + EVIL


def test_operator_commands_refuse_an_unsigned_commit_injected_by_the_server(served, tmp_path: Path) -> None:
    up, url = served
    ops = make_ssh_key(tmp_path / "keys", "ops@example.com")
    allowed = write_allowed_signers(tmp_path / "allowed_signers", ops)
    gitconfig = tmp_path / "gitconfig"
    gitconfig.write_text(f"[commit]\n\tgpgsign = true\n[gpg]\n\tformat = ssh\n[user]\n\tsigningkey = {ops.path}\n")
    signed = {"GIT_CONFIG_GLOBAL": str(gitconfig)}
    # A signed fleet: the operator's own commit on top, verified.
    git(up.work, "-c", "gpg.format=ssh", "-c", f"user.signingkey={ops.path}", "commit", "--quiet", "-S",
        "--allow-empty", "-m", "signed base")
    git(up.work, "push", "--quiet", "origin", "main")
    canaries = targets(up)
    genuine(up, {f"dev-{i:03d}": status(f"dev-{i:03d}", "1.1.0" if f"dev-{i:03d}" in canaries else "1.0.0",
                                        heartbeat=now()) for i in range(N)})
    # No anchors and no opt-out: refused, with the way out named.
    p = cli("rollout", "promote", "tiny", "--repo", url, cwd=tmp_path, **signed)
    assert p.returncode == 4 and "--allowed-signers" in p.stderr and "--insecure-skip-verify" in p.stderr
    anchors = ["--allowed-signers", str(allowed)]
    p = cli("rollout", "pause", "tiny", "--repo", url, *anchors, cwd=tmp_path, **signed)
    assert p.returncode == 0, p.stderr
    p = cli("rollout", "resume", "tiny", "--repo", url, *anchors, cwd=tmp_path, **signed)
    assert p.returncode == 0, p.stderr

    # The server adds an unsigned commit that repoints the deployment.
    git(up.work, "pull", "--quiet", "--ff-only", "origin", "main")
    model = (up.work / "models/tiny.yaml").read_text().replace("tiny/1.1.0/model.onnx", "tiny/evil/model.onnx")
    (up.work / "models/tiny.yaml").write_text(model)
    git(up.work, "commit", "--quiet", "-am", "injected", extra_env={"GIT_CONFIG_GLOBAL": "/dev/null"})
    git(up.work, "push", "--quiet", "origin", "main")
    injected = git(up.bare, "rev-parse", "main")
    for args in (["rollout", "promote", "tiny"], ["rollout", "abort", "tiny"], ["rollout", "pause", "tiny"],
                 ["rollout", "watch", "tiny", "--once"], ["rollout", "watch", "tiny", "--interval", "0s",
                                                          "--max-iterations", "3"]):
        p = cli(*args, "--repo", url, *anchors, cwd=tmp_path, **signed)
        assert p.returncode == 4, (args, p.returncode, p.stdout, p.stderr)
        assert "UnsignedCommit" in p.stderr and injected[:12] in p.stderr and "Traceback" not in p.stderr
        assert git(up.bare, "rev-parse", "main") == injected  # nothing committed on top
    # Verifying the head only catches it too.
    p = cli("rollout", "promote", "tiny", "--repo", url, *anchors, "--verify", "head", cwd=tmp_path, **signed)
    assert p.returncode == 4
    # A rewrite of the verified history is refused as such.
    git(up.work, "reset", "--quiet", "--hard", "HEAD~3")  # before the pause, the last commit verified here
    git(up.work, "commit", "--quiet", "--allow-empty", "-m", "rewritten", extra_env={"GIT_CONFIG_GLOBAL": "/dev/null"})
    git(up.work, "push", "--quiet", "--force", "origin", "main")
    p = cli("rollout", "resume", "tiny", "--repo", url, *anchors, cwd=tmp_path, **signed)
    assert p.returncode == 4 and "HistoryRewrite" in p.stderr, p.stderr


def test_a_branch_moved_back_to_an_older_status_is_flagged(served, tmp_path: Path) -> None:
    up, url = served
    t0 = int(dt.datetime.now(dt.timezone.utc).timestamp())
    old = signed_status_commit(up.work / ".git", "dev-000", dump_status(status("dev-000", "1.0.0", heartbeat=now())),
                               when=t0 - 600)
    new = signed_status_commit(up.work / ".git", "dev-000", dump_status(status("dev-000", "1.1.0", heartbeat=now())),
                               parent=old, when=t0)
    push(up, {"dev-000": new})
    first = json.loads(cli("fleet", "status", "--repo", url, "--format", "json", cwd=tmp_path).stdout)
    assert first["devices"][0]["trust"] == "trusted"
    push(up, {"dev-000": old})  # replayed: a genuine, signed, older status
    again = json.loads(cli("fleet", "status", "--repo", url, "--format", "json", cwd=tmp_path).stdout)
    assert again["devices"][0]["trust_reason"] == "StatusRewritten"


def test_a_key_the_manifest_does_not_list_and_migration(tmp_path: Path) -> None:
    """requireSignatures: false accepts unsigned status only from devices without a key in their manifest."""
    from tests._identity import inventory_files

    up = Upstream(tmp_path / "up")
    _, line = device_key(tmp_path / "k", "b")
    up.commit(inventory_files({"a": None, "b": line}, require=False), "migrating fleet")
    docs = {d: dump_status(status(d, "1.0.0", heartbeat=now())) for d in ("a", "b")}
    push(up, {d: unsigned_commit(up, d, data) for d, data in docs.items()})
    rows = {d["device"]: d for d in json.loads(cli("fleet", "status", "--repo", str(up.bare), "--format", "json",
                                                   cwd=tmp_path).stdout)["devices"]}
    assert (rows["a"]["trust"], rows["a"]["trust_reason"]) == ("unsigned", "UnsignedAccepted")
    assert (rows["b"]["trust"], rows["b"]["trust_reason"]) == ("untrusted", "UnsignedStatus")
