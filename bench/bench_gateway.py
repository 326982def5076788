"""N simulated devices in S sites behind S site gateways, against the same N devices direct; ONE JSON line.

Central servers as docs/hosting.md + docs/scale.md configure them: nginx + fcgiwrap + ``git http-backend`` for the
fleet repository (the devices' ``ls-refs`` poll answered from nginx's 1 s microcache, Basic auth on push), the
static TUF repository behind the same nginx (a bearer token). Each gateway is a real ``modelfleet gateway run``
process (its own nginx + fcgiwrap + git http-backend, tests/_gateway.py) relaying to the central repository.

Both runs, one after the other in this process, with fresh devices (:mod:`reconciler.simulate.shards`,
``BENCH_PROCESSES`` × ``BENCH_WORKERS``): the fleet converges on 1.0.0 and reports; an idle window of
``BENCH_IDLE_INTERVALS`` poll intervals; then the deployment moves to 1.1.0 (one commit: every device's update,
the "promote") and the bench waits for 99 % of the devices serving it, then for every device's newest status on
the central server. Reported per run, from the central nginx's log and the simulator:

* ``centralGitRequestsPerPollInterval`` in the idle window (direct: about one poll per device; behind gateways:
  each gateway's poll per gateway interval plus its relay pushes), and in the update window;
* ``centralTufTargetBytes`` and ``copiesOfTheUpdate``: bytes of targets the central TUF server sent in the update
  window, over the update's targets (the model and its probe) — direct: one copy per device; behind gateways:
  one per site;
* ``promoteTo99PollIntervals``: the update commit → 99 % of the devices serving 1.1.0, in poll intervals (behind
  gateways it includes up to one gateway interval before the site's mirror has the commit);
* status commits pushed and the devices whose newest status is on the central server at the end;
* behind gateways, ``kill9``: a second update (1.2.0), during which gateway 0 is killed with SIGKILL once
  ``BENCH_KILL_AT`` of the devices serve it (its nginx and fcgiwrap die with it), stays down ``BENCH_KILL_DOWN``
  seconds and is started again from its data directory: its site's devices fall back to the central servers
  (or catch up after the restart), every device serves 1.2.0, and no status commit is lost (every device's
  newest status on the central server at the end; pushed = made = on the central server).

Ratios (gateways / direct) in the same run. Environment: ``BENCH_DEVICES`` (200), ``BENCH_SITES`` (5),
``BENCH_POLL`` (10 s), ``BENCH_GATEWAY_INTERVAL`` (5 s), ``BENCH_PROCESSES`` (2), ``BENCH_WORKERS`` (16),
``BENCH_IDLE_INTERVALS`` (3), ``BENCH_KILL_AT`` (0.3; 0: no kill), ``BENCH_KILL_DOWN`` (20 s),
``BENCH_STATUS_SHARDS`` (16 status repositories on the central server, the busy repository's settings on each, as
docs/operations.md documents for 1,000 devices: the direct devices push to their shard by a hash of their id;
behind gateways status is sharded by site, each gateway relaying to one of them, site k to the k-th modulo 16,
as docs/scale.md's plan has it; 0: the fleet repository), ``BENCH_WORK_DIR``
(/dev/shm). The defaults fit a 2-core machine shared with other work; say so when quoting them. The issue's
scale: ``BENCH_DEVICES=1000 BENCH_SITES=20`` (about 12 minutes on 2 idle cores).
"""

from __future__ import annotations

import json
import logging
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_rollout import CgroupCpu, server_settings, tree_cpu  # noqa: E402

from reconciler.core.credentials import Credentials  # noqa: E402
from reconciler.simulate.fleet import SimSettings, status_on_server  # noqa: E402
from reconciler.simulate.shards import ShardedFleet  # noqa: E402
from tests._fleet_world import HttpWorld  # noqa: E402
from tests._gateway import GatewayProcess, central_tuf_url  # noqa: E402
from tests._git_fixtures import git  # noqa: E402
from tests._servers import private_file  # noqa: E402

