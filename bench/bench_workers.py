"""Worker processes benchmark: `modelfleet serve --workers 2` vs the single event loop, same run, same model.

The tiny generated MatMul (reconciler.devkit.modelgen) served by `modelfleet serve` in a subprocess, loaded by
wrk on loopback (it shares the machine with the server, as on a device). Rounds alternate workers=1 and
workers=N (medians), so a noisy neighbour hits both. Measured: throughput at concurrency 16, p50 at
concurrency 1, VmRSS/VmHWM of every serving process, and the failed requests of 20 two-phase switches under
load (a WorkerPool in this process; wrk counts every non-200 and socket error). Prints ONE JSON line.

``server_cores_busy_c16`` is the CPU time the serving processes used per second of the c=16 run, and
``host_loadavg_1m`` the host's load before and after: on a busy host more processes also get a larger share
of the CPUs, so read the throughput ratio together with them.

``cpu_per_req_ratio_c16`` is the pool's CPU per request (control plane and workers) over the single loop's
(``workers_N_unpinned``: the same with ``--no-pin-workers``; the pool pins when it has one worker per CPU);
``--baseline-rev REV`` measures REV's single loop and pool as well, in the same alternating rounds.

Run: ``PYTHONPATH=. .venv/bin/python bench/bench_workers.py [--workers 2] [--rounds 3] [--seconds 5]
[--baseline-rev 6bbac64]``.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from _serving_sections import baseline_tree

from reconciler.devkit.modelgen import make_probe, matmul_model
from reconciler.serving.registry import EndpointSpec
from reconciler.serving.workers.control import proc_memory_mb
from reconciler.serving.workers.pool import WorkerPool

#: main before issue AB's cuts of the pool's cost per request (``--baseline-rev``)
WORKERS_BASELINE_REV = "6bbac64"
TINY = matmul_model(seed=1)
PROBE = make_probe(TINY)
BODY = json.dumps({"inputs": PROBE["inputs"]})


def _lua(path: Path) -> Path:
    script = path / "infer.lua"
    script.write_text(
        'wrk.method = "POST"\nwrk.headers["Content-Type"] = "application/json"\n'
        f"wrk.body = {json.dumps(BODY)}\n"
    )
    return script


def wrk(port: int, script: Path, conc: int, seconds: float) -> dict[str, float]:
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    out = subprocess.run(
        ["wrk", "-t1", f"-c{conc}", f"-d{max(1, round(seconds))}s", "--latency", "-s", str(script),
         f"http://127.0.0.1:{port}/v2/models/tiny/infer"],
        capture_output=True, text=True, check=True,
    ).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    m = re.search(r"50%\s+([\d.]+)(us|ms|s)", out)
    p50 = float(m.group(1)) * {"us": 1, "ms": 1e3, "s": 1e6}[m.group(2)] if m else float("nan")
    total = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
    non2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    sock = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    failed = (int(non2xx.group(1)) if non2xx else 0) + (sum(map(int, sock.groups())) if sock else 0)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)  # wrk, reaped by subprocess.run
    cpu = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
    return {"rps": rps, "p50_us": p50, "requests": total, "failed": failed,
            "wrk_cores": cpu / max(1, round(seconds))}


class Served:
    """`modelfleet serve tiny.onnx --workers N` in a subprocess."""

    def __init__(self, model: Path, workers: int, threads: int, src: Path | None = None,
                 extra: tuple[str, ...] = ()) -> None:
        env = {**os.environ, "PYTHONPATH": str(src)} if src is not None else None
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "reconciler.cli", "serve", str(model), "--name", "tiny", "--port", "0",
             "--threads", str(threads), "--workers", str(workers), *extra],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env,
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        self.port = int(line.rsplit(":", 1)[1].split("/")[0])
        self.pids = [self.proc.pid]
        if workers > 1:
            self.pids += [int(p) for p in re.findall(r"\d+", self.proc.stdout.readline().split("pids", 1)[1])]

    def cpu_seconds(self) -> float:
        """CPU time of every serving process (the control plane and the workers) so far."""
        total = 0
        for pid in self.pids:
            with open(f"/proc/{pid}/stat") as fh:
                fields = fh.read().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])
        return total / os.sysconf("SC_CLK_TCK")

    def memory(self) -> list[dict[str, float]]:
        return [proc_memory_mb(pid) for pid in self.pids]

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(30)


def swap_under_load(script: Path, workers: int, threads: int, swaps: int = 20) -> dict[str, Any]:
    """Two-phase switches between two versions while wrk runs at concurrency 16: every non-200 counts."""
    with WorkerPool(workers, port=0) as pool:
        assert pool.apply(EndpointSpec("tiny", "v0", blobs=[TINY], threads=threads)).ok
        result: dict[str, float] = {}
        load = threading.Thread(target=lambda: result.update(wrk(pool.port or 0, script, 16, 6.0)))
        load.start()
        time.sleep(1.0)
        switch_ms = []
        for i in range(1, swaps + 1):
            t0 = time.perf_counter()
            r = pool.apply(EndpointSpec("tiny", f"v{i}", blobs=[matmul_model(seed=1, bias=float(i % 3))],
                                        threads=threads))
            switch_ms.append((time.perf_counter() - t0) * 1000)
            assert r.ok, r
            time.sleep(0.15)
        load.join()
        return {"swaps": swaps, "requests": int(result["requests"]), "failed_requests": int(result["failed"]),
                "switch_ms_p50": round(statistics.median(switch_ms), 1), "generation": pool.generation}


def _ceiling(single: dict[str, float], pool: dict[str, float], cores: int) -> float:
    """Throughput ratio on an idle host: the single loop is bound by its one core (or what wrk leaves), the
    pool by all cores shared with wrk, both at the CPU per request measured in this run."""
    s_srv, s_wrk = single["cpu"] / single["c16"], single["wrk"] / single["c16"]
    p_srv, p_wrk = pool["cpu"] / pool["c16"], pool["wrk"] / pool["c16"]
    single_rps = min(1 / s_srv, cores / (s_srv + s_wrk))
    return round(cores / (p_srv + p_wrk) / single_rps, 2)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--threads", type=int, default=1, help="intra-op threads per session (both sides)")
    ap.add_argument("--baseline-rev", help="also measure this revision's single loop and pool in the same rounds "
                                           f"(e.g. {WORKERS_BASELINE_REV}: main before issue AB's cost cuts)")
    args = ap.parse_args()
    if shutil.which("wrk") is None:
        sys.exit("error: wrk is not installed (apt-get install wrk)")
    tmp = Path(tempfile.mkdtemp(prefix="bench-workers-"))
    model = tmp / "tiny.onnx"
    model.write_bytes(TINY)
    script = _lua(tmp)
    runs: dict[int, dict[str, list[float]]] = {n: {"c16": [], "c1": [], "cpu": [], "wrk": []} for n in (1, args.workers)}
    base_src = baseline_tree(args.baseline_rev, tmp) if args.baseline_rev else None
    base_cpu: dict[int, list[float]] = {1: [], args.workers: []}
    unpinned_cpu: list[float] = []  # this tree's pool with --no-pin-workers (the pool pins when workers == CPUs)
    load_before = os.getloadavg()[0]
    memory: dict[int, list[dict[str, float]]] = {}
    for i in range(args.rounds):
        if base_src is not None:  # the baseline's CPU per request at c=16, in the same rounds (order flips)
            for n in ((1, args.workers) if i % 2 else (args.workers, 1)):
                srv = Served(model, n, args.threads, base_src)
                try:
                    wrk(srv.port, script, 16, 1.0)
                    cpu0 = srv.cpu_seconds()
                    c16 = wrk(srv.port, script, 16, args.seconds)
                    base_cpu[n].append((srv.cpu_seconds() - cpu0) / c16["requests"])
                finally:
                    srv.stop()
        srv = Served(model, args.workers, args.threads, extra=("--no-pin-workers",))
        try:
            wrk(srv.port, script, 16, 1.0)
            cpu0 = srv.cpu_seconds()
            c16 = wrk(srv.port, script, 16, args.seconds)
            unpinned_cpu.append((srv.cpu_seconds() - cpu0) / c16["requests"])
        finally:
            srv.stop()
        for n in (1, args.workers):
            srv = Served(model, n, args.threads)
            try:
                wrk(srv.port, script, 16, 1.0)  # warm
                cpu0 = srv.cpu_seconds()
                c16 = wrk(srv.port, script, 16, args.seconds)
                runs[n]["cpu"].append((srv.cpu_seconds() - cpu0) / max(1, round(args.seconds)))
                c1 = wrk(srv.port, script, 1, args.seconds / 2)
                assert c16["failed"] == 0 and c1["failed"] == 0, (c16, c1)
                runs[n]["c16"].append(c16["rps"])
                runs[n]["wrk"].append(c16["wrk_cores"])
                runs[n]["c1"].append(c1["p50_us"])
                memory[n] = srv.memory()
            finally:
                srv.stop()
    med = {n: {k: statistics.median(v) for k, v in r.items()} for n, r in runs.items()}
    w = args.workers
    out = {
        "bench": "workers",
        "cpus": os.cpu_count(),
        "model": "tiny matmul 16->4 (JSON /infer)",
        "load": "wrk -t1 on the same machine",
        "threads_per_session": args.threads,
        "rounds": args.rounds,
        "host_loadavg_1m": [round(load_before, 1), round(os.getloadavg()[0], 1)],
        "single_loop": {"rps_c16": round(med[1]["c16"]), "p50_us_c1": med[1]["c1"],
                        "server_cores_busy_c16": round(med[1]["cpu"], 2),
                        "wrk_cores_busy_c16": round(med[1]["wrk"], 2),
                        "rss_mb": [m.get("vmrss") for m in memory[1]], "hwm_mb": [m.get("vmhwm") for m in memory[1]]},
        f"workers_{w}": {"rps_c16": round(med[w]["c16"]), "p50_us_c1": med[w]["c1"],
                         "server_cores_busy_c16": round(med[w]["cpu"], 2),
                         "wrk_cores_busy_c16": round(med[w]["wrk"], 2),
                         "rss_mb_per_worker": [m.get("vmrss") for m in memory[w][1:] or memory[w]],
                         "hwm_mb_per_worker": [m.get("vmhwm") for m in memory[w][1:] or memory[w]],
                         "control_plane_rss_mb": memory[w][0].get("vmrss") if w > 1 else None},
        "throughput_ratio_c16": round(med[w]["c16"] / med[1]["c16"], 2),
        # requests per CPU-second of the serving processes: what the pool costs per request (1.0: nothing)
        "per_core_ratio_c16": round((med[w]["c16"] / med[w]["cpu"]) / (med[1]["c16"] / med[1]["cpu"]), 2),
        # the same the other way up: CPU per request of the whole process tree (control plane and workers) over
        # the single loop's (issue AB's figure: <= 1.15)
        "cpu_us_per_req_c16": {"single_loop": round(med[1]["cpu"] / med[1]["c16"] * 1e6, 1),
                               f"workers_{w}": round(med[w]["cpu"] / med[w]["c16"] * 1e6, 1)},
        "cpu_per_req_ratio_c16": round((med[w]["cpu"] / med[w]["c16"]) / (med[1]["cpu"] / med[1]["c16"]), 2),
        "p50_ratio_c1": round(med[w]["c1"] / med[1]["c1"], 2),
        # what an otherwise idle machine would allow: the single loop at one full core vs all cores shared
        # between the workers and wrk, at the per-request CPU costs measured above
        "idle_host_ceiling_ratio_c16": _ceiling(med[1], med[w], os.cpu_count() or 1),
        "swap_under_load": swap_under_load(script, w, args.threads),
    }
    single_cpu = med[1]["cpu"] / med[1]["c16"]
    out[f"workers_{w}_unpinned"] = {"cpu_us_per_req_c16": round(statistics.median(unpinned_cpu) * 1e6, 1),
                                    "cpu_per_req_ratio_c16": round(statistics.median(unpinned_cpu) / single_cpu, 2)}
    if base_src is not None:
        b1, bw = statistics.median(base_cpu[1]), statistics.median(base_cpu[w])
        out["baseline"] = {"rev": args.baseline_rev,
                           "cpu_us_per_req_c16": {"single_loop": round(b1 * 1e6, 1), f"workers_{w}": round(bw * 1e6, 1)},
                           "cpu_per_req_ratio_c16": round(bw / b1, 2)}
    shutil.rmtree(tmp, ignore_errors=True)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
