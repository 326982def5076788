"""``modelfleet simulate`` as an operator runs it, against the documented servers; ONE JSON line.

What docs/hosting.md describes: Git smart HTTP from nginx + fcgiwrap (its socket handed over as systemd's
``fcgiwrap.socket`` does) + ``git http-backend``, anonymous reads and Basic auth on push; a static TUF repository
behind a second nginx. Everything the operator does goes through the CLI, as separate processes:

1. ``modelfleet simulate --write-inventory`` with ``--status-keys``: the Device manifests (with each simulated
   device's status key), committed with 1.0.0 deployed and a rollout of 1.1.0 at its first step (1 %);
2. ``modelfleet simulate --devices N --processes 2 --workers 16 --poll-interval 10s --status-push-spread 10s
   --username … --password-file … [--status-repo …] --until reported:1.1.0:99% --per-device``;
3. once ``BENCH_SETTLE`` of the devices serve and report (or ``BENCH_SETTLE_LIMIT`` seconds passed: said so),
   ``modelfleet rollout promote`` (gates read the signed status; ``--insecure-skip-verify``: the bench's
   commits are not signed);
4. the simulation ends by itself when 99 % of the devices report 1.1.0 on the server (or after
   ``BENCH_LIMIT`` seconds), after its devices' last pushes.

Reported: first convergence (serving, and with that status on the server), promote → 50 % / 99 % serving
and → 99 % reported, in seconds and poll intervals, from the simulator's per-device record (``--per-device``):
when each device's poll first saw the promote commit and when it served 1.1.0; its poll gaps; the status
commits the devices made and pushed against the commits the server holds on ``status/*``; the Git server's
requests by kind and status (ref advertisements for push, pushes, 401/499/502 answers), from nginx's access
log; CPU of the simulator and of the Git server (a cgroup, as bench_rollout.py).

The defaults are the configuration docs/operations.md documents for a fleet of 1,000 devices on one Git
server ("How many devices one status repository takes"): nginx's ``ls-refs`` microcache, the busy repository's
settings (no ``gc --auto`` per push, no alternate-refs command) on every repository, status in 16 status
repositories (``--status-repo``), ``pushSpread`` one poll interval. ``BENCH_STATUS_SHARDS=0
BENCH_LSREFS_CACHE_S=0 BENCH_REPO_SETTINGS=0`` is hosting.md's plain server block with one repository.

Per device and update, from the per-device record: the lag from serving 1.1.0 to the first status push that
landed after it (``statusLagSeconds``: the acceptance's "every status on the server ≤ 2 intervals later").
The simulator runs in a cgroup of its own, like the Git server: CPU per window even after it exited.

Environment: ``BENCH_DEVICES`` (default 1000), ``BENCH_PROCESSES`` (2), ``BENCH_WORKERS`` (16), ``BENCH_POLL``
(10), ``BENCH_PUSH_SPREAD`` (10), ``BENCH_STATUS_SHARDS`` (16: k status repositories with ``--status-repo``; 0:
status on the fleet repository, as the operator of the issue ran it), ``BENCH_LIMIT`` (600),
``BENCH_SETTLE`` (0.99), ``BENCH_SETTLE_LIMIT`` (300), ``BENCH_LSREFS_CACHE_S`` (1: nginx's ls-refs
microcache of docs/scale.md; 0: none, as hosting.md's plain server block), ``BENCH_REPO_SETTINGS`` (1: the
busy repository's settings on every repository; 0: git's defaults), ``BENCH_WORK_DIR`` (default /dev/shm).

Run: BENCH_DEVICES=1000 .venv/bin/python bench/bench_simulate_cli.py   (about 3 minutes (2.5 measured on the shared host))
"""

from __future__ import annotations

import cmath
import json
import logging
import math
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_rollout import CgroupCpu, cache_hits, server_settings, tree_cpu  # noqa: E402

from tests._fleet_world import DEPLOYMENT, PASSWORD, HttpWorld  # noqa: E402
from tests._git_fixtures import git  # noqa: E402
from tests._servers import GitHttp, private_file  # noqa: E402