N = int(os.environ.get("BENCH_DEVICES", "200"))
SITES = int(os.environ.get("BENCH_SITES", "5"))
POLL = float(os.environ.get("BENCH_POLL", "10"))
GW_INTERVAL = float(os.environ.get("BENCH_GATEWAY_INTERVAL", "5"))
PROCESSES = int(os.environ.get("BENCH_PROCESSES", "2"))
WORKERS = int(os.environ.get("BENCH_WORKERS", "16"))
IDLE_INTERVALS = float(os.environ.get("BENCH_IDLE_INTERVALS", "3"))
WORK_DIR = os.environ.get("BENCH_WORK_DIR", "/dev/shm" if os.path.isdir("/dev/shm") else None)
KILL_AT = float(os.environ.get("BENCH_KILL_AT", "0.3"))
# Status repositories (docs/operations.md: 16 from about 300 devices on one Git server); 0: the fleet repository.
SHARDS = int(os.environ.get("BENCH_STATUS_SHARDS", "16"))
KILL_DOWN = float(os.environ.get("BENCH_KILL_DOWN", "20"))


def central(world: HttpWorld, since: int) -> list[list[str]]:
    return [line.split() for line in world.git_http.service_requests()[since:]]


def git_requests(log: list[list[str]]) -> int:
    return sum(1 for f in log if f[1].startswith("/git/"))


def tuf_target_bytes(log: list[list[str]]) -> int:
    return sum(int(f[7]) for f in log if f[1].startswith("/tuf/fleet/targets/") and f[3] in ("200", "206"))


