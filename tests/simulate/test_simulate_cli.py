"""``modelfleet simulate``: JSON lines of convergence from real agents, faults, and clean errors."""

from __future__ import annotations

import json
import os
import signal
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


def test_simulate_as_an_operator_runs_it_signed_sharded_status_behind_nginx(tmp_path: Path) -> None:
    """The documented configuration: nginx + git http-backend (push needs Basic auth), the devices' credentials
    from --username/--password-file, status sharded over two repositories, status keys listed in the Device
    manifests --write-inventory wrote; the run ends by itself once converged (exit 0), every line has the memory,
    the final line proves every device's newest status is on the server, and `fleet status` counts them."""
    from tests._fleet_world import HttpWorld

    w = HttpWorld(tmp_path / "world").start()
    try:
        keys, inv = tmp_path / "keys", tmp_path / "inventory"
        p = modelfleet("simulate", "--devices", "6", "--canaries", "1", "--label", "site=lab", "--status-keys",
                       str(keys), "--write-inventory", str(inv), cwd=tmp_path)
        assert p.returncode == 0 and "6 Device manifests" in p.stderr, p.stderr
        assert sorted(f.name for f in keys.iterdir()) == [f"sim-{i:05d}" for i in range(6)]
        assert all((f.stat().st_mode & 0o777) == 0o600 for f in keys.iterdir())
        manifests = {f"devices/{f.name}": f.read_text() for f in inv.iterdir()}
        assert "ring: canary" in manifests["devices/sim-00000.yaml"] and "site: lab" in manifests["devices/sim-00005.yaml"]
        assert "ssh-ed25519 " in manifests["devices/sim-00003.yaml"]
        # Written again: the same files, nothing rewritten, the keys kept.
        again = modelfleet("simulate", "--devices", "6", "--canaries", "1", "--label", "site=lab", "--status-keys",
                           str(keys), "--write-inventory", str(inv), cwd=tmp_path)
        assert again.returncode == 0 and "(0 written)" in again.stderr
        w.publish("1.0.0")
        commit_version(w, "1.0.0", extra_files=manifests)
        bares = [tmp_path / f"status-{i}.git" for i in range(2)]
        for bare in bares:
            git(tmp_path, "init", "--bare", "--quiet", str(bare))
            w.git_http.publish_repo(bare.name, bare)
        shards = [w.git_http.url(b.name) for b in bares]
        log0 = len(w.git_http.requests())
        p = modelfleet("simulate", "--devices", "6", "--processes", "2", "--canaries", "1", "--label", "site=lab",
                       "--repo", w.git_url, "--tuf", w.http.url, "--trusted-root", str(w.trusted_root),
                       "--username", "device", "--password-file", str(w.password_file),
                       "--status-repo", shards[0], "--status-repo", shards[1], "--status-keys", str(keys),
                       "--poll-interval", "1s", "--until", "converged", "--until", "reported:1.0.0:100%",
                       "--duration", "120s", "--report-every", "1s", "--per-device", cwd=tmp_path)
        assert p.returncode == 0, p.stderr[-2000:]
        lines = [json.loads(line) for line in p.stdout.splitlines()]
        assert all(line["rssMB"] > 0 for line in lines)  # memory in every line, with --processes too
        final = lines[-1]
        assert final["final"] and final["until"]["met"] and final["until"]["conditions"] == [
            "converged", "reported:1.0.0:100%"]
        assert final["t"] < 60  # ended by --until, not --duration
        assert final["statusOnServer"] == {"onServer": 6, "behind": 0, "none": 0, "unreachable": 0}
        assert final["statusPushes"] == final["statusCommits"] and final["converged"] == 6
        per = final["perDevice"]
        assert sorted(per) == [f"sim-{i:05d}" for i in range(6)]
        for rec in per.values():
            assert rec["polls"] >= 1 and len(rec["pollTimes"]) == rec["polls"]
            assert rec["pollTimes"] == sorted(rec["pollTimes"]) and rec["served"][-1][1] == "1.0.0"
            assert rec["heads"][0][1] == git(w.upstream.bare, "rev-parse", "main")[:12]
            # When each push landed: one time per push, and the status saying it serves 1.0.0 pushed after that.
            assert len(rec["pushTimes"]) == rec["statusPushes"] and rec["pushTimes"] == sorted(rec["pushTimes"])
            assert rec["pushTimes"][-1] >= rec["served"][-1][0]
        # Each device's branch is on its shard only, and every push was the in-process one: with credentials,
        # never `git push` (whose first request is the ref advertisement with a 401 challenge).
        on_shards = [git(b, "for-each-ref", "--format=%(refname:short)", "refs/heads/status/").split() for b in bares]
        assert sorted(on_shards[0] + on_shards[1]) == [f"status/sim-{i:05d}" for i in range(6)]
        log = w.git_http.requests()[log0:]
        assert not [x for x in log if x.split()[2] == "401"]
        assert all(x.split()[3] == "device" for x in log if "git-receive-pack" in x)
        # Signed by the keys the inventory lists: `fleet status` counts every device as trusted.
        fs = modelfleet("fleet", "status", "--repo", w.git_url, "--status-repo", shards[0], "--status-repo",
                        shards[1], "--format", "json", cwd=tmp_path)
        assert fs.returncode == 0, fs.stderr
        rows = json.loads(fs.stdout)["devices"]
        assert len(rows) == 6 and {r["trust"] for r in rows} == {"trusted"}
    finally:
        w.stop()


