"""Git benchmarks, printed as ONE JSON line.

* idle poll cost (no change) of GitSource.poll over git:// — wall and CPU (this process + its git children)
  per poll, requests and fetches per poll — against a naive "fetch every poll" baseline measured in the same run;
* push-to-detect latency with a 1 s poll interval;
* ``fleet status`` over 5,000 status branches (one fetch + report), against the bare fetch as baseline.

Run: .venv/bin/python bench/bench_git.py
"""

from __future__ import annotations

import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from reconciler.gitops.fleetstatus import fleet_report  # noqa: E402
from reconciler.gitops.source import GitSource  # noqa: E402
from reconciler.gitops.statusrepo import StatusRepo  # noqa: E402
from reconciler.gitops.statuswriter import dump_status  # noqa: E402
from tests._git_fixtures import GitDaemon, Upstream, env, git, make_status  # noqa: E402

IDLE_POLLS = 40
LATENCY_TRIALS = 6
DEVICES = 5000


def cpu() -> float:
    me = resource.getrusage(resource.RUSAGE_SELF)
    ch = resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + ch.ru_utime + ch.ru_stime


def idle_poll(up: Upstream, url: str, root: Path) -> dict[str, float]:
    src = GitSource(url, root / "cache-idle")
    head = src.poll(None).commit
    req0, fetch0 = src.requests, src.fetches
    c0, w0 = cpu(), time.perf_counter()
    for _ in range(IDLE_POLLS):
        assert src.poll(head).commit == head
    cpu_ms = (cpu() - c0) / IDLE_POLLS * 1000
    wall_ms = (time.perf_counter() - w0) / IDLE_POLLS * 1000
    # Baseline: what a naive agent does — fetch the branch on every poll.
    base = root / "naive.git"
    git(root, "clone", "--quiet", "--bare", "--depth=1", url, str(base))
    c0, w0 = cpu(), time.perf_counter()
    for _ in range(IDLE_POLLS):
        subprocess.run(["git", "--git-dir", str(base), "fetch", "--quiet", "origin"], check=True, env=env())
    base_cpu = (cpu() - c0) / IDLE_POLLS * 1000
    base_wall = (time.perf_counter() - w0) / IDLE_POLLS * 1000
    return {
        "idle_poll_cpu_ms": round(cpu_ms, 2), "idle_poll_wall_ms": round(wall_ms, 2),
        "idle_poll_requests": (src.requests - req0) / IDLE_POLLS, "idle_poll_fetches": (src.fetches - fetch0) / IDLE_POLLS,
        "naive_fetch_cpu_ms": round(base_cpu, 2), "naive_fetch_wall_ms": round(base_wall, 2),
        "idle_vs_naive_cpu_ratio": round(cpu_ms / base_cpu, 3), "idle_vs_naive_wall_ratio": round(wall_ms / base_wall, 3),
    }


def push_to_detect(up: Upstream, url: str, root: Path) -> dict[str, float]:
    src = GitSource(url, root / "cache-latency", poll_interval=1.0)
    applied = [src.poll(None).commit]
    detected: dict[str, float] = {}
    stop = threading.Event()

    def agent() -> None:
        while not stop.is_set():
            r = src.poll(applied[-1])
            if r.changed:
                detected[r.commit] = time.perf_counter()
                applied.append(r.commit)
            stop.wait(r.next_poll_delay)

    t = threading.Thread(target=agent)
    t.start()
    lat = []
    try:
        for i in range(LATENCY_TRIALS):
            time.sleep(0.37 * (i % 3) + 0.2)  # spread pushes over the poll phase
            c = up.commit({"fleet.yaml": f"rev: {i}\n"}, push=False)
            up.push()
            pushed = time.perf_counter()
            while c not in detected:
                time.sleep(0.01)
            lat.append(detected[c] - pushed)
    finally:
        stop.set()
        t.join()
    return {"push_to_detect_mean_s": round(statistics.mean(lat), 3), "push_to_detect_max_s": round(max(lat), 3),
            "poll_interval_s": 1.0}


def make_status_branches(bare: Path, n: int, main_head: str) -> None:
    now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    chunks = []
    for i in range(n):
        dev = f"dev-{i:05d}"
        data = dump_status(make_status(dev, applied=main_head, version=f"1.{i % 3}.0", heartbeat=now,
                                       deployment=f"site-{i % 7}"))
        chunks.append(f"commit refs/heads/status/{dev}\ncommitter {dev} <{dev}@devices> 1790000000 +0000\n"
                      f"data 6\nstatus\nM 100644 inline status.yaml\ndata {len(data)}\n".encode() + data + b"\n")
    subprocess.run(["git", "--git-dir", str(bare), "fast-import", "--quiet"], input=b"".join(chunks), check=True,
                   env=env())


def fleet_status(up: Upstream, root: Path) -> dict[str, float]:
    make_status_branches(up.bare, DEVICES, up.head())
    url = up.file_url
    t0 = time.perf_counter()
    base = root / "plain.git"
    git(root, "init", "--quiet", "--bare", str(base))
    subprocess.run(["git", "--git-dir", str(base), "fetch", "--quiet", "--depth=1", url,
                    "+refs/heads/status/*:refs/s/*"], check=True, env=env())
    fetch_only = time.perf_counter() - t0
    sr = StatusRepo(url, root / "fleet-cache")
    t0 = time.perf_counter()
    rep = fleet_report(sr, stale_after=900)
    cold = time.perf_counter() - t0
    assert len(rep.rows) == DEVICES and rep.totals["ready"] == DEVICES
    t0 = time.perf_counter()
    fleet_report(sr, stale_after=900)
    warm = time.perf_counter() - t0
    return {"fleet_status_devices": DEVICES, "fleet_status_cold_s": round(cold, 2), "fleet_status_warm_s": round(warm, 2),
            "fleet_status_bare_fetch_s": round(fetch_only, 2), "fleet_status_vs_bare_fetch_ratio": round(cold / fetch_only, 2)}


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="bench-git-") as tmp:
        root = Path(tmp)
        os.environ.update({k: v for k, v in env().items() if k.startswith("GIT_")})
        up = Upstream(root)
        for i in range(20):
            up.commit({f"models/m{i}.yaml": f"apiVersion: modelfleet/v1\nkind: Model\nmetadata:\n  name: m{i}\n"})
        with GitDaemon(up.bare.parent) as d:
            url = d.url("fleet.git")
            out = {"bench": "git"}
            out.update(idle_poll(up, url, root))
            out.update(push_to_detect(up, url, root))
        out.update(fleet_status(up, root))
        print(json.dumps(out))


if __name__ == "__main__":
    main()
