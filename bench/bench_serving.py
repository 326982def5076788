"""Serving benchmark: /infer latency and throughput vs. in-process, batching, peers, swaps under load, RSS.

Load generator: a lean asyncio (uvloop) raw-socket HTTP/1.1 keep-alive client in a separate process, so it
does not share the server's GIL. Prints ONE JSON line. Run: ``.venv/bin/python bench/bench_serving.py``;
``--only overhead,cnn,batching,peers,profile,stacks,swaps,limits,rss`` runs some sections.

Every comparison is made in the same run, in alternating rounds, reporting medians and ratios (the machine is
shared: absolute numbers are context only, with the load average):

- ``overhead``: the tiny model on this tree's server vs the server of ``--baseline-rev`` (default: main before
  issue 17's per-request work), both as ``modelfleet serve`` processes: p50, req/s and the server's CPU time
  per request; the p50 overhead over the runtime in-process at concurrency 1.
- ``cnn``: two camera-sized models (``modelgen.mobilenet_v2`` and the lighter ``modelgen.camera_cnn``,
  1×3×224×224) at batch 1 and 8 on ONNX Runtime and OpenVINO: images/s and CPU per image through the server of
  this tree and of ``--cnn-baseline-rev`` vs the runtime's own in-process loop with the same threads.
- ``batching``: the same models at concurrency 16, one image per request, with adaptive batching vs without,
  both trees; p99 alone against the configured delay plus one image; the in-process ceiling (pool threads × batch
  1 vs one thread × batch 8).
- ``peers``: MLflow ``models serve`` and MLServer (minimal ONNX Runtime runtime), installed in their own venvs
  under ``$MODELFLEET_BENCH_CACHE`` by ``bench/_peers.py``; a failed install is reported in the JSON line.
- ``profile``: py-spy samples of the baseline and current servers under load, summed by function.
- ``stacks``: our HTTP layer against Granian (Rust; RSGI and ASGI), uvicorn and the stdlib server carrying the
  same request handler, each in its own process (``bench/_stacks.py``; Granian and uvicorn come with the
  ``bench`` extra).
- ``limits``: default limits and timeouts vs ``ServerLimits.unlimited()`` (``--limits-only`` runs just that).
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _cnn_sections as cnn_sections  # noqa: E402
import _serving_sections as sections  # noqa: E402
import _stacks  # noqa: E402
from _loadgen import _request, load, stats  # noqa: E402,F401  (bench_workers imports them from here)

from reconciler.devkit.modelgen import make_probe, matmul_model
from reconciler.serving.http.server import InferenceServer
from reconciler.serving.limits import ServerLimits
from reconciler.serving.registry import EndpointSpec, ModelRegistry

TINY = matmul_model(seed=1)


inprocess_p50_us = sections.inprocess_p50_us


def swap_under_load(reg: ModelRegistry, srv: InferenceServer, probe: dict, fail: bool) -> dict[str, float]:
    req = _request(srv.port, "tiny", probe, True)
    steady = stats(load(srv.port, req, 16, 2.0), 2.0)
    results: list = []
    th = threading.Thread(target=lambda: results.extend(load(srv.port, req, 16, 4.0)))
    th.start()
    time.sleep(0.5)
    t_first = time.perf_counter()
    rolled = 0
    for i in range(20):
        if fail:
            r = reg.apply(EndpointSpec("tiny", f"bad{i}", blobs=[matmul_model(seed=1, nan=True)]))
            rolled += not r.ok
        else:
            assert reg.apply(
                EndpointSpec("tiny", f"s{i}", blobs=[matmul_model(seed=1, bias=float(i % 3))])
            ).ok
        time.sleep(0.1)
    t_last = time.perf_counter()
    th.join()
    during = [s for s in results if t_first <= s[0] <= t_last]
    d = stats(during, t_last - t_first)
    return {
        "steady_p99_us": steady["p99_us"],
        "swap_p99_us": d["p99_us"],
        "p99_ratio": round(d["p99_us"] / steady["p99_us"], 2),
        "failed_requests": sum(s[2] != 200 for s in results),
        "requests": len(results),
        **({"rejected_versions": rolled} if fail else {}),
    }


def server_rss_mb() -> float:
    with tempfile.TemporaryDirectory() as d:
        f = Path(d) / "tiny.onnx"
        f.write_bytes(TINY)
        p = subprocess.Popen(
            [sys.executable, "-m", "reconciler.cli", "serve", str(f), "--port", "0"],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
        )
        try:
            p.stdout.readline()  # type: ignore[union-attr]
            time.sleep(0.5)
            with open(f"/proc/{p.pid}/status") as fh:
                kb = next(int(line.split()[1]) for line in fh if line.startswith("VmRSS:"))
        finally:
            p.terminate()
            p.wait(10)
    return round(kb / 1024, 1)


def _cpu_seconds() -> float:
    """CPU time of this process (the servers; the load generator is another process): robust to a busy host."""
    import resource

    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


def limits_cost(reg: ModelRegistry, probe: dict, rounds: int = 5, seconds: float = 2.0) -> dict[str, Any]:
    """Default limits vs no limits on the same registry: p50 and throughput ratios (limited / unlimited)."""
    servers = {"limited": InferenceServer(reg), "unlimited": InferenceServer(reg, limits=ServerLimits.unlimited())}
    for srv in servers.values():
        srv.start()
    runs: dict[str, dict[str, list[dict[str, float]]]] = {k: {"json_c1": [], "binary_c1": [], "binary_c16": []}
                                                          for k in servers}
    try:
        for _ in range(rounds):
            for name, srv in servers.items():
                for case in ("json_c1", "binary_c1", "binary_c16"):
                    enc, conc = case.split("_c")
                    req = _request(srv.port, "tiny", probe, enc == "binary")
                    cpu0 = _cpu_seconds()
                    samples = load(srv.port, req, int(conc), seconds)
                    s = stats(samples, seconds)
                    s["cpu_us_per_req"] = (_cpu_seconds() - cpu0) / max(1, len(samples)) * 1e6
                    runs[name][case].append(s)
    finally:
        for srv in servers.values():
            srv.stop()
    out: dict[str, Any] = {"rounds": rounds, "seconds_per_run": seconds}
    for case in ("json_c1", "binary_c1", "binary_c16"):
        med = {
            name: {k: statistics.median(r[k] for r in runs[name][case]) for k in ("p50_us", "rps", "cpu_us_per_req")}
            for name in servers
        }
        out[case] = {
            **{f"{name}_{k}": v for name, m in med.items() for k, v in m.items()},
            "p50_ratio": round(med["limited"]["p50_us"] / med["unlimited"]["p50_us"], 3),
            "rps_ratio": round(med["limited"]["rps"] / med["unlimited"]["rps"], 3),
            "cpu_ratio": round(med["limited"]["cpu_us_per_req"] / med["unlimited"]["cpu_us_per_req"], 3),
        }
    return out


SECTIONS = ("overhead", "cnn", "batching", "peers", "profile", "stacks", "swaps", "limits", "rss")


def _option(name: str, default: str) -> str:
    for i, arg in enumerate(sys.argv):
        if arg == name and i + 1 < len(sys.argv):
            return sys.argv[i + 1]
        if arg.startswith(name + "="):
            return arg.split("=", 1)[1]
    return default


def main() -> None:
    if "--limits-only" in sys.argv:
        reg = ModelRegistry()
        probe = make_probe(TINY, batch=1)
        assert reg.apply(EndpointSpec("tiny", "1", blobs=[TINY], probe=probe)).ok
        print(json.dumps({"limits_cost": limits_cost(reg, probe), "cpus": os.cpu_count()}, separators=(",", ":")))
        reg.close()
        return
    only = set(_option("--only", ",".join(SECTIONS)).split(","))
    rev = _option("--baseline-rev", sections.BASELINE_REV)
    cache = sections._peers.CACHE.parent / "bench-serving"
    cache.mkdir(parents=True, exist_ok=True)
    out: dict[str, Any] = {"load_generator": "asyncio+uvloop raw-socket client, separate process",
                           "cpus": os.cpu_count(), "loadavg_start": [round(x, 2) for x in os.getloadavg()]}
    cnn_trees = {"baseline": sections.baseline_tree(_option("--cnn-baseline-rev", cnn_sections.CNN_BASELINE_REV),
                                                    cache), "current": sections.REPO} if only & {"cnn", "batching"} else {}
    for name, run in (("overhead", lambda: sections.overhead(cache, rev)),
                      ("cnn", lambda: cnn_sections.cnn(cache, cnn_trees)),
                      ("batching", lambda: cnn_sections.batching(cache, cnn_trees)), ("peers", lambda: sections.peers(cache)),
                      ("profile", lambda: sections.profile(cache, rev)),
                      ("stacks", lambda: _stacks.stacks(cache, TINY, make_probe(TINY, batch=1)))):
        if name in only:
            try:
                out[name] = run()
            except Exception as exc:  # one section failing must not lose the others' numbers
                out[name] = {"error": f"{type(exc).__name__}: {exc}"}
    if only & {"swaps", "limits"}:
        reg = ModelRegistry()
        tiny_probe = make_probe(TINY, batch=1)
        assert reg.apply(EndpointSpec("tiny", "1", blobs=[TINY], probe=tiny_probe)).ok
        srv = InferenceServer(reg)
        srv.start()
        if "swaps" in only:
            out["swap_under_load"] = swap_under_load(reg, srv, tiny_probe, fail=False)
            out["swap_health_failure"] = swap_under_load(reg, srv, tiny_probe, fail=True)
        srv.stop()
        if "limits" in only:
            out["limits_cost"] = limits_cost(reg, tiny_probe)
        reg.close()
    if "rss" in only:
        out["server_rss_mb_tiny"] = server_rss_mb()
    out["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]
    print(json.dumps(out, separators=(",", ":")))


if __name__ == "__main__":
    main()
