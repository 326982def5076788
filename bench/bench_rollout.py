"""Rollout at fleet scale against the real servers, printed as ONE JSON line.

Servers as a self-hosted fleet runs them: Git smart HTTP (nginx + fcgiwrap + ``git http-backend``, the fixture
:class:`tests._servers.GitHttp`; devices poll with the in-process protocol v2 ``ls-refs`` and push their status
with Basic auth) and a second nginx serving the static TUF repository. The simulated devices run the real agent
loop (:mod:`reconciler.simulate`), poll interval ``BENCH_POLL`` = 10 s with ±10 % jitter, their state on tmpfs
(``BENCH_WORK_DIR``, default /dev/shm: N devices' fsyncs on one shared disk are not what is measured).

``BENCH_LSREFS_CACHE_S`` (default 1; 0 = off): nginx answers the devices' ``ls-refs`` poll from a microcache
valid that many seconds (``GitHttp(ls_refs_cache_s=...)``, docs/scale.md).

For each N in ``BENCH_DEVICES`` (default ``100,1000``): the fleet converges on 1.0.0, idles for
``BENCH_IDLE_SECONDS`` (the idle path: polls/s, simulator and Git server CPU per poll), a rollout of 1.1.0 to 1 %
lands, then ``rollout promote`` takes it to 100 %:

* ``promoteTo99Seconds``: promote commit -> 99 % of the devices serving 1.1.0, and its ratio to the poll
  interval (goal ≤ 2); ``promoteTo99ReportedSeconds``: -> 99 % serving it with that status on the Git server;
* the devices' ``status.pushSpread`` is ``BENCH_PUSH_SPREAD`` (default: one poll interval; 0 = push at once);
* requests the Git and TUF servers logged in that window; CPU seconds of the simulator (with its git
  children), of the Git server (nginx + fcgiwrap + http-backend/upload-pack/receive-pack) and of the TUF nginx;
* status commits pushed by the devices vs commits the server has on ``status/*`` (goal: none lost);
* RSS per simulated device; ``rollout status`` / ``fleet status`` time on the fleet's real status branches.

``BENCH_IDLE`` (default ``5000``): N devices on the idle path only (status off; they converge first).
``BENCH_STATUS_SYNTH`` (default ``100,1000,5000``): ``rollout status`` / ``fleet status`` on N synthetic status
branches written with ``git fast-import``. ``perRequest``: server CPU per idle poll (``ls-refs`` over smart HTTP
paced at a fleet's rate, without and with the microcache;
``git ls-remote`` over smart HTTP and over ``git daemon`` for comparison) and per status push.

The devices run in ``BENCH_PROCESSES`` (default 2) simulator processes of ``BENCH_WORKERS`` threads each
(:mod:`reconciler.simulate.shards`, ``modelfleet simulate --processes``). The Git server's CPU comes from a cgroup
holding nginx, fcgiwrap and every process they start (``git http-backend`` and its git children are never
reaped by fcgiwrap, so no parent accounts for them), where one can be made; else from a ``times`` wrapper around
the backend, which reads whole clock ticks per request and so misses most of a short request's CPU.

Run: .venv/bin/python bench/bench_rollout.py   (about 10 minutes on 2 cores)
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import re
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from reconciler.core.credentials import Credentials  # noqa: E402
from reconciler.gitops.fleetstatus import fleet_report  # noqa: E402
from reconciler.gitops.lsrefs import LsRefsClient  # noqa: E402
from reconciler.gitops.statusrepo import StatusRepo  # noqa: E402
from reconciler.gitops.statuswriter import StatusWriter, dump_status  # noqa: E402
from reconciler.rollout.gitrepo import RolloutRepo  # noqa: E402
from reconciler.rollout.watch import act  # noqa: E402
from reconciler.simulate.fleet import SimSettings  # noqa: E402
from reconciler.simulate.shards import ShardedFleet  # noqa: E402
from tests._agent_fixtures import ENDPOINT  # noqa: E402
from tests._fleet_world import DEPLOYMENT, HttpWorld, fleet_servers  # noqa: E402
from tests._git_fixtures import git, make_status  # noqa: E402
from tests._servers import GIT_HTTP_BACKEND, GitHttp, private_file  # noqa: E402

POLL = float(os.environ.get("BENCH_POLL", "10"))
SIZES = [int(x) for x in os.environ.get("BENCH_DEVICES", "100,1000").split(",") if x]
IDLE = [int(x) for x in os.environ.get("BENCH_IDLE", "5000").split(",") if x]
SYNTH = [int(x) for x in os.environ.get("BENCH_STATUS_SYNTH", "100,1000,5000").split(",") if x]
IDLE_SECONDS = float(os.environ.get("BENCH_IDLE_SECONDS", str(3 * POLL)))
WORKERS = int(os.environ.get("BENCH_WORKERS", "16"))  # threads per simulator process
PROCESSES = int(os.environ.get("BENCH_PROCESSES", "2"))  # simulator processes (the GIL: one core each)
# Status repositories the devices push to, by a hash of their id (0: the fleet repository, unsharded).
# nginx answers the devices' ls-refs poll from a microcache valid this many seconds (0: off; docs/scale.md)
LSREFS_CACHE_S = int(os.environ.get("BENCH_LSREFS_CACHE_S", "1")) or None
POLL_RATE = float(os.environ.get("BENCH_POLL_RATE", "100"))  # perRequest's paced polls/s (1,000 devices at 10 s)
STATUS_SHARDS = int(os.environ.get("BENCH_STATUS_SHARDS", "16"))
# The devices' status.pushSpread (s): a new status waits a random time up to this before it is pushed, so the
# pushes after the promote do not arrive as one burst (docs/scale.md). Default: one poll interval.
PUSH_SPREAD = float(os.environ.get("BENCH_PUSH_SPREAD", str(POLL)))
WORK_DIR = os.environ.get("BENCH_WORK_DIR", "/dev/shm" if os.path.isdir("/dev/shm") else None)
TICKS = os.sysconf("SC_CLK_TCK")
TUF_TOKEN = "bench-tuf-token"


def proc_cpu(pid: int) -> float:
    """utime + stime + the reaped children's (``git http-backend`` and its git processes exit before we look)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return sum(int(f) for f in fields[11:15]) / TICKS


