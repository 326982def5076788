"""Fleet status: pure report logic, plus `modelfleet fleet status/history` over a real 20-device test fleet."""

from __future__ import annotations

import datetime as dt
import json
import subprocess
import sys
from pathlib import Path

import pytest

from reconciler.gitops.fleetstatus import build_report, render
from reconciler.gitops.statusrepo import FleetRead, StatusRecord, parse_status
from reconciler.gitops.statuswriter import StatusWriter, dump_status
from reconciler.identity.trust import SIGNED, StatusTrust, TrustPolicy
from tests._git_fixtures import GitDaemon, Upstream, env, git, make_status
from tests._identity import device_key, inventory_files

NOW = dt.datetime(2026, 11, 24, 10, 30, tzinfo=dt.timezone.utc)


def modelfleet(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "reconciler.cli", *args], capture_output=True, text=True, cwd=cwd,
                          env=env(XDG_CACHE_HOME=str(cwd or Path.cwd()) + "/.cache"), timeout=120)


def test_report_rows_summary_and_formats() -> None:
    trusted = StatusTrust(True, SIGNED, "signed")

    def rec(device: str, data: bytes) -> StatusRecord:
        r = StatusRecord(device, f"c-{device}", 0, trusted)
        try:
            r.doc = parse_status(data, device)
        except ValueError as exc:
            r.error = str(exc)
        return r

    records = {
        "cam-1": rec("cam-1", dump_status(make_status("cam-1", applied="h" * 40, heartbeat="2026-11-24T10:29:00Z"))),
        "cam-2": rec("cam-2", dump_status(make_status("cam-2", applied="o" * 40, version="0.9.0", ready=False,
                                                      heartbeat="2026-11-24T09:00:00Z"))),
        "cam-3": rec("cam-3", b"!!python/object/apply:os.system ['true']\n"),
    }
    read = FleetRead("h" * 40, None, TrustPolicy({}), records)
    rep = build_report("main", read, {"h" * 40: 0, "o" * 40: 3}, now=NOW, stale_after=900)
    rows = {r.device: r for r in rep.rows}
    assert rows["cam-1"].behind == 0 and not rows["cam-1"].stale and rows["cam-1"].ready == "True"
    assert rows["cam-2"].behind == 3 and rows["cam-2"].stale and rows["cam-2"].age_seconds == 5400
    assert rows["cam-3"].error and rows["cam-3"].stale
    assert rep.versions == {"cams": {"detector@0.9.0": 1, "detector@1.0.0": 1}}
    assert rep.totals == {"devices": 3, "ready": 1, "notReady": 1, "stale": 1, "behind": 1, "unreadable": 1,
                          "untrusted": 0, "neverReported": 0}
    table = render(rep, "table")
    assert "behind 3" in table and "1h30m STALE" in table and "up to date" in table
    assert "False (HealthCheckFailed)" in table and "unreadable" in table
    md = render(rep, "markdown")
    assert md.count("\n| cam-") == 3 and "| cams | detector@1.0.0 | 1 |" in md
    j = json.loads(render(rep, "json"))
    assert j["totals"]["stale"] == 1 and j["devices"][0]["device"] == "cam-1"


def test_parse_status_rejects_hostile_yaml() -> None:
    with pytest.raises(ValueError):
        parse_status(b"a: !!python/name:os.system\n")
    with pytest.raises(ValueError):
        parse_status(b"x" * 300_000)
    with pytest.raises(ValueError, match="DeviceStatus"):
        parse_status(b"- 1\n- 2\n")


