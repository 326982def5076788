"""Shadow evaluation's cost to live traffic: p50/p99 latency and throughput of the live endpoint with a shadow
candidate mirroring 100 % of the requests vs no shadow, on the same server in the same run.

The server is the single-process inference server with the agent's observer fan-out member
(:class:`~reconciler.agent.shadowing.ShadowTap`); the candidate (the same model retrained with small noise) is
loaded as the agent loads it (one intra-op thread, health-checked, its worker thread niced) and runs on every
request the live version answers — or on none. Rounds alternate off / on / on with a worker thread that is not
niced / off again (A/A: what two identical runs differ by on this machine right now), the order rotating from
round to round; medians over rounds are compared, and so are the medians of each round's ratio to that round's
"off" (paired: slow drifts of a shared machine's load cancel). The load generator is the benchmarks' raw-socket
client in a separate process at concurrency 4 (binary tensors). Two models: the tiny matmul (the request path
dominates: the mirror's per-request cost shows) and a small CNN (the inference dominates: the candidate's CPU
competes with the live one).

Prints ONE JSON line. Run: ``PYTHONPATH=. .venv/bin/python bench/bench_shadow.py [--seconds 1.5] [--rounds 16]``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _loadgen import _request, load  # noqa: E402

from reconciler.agent.shadowing import ShadowSupervisor, load_candidate  # noqa: E402
from reconciler.devkit.modelgen import make_probe, matmul_model, small_cnn  # noqa: E402
from reconciler.serving.http.server import InferenceServer  # noqa: E402
from reconciler.serving.registry import EndpointSpec, ModelRegistry  # noqa: E402
from reconciler.shadow.mirror import Mirror  # noqa: E402
from reconciler.shadow.spec import ShadowSettings  # noqa: E402

CONCURRENCY = 4
MODELS = {
    "matmul": (lambda: matmul_model(seed=1), lambda: matmul_model(seed=1, bias=2e-3, noise=5e-4)),
    "cnn": (lambda: small_cnn(seed=0), lambda: small_cnn(seed=0)),
}


def pct(lat: list[float], q: float) -> float:
    s = sorted(lat)
    return s[min(len(s) - 1, int(len(s) * q))]


def bench_model(name: str, seconds: float, rounds: int) -> dict[str, object]:
    live_bytes, cand_bytes = MODELS[name][0](), MODELS[name][1]()
    probe = make_probe(live_bytes)
    sup = ShadowSupervisor()
    reg = ModelRegistry(observer_factory=sup.observer_for)
    assert reg.apply(EndpointSpec(name="m", version="1", blobs=[live_bytes], probe=probe, threads=1)).ok
    part = {"runtime": "onnxruntime", "precision": "fp32"}
    backend, memory, reason, message = load_candidate(part, [cand_bytes], make_probe(cand_bytes), {}, None)
    assert backend is not None, (reason, message)
    settings = ShadowSettings(sample_rate=1.0, min_samples=1000)
    mirror = Mirror("m", "1", "2", settings, lambda feeds: backend.infer(feeds, None))
    # the same candidate on a worker thread that is not niced: what the priority buys the live requests
    plain = Mirror("m", "1", "2", settings, lambda feeds: backend.infer(feeds, None), nice=0)
    srv = InferenceServer(reg)
    srv.start()
    req = _request(srv.port, "m", probe, binary=True)
    load(srv.port, req, CONCURRENCY, 1.0)  # warm-up
    modes = ("off", "on", "on_not_niced", "off_again")
    mirrors = {"on": mirror, "on_not_niced": plain}
    p50: dict[str, list[float]] = {m: [] for m in modes}
    p99: dict[str, list[float]] = {m: [] for m in modes}
    rps: dict[str, list[float]] = {m: [] for m in modes}
    paired: dict[str, list[float]] = {"on": [], "on_not_niced": [], "off_again": []}
    for r in range(rounds):
        order = modes[r % len(modes):] + modes[:r % len(modes)]  # each mode takes each position in turn
        for mode in order:
            sup.mirrors = {"m": mirrors[mode]} if mode in mirrors else {}
            samples = load(srv.port, req, CONCURRENCY, seconds)
            assert all(s[2] == 200 for s in samples)
            lat = [s[1] for s in samples]
            p50[mode].append(pct(lat, 0.5) * 1e6)
            p99[mode].append(pct(lat, 0.99) * 1e6)
            rps[mode].append(len(samples) / seconds)
            deadline = time.monotonic() + 30
            while not all(m.idle() for m in mirrors.values()) and time.monotonic() < deadline:  # an empty queue
                time.sleep(0.01)
        for mode in paired:  # this round's p99 against this round's "off" (drift of the machine cancels)
            paired[mode].append(p99[mode][-1] / p99["off"][-1])
    sup.mirrors = {}
    snap, snap_plain = mirror.snapshot(), plain.snapshot()
    for m in mirrors.values():
        m.stop()
    srv.stop()
    backend.close()
    reg.close()
    med = {k: {m: statistics.median(v[m]) for m in modes} for k, v in (("p50", p50), ("p99", p99), ("rps", rps))}
    return {
        "p50_us_off": round(med["p50"]["off"], 1), "p50_us_on": round(med["p50"]["on"], 1),
        "p99_us_off": round(med["p99"]["off"], 1), "p99_us_on": round(med["p99"]["on"], 1),
        "p99_us_off_again": round(med["p99"]["off_again"], 1),
        "p50_ratio_on_off": round(med["p50"]["on"] / med["p50"]["off"], 3),
        "p99_ratio_on_off": round(med["p99"]["on"] / med["p99"]["off"], 3),
        "p99_ratio_off_again_off": round(med["p99"]["off_again"] / med["p99"]["off"], 3),
        "p99_ratio_on_off_paired_median": round(statistics.median(paired["on"]), 3),
        "p99_ratio_off_again_off_paired_median": round(statistics.median(paired["off_again"]), 3),
        "p99_ratio_on_not_niced_off_paired_median": round(statistics.median(paired["on_not_niced"]), 3),
        "p99_us_on_not_niced": round(med["p99"]["on_not_niced"], 1),
        "p99_ratio_on_not_niced_off": round(med["p99"]["on_not_niced"] / med["p99"]["off"], 3),
        "rps_on_not_niced": round(med["rps"]["on_not_niced"]),
        "shadow_not_niced_compared_requests": snap_plain["requests"], "shadow_not_niced_dropped": snap_plain["dropped"],
        "rps_off": round(med["rps"]["off"]), "rps_on": round(med["rps"]["on"]),
        "shadow_offered": snap["offered"], "shadow_compared_requests": snap["requests"],
        "shadow_dropped": snap["dropped"], "shadow_agreement_pct": snap["agreement"],
        "candidate_p50_ms": snap["latencyMs"]["p50"], "candidate_memory_mb": memory,
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=1.5)
    ap.add_argument("--rounds", type=int, default=16)
    ap.add_argument("--models", default="matmul,cnn")
    args = ap.parse_args()
    out: dict[str, object] = {"bench": "shadow", "concurrency": CONCURRENCY, "sample_rate": 1.0,
                              "seconds": args.seconds, "rounds": args.rounds, "cores": os.cpu_count(),
                              "loadavg_before": [round(x, 2) for x in os.getloadavg()]}
    for name in args.models.split(","):
        for k, v in bench_model(name, args.seconds, args.rounds).items():
            out[f"{name}_{k}"] = v
    out["loadavg_after"] = [round(x, 2) for x in os.getloadavg()]
    out["goal_p99_ratio"] = 1.1
    print(json.dumps(out))


if __name__ == "__main__":
    main()