def tree_cpu(pid: int) -> float:
    """CPU of ``pid`` and every live descendant."""
    total = proc_cpu(pid)
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            total += tree_cpu(int(stat.parent.name))
    return total


class CgroupCpu:
    """CPU of a group of server processes and of every process they start, from a cgroup the bench creates.

    fcgiwrap does not reap the CGI processes it starts (``git http-backend`` and its git children), so their CPU
    shows up in no parent's accounting. A cgroup counts it without changing what runs (the ``times`` wrapper
    of :func:`accounted_backend` costs a shell per request, ≈ 0.5 ms of CPU the server would not spend).
    ``None`` from :meth:`create` where no cgroup can be made (not root, no cgroup file system).
    """

    def __init__(self, path: Path, usage: Path) -> None:
        self.path, self.usage = path, usage

    @classmethod
    def create(cls, name: str) -> CgroupCpu | None:
        for base, usage in ((Path("/sys/fs/cgroup/cpuacct"), "cpuacct.usage"), (Path("/sys/fs/cgroup"), "cpu.stat")):
            path = base / name
            try:
                path.mkdir()
            except OSError:
                continue
            if (path / usage).is_file() and os.access(path / "cgroup.procs", os.W_OK):
                return cls(path, path / usage)
            path.rmdir()
        return None

    def adopt(self, pids: list[int]) -> None:
        """Move ``pids`` and their live descendants into the group (their future children follow)."""
        for pid in descendants(pids):
            try:
                (self.path / "cgroup.procs").write_text(f"{pid}\n")
            except OSError:
                pass  # exited meanwhile

    def seconds(self) -> float:
        text = self.usage.read_text()
        if self.usage.name == "cpu.stat":
            return int(re.search(r"usage_usec (\d+)", text).group(1)) / 1e6  # type: ignore[union-attr]
        return int(text) / 1e9

    def remove(self) -> None:
        for _ in range(200):  # empty once the servers' last processes are gone (and reaped)
            try:
                self.path.rmdir()
                return
            except OSError:
                time.sleep(0.1)
        print(f"bench: could not remove the cgroup {self.path} (rmdir it when empty)", file=sys.stderr)