@pytest.fixture(scope="module")
def fleet20(tmp_path_factory) -> tuple[Upstream, list[str]]:
    """A fleet repo with 3 commits on main and 20 devices that pushed their status through git daemon."""
    root = tmp_path_factory.mktemp("fleet20")
    up = Upstream(root)
    devices = [f"cam-{i:02d}" for i in range(20)]
    ids = {dev: device_key(root / "keys", dev) for dev in devices}
    inventory = inventory_files({dev: ids[dev][1] for dev in devices})
    commits = [up.commit({**inventory, "README": f"rev: {i}\n"}) for i in range(3)]
    now = dt.datetime.now(dt.timezone.utc).replace(microsecond=0)
    with GitDaemon(up.bare.parent) as d:
        writers = []
        for i in range(20):
            dev = f"cam-{i:02d}"
            applied = commits[2] if i < 15 else commits[0]
            hb = now - dt.timedelta(hours=2 if i == 19 else 0, seconds=i)
            w = StatusWriter(d.url("fleet.git"), dev, root / "devices" / dev, signing_key=ids[dev][0])
            w.submit(make_status(dev, applied=applied, version="1.1.0" if i < 15 else "1.0.0", ready=i != 17,
                                 heartbeat=hb.isoformat().replace("+00:00", "Z"),
                                 deployment="doors" if i % 2 else "lobby"))
            writers.append(w)
        assert all(w.flush(30) for w in writers)
        w = writers[3]
        w.submit(make_status("cam-03", applied=commits[2], version="1.2.0", deployment="doors",
                             heartbeat=now.isoformat().replace("+00:00", "Z")))
        assert w.flush(30)
        for w in writers:
            w.close(timeout=1)
    return up, commits


