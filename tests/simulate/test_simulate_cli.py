"""``modelfleet simulate``: JSON lines of convergence from real agents, faults, and clean errors."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

from tests._fleet_world import commit_version, fleet_servers
from tests._git_fixtures import env, git


def modelfleet(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "reconciler.cli", *args], capture_output=True, text=True, cwd=cwd,
                          env=env(), timeout=180)


def test_simulate_prints_convergence_and_pushes_status(tmp_path: Path) -> None:
    w = fleet_servers(tmp_path / "world", git="daemon")
    try:
        w.publish("1.0.0")
        commit_version(w, "1.0.0")
        p = modelfleet("simulate", "--devices", "12", "--repo", w.git_url, "--tuf", w.http.url,
                       "--trusted-root", str(w.trusted_root), "--poll-interval", "1s", "--offline-share", "0.25",
                       "--fail-share", "0.1", "--duration", "12s", "--report-every", "2s",
                       "--work-dir", str(tmp_path / "devices"), cwd=tmp_path)
        assert p.returncode == 0, p.stderr[-2000:]
        lines = [json.loads(line) for line in p.stdout.splitlines()]
        assert len(lines) >= 6 and lines[0]["versions"] == {"-": 12}
        last = lines[-1]
        assert last["versions"] == {"-": 3, "1.0.0": 9} and last["offline"] == 3
        assert last["requests"]["gitPolls"] >= 9 and last["requests"]["tufDownloads"] >= 18
        assert last["sessions"] == 1 and last["requests"]["healthChecks"] == 1  # one session for 9 devices
        assert last["statusPushes"] == last["statusCommits"] >= 9
        branches = git(w.upstream.bare, "for-each-ref", "--format=%(refname:short)", "refs/heads/status/")
        assert len(branches.split()) == 9  # the offline devices never reached the server
        assert [t for t in (line["t"] for line in lines)] == sorted(line["t"] for line in lines)
    finally:
        w.stop()


def test_simulate_errors(tmp_path: Path) -> None:
    root = tmp_path / "root.json"
    root.write_text("{}")
    p = modelfleet("simulate", "--devices", "2", "--repo", "git://127.0.0.1:1/x", "--trusted-root", str(root),
                   "--label", "novalue", cwd=tmp_path)
    assert p.returncode == 1 and p.stderr == "error: --label 'novalue': expected KEY=VALUE\n"
    p = modelfleet("simulate", "--devices", "2", "--repo", "x", "--trusted-root", str(root), "--duration", "soon",
                   cwd=tmp_path)
    assert p.returncode == 1 and p.stderr.startswith("error: --duration:") and "Traceback" not in p.stderr


def test_simulate_over_processes_keeps_the_device_numbering(tmp_path: Path) -> None:
    w = fleet_servers(tmp_path / "world", git="daemon")
    try:
        w.publish("1.0.0")
        commit_version(w, "1.0.0")
        p = modelfleet("simulate", "--devices", "9", "--processes", "2", "--canaries", "2", "--repo", w.git_url,
                       "--tuf", w.http.url, "--trusted-root", str(w.trusted_root), "--poll-interval", "1s",
                       "--status-push-spread", "1s",
                       "--duration", "10s", "--report-every", "2s", "--work-dir", str(tmp_path / "devices"),
                       cwd=tmp_path)
        assert p.returncode == 0, p.stderr[-2000:]
        lines = [json.loads(line) for line in p.stdout.splitlines()]
        assert lines[0]["devices"] == 9 and lines[0]["versions"] == {"-": 9}
        last = lines[-1]
        assert last["versions"] == {"1.0.0": 9} and last["offline"] == 0
        assert last["reported"] == {"1.0.0": 9}  # every device's newest status, spread or not, is on the server
        assert last["sessions"] == 2  # one health-checked session per process
        assert last["statusPushes"] == last["statusCommits"] >= 9
        # The same devices as in one process: sim-00000 … sim-00008, the first two in the canary ring.
        branches = git(w.upstream.bare, "for-each-ref", "--format=%(refname:short)", "refs/heads/status/").split()
        assert branches == [f"status/sim-{i:05d}" for i in range(9)]
        for i in (1, 2):
            status = git(w.upstream.bare, "cat-file", "blob", f"refs/heads/status/sim-{i:05d}:status.yaml")
            assert f"ring: {'canary' if i < 2 else 'stable'}" in status
        assert sorted(d.name for d in (tmp_path / "devices").iterdir()) == ["shard0", "shard1"]
    finally:
        w.stop()


def test_closing_shards_that_filled_their_report_pipe_lets_them_flush_and_exit(tmp_path: Path) -> None:
    from reconciler.simulate.fleet import SimSettings
    from reconciler.simulate.shards import ShardedFleet

    w = fleet_servers(tmp_path / "world", git="daemon")
    try:
        w.publish("1.0.0")
        commit_version(w, "1.0.0")
        settings = SimSettings(devices=4, source_url=w.git_url, trusted_root=w.trusted_root, tuf_url=w.http.url,
                               poll_interval=1.0, workers=2)
        fleet = ShardedFleet(settings, tmp_path / "devices", 2, report_every=0.001)
        time.sleep(3)  # nobody reads: a thousand reports a second fill each shard's pipe, which then blocks it
        t0 = time.monotonic()
        fleet.close(timeout=60)
        # Each shard read "stop", flushed its status pushes and exited by itself (a killed one exits -9).
        assert [p.exitcode for p in fleet.procs] == [0, 0] and time.monotonic() - t0 < 30
    finally:
        w.stop()