def descendants(pids: list[int]) -> list[int]:
    """``pids`` and every live descendant."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            children.setdefault(int(stat.read_text().rsplit(")", 1)[1].split()[1]), []).append(int(stat.parent.name))
        except (OSError, ValueError, IndexError):
            continue
    out, todo = [], list(pids)
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo += children.get(pid, [])
    return out


def accounted_backend(root: Path) -> tuple[Path, Path]:
    """A wrapper around ``git http-backend`` that appends its CPU (and its git children's) to a log.

    fcgiwrap ignores SIGCHLD, so the CGI processes it starts are reaped by the kernel and their CPU shows up
    in no parent's accounting; the wrapper's shell waits for the backend and writes ``times``.
    """
    log = root / "backend-cpu.log"
    script = root / "git-http-backend-accounted"
    root.mkdir(parents=True, exist_ok=True)
    script.write_text(f"#!/bin/sh\n{GIT_HTTP_BACKEND}\nrc=$?\ntimes >> {log}\nexit $rc\n")
    script.chmod(0o755)
    return script, log


def backend_cpu(log: Path) -> float:
    """CPU seconds of every finished backend request so far (the children line of each ``times``)."""
    try:
        lines = log.read_text().splitlines()
    except FileNotFoundError:
        return 0.0
    total = 0.0
    for line in lines[1::2]:
        for m, sec in re.findall(r"(\d+)m([\d.]+)s", line):
            total += int(m) * 60 + float(sec)
    return total


def server_settings(bare: Path) -> None:
    """A busy self-hosted repository's settings (docs/scale.md), each saving a process per push: no
    ``git gc --auto`` after every push (a status push is three loose objects; maintenance runs on a schedule
    instead, ``git maintenance start``), and no ``git for-each-ref`` for the alternate refs of the push's
    quarantine (the quarantine's only alternate is the repository itself, whose refs ``--all`` already lists)."""
    git(bare, "config", "receive.autogc", "false")
    git(bare, "config", "core.alternateRefsCommand", "true")


class Servers:
    """The fleet world on smart HTTP, plus a second nginx serving its TUF repository."""

    def __init__(self, root: Path, ls_refs_cache_s: int | None = LSREFS_CACHE_S) -> None:
        self.world: Any = HttpWorld(root / "world", ls_refs_cache_s=ls_refs_cache_s)
        self.cgroup = CgroupCpu.create(f"modelfleet-bench-{os.getpid()}-{root.name}")
        self.backend_log: Path | None = None
        if self.cgroup is None:
            self.world.git_http.backend, self.backend_log = accounted_backend(root / "accounting")
        self.world.start()
        if self.cgroup is not None:
            self.cgroup.adopt(self.world.git_http.pids())
        server_settings(self.world.upstream.bare)
        self.tuf = GitHttp(root / "tuf-nginx", self.world.git_http.pki, users={}, tuf_token=TUF_TOKEN).start()
        self.tuf.publish_tuf("fleet", self.world.tuf_dir)
        self.tuf_url = f"http://127.0.0.1:{self.tuf.http_port}/tuf/fleet"
        self.tuf_credentials = Credentials(username="tuf", password_file=private_file(root / "tuf.token", TUF_TOKEN))
        self.status_bares: list[Path] = []
        for i in range(STATUS_SHARDS):
            bare = root / "status-shards" / f"status-{i:02d}.git"
            bare.mkdir(parents=True)
            git(bare, "init", "--bare", "--quiet", "--initial-branch=main")
            server_settings(bare)
            self.world.git_http.publish_repo(bare.name, bare)
            self.status_bares.append(bare)
        self.status_urls = [self.world.git_http.url(b.name) for b in self.status_bares]

    def status_received(self) -> int:
        """Status commits the Git server holds on ``status/*``, over the fleet repository and every shard."""
        return sum(int(git(b, "rev-list", "--count", "--glob=refs/heads/status/*") or 0)
                   for b in [self.world.upstream.bare, *self.status_bares])

    def settings(self, n: int, **kw: Any) -> SimSettings:
        return SimSettings(devices=n, source_url=self.world.git_url, trusted_root=self.world.trusted_root,
                           tuf_url=self.tuf_url, tuf_credentials=self.tuf_credentials,
                           credentials=self.world.device_credentials, poll_interval=POLL, workers=WORKERS,
                           status_urls=self.status_urls, status_push_spread=PUSH_SPREAD, **kw)

    def git_cpu(self) -> float:
        """nginx + fcgiwrap + every git http-backend request and its git processes."""
        if self.cgroup is not None:
            return self.cgroup.seconds()
        assert self.backend_log is not None
        return sum(tree_cpu(p) for p in self.world.git_http.pids()) + backend_cpu(self.backend_log)

    def tuf_cpu(self) -> float:
        return sum(tree_cpu(p) for p in self.tuf.pids())

    def stop(self) -> None:
        self.tuf.stop()
        self.world.stop()
        if self.cgroup is not None:
            self.cgroup.remove()


def idle_window(fleet: ShardedFleet, srv: Servers, seconds: float) -> dict[str, Any]:
    """Every device on the idle path (nothing changed): polls/s and CPU per poll, simulator and Git server."""
    polls0, c0, g0, t0 = fleet.poll()["requests"]["gitPolls"], sim_cpu(fleet), srv.git_cpu(), time.monotonic()
    log0 = len(srv.world.git_http.requests())
    time.sleep(seconds)
    polls, wall = fleet.poll()["requests"]["gitPolls"] - polls0, time.monotonic() - t0
    log = srv.world.git_http.requests()[log0:]
    return {"devices": fleet.devices, "seconds": round(wall, 1), "polls": polls,
            "pollsPerSecond": round(polls / wall, 1), "pollsPerSecondAsked": round(fleet.devices / POLL, 1),
            "simulatorCpuMsPerPoll": round((sim_cpu(fleet) - c0) * 1000 / max(1, polls), 2),
            "gitServerCpuMsPerPoll": round((srv.git_cpu() - g0) * 1000 / max(1, polls), 2),
            "lsRefsCacheSeconds": LSREFS_CACHE_S, "gitServerCacheHits": cache_hits(log),
            "loadavg": round(os.getloadavg()[0], 1)}


def cache_hits(log: list[str]) -> int:
    """Requests nginx answered from the ls-refs cache (the access log's last field)."""
    return sum(line.endswith(" HIT") for line in log)


def sim_cpu(fleet: ShardedFleet) -> float:
    return sum(tree_cpu(pid) for pid in fleet.pids)


def commit_rollout(world: Any, step: int) -> str:
    dep = {"rollout": {"from": "1.0.0", "steps": [{"percent": 1}, {"percent": 100}], "step": step,
                       "gates": {"minHealthyPercent": 90}}}
    return world.commit_raw(world.fleet_files("1.1.0", poll=f"{POLL:g}s", deployment=dep), "roll out 1.1.0 to 1 %")


def pushed_all(r: dict[str, Any]) -> bool:
    return bool(r["statusPushes"] >= r["statusCommits"])


def one_size(n: int, root: Path) -> dict[str, Any]:
    srv = Servers(root)
    world = srv.world
    try:
        world.publish("1.0.0")
        world.publish("1.1.0", bias=0.5)
        world.commit_raw(world.fleet_files("1.0.0", poll=f"{POLL:g}s"), "deploy 1.0.0")
        fleet = ShardedFleet(srv.settings(n), root / "devices", PROCESSES)
        t_conv = fleet.wait(lambda r: r["versions"].get("1.0.0", 0) == n, 60 * POLL)
        rss_per_device = (fleet.poll()["rssMB"] - fleet.rss0) / n
        fleet.wait(pushed_all, 120)
        idle = idle_window(fleet, srv, IDLE_SECONDS)
        commit_rollout(world, 0)
        fleet.wait(lambda r: r["versions"].get("1.1.0", 0) >= max(1, n // 200), 10 * POLL)
        fleet.wait(pushed_all, 120)
        time.sleep(1)  # the canaries' reporting pass
        fleet.wait(pushed_all, 120)
        rr = RolloutRepo(world.operator_url, root / "rollout-cache", status_urls=srv.status_urls)
        snap, st = rr.status(DEPLOYMENT)
        git_cpu0, tuf_cpu0, cpu0 = srv.git_cpu(), srv.tuf_cpu(), sim_cpu(fleet)
        git_req0, tuf_req0, req0 = len(world.git_http.requests()), len(srv.tuf.requests()), fleet.poll()["requests"]
        load0 = os.getloadavg()[0]
        act(rr, DEPLOYMENT, "promote", st, snap)
        t_promoted = time.monotonic()
        t_half = fleet.wait(lambda r: r["versions"].get("1.1.0", 0) >= 0.5 * n, 30 * POLL)
        t_rest = fleet.wait(lambda r: r["versions"].get("1.1.0", 0) >= 0.99 * n, 30 * POLL)
        t_promote = None if t_half is None or t_rest is None else t_half + t_rest
        end = fleet.poll()
        git_log = world.git_http.requests()[git_req0:]
        tuf_requests = len(srv.tuf.requests()) - tuf_req0
        git_cpu1, tuf_cpu1, cpu1 = srv.git_cpu(), srv.tuf_cpu(), sim_cpu(fleet)
        load1 = os.getloadavg()[0]
        reported = fleet.wait(lambda r: r["reported"].get("1.1.0", 0) >= 0.99 * n, 30 * POLL)
        t_reported = None if reported is None else time.monotonic() - t_promoted
        fleet.wait(pushed_all, 180)
        final_counts = fleet.poll()
        received = srv.status_received()
        t0 = time.monotonic()
        _, final = rr.status(DEPLOYMENT)
        t_rollout_status = time.monotonic() - t0
        t0 = time.monotonic()
        fleet_report(StatusRepo(world.git_url, root / "fleet-cache", status_urls=srv.status_urls), stale_after=3600)
        t_fleet_status = time.monotonic() - t0
        fleet.close()
        req1 = end["requests"]
        updates = max(1, req1["tufRefreshes"] - req0["tufRefreshes"])
        return {
            "devices": n, "pollSeconds": POLL, "processes": len(fleet.pids), "workersPerProcess": WORKERS,
            "statusShards": STATUS_SHARDS, "gitServerCpuFrom": "cgroup" if srv.cgroup else "times wrapper",
            "lsRefsCacheSeconds": LSREFS_CACHE_S,
            "firstConvergenceSeconds": None if t_conv is None else round(t_conv, 1),
            "idle": idle,
            "promoteTo50Seconds": None if t_half is None else round(t_half, 1),
            "promoteTo99Seconds": None if t_promote is None else round(t_promote, 1),
            "promoteTo99PollIntervals": None if t_promote is None else round(t_promote / POLL, 2),
            # 99 % of the devices serving 1.1.0 with that status on the Git server (what gates read); checked
            # after the serving figure, so never below it.
            "statusPushSpreadSeconds": PUSH_SPREAD,
            "promoteTo99ReportedSeconds": None if t_reported is None else round(t_reported, 1),
            "shareServingNewAtEnd": round(end["versions"].get("1.1.0", 0) / n, 3),
            "loadavgDuringPromote": [round(load0, 1), round(load1, 1)],
            "promoteWindow": {
                "gitPolls": req1["gitPolls"] - req0["gitPolls"], "gitFetches": req1["gitFetches"] - req0["gitFetches"],
                "gitServerRequests": len(git_log), "gitServerCacheHits": cache_hits(git_log),
                "gitServerPushes": sum(line.startswith("POST") and "git-receive-pack" in line for line in git_log),
                "tufServerRequests": tuf_requests, "deviceUpdates": updates,
                "simulatorCpuSeconds": round(cpu1 - cpu0, 1), "gitServerCpuSeconds": round(git_cpu1 - git_cpu0, 1),
                "tufServerCpuSeconds": round(tuf_cpu1 - tuf_cpu0, 2),
                "simulatorCpuMsPerUpdate": round((cpu1 - cpu0) * 1000 / updates, 1),
                "gitServerCpuMsPerUpdate": round((git_cpu1 - git_cpu0) * 1000 / updates, 1)},
            "statusCommitsPushed": final_counts["statusPushes"], "statusCommitsReceived": received,
            "rssPerDeviceMB": round(rss_per_device, 2), "sharedSessions": final_counts["sessions"],
            "rolloutPhaseAfter": final.phase,
            "rolloutStatusSeconds": round(t_rollout_status, 2), "fleetStatusSeconds": round(t_fleet_status, 2),
        }
    finally:
        srv.stop()


def idle_only(n: int, root: Path) -> dict[str, Any]:
    """N devices on the idle path (status off: at rest a device pushes only at its heartbeat)."""
    srv = Servers(root)
    try:
        srv.world.publish("1.0.0")
        srv.world.commit_raw(srv.world.fleet_files("1.0.0", poll=f"{POLL:g}s"), "deploy 1.0.0")
        t0 = time.monotonic()
        fleet = ShardedFleet(srv.settings(n, status=False), root / "devices", PROCESSES)
        t_boot = time.monotonic() - t0
        t_conv = fleet.wait(lambda r: r["versions"].get("1.0.0", 0) == n, 60 * POLL)
        out = idle_window(fleet, srv, IDLE_SECONDS)
        fleet.close()
        return {**out, "createAndBootSeconds": round(t_boot, 1),
                "firstConvergenceSeconds": None if t_conv is None else round(t_conv, 1)}
    finally:
        srv.stop()


def synthetic_status(n: int, root: Path) -> dict[str, Any]:
    """Time rollout/fleet status on n status branches written in one ``git fast-import``."""
    world: Any = fleet_servers(root / "world", git="http")
    try:
        world.publish("1.0.0")
        world.publish("1.1.0", bias=0.5)
        commit_rollout(world, 1)
        hb = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
        stream = []
        for i in range(n):
            dev = f"sim-{i:05d}"
            data = dump_status(make_status(dev, heartbeat=hb, version="1.1.0", deployment=DEPLOYMENT, model="det",
                                           endpoint=ENDPOINT, applied="a" * 40))
            stream.append(f"commit refs/heads/status/{dev}\ncommitter {dev} <d@x> 1700000000 +0000\ndata 6\nstatus\n"
                          f"M 100644 inline status.yaml\ndata {len(data)}\n".encode() + data + b"\n")
        subprocess.run(["git", "fast-import", "--quiet"], cwd=world.upstream.bare, input=b"".join(stream), check=True)
        t0 = time.monotonic()
        _, st = RolloutRepo(world.git_url, root / "rc").status(DEPLOYMENT)
        t_rollout = time.monotonic() - t0
        t0 = time.monotonic()
        fleet_report(StatusRepo(world.git_url, root / "fc"), stale_after=3600)
        t_fleet = time.monotonic() - t0
        assert st.current.healthy == n, st.message
        return {"devices": n, "rolloutStatusSeconds": round(t_rollout, 2), "fleetStatusSeconds": round(t_fleet, 2),
                "rolloutStatusMsPerDevice": round(t_rollout * 1000 / n, 2),
                "fleetStatusMsPerDevice": round(t_fleet * 1000 / n, 2)}
    finally:
        world.stop()


def paced_polls(srv: Servers, polls: int, rate: float, threads: int = 4) -> dict[str, Any]:
    """``polls`` ls-refs polls of the fleet branch at ``rate`` per second from ``threads`` kept-alive clients (a
    fleet's idle load on one server): Git server CPU per poll, poll latency, answers nginx gave from its cache."""
    clients = [LsRefsClient(srv.world.git_url, authorization=lambda: None) for _ in range(threads)]
    log0, c0, t0 = len(srv.world.git_http.requests()), srv.git_cpu(), time.monotonic()

    def run(k: int) -> list[float]:
        waits = []
        for i in range(k, polls, threads):
            time.sleep(max(0.0, t0 + i / rate - time.monotonic()))
            s = time.monotonic()
            assert clients[k].ls_ref("refs/heads/main")
            waits.append(time.monotonic() - s)
        return waits

    with ThreadPoolExecutor(threads) as pool:
        latencies = sorted(x for waits in pool.map(run, range(threads)) for x in waits)
    wall, cpu = time.monotonic() - t0, srv.git_cpu() - c0
    for c in clients:
        c.close()
    time.sleep(0.2)  # nginx logs just after the response
    hits = cache_hits(srv.world.git_http.requests()[log0:])
    return {"polls": polls, "pollsPerSecond": round(polls / wall, 1), "gitServerCpuMs": round(cpu * 1000 / polls, 3),
            "gitServerCpuShareOfACore": round(cpu / wall, 3), "cacheHits": hits,
            "latencyMsP50": round(latencies[len(latencies) // 2] * 1000, 2),
            "latencyMsP99": round(latencies[int(len(latencies) * 0.99)] * 1000, 2)}


def per_request_costs(root: Path, polls: int = 200, pushes: int = 100) -> dict[str, Any]:
    """Git server CPU per idle poll and per status push, measured with nothing else talking to the server.

    ``lsRefsHttp`` / ``lsRefsHttpCached``: ``BENCH_PER_REQUEST_POLLS`` polls paced at ``BENCH_POLL_RATE`` on two
    servers started alike, without and with the ls-refs microcache (``BENCH_LSREFS_CACHE_S``, at least 1 s here).
    """
    srv = Servers(root / "http", ls_refs_cache_s=None)
    cached = Servers(root / "http-cached", ls_refs_cache_s=LSREFS_CACHE_S or 1)
    daemon: Any = fleet_servers(root / "daemon", git="daemon")
    try:
        world = srv.world
        for w in (world, cached.world):
            w.publish("1.0.0")
            w.commit_raw(w.fleet_files("1.0.0"), "deploy 1.0.0")
        daemon.commit_raw(world.fleet_files("1.0.0"), "deploy 1.0.0")
        out: dict[str, Any] = {}
        paced = int(os.environ.get("BENCH_PER_REQUEST_POLLS", "1000"))
        out["lsRefsHttp"] = paced_polls(srv, paced, POLL_RATE)
        out["lsRefsHttpCached"] = {**paced_polls(cached, paced, POLL_RATE),
                                   "cacheSeconds": cached.world.git_http.ls_refs_cache_s}
        out["lsRefsCachedCpuRatio"] = round(out["lsRefsHttpCached"]["gitServerCpuMs"]
                                            / max(1e-9, out["lsRefsHttp"]["gitServerCpuMs"]), 3)
        for name, url, cpu in (("lsRemoteHttp", world.git_url, srv.git_cpu),
                               ("lsRemoteDaemon", daemon.git_url, lambda: tree_cpu(daemon.daemon.proc.pid))):
            c0, t0 = cpu(), time.monotonic()
            for _ in range(polls // 2):
                subprocess.run(["git", "ls-remote", url, "refs/heads/main"], capture_output=True, check=True)
            out[name] = {"gitServerCpuMs": round((cpu() - c0) * 1000 / (polls // 2), 2),
                         "wallMs": round((time.monotonic() - t0) * 1000 / (polls // 2), 2)}
        w = StatusWriter(world.git_url, "dev-1", root / "dev-1", heartbeat_interval=0,
                         credentials=world.device_credentials)
        c0, t0 = srv.git_cpu(), time.monotonic()
        hb0 = dt.datetime.now(dt.timezone.utc)
        for i in range(pushes):
            hb = (hb0 + dt.timedelta(seconds=i)).strftime("%Y-%m-%dT%H:%M:%SZ")
            w.submit(make_status("dev-1", heartbeat=hb, applied="a" * 40))
            w.flush(30)
        out["statusPushHttp"] = {"gitServerCpuMs": round((srv.git_cpu() - c0) * 1000 / pushes, 2),
                                 "wallMs": round((time.monotonic() - t0) * 1000 / pushes, 1), "pushes": w.pushes}
        w.close()
        return out
    finally:
        srv.stop()
        cached.stop()
        daemon.stop()


def main() -> None:
    logging.getLogger("reconciler").setLevel(logging.ERROR)
    out: dict[str, Any] = {"bench": "rollout", "cores": os.cpu_count(), "loadavgAtStart": os.getloadavg()[0],
                           "servers": "git: nginx + fcgiwrap + git http-backend; tuf: nginx", "sizes": [],
                           "idleOnly": [], "statusSynthetic": []}
    with tempfile.TemporaryDirectory(prefix="bench-rollout-", dir=WORK_DIR) as tmp:
        for key, sizes, run in (("sizes", SIZES, one_size), ("idleOnly", IDLE, idle_only),
                                ("statusSynthetic", SYNTH, synthetic_status)):
            for n in sizes:
                out[key].append(run(n, Path(tmp) / f"{key}{n}"))
                print(json.dumps({key: out[key][-1]}), file=sys.stderr, flush=True)  # progress of a long run
        out["perRequest"] = per_request_costs(Path(tmp) / "per-request")
    out["loadavgAtEnd"] = os.getloadavg()[0]
    print(json.dumps(out))


if __name__ == "__main__":
    main()