def test_fleet_status_cli_on_twenty_devices(fleet20, tmp_path: Path) -> None:
    up, commits = fleet20
    p = modelfleet("fleet", "status", "--repo", up.file_url, "--stale-after", "1h", cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    print(p.stdout)  # shown with -s: the closing note's sample output
    lines = {ln.split()[0]: ln for ln in p.stdout.splitlines() if ln.startswith("cam-")}
    assert len(lines) == 20
    assert "up to date" in lines["cam-00"] and "behind 2" in lines["cam-15"]
    assert "STALE" in lines["cam-19"] and "STALE" not in lines["cam-00"]
    assert "False" in lines["cam-17"] and "detector@1.2.0" in lines["cam-03"]
    assert "20 devices: 19 ready, 1 not ready, 1 stale, 5 behind main" in p.stdout
    j = json.loads(modelfleet("fleet", "status", "--repo", str(up.bare), "--format", "json", cwd=tmp_path).stdout)
    assert j["head"] == commits[2] and len(j["devices"]) == 20
    assert j["versions"]["doors"]["detector@1.2.0"] == 1
    md = modelfleet("fleet", "status", "--repo", up.file_url, "--format", "markdown", cwd=tmp_path)
    assert md.returncode == 0 and md.stdout.count("| cam-") == 20


def test_fleet_history_and_errors(fleet20, tmp_path: Path) -> None:
    up, commits = fleet20
    p = modelfleet("fleet", "history", "cam-03", "--repo", up.file_url, cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    rows = p.stdout.splitlines()[1:]
    assert len(rows) == 2 and "detector@1.2.0" in rows[0] and "detector@1.1.0" in rows[1]
    j = json.loads(modelfleet("fleet", "history", "cam-03", "--repo", up.file_url, "--format", "json",
                              cwd=tmp_path).stdout)
    assert [e["endpoints"][0]["version"] for e in j["history"]] == ["1.2.0", "1.1.0"]
    missing = modelfleet("fleet", "history", "nope", "--repo", up.file_url, cwd=tmp_path)
    assert missing.returncode != 0 and "error: no status branch status/nope" in missing.stderr
    assert "Traceback" not in missing.stderr
    bad = modelfleet("fleet", "status", "--repo", str(tmp_path / "absent"), cwd=tmp_path)
    assert bad.returncode != 0 and bad.stderr.startswith("error:") and "Traceback" not in bad.stderr
    down = modelfleet("fleet", "status", "--repo", "git://127.0.0.1:9/fleet.git", cwd=tmp_path)
    assert down.returncode != 0 and "error: cannot read status branches" in down.stderr
    stale = modelfleet("fleet", "status", "--repo", up.file_url, "--stale-after", "soon", cwd=tmp_path)
    assert stale.returncode != 0 and "--stale-after" in stale.stderr
    # Inside a clone, the default repository is its origin.
    clone = tmp_path / "clone"
    git(tmp_path, "clone", "--quiet", up.file_url, str(clone))
    inside = modelfleet("fleet", "status", cwd=clone)
    assert inside.returncode == 0 and inside.stdout.count("\ncam-") == 20


def test_statuses_from_sharded_status_repositories(tmp_path: Path) -> None:
    """Devices push to two status repositories (their `status.url`), not the fleet repository: `fleet status
    --status-repo A --status-repo B` reports every device with "behind" against the fleet repository's head,
    `fleet history` finds a device in the second shard, and a device that moved shards shows its newest status."""
    up = Upstream(tmp_path / "fleet")
    ids = {f"cam-{i}": device_key(tmp_path / "keys", f"cam-{i}") for i in range(6)}
    inventory = inventory_files({dev: line for dev, (_, line) in ids.items()})
    commits = [up.commit({**inventory, "README": f"rev: {i}\n"}) for i in range(2)]
    shards = [Upstream(tmp_path / f"shard{i}", name=f"status-{i}.git") for i in range(2)]
    now = dt.datetime.now(dt.timezone.utc).replace(microsecond=0)

    def push(shard: int, dev: str, version: str, applied: str, age: int) -> None:
        w = StatusWriter(shards[shard].file_url, dev, tmp_path / "devices" / f"{dev}-{shard}",
                         signing_key=ids[dev][0])
        hb = (now - dt.timedelta(seconds=age)).isoformat().replace("+00:00", "Z")
        w.submit(make_status(dev, applied=applied, version=version, heartbeat=hb))
        assert w.flush(30)
        w.close(timeout=1)

    for i in range(6):
        push(i % 2, f"cam-{i}", "1.0.0", commits[1] if i < 4 else commits[0], age=i)
    push(0, "cam-5", "1.1.0", commits[1], age=0)  # cam-5 moved to shard 0 later: its newest status wins
    shard_args = ["--status-repo", shards[0].file_url, "--status-repo", str(shards[1].bare)]
    p = modelfleet("fleet", "status", "--repo", up.file_url, *shard_args, "--format", "json", cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    rows = {d["device"]: d for d in json.loads(p.stdout)["devices"]}
    assert sorted(rows) == [f"cam-{i}" for i in range(6)]
    assert rows["cam-1"]["behind"] == 0 and rows["cam-4"]["behind"] == 1
    assert rows["cam-5"]["endpoints"][0]["version"] == "1.1.0"
    # Without --status-repo the fleet repository holds no status branch: no device, not an error.
    alone = modelfleet("fleet", "status", "--repo", up.file_url, "--format", "json", cwd=tmp_path)
    assert alone.returncode == 0 and json.loads(alone.stdout)["devices"] == []
    h = modelfleet("fleet", "history", "cam-3", "--repo", up.file_url, *shard_args, "--format", "json", cwd=tmp_path)
    assert h.returncode == 0 and len(json.loads(h.stdout)["history"]) == 1, h.stderr
    missing = modelfleet("fleet", "history", "cam-9", "--repo", up.file_url, *shard_args, cwd=tmp_path)
    assert missing.returncode == 1 and "error: no status branch status/cam-9" in missing.stderr
    bad = modelfleet("fleet", "status", "--repo", up.file_url, "--status-repo", str(tmp_path / "absent"), cwd=tmp_path)
    assert bad.returncode != 0 and "--status-repo" in bad.stderr and "Traceback" not in bad.stderr


def _why_status(device: str) -> dict:
    doc = make_status(device, applied="h" * 40, ready=False, heartbeat="2026-11-24T10:29:00Z")
    st = doc["status"]
    st["conditions"] = [
        {"type": "Ready", "status": "False", "reason": "NotConverged", "message": "1 endpoint not converged",
         "lastTransitionTime": "2026-11-24T09:00:00Z"},
        {"type": "SourceAvailable", "status": "True", "reason": "Succeeded", "message": "",
         "lastTransitionTime": "2026-11-24T09:00:00Z"},
        {"type": "ManifestsValid", "status": "False", "reason": "ValidationFailed",
         "message": "deployments/scorer.yaml:10: unknown field spec.selector.matchLabel",
         "lastTransitionTime": "2026-11-24T09:00:00Z"},
    ]
    st["endpoints"] = [
        {"name": "scorer", "deployment": "scorer", "model": "scorer", "version": "1.2.0", "desiredVersion": "1.3.0",
         "state": "Failed", "message": "TargetHashMismatch: scorer/1.3.0/model.onnx"},
        {"name": "textdir", "deployment": "textdir", "model": "textdir", "version": None, "state": "Removed"},
    ]
    return doc


def test_fleet_status_says_why_and_what_serves(tmp_path: Path) -> None:
    """Issue Y: the failing condition's reason and message, what still serves next to what failed, no ghost rows
    for removed endpoints, and a per-device view."""
    trusted = StatusTrust(True, SIGNED, "signed")
    rec = StatusRecord("edge-02", "c" * 40, 0, trusted, doc=parse_status(dump_status(_why_status("edge-02")),
                                                                         "edge-02"))
    rep = build_report("main", FleetRead("h" * 40, None, TrustPolicy({}), {"edge-02": rec}), {"h" * 40: 0}, now=NOW,
                       stale_after=900)
    table = render(rep, "table")
    assert "False (ValidationFailed)" in table and "NotConverged" not in table.split("Not ready:")[0]
    assert ("edge-02: ManifestsValid ValidationFailed: deployments/scorer.yaml:10: unknown field "
            "spec.selector.matchLabel") in table
    assert "scorer=scorer@1.2.0 (serving; 1.3.0 Failed)" in table
    assert "textdir" not in table and "Removed" not in table
    assert rep.versions == {"scorer": {"scorer@1.2.0": 1}}
    row = json.loads(render(rep, "json"))["devices"][0]
    assert row["condition"] == "ManifestsValid" and row["message"].endswith("matchLabel")
    assert {c["type"] for c in row["conditions"]} == {"Ready", "SourceAvailable", "ManifestsValid"}
    assert "Not ready:" in render(rep, "markdown")

    up = Upstream(tmp_path / "up")
    path, line = device_key(tmp_path / "k", "edge-02")
    up.commit(inventory_files({"edge-02": line, "edge-03": None}, require=False))
    w = StatusWriter(up.file_url, "edge-02", tmp_path / "dev", signing_key=path)
    try:
        w.submit(_why_status("edge-02"))
        assert w.flush(30)
    finally:
        w.close(timeout=1)
    one = modelfleet("fleet", "status", "--repo", up.file_url, "--device", "edge-02", cwd=tmp_path)
    assert one.returncode == 0, one.stderr
    assert "ManifestsValid   False    ValidationFailed: deployments/scorer.yaml:10" in one.stdout
    assert "scorer=scorer@1.2.0 (serving; 1.3.0 Failed): TargetHashMismatch" in one.stdout
    never = modelfleet("fleet", "status", "--repo", up.file_url, "--device", "edge-03", cwd=tmp_path)
    assert never.returncode == 0 and "never reported" in never.stdout
    unknown = modelfleet("fleet", "status", "--repo", up.file_url, "--device", "nope", cwd=tmp_path)
    assert unknown.returncode == 1 and "no device 'nope'" in unknown.stderr


def test_compiled_status_check_agrees_with_jsonschema() -> None:
    """The compiled DeviceStatus check (fleet scale) refuses and accepts exactly what jsonschema does."""
    import copy

    from reconciler.fleet.schemas import fast_check, validator

    good = make_status("cam-1", applied="a" * 40)
    mutations = [
        lambda d: d["status"]["endpoints"][0].update(model=None),
        lambda d: d["status"]["endpoints"][0].update(deployment=["x"]),
        lambda d: d["status"]["endpoints"][0].update(state="Exploded"),
        lambda d: d["status"].update(extra=1),
        lambda d: d["status"].pop("heartbeat"),
        lambda d: d["status"]["conditions"].append({"type": "Ready"}),
        lambda d: d["status"]["endpoints"][0].update(message="m" * 5000),
        lambda d: d["status"]["endpoints"][0].update(drift={"level": "Warning", "score": "x"}),
        lambda d: d["status"].update(attempts=[{}] * 3),
        lambda d: d.update(kind="Device"),
        lambda d: None,
    ]
    slow, fast = validator("DeviceStatus"), fast_check("DeviceStatus")
    for i, mutate in enumerate(mutations):
        doc = copy.deepcopy(good)
        mutate(doc)
        want = slow.is_valid(doc)
        try:
            fast(doc)
            got = True
        except ValueError:
            got = False
        assert got == want, (i, want)
