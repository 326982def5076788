"""Rollout at fleet scale, printed as ONE JSON line.

For each N (``BENCH_DEVICES``, default ``100,1000``): N simulated devices (the real agent loop, one process,
poll interval ``BENCH_POLL`` = 10 s with ±10 % jitter) against ``git daemon`` and the TUF static server.
The fleet converges on 1.0.0, a rollout of 1.1.0 to 1 % lands, then ``rollout promote`` takes it to 100 %:

* ``promoteTo99Seconds``: promote commit -> 99 % of the devices serving 1.1.0, and its ratio to the poll
  interval (goal ≤ 2);
* Git requests (ls-remote polls + fetches) and TUF requests (server side) during that window; CPU seconds of
  the simulator (with its git children) and of the Git server (with its upload/receive-pack children);
* status commits pushed by the devices vs commits the server has on ``status/*`` (goal: none lost);
* RSS per simulated device: (RSS after convergence − RSS before creating the devices) / N;
* ``rollout status`` and ``fleet status`` time on the fleet's real status branches, and on ``BENCH_STATUS_SYNTH``
  (default 1,000 and 5,000) synthetic status branches written with ``git fast-import``.

Run: .venv/bin/python bench/bench_rollout.py   (N=1,000 takes several minutes on 2 cores)
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from reconciler.gitops.fleetstatus import StatusRepo  # noqa: E402
from reconciler.gitops.statuswriter import dump_status  # noqa: E402
from reconciler.rollout.gitrepo import RolloutRepo  # noqa: E402
from reconciler.rollout.watch import act  # noqa: E402
from reconciler.simulate.fleet import SimSettings, Simulation  # noqa: E402
from tests._agent_fixtures import ENDPOINT  # noqa: E402
from tests._fleet_world import DEPLOYMENT, fleet_servers  # noqa: E402
from tests._git_fixtures import git, make_status  # noqa: E402

POLL = float(os.environ.get("BENCH_POLL", "10"))
SIZES = [int(x) for x in os.environ.get("BENCH_DEVICES", "100,1000").split(",") if x]
SYNTH = [int(x) for x in os.environ.get("BENCH_STATUS_SYNTH", "1000,5000").split(",") if x]
TICKS = os.sysconf("SC_CLK_TCK")


def proc_cpu(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return sum(int(f) for f in fields[11:15]) / TICKS


def tree_cpu(pid: int) -> float:
    """CPU of ``pid`` and every live descendant (``git daemon`` runs git-daemon, which forks upload-packs)."""
    total = proc_cpu(pid)
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            total += tree_cpu(int(stat.parent.name))
    return total


def self_cpu() -> float:
    r, c = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime + c.ru_utime + c.ru_stime


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def serving(sim: Simulation, version: str) -> int:
    n = 0
    for d in sim.devices:
        st = d.agent.journal.endpoints.get(ENDPOINT)
        n += st is not None and st.active is not None and st.active.version == version
    return n


def run_until(sim: Simulation, pred, timeout: float) -> float | None:  # type: ignore[no-untyped-def]
    """Run the fleet until ``pred()``; the seconds it took, or None on timeout (the fleet keeps its schedule)."""
    t0 = time.monotonic()
    for _ in sim.run(timeout, report_every=0.2):
        if pred():
            return time.monotonic() - t0
    return None


def commit_rollout(world, step: int) -> str:  # type: ignore[no-untyped-def]
    dep = {"rollout": {"from": "1.0.0", "steps": [{"percent": 1}, {"percent": 100}], "step": step,
                       "gates": {"minHealthyPercent": 90}}}
    files = world.fleet_files("1.1.0", poll=f"{POLL:g}s", deployment=dep)
    return world.commit_raw(files, "roll out 1.1.0 to 1 %")


def one_size(n: int, root: Path) -> dict:
    world = fleet_servers(root / "world", git="daemon")
    try:
        world.publish("1.0.0")
        world.publish("1.1.0", bias=0.5)
        world.commit_raw(world.fleet_files("1.0.0", poll=f"{POLL:g}s"), "deploy 1.0.0")
        rss0 = rss_mb()
        sim = Simulation.create(SimSettings(devices=n, source_url=world.git_url, trusted_root=world.trusted_root,
                                            poll_interval=POLL, workers=8), root / "devices")
        sim.boot()
        t_conv = run_until(sim, lambda: serving(sim, "1.0.0") == n, 60 * POLL)
        rss_per_device = (rss_mb() - rss0) / n
        commit_rollout(world, 0)
        run_until(sim, lambda: serving(sim, "1.1.0") >= max(1, n // 200), 10 * POLL)
        sim.flush_status(60)
        rr = RolloutRepo(world.git_url, root / "rollout-cache")
        snap, st = rr.status(DEPLOYMENT)
        git_cpu0, cpu0 = tree_cpu(world.daemon.proc.pid), self_cpu()
        req0 = sim.counters.snapshot()
        world.http.reset_stats()
        act(rr, DEPLOYMENT, "promote", st, snap)
        t_half = run_until(sim, lambda: serving(sim, "1.1.0") >= 0.5 * n, 30 * POLL)
        t_promote = run_until(sim, lambda: serving(sim, "1.1.0") >= 0.99 * n, 30 * POLL)
        if t_promote is not None and t_half is not None:
            t_promote += t_half
        share_at_end = serving(sim, "1.1.0") / n
        req1 = sim.counters.snapshot()
        tuf_requests = len(world.http.requests)
        git_cpu1, cpu1 = tree_cpu(world.daemon.proc.pid), self_cpu()
        sim.flush_status(120)
        pushed = sum(d.components.status_counts()[1] for d in sim.devices)
        received = int(git(world.upstream.bare, "rev-list", "--count", "--glob=refs/heads/status/*"))
        t0 = time.monotonic()
        _, final = rr.status(DEPLOYMENT)
        t_rollout_status = time.monotonic() - t0
        t0 = time.monotonic()
        StatusRepo(world.git_url, root / "fleet-cache").report(stale_after=3600)
        t_fleet_status = time.monotonic() - t0
        sessions = sim.runtime.sessions()
        sim.close()
        return {
            "devices": n, "pollSeconds": POLL, "firstConvergenceSeconds": None if t_conv is None else round(t_conv, 1),
            "promoteTo50Seconds": None if t_half is None else round(t_half, 1),
            "promoteTo99Seconds": None if t_promote is None else round(t_promote, 1),
            "shareServingNewAtEnd": round(share_at_end, 3),
            "promoteTo99PollIntervals": None if t_promote is None else round(t_promote / POLL, 2),
            "promoteWindow": {"gitPolls": req1["gitPolls"] - req0["gitPolls"],
                              "gitFetches": req1["gitFetches"] - req0["gitFetches"],
                              "tufServerRequests": tuf_requests,
                              "simulatorCpuSeconds": round(cpu1 - cpu0, 1),
                              "gitServerCpuSeconds": round(git_cpu1 - git_cpu0, 1)},
            "statusCommitsPushed": pushed, "statusCommitsReceived": received,
            "rssPerDeviceMB": round(rss_per_device, 2), "sharedSessions": sessions,
            "rolloutPhaseAfter": final.phase,
            "rolloutStatusSeconds": round(t_rollout_status, 2), "fleetStatusSeconds": round(t_fleet_status, 2),
        }
    finally:
        world.stop()


def synthetic_status(n: int, root: Path) -> dict:
    """Time rollout/fleet status on n status branches written in one ``git fast-import``."""
    world = fleet_servers(root / "world", git="daemon")
    try:
        world.publish("1.0.0")
        world.publish("1.1.0", bias=0.5)
        commit_rollout(world, 1)
        hb = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
        stream = []
        for i in range(n):
            dev = f"sim-{i:05d}"
            doc = make_status(dev, heartbeat=hb, version="1.1.0", deployment=DEPLOYMENT, model="det",
                              endpoint=ENDPOINT, applied="a" * 40)
            data = dump_status(doc)
            stream.append(f"commit refs/heads/status/{dev}\ncommitter {dev} <d@x> 1700000000 +0000\ndata 6\nstatus\n"
                          f"M 100644 inline status.yaml\ndata {len(data)}\n".encode() + data + b"\n")
        subprocess.run(["git", "fast-import", "--quiet"], cwd=world.upstream.bare, input=b"".join(stream), check=True)
        t0 = time.monotonic()
        _, st = RolloutRepo(world.git_url, root / "rc").status(DEPLOYMENT)
        t_rollout = time.monotonic() - t0
        t0 = time.monotonic()
        StatusRepo(world.git_url, root / "fc").report(stale_after=3600)
        t_fleet = time.monotonic() - t0
        assert st.current.healthy == n, st.message
        return {"devices": n, "rolloutStatusSeconds": round(t_rollout, 2), "fleetStatusSeconds": round(t_fleet, 2),
                "rolloutVsFleetStatus": round(t_rollout / t_fleet, 2)}
    finally:
        world.stop()


def per_request_costs(root: Path, polls: int = 200, pushes: int = 100) -> dict:
    """Git server CPU (git daemon and its children) per idle poll (ls-remote) and per status push."""
    world = fleet_servers(root / "world", git="daemon")
    try:
        world.publish("1.0.0")
        world.commit_raw(world.fleet_files("1.0.0"), "deploy 1.0.0")
        pid = world.daemon.proc.pid
        c0, t0 = tree_cpu(pid), time.monotonic()
        for _ in range(polls):
            subprocess.run(["git", "ls-remote", world.git_url, "refs/heads/main"], capture_output=True, check=True)
        poll_cpu, poll_wall = (tree_cpu(pid) - c0) / polls, (time.monotonic() - t0) / polls
        from reconciler.gitops.statuswriter import StatusWriter

        w = StatusWriter(world.git_url, "dev-1", root / "dev-1", heartbeat_interval=0)
        c0 = tree_cpu(pid)
        hb0 = dt.datetime.now(dt.timezone.utc)
        for i in range(pushes):
            hb = (hb0 + dt.timedelta(seconds=i)).strftime("%Y-%m-%dT%H:%M:%SZ")
            w.submit(make_status("dev-1", heartbeat=hb, applied="a" * 40))
            w.flush(30)
        push_cpu = (tree_cpu(pid) - c0) / pushes
        w.close()
        return {"gitServerCpuMsPerIdlePoll": round(poll_cpu * 1000, 2), "idlePollWallMs": round(poll_wall * 1000, 1),
                "gitServerCpuMsPerStatusPush": round(push_cpu * 1000, 2), "statusPushes": w.pushes}
    finally:
        world.stop()


def main() -> None:
    logging.getLogger("reconciler").setLevel(logging.ERROR)
    out: dict = {"bench": "rollout", "cores": os.cpu_count(), "loadavg": os.getloadavg()[0], "sizes": [],
                 "statusSynthetic": []}
    with tempfile.TemporaryDirectory(prefix="bench-rollout-") as tmp:
        for n in SIZES:
            out["sizes"].append(one_size(n, Path(tmp) / f"n{n}"))
        for n in SYNTH:
            out["statusSynthetic"].append(synthetic_status(n, Path(tmp) / f"s{n}"))
        out["perRequest"] = per_request_costs(Path(tmp) / "per-request")
    print(json.dumps(out))


if __name__ == "__main__":
    main()
