"""Drift monitoring cost: serving throughput of the tiny model at concurrency 16 with the monitor off, on
(every request, ``sampleRate`` 1.0) and sampled (0.1), on the same server in the same run.

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
from reconciler.serving.registry import EndpointSpec, ModelRegistry  # noqa: E402
from reconciler.serving.server import InferenceServer  # noqa: E402

CONCURRENCY = 16


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
        "on": DriftSettings(sample_rate=1.0),
        "sampled": DriftSettings(sample_rate=0.1),
    }
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
        "cpu_noise_off_vs_off_pct": round(100 * (cpu["off_again"] / cpu["off"] - 1), 1),
        "monitored": monitor.monitored - before[0], "dropped": monitor.dropped - before[1],
        "verdict": level, "goal_pct": 5,
    }))


if __name__ == "__main__":
    main()
