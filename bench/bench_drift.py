"""Drift monitoring cost: serving throughput of the tiny model at concurrency 16 with the monitor off, on
(every request), sampled (``sampleRate`` 0.1) and with the defaults (every request up to ``maxPerSecond`` 200),
on the same server in the same run.

Rounds alternate off/on/sampled so machine noise hits all three alike; the medians are compared. The load
generator is bench_serving's raw-socket client in a separate process. Prints ONE JSON line.
Run: ``PYTHONPATH=. .venv/bin/python bench/bench_drift.py [--seconds 3] [--rounds 3]``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_serving import _request, load  # noqa: E402

from reconciler.devkit.modelgen import make_probe, matmul_model  # noqa: E402
from reconciler.drift.baseline import Baseline, build_baseline, layouts_for, run_model  # noqa: E402
from reconciler.drift.monitor import DriftSupervisor  # noqa: E402
from reconciler.drift.settings import DriftSettings  # noqa: E402
from reconciler.serving.http.server import InferenceServer  # noqa: E402
from reconciler.serving.registry import EndpointSpec, ModelRegistry  # noqa: E402

CONCURRENCY = 16


def _handler_cpu(reg: ModelRegistry, sup: DriftSupervisor, loaded: object, monitor: object, baseline: Baseline,
                 probe: dict, n: int = 20000) -> dict[str, float]:
    """CPU time (this thread only, so other load on the machine does not count) of the server's request
    handler (JSON decode, inference, encode; no sockets) per request, without and with the monitor, plus the
    monitor thread's work for those requests. An upper bound of the cost: real requests also pay for HTTP I/O."""
    from reconciler.serving.app.v2app import V2App

    app = V2App(reg)
    body = json.dumps({"inputs": probe["inputs"]}).encode()
    out: dict[str, list[float]] = {"off": [], "on": []}
    for _ in range(3):
        for mode in ("off", "on"):
            if mode == "off":
                loaded.observer = None  # type: ignore[attr-defined]
            else:
                every = DriftSettings(sample_rate=1.0, max_per_second=None, queue=n)
                monitor.configure(every, baseline)  # type: ignore[attr-defined]
                loaded.observer = monitor  # type: ignore[attr-defined]
            t0 = time.thread_time()
            for _ in range(n):
                app.handle("POST", "/v2/models/tiny/infer", {}, body)
            spent = time.thread_time() - t0
            if mode == "on":
                t1 = time.thread_time()
                sup.drain()  # the monitor thread's share, run here so it is timed on this thread
                spent += time.thread_time() - t1
            out[mode].append(spent / n * 1e6)
    off, on = statistics.median(out["off"]), statistics.median(out["on"])
    return {"handler_cpu_us_off": round(off, 2), "handler_cpu_us_on": round(on, 2),
            "handler_cpu_cost_on_pct": round(100 * (on / off - 1), 1)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    model = matmul_model(seed=1)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "tiny.onnx"
        path.write_bytes(model)
        sample = {"input": np.random.default_rng(0).normal(size=(2000, 16)).astype(np.float32)}
        tensors, ins, outs = run_model([path], "onnxruntime", sample, "bench")
        doc = build_baseline(layouts_for(tensors, ins, outs), tensors)
    baseline = Baseline.from_bytes(json.dumps(doc).encode())
    sup = DriftSupervisor()
    reg = ModelRegistry(observer_factory=sup.observer_for)
    probe = make_probe(model)
    assert reg.apply(EndpointSpec(name="tiny", version="1", blobs=[model], probe=probe, threads=1)).ok
    lease = reg.get("tiny")
    loaded = lease.model
    lease.release()
    monitor = sup.get("tiny", "1")
    assert monitor is not None
    modes = {
        "off": None,
        "off_again": None,  # A/A: how much two identical runs differ on this machine right now
        "on": DriftSettings(sample_rate=1.0, max_per_second=None),  # every request
        "sampled": DriftSettings(sample_rate=0.1, max_per_second=None),
        "default": DriftSettings(),  # sampleRate 1.0, at most 200 monitored requests per second
    }
    handler = _handler_cpu(reg, sup, loaded, monitor, baseline, probe)
    srv = InferenceServer(reg)
    srv.start()
    req = _request(srv.port, "tiny", probe, binary=True)
    load(srv.port, req, CONCURRENCY, 1.0)  # warm-up
    rps: dict[str, list[float]] = {m: [] for m in modes}
    cpu_us: dict[str, list[float]] = {m: [] for m in modes}  # server-process CPU per request (robust to load)
    before = (monitor.monitored, monitor.dropped)
    for _ in range(args.rounds):
        for mode, settings in modes.items():
            if settings is None:
                loaded.observer = None
            else:
                monitor.configure(settings, baseline)
                loaded.observer = monitor
            sup.drain()
            c0 = time.process_time()  # this process = server + monitor; the client is another process
            samples = load(srv.port, req, CONCURRENCY, args.seconds)
            time.sleep(0.2)
            sup.drain()  # the monitor's work for these requests is counted in this round
            cpu_us[mode].append((time.process_time() - c0) / len(samples) * 1e6)
            assert all(s[2] == 200 for s in samples)
            rps[mode].append(len(samples) / args.seconds)
    time.sleep(0.3)
    sup.drain()
    srv.stop()
    level = (monitor.latest or {}).get("level")
    sup.close()
    reg.close()
    med = {m: statistics.median(v) for m, v in rps.items()}
    cpu = {m: statistics.median(v) for m, v in cpu_us.items()}
    print(json.dumps({
        "bench": "drift", "model": "matmul 16->4", "concurrency": CONCURRENCY, "seconds": args.seconds,
        "rounds": args.rounds,
        "rps_off": round(med["off"]), "rps_on": round(med["on"]), "rps_sampled_0_1": round(med["sampled"]),
        "cost_on_pct": round(100 * (1 - med["on"] / med["off"]), 1),
        "cost_sampled_pct": round(100 * (1 - med["sampled"] / med["off"]), 1),
        "noise_off_vs_off_pct": round(100 * (1 - med["off_again"] / med["off"]), 1),
        "cpu_us_per_request_off": round(cpu["off"], 1), "cpu_us_per_request_on": round(cpu["on"], 1),
        "cpu_us_per_request_sampled_0_1": round(cpu["sampled"], 1),
        "cpu_cost_on_pct": round(100 * (cpu["on"] / cpu["off"] - 1), 1),
        "cpu_cost_sampled_pct": round(100 * (cpu["sampled"] / cpu["off"] - 1), 1),
        "rps_default": round(med["default"]), "cost_default_pct": round(100 * (1 - med["default"] / med["off"]), 1),
        "cpu_us_per_request_default": round(cpu["default"], 1),
        "cpu_cost_default_pct": round(100 * (cpu["default"] / cpu["off"] - 1), 1),
        "cpu_noise_off_vs_off_pct": round(100 * (cpu["off_again"] / cpu["off"] - 1), 1),
        **handler,
        "monitored": monitor.monitored - before[0], "dropped": monitor.dropped - before[1],
        "verdict": level, "goal_pct": 5,
    }))


if __name__ == "__main__":
    main()