N = int(os.environ.get("BENCH_DEVICES", "1000"))
PROCESSES = int(os.environ.get("BENCH_PROCESSES", "2"))
WORKERS = int(os.environ.get("BENCH_WORKERS", "16"))
POLL = float(os.environ.get("BENCH_POLL", "10"))
SPREAD = float(os.environ.get("BENCH_PUSH_SPREAD", "10"))
SHARDS = int(os.environ.get("BENCH_STATUS_SHARDS", "16"))
LIMIT = float(os.environ.get("BENCH_LIMIT", "600"))
SETTLE = float(os.environ.get("BENCH_SETTLE", "0.99"))
SETTLE_LIMIT = float(os.environ.get("BENCH_SETTLE_LIMIT", "300"))
LSREFS_CACHE_S = int(os.environ.get("BENCH_LSREFS_CACHE_S", "1")) or None
REPO_SETTINGS = os.environ.get("BENCH_REPO_SETTINGS", "1") != "0"
PER_DEVICE_OUT = os.environ.get("BENCH_PER_DEVICE_OUT")  # a file for the per-device record, when given
WORK_DIR = os.environ.get("BENCH_WORK_DIR", "/dev/shm" if os.path.isdir("/dev/shm") else None)
TUF_TOKEN = "bench-tuf-token"
CANARY_PERCENT = 1


def modelfleet(*args: str, cwd: Path, **kw: Any) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parent.parent), MODELFLEET_INSECURE_SKIP_VERIFY="1",
               XDG_CACHE_HOME=str(cwd / ".cache"), GIT_TERMINAL_PROMPT="0")
    return subprocess.run([sys.executable, "-m", "reconciler.cli", *args], capture_output=True, text=True, cwd=cwd,
                          env=env, **kw)


def commit_rollout(world: Any, step: int, extra: dict[str, str] | None = None) -> str:
    dep = {"rollout": {"from": "1.0.0", "steps": [{"percent": CANARY_PERCENT}, {"percent": 100}], "step": step,
                       "gates": {"minHealthyPercent": 90}}}
    files = world.fleet_files("1.1.0", poll=f"{POLL:g}s", deployment=dep)
    files.update(extra or {})
    return world.commit_raw(files, "roll out 1.1.0 to 1 %")


class Lines:
    """The simulate process's report lines, read as they come, with the wall clock of their arrival."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.proc = proc
        self.lines: list[tuple[float, dict[str, Any]]] = []
        self._lock = threading.Lock()
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for raw in self.proc.stdout:
            try:
                line = json.loads(raw)
            except ValueError:
                continue
            with self._lock:
                self.lines.append((time.time(), line))

    def last(self) -> dict[str, Any] | None:
        with self._lock:
            return self.lines[-1][1] if self.lines else None

    def wait(self, pred: Any, timeout: float) -> float | None:
        t0 = time.monotonic()
        while time.monotonic() - t0 < timeout and self.proc.poll() is None:
            last = self.last()
            if last is not None and pred(last):
                return time.monotonic() - t0
            time.sleep(0.2)
        return None

    def offset(self) -> float:
        """wall clock - simulator time (the smallest over the lines: the least delayed one)."""
        with self._lock:
            return min(w - line["t"] for w, line in self.lines)

    def first(self, pred: Any) -> float | None:
        """The simulator time of the first line for which ``pred`` holds."""
        with self._lock:
            return next((line["t"] for _, line in self.lines if pred(line)), None)


def served(counts: dict[str, int]) -> int:
    """Devices serving some version (``-``: nothing yet)."""
    return sum(v for k, v in counts.items() if k != "-")


def polled99(per: dict[str, Any], t: float) -> float:
    """Seconds from ``t`` until 99 % of the online devices had polled (simulator time)."""
    nxt = sorted(min((x - t for x in r["pollTimes"] if x >= t), default=math.inf) for r in per.values()
                 if not r["offline"])
    return round(nxt[int(0.99 * len(nxt) + 0.999) - 1], 1)


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    values = sorted(values)
    return values[min(len(values) - 1, max(0, int(round(q * len(values))) - 1))]


def status_lag(per: dict[str, Any], version: str, t_p: float) -> dict[str, Any]:
    """Per device that served ``version`` after ``t_p``: seconds from then until its first status push landed
    (the status saying so on the server): p50 / p99 / max, and devices with no push after it (``missing``)."""
    lags, missing = [], 0
    for r in per.values():
        t = next((t for t, v in r["served"] if v == version), None)
        if t is None or t <= t_p:
            continue
        after = [x - t for x in r.get("pushTimes", []) if x >= t]
        if after:
            lags.append(min(after))
        else:
            missing += 1
    return {"n": len(lags), "p50": round(percentile(lags, 0.5) or 0, 1), "p99": round(percentile(lags, 0.99) or 0, 1),
            "max": round(max(lags), 1) if lags else None, "missing": missing}


def _kind(uri: str, service: str) -> str:
    if uri.endswith("/info/refs"):
        return "push-advertisement" if service == "git-receive-pack" else "fetch-advertisement"
    if uri.endswith("/git-receive-pack"):
        return "push"
    if uri.endswith("/git-upload-pack"):
        return "upload-pack"  # an ls-refs poll or a fetch
    return "other"


def requests_by_kind(log: list[str]) -> dict[str, int]:
    """nginx's service log lines (``METHOD URI SERVICE STATUS USER SECONDS END``: tests/_servers.py) by kind,
    status and user: a push's ref advertisement is ``GET info/refs`` for ``git-receive-pack``."""
    kinds: Counter[str] = Counter()
    for line in log:
        method, uri, service, status, user = line.split()[:5]
        kinds[f"{method} {_kind(uri, service)} {status} {user}"] += 1
    return dict(sorted(kinds.items()))