def test_simulate_until_not_met_and_refusals(tmp_path: Path) -> None:
    w = fleet_servers(tmp_path / "world", git="daemon")
    try:
        w.publish("1.0.0")
        commit_version(w, "1.0.0")
        p = modelfleet("simulate", "--devices", "3", "--repo", w.git_url, "--tuf", w.http.url, "--trusted-root",
                       str(w.trusted_root), "--poll-interval", "1s", "--until", "serving:9.9.9:50%",
                       "--duration", "4s", "--report-every", "1s", cwd=tmp_path)
        assert p.returncode == 3, p.stderr
        assert "did not hold within 4s" in p.stderr
        final = json.loads(p.stdout.splitlines()[-1])
        assert final["final"] and not final["until"]["met"] and final["until"]["reason"].startswith("--duration 4s")
        # Ctrl-C (SIGINT to the process group, as a terminal sends it): the shards flush, the final line, 130.
        proc = subprocess.Popen([sys.executable, "-m", "reconciler.cli", "simulate", "--devices", "4", "--processes",
                                 "2", "--repo", w.git_url, "--tuf", w.http.url, "--trusted-root", str(w.trusted_root),
                                 "--poll-interval", "1s", "--duration", "5m"], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, cwd=tmp_path, env=env(), start_new_session=True)
        assert proc.stdout is not None
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            line = json.loads(proc.stdout.readline())
            if line.get("statusInSync") == 4:
                break
        os.killpg(proc.pid, signal.SIGINT)
        rest, _ = proc.communicate(timeout=120)
        assert proc.returncode == 130
        final = json.loads(rest.splitlines()[-1])
        assert final["final"] and final["until"]["reason"] == "interrupted"
        assert final["statusOnServer"]["onServer"] == 4
    finally:
        w.stop()
    root = tmp_path / "root.json"
    root.write_text("{}")
    for args, message in (
            (["--until", "done"], "--until 'done': expected converged"),
            (["--until", "serving:1.0:0"], "must be above 0"),
            (["--repo", "http://device:pw@127.0.0.1:1/git/f.git"], "embeds a password or token"),
            (["--username", "device"], "--username and --password-file go together")):
        base = ["simulate", "--devices", "2", "--trusted-root", str(root)]
        if "--repo" not in args:
            base += ["--repo", "git://127.0.0.1:1/x"]
        p = modelfleet(*base, *args, cwd=tmp_path)
        assert p.returncode == 2 and message in p.stderr, (args, p.stderr)
    p = modelfleet("simulate", "--devices", "2", "--repo", "git://127.0.0.1:1/x", cwd=tmp_path)
    assert p.returncode == 2 and "--trusted-root is required" in p.stderr


def test_status_repository_by_hash_or_by_site() -> None:
    """Without gateways a device's status repository is its shard by a hash of its id (as readers and the relay
    place it); with gateways it is its site's, so each gateway relays to one repository."""
    from reconciler.gitops.statusrepo import status_shard
    from reconciler.simulate.fleet import SimSettings, device_id, status_url

    urls = ["http://git/status-0.git", "http://git/status-1.git"]
    plain = SimSettings(devices=8, source_url="http://git/fleet.git", trusted_root=Path("root.json"),
                        status_urls=urls)
    assert [status_url(device_id("sim", i), i, plain) for i in range(8)] == [
        status_shard(device_id("sim", i), urls) for i in range(8)]
    sites = SimSettings(devices=8, source_url="http://git/fleet.git", trusted_root=Path("root.json"),
                        status_urls=urls, gateways=[f"http://gw-{k}" for k in range(4)])
    assert [status_url(device_id("sim", i), i, sites) for i in range(8)] == [urls[(i // 2) % 2] for i in range(8)]
    # A process of a sharded fleet (devices 4..7 of 8) places them as the whole fleet would.
    part = SimSettings(devices=4, first=4, total=8, source_url="http://git/fleet.git", trusted_root=Path("root.json"),
                       status_urls=urls, gateways=[f"http://gw-{k}" for k in range(4)])
    assert [status_url(device_id("sim", i), i, part) for i in range(4, 8)] == [urls[0], urls[0], urls[1], urls[1]]
    assert status_url("sim-00000", 0, SimSettings(devices=1, source_url="x", trusted_root=Path("r"))) is None