def relays_drained(gws: list[Any], since: float, limit: float) -> float | None:
    """Seconds until every gateway wrote its state after ``since`` (wall clock) with nothing pending upstream: the
    site's statuses are on the central server (None: not within ``limit``)."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < limit:
        ok = True
        for g in gws:
            path = g.data / "run" / "state.json"
            st = g.state() or {}
            fresh = path.exists() and path.stat().st_mtime > since
            if not fresh or (st.get("status") or {}).get("pending", 1) != 0:
                ok = False
                break
        if ok:
            return time.monotonic() - t0
        time.sleep(0.25)
    return None


def second_update_with_kill(fleet: ShardedFleet, gws: list[GatewayProcess], world: HttpWorld) -> dict[str, Any]:
    """A second update (1.2.0) during which gateway ``gws[0]`` is killed with SIGKILL once ``KILL_AT`` of the
    devices serve it, and restarted ``KILL_DOWN`` seconds later: when, what reached the central server meanwhile
    (its site's devices falling back), when every device served 1.2.0 and reported it, and when every gateway
    had relayed all of it upstream."""
    gw = gws[0]
    world.commit_raw(world.fleet_files("1.2.0", poll=f"{POLL:g}s"), "deploy 1.2.0")
    t_commit = time.monotonic()
    at = fleet.wait(lambda r: r["versions"].get("1.2.0", 0) >= KILL_AT * N, 30 * POLL)
    serving = fleet.poll()["versions"].get("1.2.0", 0)
    log0 = len(world.git_http.service_requests())
    gw.kill9()
    t_kill = time.monotonic()
    time.sleep(KILL_DOWN)
    down = central(world, log0)
    t0 = time.monotonic()
    gw.start(timeout=120)
    restart = time.monotonic() - t0
    t_all = fleet.wait(lambda r: r["versions"].get("1.2.0", 0) >= N, 30 * POLL)
    t_all = None if t_all is None else time.monotonic() - t_commit
    done = fleet.wait(lambda r: r["statusInSync"] >= N and r["reported"].get("1.2.0", 0) >= N, 30 * POLL)
    done = None if done is None else time.monotonic() - t_commit
    drained = relays_drained(gws, time.time(), 12 * max(GW_INTERVAL, 1))  # relayed upstream
    return {"relaysDrainedSeconds": None if drained is None else round(drained, 1), "killedAtSeconds": round(t_kill - t_commit, 1), "servingNewWhenKilled": serving,
            "reachedKillAt": at is not None, "downSeconds": round(t0 - t_kill, 1), "restartSeconds": round(restart, 1),
            "centralGitRequestsWhileDown": git_requests(down),
            "centralPushesWhileDown": sum(1 for f in down if f[1].endswith("/git-receive-pack")),
            "centralTufTargetBytesWhileDown": tuf_target_bytes(down),
            "allServingSeconds": None if t_all is None else round(t_all, 1),
            "allReportedSeconds": None if done is None else round(done, 1)}


def one_run(root: Path, gateways: int) -> dict[str, Any]:
    world = HttpWorld(root / "world", ls_refs_cache_s=1)
    cgroup = CgroupCpu.create(f"modelfleet-gwbench-{os.getpid()}-{gateways}")
    world.start()
    if cgroup is not None:
        cgroup.adopt(world.git_http.pids())
    bares = [world.upstream.bare]
    for i in range(SHARDS):
        bare = root / "status" / f"status-{i:02d}.git"
        bare.parent.mkdir(parents=True, exist_ok=True)
        git(bare.parent, "init", "--bare", "--quiet", str(bare))
        world.git_http.publish_repo(bare.name, bare)
        bares.append(bare)
    for bare in bares:
        server_settings(bare)
    shards = [world.git_http.url(b.name) for b in bares[1:]]
    gws: list[GatewayProcess] = []
    fleet: ShardedFleet | None = None
    try:
        world.publish("1.0.0")
        world.publish("1.1.0", bias=0.5)
        world.publish("1.2.0", bias=1.0)
        # The update's targets (the model and its probe): what one device downloads for it.
        update_files = [p for p in (world.tuf_dir / "targets").rglob("*") if p.is_file() and "1.1.0" in str(p)]
        world.commit_raw(world.fleet_files("1.0.0", poll=f"{POLL:g}s"), "deploy 1.0.0")
        tuf = central_tuf_url(world)
        for s in range(gateways):
            gws.append(GatewayProcess.for_world(world, root / f"site-{s}", interval=f"{GW_INTERVAL:g}s",
                                                name=f"site-{s}",
                                                status_urls=[shards[s % len(shards)]] if shards else None).start())
        settings = SimSettings(
            devices=N, source_url=world.git_url, trusted_root=world.trusted_root, tuf_url=tuf,
            tuf_credentials=Credentials(bearer_token_file=private_file(root / "tuf.token", "unused")),
            credentials=world.device_credentials, poll_interval=POLL, workers=WORKERS,
            gateways=[g.url for g in gws], status_urls=shards)
        fleet = ShardedFleet(settings, root / "devices", PROCESSES)
        conv = fleet.wait(lambda r: r["versions"].get("1.0.0", 0) == N and r["statusInSync"] == N, 60 * POLL)
        time.sleep(2 * max(GW_INTERVAL, 1))  # the gateways relay the first statuses
        # Idle window: nothing changes; what reaches the center.
        log0, git0 = len(world.git_http.service_requests()), cgroup.seconds() if cgroup else 0.0
        sim0 = sum(tree_cpu(p) for p in fleet.pids)
        t_idle = time.monotonic()
        time.sleep(IDLE_INTERVALS * POLL)
        idle_s = time.monotonic() - t_idle
        idle_log = central(world, log0)
        idle = {"seconds": round(idle_s, 1), "centralGitRequests": git_requests(idle_log),
                "centralGitRequestsPerPollInterval": round(git_requests(idle_log) * POLL / idle_s, 1),
                "centralGitServerCpuSeconds": round(cgroup.seconds() - git0, 2) if cgroup else None,
                "simulatorCpuSeconds": round(sum(tree_cpu(p) for p in fleet.pids) - sim0, 1)}
        # The update: one commit moves every device to 1.1.0.
        log1, git1 = len(world.git_http.service_requests()), cgroup.seconds() if cgroup else 0.0
        world.commit_raw(world.fleet_files("1.1.0", poll=f"{POLL:g}s"), "deploy 1.1.0")
        t_commit = time.monotonic()
        t99 = fleet.wait(lambda r: r["versions"].get("1.1.0", 0) >= 0.99 * N, 30 * POLL)
        t99 = None if t99 is None else time.monotonic() - t_commit
        t_all = fleet.wait(lambda r: r["versions"].get("1.1.0", 0) >= N, 30 * POLL)
        t_all = None if t_all is None else time.monotonic() - t_commit
        done = fleet.wait(lambda r: r["statusInSync"] >= N and r["reported"].get("1.1.0", 0) >= N, 30 * POLL)
        done = None if done is None else time.monotonic() - t_commit
        drained = relays_drained(gws, time.time(), 12 * max(GW_INTERVAL, 1)) if gws else None  # relayed upstream
        window = time.monotonic() - t_commit
        upd_log = central(world, log1)
        kill = second_update_with_kill(fleet, gws, world) if gws and KILL_AT > 0 else None
        final = fleet.close()
        fleet = None
        assert final is not None
        on = status_on_server(final.pop("tips"), credentials=world.device_credentials)
        size = sum(p.stat().st_size for p in update_files)
        copies = tuf_target_bytes(upd_log) / size
        return {
            "gateways": gateways, "devices": N, "gatewayIntervalSeconds": GW_INTERVAL if gateways else None,
            "firstConvergenceSeconds": None if conv is None else round(conv, 1),
            "idle": idle,
            "update": {
                "promoteTo99Seconds": None if t99 is None else round(t99, 1),
                "promoteTo99PollIntervals": None if t99 is None else round(t99 / POLL, 2),
                "promoteTo100Seconds": None if t_all is None else round(t_all, 1),
                "allReportedSeconds": None if done is None else round(done, 1),
                "relaysDrainedSeconds": None if drained is None else round(drained, 1),
                "windowSeconds": round(window, 1),
                "centralGitRequests": git_requests(upd_log),
                "centralGitRequestsPerPollInterval": round(git_requests(upd_log) * POLL / window, 1),
                "centralGitServerCpuSeconds": round(cgroup.seconds() - git1, 2) if cgroup else None,
                "centralTufRequests": sum(1 for f in upd_log if f[1].startswith("/tuf/")),
                "centralTufTargetBytes": tuf_target_bytes(upd_log), "updateTargetBytes": size,
                "copiesOfTheUpdate": round(copies, 2)},
            "statusCommitsPushed": final["statusPushes"], "statusCommitsMade": final["statusCommits"],
            "statusCommitsOnCentral": sum(int(git(b, "rev-list", "--count", "--glob=refs/heads/status/*") or 0)
                                          for b in bares),
            "newestStatusOnCentral": on, "rssMB": final["rssMB"], "kill9": kill,
            "gatewayState": [{"mirrorPolls": (g.state() or {}).get("mirror", {}).get("polls"),
                              "relayPushes": (g.state() or {}).get("status", {}).get("pushes")} for g in gws],
        }
    finally:
        if fleet is not None:
            fleet.close()
        for g in gws:
            g.stop()
        world.stop()
        if cgroup is not None:
            cgroup.remove()


def main() -> None:
    logging.getLogger("reconciler").setLevel(logging.ERROR)
    out: dict[str, Any] = {"bench": "gateway", "devices": N, "sites": SITES, "pollSeconds": POLL,
                           "statusRepositories": SHARDS or 1,
                           "gatewayIntervalSeconds": GW_INTERVAL, "processes": PROCESSES, "workersPerProcess": WORKERS,
                           "cores": os.cpu_count(), "loadavgAtStart": round(os.getloadavg()[0], 1)}
    with tempfile.TemporaryDirectory(prefix="bench-gateway-", dir=WORK_DIR) as tmp:
        out["direct"] = one_run(Path(tmp) / "direct", 0)
        print(json.dumps({"direct": out["direct"]}), file=sys.stderr, flush=True)
        out["behindGateways"] = one_run(Path(tmp) / "gateways", SITES)
    d, g = out["direct"], out["behindGateways"]
    out["ratios"] = {
        "centralGitRequestsIdle": round(g["idle"]["centralGitRequests"] / max(1, d["idle"]["centralGitRequests"]), 3),
        "centralGitRequestsUpdate": round(g["update"]["centralGitRequests"]
                                          / max(1, d["update"]["centralGitRequests"]), 3),
        "centralTufBytesPerUpdate": round(g["update"]["centralTufTargetBytes"]
                                          / max(1, d["update"]["centralTufTargetBytes"]), 3),
        "promoteTo99": None if not (g["update"]["promoteTo99Seconds"] and d["update"]["promoteTo99Seconds"]) else
        round(g["update"]["promoteTo99Seconds"] / d["update"]["promoteTo99Seconds"], 2)}
    out["loadavgAtEnd"] = round(os.getloadavg()[0], 1)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