def request_seconds(log: list[str]) -> dict[str, dict[str, float]]:
    """How long nginx took to answer, per kind: p50 / p99 / max seconds."""
    times: dict[str, list[float]] = {}
    for line in log:
        f = line.split()
        times.setdefault(_kind(f[1], f[2]), []).append(float(f[5]))
    return {k: {"n": len(v), "p50": percentile(v, 0.5), "p99": percentile(v, 0.99), "max": max(v)}
            for k, v in sorted(times.items())}


def main() -> None:
    logging.getLogger("reconciler").setLevel(logging.ERROR)
    out: dict[str, Any] = {"bench": "simulate_cli", "devices": N, "processes": PROCESSES, "workers": WORKERS,
                           "pollSeconds": POLL, "statusPushSpreadSeconds": SPREAD, "statusRepositories": SHARDS or 1,
                           "statusOn": "status repositories" if SHARDS else "the fleet repository",
                           "lsRefsCacheSeconds": LSREFS_CACHE_S, "repoSettings": REPO_SETTINGS, "cores": os.cpu_count(),
                           "loadavgAtStart": os.getloadavg()[0]}
    with tempfile.TemporaryDirectory(prefix="bench-simcli-", dir=WORK_DIR) as tmp_s:
        tmp = Path(tmp_s)
        world = HttpWorld(tmp / "world", ls_refs_cache_s=LSREFS_CACHE_S)
        cgroup = CgroupCpu.create(f"modelfleet-simcli-{os.getpid()}")
        sim_cgroup = CgroupCpu.create(f"modelfleet-simcli-sim-{os.getpid()}")
        world.start()
        if REPO_SETTINGS:
            server_settings(world.upstream.bare)
        if cgroup is not None:
            cgroup.adopt(world.git_http.pids())
        tuf = GitHttp(tmp / "tuf-nginx", world.git_http.pki, users={}, tuf_token=TUF_TOKEN).start()
        proc = None
        try:
            tuf.publish_tuf("fleet", world.tuf_dir)
            tuf_url = f"http://127.0.0.1:{tuf.http_port}/tuf/fleet"
            tuf_pw = private_file(tmp / "tuf.token", TUF_TOKEN)
            world.publish("1.0.0")
            world.publish("1.1.0", bias=0.5)
            keys, inv = tmp / "keys", tmp / "inventory"
            t0 = time.monotonic()
            p = modelfleet("simulate", "--devices", str(N), "--status-keys", str(keys), "--write-inventory", str(inv),
                           cwd=tmp)
            assert p.returncode == 0, p.stderr
            out["writeInventorySeconds"] = round(time.monotonic() - t0, 1)
            manifests = {f"devices/{f.name}": f.read_text() for f in inv.iterdir()}
            commit_rollout(world, 0, manifests)
            status_args: list[str] = []
            bares = [world.upstream.bare]
            for i in range(SHARDS):
                bare = tmp / "status" / f"status-{i:02d}.git"
                bare.parent.mkdir(exist_ok=True)
                git(bare.parent, "init", "--bare", "--quiet", str(bare))
                if REPO_SETTINGS:
                    server_settings(bare)
                world.git_http.publish_repo(bare.name, bare)
                status_args += ["--status-repo", world.git_http.url(bare.name)]
                bares.append(bare)
            log0 = len(world.git_http.service_requests())
            cmd = [sys.executable, "-m", "reconciler.cli", "simulate", "--devices", str(N), "--processes",
                   str(PROCESSES), "--workers", str(WORKERS), "--repo", world.git_url, "--tuf", tuf_url,
                   "--tuf-username", "tuf", "--tuf-password-file", str(tuf_pw), "--trusted-root",
                   str(world.trusted_root), "--username", "device", "--password-file", str(world.password_file),
                   *status_args, "--status-keys", str(keys), "--poll-interval", f"{POLL:g}s",
                   "--status-push-spread", f"{SPREAD:g}s", "--until", "reported:1.1.0:99%",
                   "--duration", f"{LIMIT:g}s", "--per-device", "--work-dir", str(tmp / "devices")]
            out["command"] = "modelfleet " + " ".join(cmd[3:]).replace(str(tmp), "$TMP")
            t_start = time.monotonic()
            proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp,
                                    env=dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parent.parent)))
            if sim_cgroup is not None:
                sim_cgroup.adopt([proc.pid])

            def sim_cpu() -> float:
                return sim_cgroup.seconds() if sim_cgroup is not None else tree_cpu(proc.pid)

            lines = Lines(proc)
            if lines.wait(lambda r: True, 600) is None:
                raise RuntimeError(f"simulate did not start: {proc.stderr.read() if proc.stderr else ''}")
            out["bootSeconds"] = round(time.monotonic() - t_start, 1)
            cpu0, git0 = sim_cpu(), cgroup.seconds() if cgroup else 0.0

            def settled(r: dict[str, Any]) -> bool:
                return served(r["reported"]) >= SETTLE * N

            waited = lines.wait(settled, SETTLE_LIMIT)
            now = lines.last() or {}
            out["beforePromote"] = {
                "settled": waited is not None, "seconds": round(now.get("t", 0), 1),
                "serving": now.get("versions"), "reported": now.get("reported"),
                "statusCommits": now.get("statusCommits"), "statusPushes": now.get("statusPushes"),
                "servingAllAt": lines.first(lambda r: served(r["versions"]) >= N),
                "reportedAllAt": lines.first(lambda r: served(r["reported"]) >= N),
                "reported99At": lines.first(lambda r: served(r["reported"]) >= 0.99 * N),
                "simulatorCpuSeconds": round(sim_cpu() - cpu0, 1),
                "gitServerCpuSeconds": round(cgroup.seconds() - git0, 1) if cgroup else None}
            t_cli, log_p = time.monotonic(), len(world.git_http.service_requests())
            promote = modelfleet("rollout", "promote", DEPLOYMENT, "--repo", world.git_url, "--username", "ops",
                                 "--password-file", str(private_file(tmp / "ops.pw", PASSWORD)), *status_args,
                                 cwd=tmp, timeout=600)
            cli_seconds = time.monotonic() - t_cli
            time.sleep(0.5)  # nginx logs a request once answered
            # The promote commit landed when nginx answered the operator's push (its log's wall clock).
            pushes = [float(x.split()[6]) for x in world.git_http.service_requests()[log_p:]
                      if x.split()[1].endswith("/git-receive-pack") and x.split()[4] == "ops"]
            promoted_wall = pushes[-1] if pushes else time.time()
            head = git(world.upstream.bare, "rev-parse", "main")
            out["promote"] = {"exit": promote.returncode, "cliSeconds": round(cli_seconds, 1),
                              "stderr": promote.stderr[-300:] if promote.returncode else ""}
            cpu1, git1, log1 = sim_cpu(), cgroup.seconds() if cgroup else 0.0, len(world.git_http.service_requests())
            acc1 = len(world.git_http.requests())
            try:
                proc.wait(LIMIT + 300)
            except subprocess.TimeoutExpired:
                proc.kill()
            lines.thread.join(30)
            final = lines.last() or {}
            stderr = proc.stderr.read() if proc.stderr else ""
            out["simulateExit"] = proc.returncode
            if proc.returncode not in (0, 3):
                out["simulateStderr"] = stderr[-500:]
            # Promote time on the simulator's clock: wall clock of the push, minus the lines' offset.
            t_p = promoted_wall - lines.offset()
            per = final.get("perDevice", {})
            served_new = [next((t for t, v in r["served"] if v == "1.1.0"), None) for r in per.values()]
            was_new = sum(1 for t in served_new if t is not None and t <= t_p)
            after = sorted(t - t_p for t in served_new if t is not None and t > t_p)
            seen = sorted(t - t_p for r in per.values() for t, h in r["heads"] if h == head[:12] and t >= t_p)

            def nth(k: int) -> float | None:  # seconds after the promote until k more devices served 1.1.0
                return round(after[k - 1], 1) if 0 < k <= len(after) else None

            k50, k99 = max(0, int(0.5 * N + 0.999) - was_new), max(0, int(0.99 * N + 0.999) - was_new)
            to99 = nth(k99)
            t_rep = lines.first(lambda r: r["reported"].get("1.1.0", 0) >= 0.99 * N)
            gaps = [b - a for r in per.values() for a, b in zip(r["pollTimes"], r["pollTimes"][1:], strict=False)
                    if a >= t_p - 3 * POLL]
            # How the devices' polls fall within one interval before the promote: the length of the mean of
            # exp(2πi·t/POLL) over them, 0 when spread evenly (as real devices' independent clocks spread them),
            # 1 when every device polls at the same moment of the interval (then the promote's moment decides).
            before = [t for r in per.values() for t in r["pollTimes"] if t_p - 3 * POLL <= t < t_p]
            phase = abs(sum(cmath.exp(2j * math.pi * t / POLL) for t in before) / len(before)) if before else None
            nxt = sorted(min((t - t_p for t in r["pollTimes"] if t >= t_p), default=math.inf) for r in per.values()
                         if not r["offline"])
            # The same, had the promote landed at another moment of the interval before it (every 0.5 s): with
            # polls bunched, when the promote lands decides how long 99 % of the devices take to see it.
            moments = [polled99(per, t_p - k * 0.5) for k in range(int(2 * POLL))]
            if PER_DEVICE_OUT:
                Path(PER_DEVICE_OUT).write_text(json.dumps({"promote": t_p, "head": head, "perDevice": per}))
            out["promote"].update({
                "servingNewBefore": was_new,
                "to50ServingSeconds": nth(k50), "to99ServingSeconds": to99,
                "to99ServingPollIntervals": None if to99 is None else round(to99 / POLL, 2),
                "to99SeenSeconds": None if len(seen) < k99 or k99 == 0 else round(seen[k99 - 1], 1),
                "to99PolledSeconds": round(nxt[int(0.99 * len(nxt) + 0.999) - 1], 1) if nxt else None,
                "pollPhaseConcentration": None if phase is None else round(phase, 3),
                "to99PolledSecondsHadThePromoteLandedEarlier": {"min": min(moments), "max": max(moments)},
                "to99ReportedSeconds": None if t_rep is None else round(t_rep - t_p, 1),
                "to99ReportedPollIntervals": None if t_rep is None else round((t_rep - t_p) / POLL, 2),
                "simulatorCpuSeconds": round(sim_cpu() - cpu1, 1) if sim_cgroup is not None else None,
                "simulatorCpuFrom": "cgroup" if sim_cgroup is not None else None,
                "lsRefsCacheHits": cache_hits(world.git_http.requests()[acc1:]),
                "statusLagSeconds": status_lag(per, "1.1.0", t_p),
                "gitServerCpuSeconds": round(cgroup.seconds() - git1, 1) if cgroup else None,
                "gitServerRequests": requests_by_kind(world.git_http.service_requests()[log1:])})
            out["pollGapSecondsAroundPromote"] = {"n": len(gaps), "min": round(min(gaps), 2) if gaps else None,
                                                  "p50": round(percentile(gaps, 0.5) or 0, 2),
                                                  "p99": round(percentile(gaps, 0.99) or 0, 2),
                                                  "max": round(max(gaps), 2) if gaps else None}
            received = sum(int(git(b, "rev-list", "--count", "--glob=refs/heads/status/*") or 0) for b in bares)
            out["status"] = {"commits": final.get("statusCommits"), "pushed": final.get("statusPushes"),
                             "receivedOnServer": received, "newestOnServer": final.get("statusOnServer")}
            out["end"] = {"seconds": final.get("t"), "until": final.get("until"), "serving": final.get("versions"),
                          "reported": final.get("reported"), "rssMB": final.get("rssMB"),
                          "rssPerDeviceMB": round(final.get("rssMB", 0) / N, 2)}
            out["gitServerRequestsWholeRun"] = requests_by_kind(world.git_http.service_requests()[log0:])
            out["gitServerAnswerSeconds"] = request_seconds(world.git_http.service_requests()[log0:])
            out["loadavgAtEnd"] = os.getloadavg()[0]
        finally:
            if proc is not None and proc.poll() is None:
                proc.kill()
            tuf.stop()
            world.stop()
            for cg in (cgroup, sim_cgroup):
                if cg is not None:
                    cg.remove()
    print(json.dumps(out))


if __name__ == "__main__":
    main()
