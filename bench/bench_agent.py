"""Agent benchmarks, printed as ONE JSON line.

* commit → new version serving on the device (1 s poll interval, tiny model, real agent process, git daemon,
  TUF over HTTP): median and max of several bumps, against the poll interval (baseline: the best any polling
  agent can do on average is half of it) — goal ≤ 3 s;
* idle agent (no change) at a 10 s poll interval: CPU as % of one core, and extrapolated CPU seconds per hour —
  goal < 1 %; against a bare ``python -c 'sleep'`` process measured in the same run;
* RSS of an agent without models (goal ≤ 60 MB) and with the tiny model (goal ≤ 120 MB), against a bare
  interpreter that only imports the agent's modules (baseline).

Run: .venv/bin/python bench/bench_agent.py   (about 1.5 minutes)
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests._agent_fixtures import AgentProcess, World, wait_for, which_version  # noqa: E402

BUMPS = 5
IDLE_SECONDS = float(os.environ.get("BENCH_IDLE_SECONDS", "60"))
TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    # utime + stime + the waited-for children's (git ls-remote runs as a child process)
    return (int(fields[11]) + int(fields[12]) + int(fields[13]) + int(fields[14])) / TICKS


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def commit_to_serving(root: Path) -> dict[str, float]:
    w = World(root / "w1").start()
    try:
        for i in range(BUMPS + 1):
            w.publish(f"1.{i}.0", bias=float(i))
        w.commit_fleet("1.0.0")
        agent = AgentProcess(w.agent_config(root / "dev1", poll="1s"), root / "agent1.log").start()
        try:
            url = agent.url(60)
            wait_for(lambda: which_version(url, w) == "1.0.0", 30, what="first convergence")
            lat = []
            for i in range(1, BUMPS + 1):
                time.sleep(0.3)
                t0 = time.monotonic()
                w.commit_fleet(f"1.{i}.0")
                wait_for(lambda v=f"1.{i}.0": which_version(url, w) == v, 30, interval=0.01, what="new version")
                lat.append(time.monotonic() - t0)
        finally:
            agent.stop()
    finally:
        w.stop()
    med = statistics.median(lat)
    return {"commit_to_serving_median_s": round(med, 3), "commit_to_serving_max_s": round(max(lat), 3),
            "poll_interval_s": 1.0, "commit_to_serving_ratio_to_poll_interval": round(med / 1.0, 3),
            "commit_to_serving_goal_met": max(lat) <= 3.0}


def idle_and_rss(root: Path) -> dict[str, float]:
    w = World(root / "w2").start()
    try:
        w.publish("1.0.0")
        w.commit_fleet("1.0.0", poll="10s")
        empty_root = root / "w3"
        w_empty = World(empty_root).start()
        w_empty.publish("1.0.0")
        w_empty.commit_fleet("1.0.0", poll="10s", present=False)  # no deployment: an agent without models
        with_model = AgentProcess(w.agent_config(root / "dev2", poll="10s"), root / "agent2.log").start()
        no_model = AgentProcess(w_empty.agent_config(root / "dev3", poll="10s"), root / "agent3.log").start()
        baseline = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
        imports = subprocess.Popen([sys.executable, "-c", "import reconciler.agent.loop, reconciler.gitops.source, "
                                    "reconciler.distribution.tufclient, reconciler.serving.http.server, reconciler.serving.registry, time; "
                                    "time.sleep(600)"], cwd=Path(__file__).resolve().parent.parent)
        try:
            url = with_model.url(60)
            no_model.url(60)
            wait_for(lambda: which_version(url, w) == "1.0.0", 30, what="convergence")
            time.sleep(12)  # first passes, status, caches settled
            pids = {"with_model": with_model.proc.pid, "no_model": no_model.proc.pid, "baseline": baseline.pid}
            c0 = {k: cpu_seconds(p) for k, p in pids.items()}
            t0 = time.monotonic()
            time.sleep(IDLE_SECONDS)
            dt = time.monotonic() - t0
            cpu = {k: (cpu_seconds(p) - c0[k]) / dt for k, p in pids.items()}
            rss = {"with_model": rss_mb(with_model.proc.pid), "no_model": rss_mb(no_model.proc.pid),
                   "imports_only": rss_mb(imports.pid)}
        finally:
            for p in (baseline, imports):
                p.kill()
                p.wait()
            with_model.stop()
            no_model.stop()
            w_empty.stop()
    finally:
        w.stop()
    return {
        "idle_cpu_percent_of_core": round(100 * cpu["with_model"], 3),
        "idle_cpu_seconds_per_hour": round(3600 * cpu["with_model"], 1),
        "idle_cpu_baseline_sleep_percent": round(100 * cpu["baseline"], 3),
        "idle_cpu_goal_met": 100 * cpu["with_model"] < 1.0,
        "rss_no_model_mb": round(rss["no_model"], 1),
        "rss_tiny_model_mb": round(rss["with_model"], 1),
        "rss_imports_only_baseline_mb": round(rss["imports_only"], 1),
        "rss_no_model_ratio_to_imports": round(rss["no_model"] / rss["imports_only"], 2),
        "rss_no_model_goal_met": rss["no_model"] <= 60,
        "rss_tiny_model_goal_met": rss["with_model"] <= 120,
    }


def main() -> None:
    t0 = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="bench-agent-") as d:
        root = Path(d)
        out: dict[str, object] = {"bench": "agent"}
        out.update(commit_to_serving(root))
        out.update(idle_and_rss(root))
    out["wall_s"] = round(time.monotonic() - t0, 1)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
